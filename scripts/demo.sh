#!/usr/bin/env bash
# The main job from a fresh clone: set everything up (cached), then the live demo.
# Extra arguments go to `socialpulse demo` (e.g. --rate 300).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/socialpulse demo "$@"
