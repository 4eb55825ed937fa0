#!/usr/bin/env bash
# Set up everything the project needs, idempotently, and link it as ./.venv.
#
# - a virtual environment kept between runs and clones in $BORT_VENV
#   (default ~/.cache/bort/venv); dependencies are reinstalled only when the requirement
#   files change;
# - MXNet (CPU wheel), GluonNLP, numpy 1.23.5 and the rest of requirements.txt, the [hf] extra
#   (torch + transformers), and this package in editable mode;
# - Horovod 0.28.1 built against MXNet with Gloo (about 5 minutes on 2 cores), its wheel cached
#   in $BORT_CACHE/wheels so later set-ups install it in seconds.
# On a CUDA machine set BORT_GPU=1: it installs mxnet-cu110 and builds Horovod with NCCL.
set -euo pipefail
cd "$(dirname "$0")/.."
BORT_CACHE=${BORT_CACHE:-$HOME/.cache/bort}
BORT_VENV=${BORT_VENV:-$BORT_CACHE/venv}
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" - <<'PY'
import sys
if sys.version_info[:2] > (3, 11) or sys.version_info[:2] < (3, 8):
    sys.exit(f'Python {sys.version.split()[0]}: the project needs 3.8-3.11 (numpy 1.23.5 '
             'has no wheel for newer Pythons)')
PY
mkdir -p "$BORT_CACHE/wheels"
if [ ! -x "$BORT_VENV/bin/python" ]; then
  echo "[setup] creating $BORT_VENV"
  "$PYTHON" -m venv "$BORT_VENV"
  "$BORT_VENV/bin/pip" install -q --upgrade pip wheel setuptools
fi
PIP="$BORT_VENV/bin/pip"
stamp="$BORT_VENV/.bort-requirements"
want=$(cat requirements.txt requirements-hf.txt setup.py | sha256sum | cut -d' ' -f1)-${BORT_GPU:-0}
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing requirements"
  reqs=(-r requirements.txt -r requirements-hf.txt)
  if [ "${BORT_GPU:-0}" = 1 ]; then
    sed 's/^mxnet==/mxnet-cu110==/' requirements.txt > "$BORT_CACHE/requirements-gpu.txt"
    reqs=(-r "$BORT_CACHE/requirements-gpu.txt" -r requirements-hf.txt)
  fi
  "$PIP" install -q "numpy==1.23.5" "${reqs[@]}" Cython
  echo "$want" > "$stamp"
fi
# The venv outlives checkouts: point its editable install at this one.
here=$(pwd -P)
installed=$(cd / && "$BORT_VENV/bin/python" -c 'import bort, os; print(os.path.dirname(os.path.dirname(os.path.realpath(bort.__file__))))' 2>/dev/null || true)
if [ "$installed" != "$here" ]; then
  "$PIP" install -q --no-deps -e .
fi
if ! "$BORT_VENV/bin/python" -c 'import horovod.mxnet' 2>/dev/null; then
  wheel=$(ls "$BORT_CACHE"/wheels/horovod-0.28.1-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$wheel" ]; then
    echo "[setup] building Horovod 0.28.1 against MXNet (Gloo); about 5 minutes"
    gpu_flags=()
    [ "${BORT_GPU:-0}" = 1 ] && gpu_flags=(HOROVOD_GPU_OPERATIONS=NCCL)
    env HOROVOD_WITH_MXNET=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 \
        HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 "${gpu_flags[@]}" \
        "$PIP" wheel -q --no-build-isolation --no-cache-dir --no-deps \
        -w "$BORT_CACHE/wheels" horovod==0.28.1
    wheel=$(ls "$BORT_CACHE"/wheels/horovod-0.28.1-*.whl | head -n1)
  fi
  "$PIP" install -q --no-deps "$wheel" cloudpickle psutil pyyaml packaging
fi
ln -sfn "$BORT_VENV" .venv
echo "[setup] ready: $(.venv/bin/python -c 'import mxnet, gluonnlp, numpy, horovod; print(f"mxnet {mxnet.__version__}, gluonnlp {gluonnlp.__version__}, numpy {numpy.__version__}, horovod {horovod.__version__}")')"
