#!/usr/bin/env bash
# The GPU measurements still open (issue 20's dense-prediction table, issue 18's "where the train
# step's compile goes") as one command for a lent device machine, sized for its 15 minutes.
#
# The device machine reaches no package registry, and its image has torch, timm, JAX, Flax and
# Optax but not MIT's reference code. So, here first (the wheels are 144 kB, pinned by hash):
#
#   pip download --no-deps -r tests/reference-requirements.txt -d benchmarks/results/wheels
#
# then, through the device tool, carrying benchmarks/results/wheels:
#
#   OUT=$OUT bash benchmarks/gpu_session.sh
#
# QUICK=1 runs the same steps at smoke-test sizes (any machine; PYTHON=.venv/bin/python here).
# Each benchmark writes its rows as it measures them, and runs under its own time limit (together
# under the device tool's 600 s a command, install included), so a session cut short keeps what
# was measured.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
PY=${PYTHON:-python3}
WHEELS=benchmarks/results/wheels
DEPS=$(mktemp -d)
trap 'rm -rf "$DEPS"' EXIT

if ! ls "$WHEELS"/*.whl > /dev/null 2>&1; then
    echo "gpu_session: no wheels in $WHEELS (see the top of this file)" >&2
    exit 2
fi
# MIT's code without its declared dependencies (the parity tests install it the same way).
"$PY" -m pip install -q --no-deps --no-index --target "$DEPS" "$WHEELS"/*.whl || exit 2
export PYTHONPATH="$DEPS:$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import jax, torch; print('jax', jax.__version__, jax.devices(), '| torch', torch.__version__)"

if [[ "${QUICK:-0}" == 1 ]]; then
    dense=(--quick --no-compile --budget-s 120)
    compile=(--quick)
else
    dense=(--budget-s 260)
    compile=(--models efficientvit_b1)
fi
timeout 330 "$PY" benchmarks/gpu_dense_bench.py --out "$OUT/gpu_dense" "${dense[@]}"
echo "gpu_dense_bench exit $?"
timeout 210 "$PY" benchmarks/compile_bench.py --out "$OUT/compile_gpu.json" "${compile[@]}"
echo "compile_bench exit $?"
