#!/usr/bin/env bash
# Create (idempotently) the Python virtualenv used to run pytest suites and
# the plugin parity test.
#
#   scripts/venv.sh [DIR]
#
# DIR defaults to .venv at the repository root (relative DIRs are taken
# relative to the current directory). The path of the venv's python is
# printed on the last line of stdout. Fast no-op when the venv already
# exists and pytest is importable in it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-$ROOT/.venv}"
PYTHON3="${PYTHON3:-python3}"
PYTEST_SPEC='pytest>=7,<9'

mkdir -p "$(dirname "$DIR")"
DIR="$(cd "$(dirname "$DIR")" && pwd)/$(basename "$DIR")"
PY="$DIR/bin/python"

if [ -x "$PY" ] && "$PY" -c 'import pytest' >/dev/null 2>&1; then
    echo "$PY"
    exit 0
fi

if [ ! -x "$PY" ]; then
    echo "venv.sh: creating venv in $DIR" >&2
    # A half-made venv (e.g. an interrupted earlier run) is recreated.
    "$PYTHON3" -m venv --clear "$DIR" >&2
fi

echo "venv.sh: installing $PYTEST_SPEC" >&2
"$PY" -m pip install --disable-pip-version-check --quiet "$PYTEST_SPEC" >&2

"$PY" -c 'import pytest' >&2
echo "$PY"
