#!/usr/bin/env bash
# On a machine with a CUDA GPU, CuPy and Numba: the CUDA tests on the real GPU, then the GPU
# benchmark. Logs and JSON go to ${OUT:-benchmarks/out}.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import numba, cupy, dask, numpy; print('numba', numba.__version__, 'cupy', cupy.__version__, 'dask', dask.__version__, 'numpy', numpy.__version__)"
python3 -c "import dask_vecops as dv; print(dv.backends())"
timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -q -p no:cacheprovider --maxfail=15 --durations=10 \
    tests/test_cuda.py tests/test_numba_kernels.py 2>&1 | tee "$out/gpu-tests.log" | tail -60
timeout "${BENCH_TIMEOUT:-240}" python3 benchmarks/gpu.py --json "$out/gpu.json" "$@" 2>&1 | tee "$out/gpu-bench.log"
