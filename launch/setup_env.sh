#!/usr/bin/env bash
# Source this file: creates .venv (Python 3.11) on first use, installs rsfm-ds with its test extras
# when setup.py changed since the last install, and activates the environment.
# Variables: PYTHON (interpreter to build the venv from), VENV (its path, default .venv).
_rsfm_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$_rsfm_root/.venv}"

_rsfm_find_python() {
  for candidate in "${PYTHON:-}" python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 && \
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "rsfm-ds needs Python 3.11 (set PYTHON=/path/to/python3.11)" >&2
  return 1
}

if [ ! -x "$VENV/bin/python" ]; then
  _py="$(_rsfm_find_python)" || return 1 2>/dev/null || exit 1
  echo "[setup] creating virtual environment $VENV with $_py"
  "$_py" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"

_stamp="$VENV/.rsfm-installed"
_want="$(cat "$_rsfm_root/setup.py" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$_stamp" ] || [ "$(cat "$_stamp")" != "$_want" ]; then
  echo "[setup] installing rsfm-ds and its dependencies into $VENV (first run: a few minutes)"
  python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
  python -m pip install --quiet -e "$_rsfm_root[dev]"
  echo "$_want" > "$_stamp"
fi
unset _rsfm_root _stamp _want _py
