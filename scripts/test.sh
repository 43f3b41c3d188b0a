#!/usr/bin/env bash
# The test command (README quickstart, .ci/run): venv + deps + ruff + mypy + pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${OSS_CALLBACK_TEST_VENV:-.venv-test}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[dev]'
echo "== ruff"
"$VENV/bin/ruff" check oss_callback tests benchmarks noxfile.py
echo "== mypy --strict"
"$VENV/bin/mypy" oss_callback
echo "== pytest"
"$VENV/bin/python" -m pytest -m "not soak" "$@"
