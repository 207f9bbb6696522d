#!/usr/bin/env bash
# Create (idempotently) the Python virtualenv used to run pytest suites and
# the plugin parity test.
#
#   scripts/venv.sh [DIR]            pytest 9 (the current release), DIR defaults to .venv
#   scripts/venv.sh --pytest8 [DIR]  pytest 8 (the oldest release the tests run against),
#                                    DIR defaults to .venv-pytest8
#
# Relative DIRs are taken relative to the current directory. The path of the
# venv's python is printed on the last line of stdout. Fast no-op when the
# venv already exists with the wanted pytest major version; a venv with
# another major version is upgraded or downgraded in place.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MAJOR=9
DEFAULT_DIR="$ROOT/.venv"
if [ "${1:-}" = "--pytest8" ]; then
    MAJOR=8
    DEFAULT_DIR="$ROOT/.venv-pytest8"
    shift
fi
DIR="${1:-$DEFAULT_DIR}"
PYTHON3="${PYTHON3:-python3}"
PYTEST_SPEC="pytest>=$MAJOR,<$((MAJOR + 1))"

mkdir -p "$(dirname "$DIR")"
DIR="$(cd "$(dirname "$DIR")" && pwd)/$(basename "$DIR")"
PY="$DIR/bin/python"

# pytest-rerunfailures: the tests check that its reruns are counted flaky.
has_pytest() {
    "$PY" -c "import sys, pytest, pytest_rerunfailures; sys.exit(int(pytest.__version__.split('.')[0]) != $MAJOR)" >/dev/null 2>&1
}

# Wheels of pytest (and its dependencies) and setuptools, for the job
# environment tests (tests/tests/environments.rs): they build venvs offline
# with `--no-index --find-links $DIR/wheelhouse`.
WHEELHOUSE="$DIR/wheelhouse"
fill_wheelhouse() {
    if [ ! -f "$WHEELHOUSE/.complete" ]; then
        echo "venv.sh: downloading wheels for job environment tests into $WHEELHOUSE" >&2
        "$PY" -m pip download --disable-pip-version-check --quiet --only-binary :all: \
            --dest "$WHEELHOUSE" "$PYTEST_SPEC" setuptools wheel >&2
        touch "$WHEELHOUSE/.complete"
    fi
}

if [ -x "$PY" ] && has_pytest; then
    fill_wheelhouse
    echo "$PY"
    exit 0
fi

if [ ! -x "$PY" ]; then
    echo "venv.sh: creating venv in $DIR" >&2
    # A half-made venv (e.g. an interrupted earlier run) is recreated.
    "$PYTHON3" -m venv --clear "$DIR" >&2
fi

echo "venv.sh: installing $PYTEST_SPEC pytest-rerunfailures in $DIR" >&2
"$PY" -m pip install --disable-pip-version-check --quiet "$PYTEST_SPEC" pytest-rerunfailures >&2

has_pytest || { echo "venv.sh: pytest $MAJOR or pytest-rerunfailures is not importable by $PY" >&2; exit 1; }
fill_wheelhouse
echo "$PY"
