"""The multilingual model's token n-gram head (models/ngrams.py), on a word-level tokenizer built here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from models.multilingual import NgramConfig
from models.ngrams import TokenNgrams
from models.runtime import encode
from stream.tokenize import PostTokenizer

WORDS = ["[PAD]", "[UNK]", "good", "bad", "not", "very", "service", "the", "was", "ok", ",", "!"]
TEXTS = [
    "the service was good",
    "the service was not good , very bad",
    "ok",
    "good good good !",
    "bad not good",
    "good not bad",
]


@pytest.fixture
def tokenizer(tmp_path: Path) -> PostTokenizer:
    word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    path = tmp_path / "tokenizer.json"
    word_level.save(str(path))
    return PostTokenizer(path, 16, 0)


def _head(orders: int, seed: int = 0) -> TokenNgrams:
    head = TokenNgrams(len(WORDS), NgramConfig(orders=orders, buckets=4096), 3)
    torch.manual_seed(seed)
    torch.nn.init.normal_(head.table.weight)
    torch.nn.init.normal_(head.bias)
    return head


def _logits(head: TokenNgrams, tokenizer: PostTokenizer, texts: list[str]) -> np.ndarray:
    with torch.no_grad():
        return head(*(torch.from_numpy(a) for a in encode(tokenizer, texts))).numpy()


@pytest.mark.parametrize("orders", [1, 2, 3])
def test_design_matrix_times_the_table_is_the_forward(tokenizer: PostTokenizer, orders: int) -> None:
    head = _head(orders)
    matrix = head.design_matrix(tokenizer, TEXTS)
    expected = matrix @ head.table.weight.detach().numpy() + head.bias.detach().numpy()
    np.testing.assert_allclose(_logits(head, tokenizer, TEXTS), expected, atol=1e-5)


def test_padding_does_not_change_a_posts_logits(tokenizer: PostTokenizer) -> None:
    head = _head(3)
    batched = _logits(head, tokenizer, TEXTS)
    alone = np.concatenate([_logits(head, tokenizer, [text]) for text in TEXTS])
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def test_bigrams_separate_what_the_same_words_in_another_order_mean(tokenizer: PostTokenizer) -> None:
    texts, labels = ["bad not good", "good not bad"] * 4, [0, 2] * 4
    for orders, separated in ((1, False), (2, True)):
        head = TokenNgrams(len(WORDS), NgramConfig(orders=orders, buckets=4096), 3)
        head.fit(tokenizer, texts, labels, NgramConfig(orders=orders, c=10.0))
        logits = _logits(head, tokenizer, ["bad not good", "good not bad"])
        assert (logits.argmax(-1).tolist() == [0, 2]) is separated
        if not separated:
            np.testing.assert_allclose(logits[0], logits[1], atol=1e-6)


def test_fit_scales_the_regression_by_its_weight(tokenizer: PostTokenizer) -> None:
    labels = [2, 0, 1, 2, 0, 2]
    heads = {}
    for weight in (1.0, 0.5):
        heads[weight] = head = TokenNgrams(len(WORDS), NgramConfig(buckets=4096), 3)
        notes = head.fit(tokenizer, TEXTS, labels, NgramConfig(buckets=4096, weight=weight))
        assert notes["rows"] == len(TEXTS) and notes["features_used"] > 0
    np.testing.assert_allclose(
        _logits(heads[0.5], tokenizer, TEXTS), 0.5 * _logits(heads[1.0], tokenizer, TEXTS), atol=1e-6
    )


def test_buckets_must_leave_room_past_the_vocabulary() -> None:
    with pytest.raises(ValueError, match="no room"):
        TokenNgrams(len(WORDS), NgramConfig(buckets=len(WORDS)), 3)


def test_exported_graph_computes_the_same_logits(tokenizer: PostTokenizer, tmp_path: Path) -> None:
    head = _head(3).eval()
    sample = tuple(torch.from_numpy(a) for a in encode(tokenizer, TEXTS[:2]))
    path = tmp_path / "ngrams.onnx"
    torch.onnx.export(
        head,
        sample,
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=["logits"],
        dynamic_axes={name: {0: "batch", 1: "sequence"} for name in ("input_ids", "attention_mask")},
        opset_version=17,
        dynamo=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # One-token posts too: no bigram or trigram fits in them.
    for texts in (TEXTS, ["ok"], TEXTS[2:4]):
        input_ids, attention_mask = encode(tokenizer, texts)
        (got,) = session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})
        np.testing.assert_allclose(got, _logits(head, tokenizer, texts), atol=1e-5)
