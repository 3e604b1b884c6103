"""Fine-tuning is reproducible: one seed gives one model, as the build cache (one model per key) assumes."""

from __future__ import annotations

from pathlib import Path

import msgspec.structs
import pytest

torch = pytest.importorskip("torch")


def _fine_tune(seed: int, tokenizer_file: Path) -> dict[str, torch.Tensor]:
    from models.data import load_rated, split_tweets
    from models.recipe import BuildConfig
    from models.train import MultiTaskModel, encoder_dir, train_sentiment
    from stream.tokenize import PostTokenizer

    config = msgspec.structs.replace(BuildConfig(seed=seed, epochs=1).train_config(), threads=1)
    tweets, _ = split_tweets(load_rated("tweets"))
    model = MultiTaskModel.from_pretrained(encoder_dir(), seed)
    train_sentiment(model, PostTokenizer(tokenizer_file, config.max_len, 0), config, tweets[:64])
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def test_same_seed_gives_identical_weights(tmp_path: Path) -> None:
    from models.recipe import write_tokenizer
    from models.train import encoder_dir

    tokenizer_file = tmp_path / "tokenizer.json"
    write_tokenizer(encoder_dir() / "tokenizer.json", tokenizer_file)
    first, second, other = (_fine_tune(seed, tokenizer_file) for seed in (13, 13, 14))
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not torch.equal(first["sentiment.weight"], other["sentiment.weight"])
