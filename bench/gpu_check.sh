#!/usr/bin/env bash
# One script for a lent GPU machine (torch with CUDA, triton, nvcc, ninja; no internet).
#
#   bench/gpu_check.sh [all|info|build|cmake|test|bench]...      (default: all, in that order)
#
# Stages (each can run on its own, e.g. one per call where a call has a time limit; the in-place build
# is reused by later stages):
#   info   date, git commit, nvidia-smi, python / torch / triton / nvcc versions      -> $OUT/info.txt
#   build  FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 python3 setup.py build_ext --inplace  -> $OUT/build.log
#   cmake  the torch-free CUDA kernels and header test through CMake/ctest; with a GPU present the
#          cuda_kernels test really runs the kernels against a host loop              -> $OUT/ctest.log
#   test   python3 -m pytest: tests/test_cuda.py first, then the rest of tests/          -> $OUT/tests.log
#   bench  python3 -m bench --device cuda (skipped, with a note, if bench/ has no CLI)  -> $OUT/bench.md
# A line per stage (ok / FAILED rc / skipped) goes to $OUT/summary.txt; the exit status is non-zero if
# any stage failed.
#
# Environment: OUT (default bench/results/gpu-check-<date>), PYTHON (default python3),
# TORCH_CUDA_ARCH_LIST (default 9.0), MAX_JOBS (default: number of cores), PYTEST_ARGS (extra pytest args).
set -u
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
STAMP=$(date -u +%Y%m%d-%H%M%S)
OUT=${OUT:-bench/results/gpu-check-$STAMP}
mkdir -p "$OUT"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc 2>/dev/null || echo 4)}
FAILED=0

note() { echo "$1" | tee -a "$OUT/summary.txt"; }

# run_stage NAME LOG CMD...: runs CMD with stdout+stderr in LOG, records the outcome.
run_stage() {
  local name=$1 log=$2
  shift 2
  local t0=$SECONDS
  echo "== $name: $*" >"$log"
  "$@" >>"$log" 2>&1
  local rc=$?
  if [ $rc -eq 0 ]; then
    note "$name: ok ($((SECONDS - t0)) s)"
  else
    note "$name: FAILED rc=$rc ($((SECONDS - t0)) s), see $(basename "$log")"
    FAILED=1
  fi
  return $rc
}

stage_info() {
  {
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: ${HSU_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
    if ! git diff --quiet HEAD 2>/dev/null; then echo "working tree: modified"; fi
    echo "host: $(uname -a)"
    "$PYTHON" - <<'EOF'
import sys
import torch
print("python:", sys.version.split()[0])
print("torch:", torch.__version__, "cuda:", torch.version.cuda)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device:", p.name, f"sm_{p.major}{p.minor}", f"{p.multi_processor_count} SMs", f"{p.total_memory / 2**30:.1f} GiB")
try:
    import triton
    print("triton:", triton.__version__)
except ImportError:
    print("triton: not installed")
EOF
    echo "--- nvcc"
    nvcc --version 2>&1 | tail -2 || echo "nvcc: not found"
  } >"$OUT/info.txt" 2>&1
  nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed" >>"$OUT/nvidia-smi.txt"
  git rev-parse HEAD >"$OUT/commit.txt" 2>/dev/null || echo "${HSU_COMMIT:-unknown}" >"$OUT/commit.txt"
  date -u +%Y-%m-%dT%H:%M:%SZ >"$OUT/date.txt"
  note "info: ok"
}

stage_build() {
  run_stage build "$OUT/build.log" env FORCE_CUDA=1 "$PYTHON" setup.py build_ext --inplace || return
  run_stage "build (CUDA kernel registered)" "$OUT/build_check.log" "$PYTHON" -c "
import hsu_kernels._ext as e
assert e.available(), e.load_error()
assert e.has_cuda_kernel(), 'extension built without the CUDA kernel'
print('hsu_kernels._C loaded with the CUDA kernel')"
}

stage_cmake() {
  if ! command -v cmake >/dev/null 2>&1; then
    note "cmake: skipped (cmake not found)"
    return
  fi
  local archs=${TORCH_CUDA_ARCH_LIST//./}
  archs=${archs//+PTX/}
  archs=${archs// /;}
  local gen=()
  command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
  run_stage cmake "$OUT/ctest.log" bash -c "
    cmake -S . -B _build_cmake_gpu ${gen[*]} -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES='$archs' &&
    cmake --build _build_cmake_gpu -j $MAX_JOBS &&
    ctest --test-dir _build_cmake_gpu --output-on-failure -V"
}

stage_test() {
  # shellcheck disable=SC2086
  run_stage "test (tests/test_cuda.py)" "$OUT/tests_cuda.log" "$PYTHON" -m pytest tests/test_cuda.py -q -rs \
    -p no:cacheprovider ${PYTEST_ARGS:-}
  # shellcheck disable=SC2086
  run_stage "test (rest of tests/)" "$OUT/tests_rest.log" "$PYTHON" -m pytest tests -q -rs -p no:cacheprovider \
    --ignore=tests/test_cuda.py ${PYTEST_ARGS:-}
  cat "$OUT/tests_cuda.log" "$OUT/tests_rest.log" >"$OUT/tests.log"
}

stage_bench() {
  if ! "$PYTHON" -c "import bench.cli" >/dev/null 2>&1; then
    note "bench: skipped (no bench CLI: python3 -m bench is not there yet)"
    return
  fi
  run_stage bench "$OUT/bench.log" "$PYTHON" -m bench --device cuda --out "$OUT/bench.md"
  if [ ! -s "$OUT/bench.md" ]; then
    # an older CLI without --out: keep its printed table
    cp "$OUT/bench.log" "$OUT/bench.md"
  fi
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(all)
for st in "${stages[@]}"; do
  case $st in
    all) stage_info; stage_build && { stage_cmake; stage_test; stage_bench; } ;;
    info) stage_info ;;
    build) stage_build ;;
    cmake) stage_cmake ;;
    test) stage_test ;;
    bench) stage_bench ;;
    *) echo "unknown stage: $st (all|info|build|cmake|test|bench)" >&2; exit 2 ;;
  esac
done
echo "results in $OUT"
exit $FAILED
