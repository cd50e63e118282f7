#!/usr/bin/env bash
# The one device call: check every Triton kernel compiled on the GPU against the reference
# backend, then time dlc against PyTorch (benchmarks/gpu_bench.py). Run from the repository
# root on the lent GPU machine (its own torch and triton; no network):
#
#     bash benchmarks/gpu_run.sh            # writes $OUT/kernels.txt, $OUT/bench.json
#
# Each part has its own time limit so that one slow part cannot eat the others; the
# whole call stays under ~9 minutes. Prove it here first with `--dry` (CPU, interpreter).
#
# The GPU image has torch, triton, numpy, pyyaml, safetensors, scikit-learn and pytest but
# not lark: carry its wheel (device README: `pip download --no-deps --only-binary=:all:
# --python-version 3.12 ... -d .whl lark==1.2.2`, then `carry: [".whl"]`); this script
# installs .whl/*.whl into /tmp/site. dlc itself is put on the path through a folder of
# links that mirrors the installed package layout (dlc/, dlc/spec, dlc/compiler, ...).
set -u
OUT=${OUT:-/tmp/dlc-gpu}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
SHIM=$(mktemp -d)
mkdir -p "$SHIM/dlc"
for f in dlc/*.py; do ln -s "$(pwd)/$f" "$SHIM/dlc/"; done
for d in spec compiler runtime; do ln -s "$(pwd)/$d" "$SHIM/dlc/$d"; done
export PYTHONPATH="$SHIM:${PYTHONPATH:-}"
python3 -c "import dlc, dlc.compiler.plan, lark; print('dlc from', dlc.__file__)" || exit 1
if [ "${1:-}" = "--dry" ]; then
    TRITON_INTERPRET=1 timeout 300 python3 -m pytest -q -x tests/kernels/test_elementwise.py \
        tests/kernels/test_matmul.py 2>&1 | tail -3 | tee "$OUT/kernels.txt"
    timeout 300 python3 benchmarks/gpu_bench.py --dry --json "$OUT/bench.json" | tail -25
    exit 0
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
    | tee -a "$OUT/gpu.txt"
echo "== kernels compiled on the GPU vs the reference backend (fp32, TF32 off)"
TRITON_INTERPRET=0 DLC_TEST_DEVICE=cuda timeout 200 python3 -m pytest -q -p no:cacheprovider \
    tests/kernels 2>&1 | tail -15 | tee "$OUT/kernels.txt"
echo "== training steps on the GPU vs the reference trajectory"
TRITON_INTERPRET=0 DLC_TEST_DEVICE=cuda timeout 90 python3 -m pytest -q -x -p no:cacheprovider \
    tests/runtime/test_triton_train.py -k "steps_match" 2>&1 | tail -8 | tee "$OUT/train.txt"
echo "== benchmark"
timeout 330 python3 benchmarks/gpu_bench.py --json "$OUT/bench.json" 2>"$OUT/bench.err" | tail -40
tail -5 "$OUT/bench.err"
