#!/usr/bin/env bash
# Everything a lent GPU machine should run, in one call of about 8 minutes (the lease is short), with the
# machine's own python3 / torch / triton / nvcc / cmake and no internet:
#
#   OUT=/some/dir bash bench/gpu_check.sh              on a machine with a GPU
#   OUT=/some/dir bash bench/gpu_check.sh --dry-run    without one: the build and every set-up runs, each GPU
#                                                      stage is skipped with its reason after checking its
#                                                      command (pytest --collect-only, the bench arguments);
#                                                      `make cuda-check` runs this
#
# Stages (each under a time limit, GPU_CHECK_LIMIT_<STAGE> seconds to change; the whole run stays within
# GPU_CHECK_BUDGET, default 480 s, as far as the limits allow):
#   info     date, commit, device, python / torch / triton / nvcc versions, nvidia-smi
#   aot      (in the background) python tools/triton_aot.py --kind angular: registers, spills and
#            occupancy of the angular kind's Triton configs for sm_90 and sm_80 with the machine's own Triton,
#            reported, not a failure (the spill
#            gate is `make triton-aot-check`, with the Triton of make test's venv; triton 3.8.0 spills a few
#            bytes in configs that 3.9.0 fits) (dry run: --quick, one config per kernel)
#   build    FORCE_CUDA=1 python setup.py build_ext --inplace for the device's architecture (against the
#            python's own torch, as `make test PYTHON=python3` builds), then the ops' CUDA kernels are
#            registered (dry run: an extension already in place is kept, and checked)
#   cmake    (in the background) CMake + ctest: the torch-free CUDA kernels against a host loop on the GPU
#            (dry run: the configure step only)
#   tests    at once: tests/test_cuda.py, tests/test_triton.py on the GPU (the compiler, not the
#            interpreter), and the rest of tests/, with pytest-xdist when it is installed
#   bench    python -m bench --device cuda --preset quick, then the full GPU preset with the time left
#
# Files in $OUT (a lent machine returns at most 8): summary.txt (versions and one line per stage: ok,
# FAILED, TIMED OUT or skipped with the reason), build.log, tests.log, bench.md, bench-gpu.md,
# triton-ptxas.md, logs.tar.gz (every stage's own log). The exit status is non-zero if a stage failed or
# a promised file is missing.
#
# Environment: OUT (default bench/results/gpu-check-<date>), PYTHON (default python3), TORCH_CUDA_ARCH_LIST
# (default: the GPU's own; dry run "8.0;9.0"), MAX_JOBS (default: the number of cores), PYTEST_ARGS,
# HSU_COMMIT (the commit to record where the tree has no .git).
set -u
# The whole script is one function, read before it runs: editing this file during a run cannot change it.
main() {
if [ -n "${OUT:-}" ]; then  # relative to where the script was called from
  mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
fi
cd "$(dirname "$0")/.."

DRY=0
if [ "${1:-}" = "--dry-run" ]; then
  DRY=1
  shift
fi
if [ $# -gt 0 ]; then
  echo "usage: bash bench/gpu_check.sh [--dry-run]" >&2
  exit 2
fi

PYTHON=${PYTHON:-python3}
OUT=${OUT:-bench/results/gpu-check-$(date -u +%Y%m%d-%H%M%S)}
LOGS=$OUT/logs
PROMISED="summary.txt build.log tests.log bench.md bench-gpu.md triton-ptxas.md logs.tar.gz"
mkdir -p "$LOGS"
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
BUDGET=${GPU_CHECK_BUDGET:-480}
CORES=$(nproc 2>/dev/null || echo 4)
export MAX_JOBS=${MAX_JOBS:-$CORES}
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET  # a GPU runs Triton's compiler; the interpreter is for machines without one
T0=$SECONDS
FAILED=0

note() { echo "$1" | tee -a "$SUMMARY"; }
limit() { local v="GPU_CHECK_LIMIT_$1"; echo "${!v:-$2}"; }

# run_stage NAME LIMIT LOG CMD...: CMD under `timeout LIMIT`, output appended to LOG, one line in summary.txt.
run_stage() {
  local name=$1 lim=$2 log=$3
  shift 3
  local t=$SECONDS rc
  echo "== $name (limit $lim s): $*" >>"$log"
  timeout --kill-after=15 "$lim" "$@" >>"$log" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then
    note "$name: ok ($((SECONDS - t)) s)"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    note "$name: TIMED OUT after $lim s, see logs/$(basename "$log")"
  else
    note "$name: FAILED rc=$rc ($((SECONDS - t)) s), see logs/$(basename "$log")"
  fi
  return $rc
}
skip() { note "$1: skipped ($2)"; }

# ---- is there a GPU? ---------------------------------------------------------------------------------------
NO_GPU=$("$PYTHON" - 2>&1 <<'EOF'
import torch
if torch.version.cuda is None:
    print(f"torch {torch.__version__} is not a CUDA build")
elif not torch.cuda.is_available():
    print(f"torch {torch.__version__}: torch.cuda.is_available() is False, no GPU here")
EOF
) || NO_GPU="python cannot import torch: $NO_GPU"
if [ $DRY = 1 ]; then
  WHY="dry run${NO_GPU:+: $NO_GPU}"
  ARCHS=${TORCH_CUDA_ARCH_LIST:-8.0;9.0}
elif [ -n "$NO_GPU" ]; then
  note "no GPU: $NO_GPU (on a machine without one, run bash bench/gpu_check.sh --dry-run)"
  exit 2
else
  ARCHS=${TORCH_CUDA_ARCH_LIST:-$("$PYTHON" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")}
fi
export TORCH_CUDA_ARCH_LIST=$ARCHS

# ---- info ----------------------------------------------------------------------------------------------------
{
  echo "# bench/gpu_check.sh$([ $DRY = 1 ] && echo " --dry-run")"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: ${HSU_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
  git diff --quiet HEAD 2>/dev/null || echo "working tree: modified (or no git here)"
  echo "host: $(uname -srm), $CORES cores, load $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"
  "$PYTHON" - <<'EOF' 2>&1
import sys

import torch

print("python:", sys.version.split()[0], sys.executable)
print("torch:", torch.__version__, "CUDA", torch.version.cuda)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device:", p.name, f"sm_{p.major}{p.minor}", f"{p.multi_processor_count} SMs", f"{p.total_memory / 2**30:.1f} GiB")
try:
    import triton

    print("triton:", triton.__version__)
except ImportError:
    print("triton: not installed")
EOF
  echo "nvcc: $(nvcc --version 2>/dev/null | tail -1 || echo not found)"
  echo "TORCH_CUDA_ARCH_LIST=$ARCHS MAX_JOBS=$MAX_JOBS"
  echo "--- nvidia-smi"
  nvidia-smi 2>&1 || echo "(nvidia-smi failed or is not installed)"
  echo "---"
} >>"$SUMMARY"
note "info: ok"

# ---- aot (background, started before the build so that its processes never import a half-written _C) -------
if [ $DRY = 1 ]; then
  AOT_ARGS=(--quick --jobs 1)
else
  # one kind (angular, normalized, ragged and uniform: 208 compiles): the full gate of every variant is
  # 1,590 compiles, CI's
  AOT_ARGS=(--jobs "$CORES" --kind angular)
fi
run_stage aot "$(limit AOT 240)" "$LOGS/aot.log" "$PYTHON" tools/triton_aot.py "${AOT_ARGS[@]}" \
  --out "$OUT/triton-ptxas.md" &
AOT_PID=$!

# ---- build ------------------------------------------------------------------------------------------------------
BUILD_OK=0
BUILT=0
if [ $DRY = 1 ] && compgen -G "hsu_kernels/_C*.so" >/dev/null; then
  # torch's ninja build always relinks and recompiles from a new folder: a dry run keeps what it is given
  skip build "dry run: an extension is already in place (make cuda-check puts its cached build there); \
delete hsu_kernels/_C*.so to build it"
  BUILT=1
elif run_stage build "$(limit BUILD 180)" "$LOGS/build.log" env FORCE_CUDA=1 "$PYTHON" setup.py build_ext --inplace; then
  BUILT=1
fi
if [ $BUILT = 1 ] && run_stage "build: CUDA kernels registered" 120 "$LOGS/build.log" "$PYTHON" -c "
import torch
import hsu_kernels
from hsu_kernels import _ext
assert _ext.available(), _ext.load_error()
for op in ('hsu::energy_grad', 'hsu::cross_energy_grad'):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(op, 'CUDA'), op + ' has no CUDA kernel'
print('both ops have CUDA kernels; backends for cuda tensors:', hsu_kernels.available_backends('cuda'))"; then
  BUILD_OK=1
else
  FAILED=1
fi

# ---- cmake / ctest (background) --------------------------------------------------------------------------------
CMAKE_ARCHS=$(echo "$ARCHS" | tr -d . | sed 's/+PTX//g; s/[ ,]/;/g')
CMAKE_CONF=(cmake -S . -B _build_cmake_gpu -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CUDA_ARCHITECTURES=$CMAKE_ARCHS")
command -v ninja >/dev/null 2>&1 && CMAKE_CONF+=(-G Ninja)
CMAKE_PID=
if ! command -v cmake >/dev/null 2>&1; then
  skip cmake "cmake not found"
elif [ $DRY = 1 ]; then
  (run_stage "cmake (configure only)" "$(limit CMAKE 240)" "$LOGS/ctest.log" "${CMAKE_CONF[@]}" &&
    skip "cmake build + ctest" "$WHY; make test's cmake-check builds them and runs the host tests") &
  CMAKE_PID=$!
else
  run_stage "cmake + ctest" "$(limit CMAKE 240)" "$LOGS/ctest.log" bash -c \
    "$(printf '%q ' "${CMAKE_CONF[@]}") && cmake --build _build_cmake_gpu -j $MAX_JOBS && ctest --test-dir _build_cmake_gpu --output-on-failure" &
  CMAKE_PID=$!
fi

# ---- tests -------------------------------------------------------------------------------------------------------
# shellcheck disable=SC2206
EXTRA=(${PYTEST_ARGS:-})
PYTEST=("$PYTHON" -m pytest -q -rs -p no:cacheprovider "${EXTRA[@]}")
XDIST=()
if "$PYTHON" -c "import xdist" >/dev/null 2>&1; then XDIST=(-n); fi
par() { [ ${#XDIST[@]} -gt 0 ] && echo "-n $1"; }
SEL_CUDA=(tests/test_cuda.py)
SEL_TRITON=(tests/test_triton.py)
SEL_REST=(tests --ignore=tests/test_cuda.py --ignore=tests/test_triton.py)
if [ $BUILD_OK = 0 ]; then
  skip tests "the build failed"
elif [ $DRY = 1 ]; then
  for sel in CUDA TRITON REST; do
    arr="SEL_$sel[@]"
    # exit status 5 is "no tests collected": a module that skips itself without a GPU, with its reason (-rs)
    run_stage "tests ($sel: collect only)" 300 "$LOGS/tests_$sel.log" bash -c '"$@"; rc=$?; exit $((rc == 5 ? 0 : rc))' \
      _ "${PYTEST[@]}" --collect-only "${!arr}" || FAILED=1
  done
  skip "tests (run)" "$WHY"
else
  TL=$(limit TESTS 240)
  # shellcheck disable=SC2046
  run_stage "tests: tests/test_cuda.py" "$TL" "$LOGS/tests_CUDA.log" "${PYTEST[@]}" $(par 2) "${SEL_CUDA[@]}" &
  P1=$!
  # shellcheck disable=SC2046
  run_stage "tests: tests/test_triton.py on the GPU" "$TL" "$LOGS/tests_TRITON.log" "${PYTEST[@]}" \
    $(par $((CORES / 2))) "${SEL_TRITON[@]}" &
  P2=$!
  # shellcheck disable=SC2046
  run_stage "tests: the rest of tests/" "$TL" "$LOGS/tests_REST.log" "${PYTEST[@]}" $(par 4) "${SEL_REST[@]}" &
  P3=$!
  for p in $P1 $P2 $P3; do wait "$p" || FAILED=1; done
fi
cat "$LOGS"/tests_*.log >"$OUT/tests.log" 2>/dev/null || echo "no test stage ran" >"$OUT/tests.log"

wait "$AOT_PID" || FAILED=1
[ -n "$CMAKE_PID" ] && { wait "$CMAKE_PID" || FAILED=1; }
[ -s "$OUT/triton-ptxas.md" ] || echo "the aot stage wrote no table: see logs/aot.log" >"$OUT/triton-ptxas.md"

# ---- bench ---------------------------------------------------------------------------------------------------------
BENCH_QUICK=(-m bench --device cuda --preset quick --out "$OUT/bench.md")
BENCH_GPU=(-m bench --device cuda --budget 0.5 --repeats 5 --out "$OUT/bench-gpu.md")
if [ $DRY = 1 ] || [ $BUILD_OK = 0 ]; then
  run_stage "bench (arguments only)" 120 "$LOGS/bench.log" "$PYTHON" -c "
import sys
from bench.cli import parse_args
argv = sys.argv[1:]
cut = argv.index('--')
for args in (argv[:cut], argv[cut + 1:]):
    assert args[:2] == ['-m', 'bench'], args
    print('arguments ok:', parse_args(args[2:]))" "${BENCH_QUICK[@]}" -- "${BENCH_GPU[@]}" || FAILED=1
  why=${WHY:-the build failed}
  skip bench "$why"
  echo "bench not run: $why" >"$OUT/bench.md"
  echo "bench not run: $why" >"$OUT/bench-gpu.md"
else
  run_stage "bench (quick preset)" "$(limit BENCH 120)" "$LOGS/bench.log" "$PYTHON" "${BENCH_QUICK[@]}" || FAILED=1
  left=$((BUDGET - (SECONDS - T0) - 20))
  if [ $left -ge 60 ]; then
    # the full preset is the measurement to keep when it fits; running out of time is not a failure
    run_stage "bench (gpu preset, $left s left)" "$left" "$LOGS/bench-gpu.log" "$PYTHON" "${BENCH_GPU[@]}"
    rc=$?
    [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $rc -ne 137 ] && FAILED=1
  else
    skip "bench (gpu preset)" "only $left s of the ${BUDGET} s budget left"
  fi
  [ -s "$OUT/bench.md" ] || echo "the quick bench wrote no table: see logs/bench.log" >"$OUT/bench.md"
  [ -s "$OUT/bench-gpu.md" ] || echo "the gpu-preset bench did not finish: see logs/bench-gpu.log" >"$OUT/bench-gpu.md"
fi

# ---- files ------------------------------------------------------------------------------------------------------
cat "$LOGS/build.log" "$LOGS/ctest.log" >"$OUT/build.log" 2>/dev/null
note "total: $((SECONDS - T0)) s"
tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$LOGS"
for f in $PROMISED; do
  [ -s "$OUT/$f" ] || { note "missing in \$OUT: $f"; FAILED=1; }
done
extra=$(cd "$OUT" && ls -A | grep -vxF -f <(tr ' ' '\n' <<<"$PROMISED"))
[ -z "$extra" ] || { note "unexpected in \$OUT (a lent machine returns 8 files at most): $extra"; FAILED=1; }
note "result: $([ $FAILED = 0 ] && echo ok || echo FAILED) (files in $OUT)"
exit $FAILED
}
main "$@"
