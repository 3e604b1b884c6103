#!/usr/bin/env bash
# The whole test suite from a fresh clone: setup (cached), system packages the tests use, lint and
# types, unit tests, then integration tests against a real local Kafka that the session fixture starts.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
bash scripts/system-deps.sh

echo "test: ruff"
.venv/bin/ruff check stream models tests
.venv/bin/ruff format --check stream models tests
echo "test: mypy"
.venv/bin/mypy

echo "test: pytest"
set +e
HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -ra "$@"
status=$?
set -e
if [[ $status -eq 5 ]]; then
    echo "test: pytest collected no tests; that is a failure, not a pass" >&2
    exit 1
fi
exit $status
