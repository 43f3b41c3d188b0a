#!/usr/bin/env bash
# The test command (README quickstart, .ci/run): nox's lint, typing and tests sessions
# (noxfile.py says what each runs, on which Pythons). Needs only a python3 (3.10+): nox goes
# into a private virtualenv, and each session makes its own under .nox/. Arguments go to
# pytest (then on every Python, without coverage).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${OSS_CALLBACK_NOX_VENV:-.venv-nox}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/nox" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check 'nox>=2025.2'
fi
exec "$VENV/bin/nox" -s lint typing tests -- "$@"
