#!/usr/bin/env bash
# One prepared GPU check (bench/gpu_check.py; docs/benchmarks.md, "GPU check"), run from the
# repository root of a fresh checkout:
#   bash bench/gpu_check.sh            # on a single-GPU machine: at most 8 minutes
#   bash bench/gpu_check.sh --smoke    # every part at toy sizes on the CPU, under a minute
# Further arguments go to bench/gpu_check.py (--out FILE.json, --workdir DIR).
#
# The Python environment, first that works:
#   1. RSFM_PYTHON=/path/to/python, used as it is;
#   2. the active interpreter or .venv, when it already imports everything the check needs;
#   3. launch/setup_env.sh (as launch/test.sh): Python 3.11, and pip reaching PyPI or a local wheel
#      folder, installs setup.py's pins into .venv; PyPI's torch 2.14.1 for Linux x86-64 is the
#      CUDA build;
#   4. a machine image that has CUDA PyTorch but no registry (python3 imports torch): a venv over
#      the image's packages (--system-site-packages, so its CUDA torch is used as it is), the
#      project installed without dependencies, and the wheels in ./.whl (if any) installed with
#      --no-index for what the image lacks (deepspeed, webdataset, ...).
# The check itself downloads nothing: its data come from the project's synthetic generators.
set -euo pipefail
cd "$(dirname "$0")/.."

NEEDS="import torch, torchvision, cv2, deepspeed, webdataset, timm, yaml, rsfm_ds.engine.finetune, rsfm_ds.data.pretrain.loader"

_works() { [ -n "$1" ] && "$1" -c "$NEEDS" >/dev/null 2>&1; }

PY="${RSFM_PYTHON:-}"
if [ -z "$PY" ]; then
  for candidate in "${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python}" .venv/bin/python .venv-gpu/bin/python; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && _works "$candidate"; then PY="$candidate"; break; fi
  done
fi
if [ -z "$PY" ] && { command -v python3.11 >/dev/null 2>&1 || [ -n "${PYTHON:-}" ]; }; then
  echo "[gpu_check] setting up .venv with launch/setup_env.sh"
  # shellcheck disable=SC1091
  if (source launch/setup_env.sh) && _works .venv/bin/python; then PY=.venv/bin/python; fi
fi
if [ -z "$PY" ] && command -v python3 >/dev/null 2>&1 && python3 -c "import torch" 2>/dev/null; then
  echo "[gpu_check] using the machine's PyTorch ($(python3 -c 'import torch; print(torch.__version__)')) in .venv-gpu"
  [ -x .venv-gpu/bin/python ] || python3 -m venv --system-site-packages .venv-gpu
  if compgen -G ".whl/*.whl" >/dev/null; then
    .venv-gpu/bin/python -m pip install -q --no-index --no-deps --find-links .whl .whl/*.whl
  fi
  .venv-gpu/bin/python -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
    || echo "[gpu_check] could not install the project into .venv-gpu; importing it from the checkout"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  if _works .venv-gpu/bin/python; then PY=.venv-gpu/bin/python; fi
fi
if [ -z "$PY" ]; then
  echo "[gpu_check] no Python environment imports what the check needs ($NEEDS)." >&2
  echo "[gpu_check] set RSFM_PYTHON, or put the missing wheels in ./.whl." >&2
  exit 2
fi
echo "[gpu_check] python: $PY"
exec "$PY" bench/gpu_check.py "$@"
