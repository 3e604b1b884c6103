#!/usr/bin/env bash
# One-shot developer setup from a fresh clone; idempotent, and a re-run takes seconds.
#
#   .venv/          python3 -m venv + uv, then `uv pip install -e '.[train,dev]'` (skipped while
#                   pyproject.toml is unchanged since the last successful install)
#   .cache/kafka/   broker jars via deploy/kafka/kafka.sh fetch (Maven, cached in ~/.m2)
#   .cache/models/  the default and the multilingual model via `socialpulse models build [--recipe
#                   multilingual]` (cached by build key and per user, so re-runs are cheap); the worker
#                   routes English to the first and the other languages the second declares to it
#
# Environment: SOCIALPULSE_PYTHON picks the interpreter for the venv (default python3, needs 3.11 or 3.12).
# Runs non-interactively (CI=true, no stdin needed).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

PYTHON="${SOCIALPULSE_PYTHON:-python3}"
VENV="$REPO_ROOT/.venv"
STAMP="$VENV/.socialpulse-install"

step() { echo "setup: $*"; }
die() {
    echo "setup: error: $*" >&2
    exit 1
}

t_start=$SECONDS

if [[ ! -x "$VENV/bin/python" ]]; then
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found (set SOCIALPULSE_PYTHON)"
    "$PYTHON" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 13)))' ||
        die "$PYTHON is $("$PYTHON" -V 2>&1); socialpulse needs Python 3.11 or 3.12 (set SOCIALPULSE_PYTHON)"
    step "creating .venv with $("$PYTHON" -V 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi

if [[ ! -x "$VENV/bin/uv" ]]; then
    step "installing uv into .venv"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input uv
fi

# The install is editable, so only a dependency change (pyproject.toml) calls for a new one.
want_stamp="$(sha256sum pyproject.toml | cut -d' ' -f1) train,dev"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" && -x "$VENV/bin/socialpulse" ]]; then
    step "python deps up to date"
else
    step "installing socialpulse[train,dev] with uv (first run downloads torch; later runs use uv's cache)"
    "$VENV/bin/uv" pip install --no-progress --python "$VENV/bin/python" -e '.[train,dev]'
    echo "$want_stamp" >"$STAMP"
fi

step "kafka jars"
deploy/kafka/kafka.sh fetch

step "default model"
"$VENV/bin/socialpulse" models build

# About 11 minutes and 8 GB of memory the first time on 2 quiet cores (models/MODEL_CARD.md).
step "multilingual model"
"$VENV/bin/socialpulse" models build --recipe multilingual

step "done in $((SECONDS - t_start))s; activate with: source .venv/bin/activate"
