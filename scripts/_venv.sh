# Sourced by the scripts here: make sure .venv exists with the project installed.
# $1: the extras to install (e.g. "all" or "test").
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${COURIER_PYFILTER_VENV:-$ROOT/.venv}"
EXTRAS="${1:-all}"
STAMP="$VENV/.installed-$EXTRAS"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e "$ROOT[$EXTRAS]"
    touch "$STAMP"
fi
