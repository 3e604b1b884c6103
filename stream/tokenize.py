"""Tokenize stage: `tokenizers` with the model's truncation, and padding to a multiple of a few tokens.

Shared by the worker's batcher, training, export and offline classification, so every path feeds the
model the same ids. The model build hashes this module (models/build.py), not the batcher.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from models.manifest import Manifest, verified_tokenizer_path


class PostTokenizer:
    """`tokenizers` with the model's truncation; padding is ours (to a multiple of `pad_multiple`)."""

    def __init__(self, path: Path, max_seq_len: int, pad_token_id: int) -> None:
        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_seq_len)
        self.max_seq_len = max_seq_len
        self.pad_token_id = pad_token_id

    @classmethod
    def for_model(cls, model_dir: Path, manifest: Manifest) -> PostTokenizer:
        """The tokenizer a manifest names (checked against its sha256), with its sequence limit and pad id."""
        return cls(verified_tokenizer_path(model_dir, manifest), manifest.max_seq_len, manifest.pad_token_id)

    def encode(self, texts: Sequence[str]) -> list[tuple[list[int], bool]]:
        """Token ids per text and whether the text was truncated to fit the model."""
        encodings = self._tokenizer.encode_batch(list(texts))
        return [(encoding.ids, bool(encoding.overflowing)) for encoding in encodings]


def padded_length(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


def pad(
    sequences: Sequence[list[int]], multiple: int, pad_id: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    width = padded_length(max(len(ids) for ids in sequences), multiple)
    input_ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask
