"""`socialpulse models variants`: score multilingual recipe variants on validation sentences, not held-out ones.

How MultilingualConfig's defaults (models/multilingual.py) were chosen, so the held-out scores in the model
card carry no selection bias: each language's training split is split again (seeded, stratified), variants
train on the first part and are scored on the second, and the held-out test splits are never read. The
frozen layers' states are computed once per distinct sentence and shared by every variant with the same
frozen layers; each variant trains the top layers from the same starting weights. Scores are PyTorch fp32
on states at the training length, so they rank variants; the served model's own numbers come from
`models eval`.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from rich.console import Console

from models.corpora import LabelledText, Language, labels_of, split_language, stratified_split
from models.multilingual import (
    CachedStates,
    MultilingualConfig,
    encoder_pad_id,
    fit_ngrams,
    frozen_runner,
    load_model,
    train_upper,
    training_rows,
    upper_pooled,
    write_prefixed_tokenizer,
)
from models.recipe import MAX_SEQ_LEN
from stream.tokenize import PostTokenizer

if TYPE_CHECKING:
    import torch

# Validation sentences per language, out of its training split (an int: a count, a float: a share).
VALIDATION_SIZES: dict[str, float | int] = {"en": 400, "zh": 1000, "es": 0.2}
VALIDATION_SEED = "validation"


def validation_splits(
    languages: tuple[Language, ...],
) -> tuple[dict[str, list[LabelledText]], dict[str, list[LabelledText]]]:
    """(train, validation) per language, both inside the language's training split."""
    train: dict[str, list[LabelledText]] = {}
    validation: dict[str, list[LabelledText]] = {}
    for lang in languages:
        rows, _ = split_language(lang)
        train[lang], validation[lang] = stratified_split(rows, VALIDATION_SIZES[lang], f"{VALIDATION_SEED}:{lang}")
    return train, validation


class _States:
    """Frozen-layer states by text, for one (encoder, prefix, frozen layers, training length)."""

    def __init__(self, by_text: dict[str, torch.Tensor]) -> None:
        self.by_text = by_text

    def cache(self, texts: list[str]) -> CachedStates:
        return CachedStates([self.by_text[text] for text in texts])


def score_variants(variants: dict[str, dict[str, Any]], console: Console) -> list[dict[str, Any]]:
    """Train each variant (MultilingualConfig fields to override) and score it on the validation splits."""
    import torch

    from models.evaluate import onehot, restricted_report, tfidf_lr_predictions
    from models.sources import encoder_folder

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    base = MultilingualConfig()
    torch.set_num_threads(base.threads)
    train, validation = validation_splits(base.languages)
    texts = list(dict.fromkeys(r.text for split in (train, validation) for rows in split.values() for r in rows))
    results: list[dict[str, Any]] = []
    baselines = {}
    for lang in base.languages:
        if lang != "en":
            predicted = tfidf_lr_predictions(lang, [r.text for r in validation[lang]], train[lang])
            baselines[lang] = restricted_report([r.label for r in validation[lang]], onehot(predicted), labels_of(lang))
    console.log(f"tfidf_lr on the validation splits: {baselines}")
    states: dict[tuple[str, str, int, int], _States] = {}
    tokenizer_files: dict[tuple[str, str], Path] = {}
    with tempfile.TemporaryDirectory(prefix="socialpulse-variants-") as work:
        for name, overrides in variants.items():
            # Nested fields (ngrams) come as JSON objects: convert, not replace.
            config = msgspec.convert({**msgspec.to_builtins(base), **overrides}, MultilingualConfig)
            folder = encoder_folder(config.encoder)
            model, first = load_model(config, folder)
            key = (config.encoder, config.text_prefix, first, config.max_len)
            source = (config.encoder, config.text_prefix)
            if source not in tokenizer_files:
                # Numbered, not named: a prefix or a hub id is no file name.
                tokenizer_files[source] = Path(work) / f"tokenizer-{len(tokenizer_files)}.json"
                write_prefixed_tokenizer(folder / "tokenizer.json", tokenizer_files[source], config.text_prefix)
            tokenizer_file = tokenizer_files[source]
            # The n-gram head reads posts at the serving length, as the served graph does.
            serving = PostTokenizer(tokenizer_file, MAX_SEQ_LEN, encoder_pad_id(folder))
            if key not in states:
                # The frozen states are computed once per key; each variant after that trains on them.
                tokenizer = PostTokenizer(tokenizer_file, config.max_len, encoder_pad_id(folder))
                runner = frozen_runner(model, first, tokenizer, Path(work), config.threads)
                start = time.perf_counter()
                cached = CachedStates.compute(runner, tokenizer, texts, console)
                states[key] = _States(dict(zip(texts, cached.states, strict=True)))
                console.log(f"frozen states for {len(texts):,} sentences: {time.perf_counter() - start:.0f} s")
            rows = training_rows(config, train)
            start = time.perf_counter()
            train_upper(model, states[key].cache([r.text for r in rows]), [r.label for r in rows], config, console)
            if config.ngrams is not None:
                fit_ngrams(model, serving, rows, config.ngrams)
            result = {
                "variant": name,
                "overrides": overrides,
                "rows": len(rows),
                "train_s": round(time.perf_counter() - start, 1),
                "validation": _score(model, first, states[key], validation, serving),
                "baselines": baselines,
            }
            console.log(result)
            results.append(result)
    return results


def _score(
    model: Any, first: int, states: _States, validation: dict[str, list[LabelledText]], serving: PostTokenizer
) -> dict[str, Any]:
    import torch

    from models.evaluate import restricted_report
    from models.ngrams import WideAndDeepModel
    from models.train import encode

    scores: dict[str, Any] = {}
    with torch.no_grad():
        for lang, rows in validation.items():
            cache = states.cache([r.text for r in rows])
            logits = torch.cat(
                [
                    model.sentiment(upper_pooled(model, *cache.batch(range(s, min(s + 64, len(rows)))), first))
                    for s in range(0, len(rows), 64)
                ]
            )
            if isinstance(model, WideAndDeepModel):
                logits = logits + model.ngrams(*encode(serving, [r.text for r in rows]))
            report = restricted_report([r.label for r in rows], logits.numpy(), labels_of(lang))  # type: ignore[arg-type]
            scores[lang] = {key: report[key] for key in ("accuracy", "macro_f1", "test_size")}
    return scores
