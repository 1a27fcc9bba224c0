#!/usr/bin/env bash
# `make cuda-check`: the CUDA half of the product, checked on a machine without a GPU.
#
#   1. a venv with a CUDA build of torch (torch==$CUDA_TORCH; on the CI machines this resolves to a CUDA 13
#      wheel through the package index pip is configured with there, so nothing is fetched from outside),
#   2. bench/gpu_check.sh --dry-run, whose build stage builds the extension from the CUDA sources for sm_80
#      and sm_90 (FORCE_CUDA=1, CUDA_HOME left to setup.py's discovery unless set); its GPU stages are
#      skipped with their reason, and every file it promises must be in its $OUT,
#   3. import: both ops (hsu::energy_grad, hsu::cross_energy_grad) have CPU and CUDA kernels in the
#      dispatch table,
#   4. cuobjdump (shipped in the Triton wheel) finds SASS for both architectures in the .so, and prints the
#      registers / stack / spills of the CUDA kernels,
#   5. the CPU suite's quick subset ($QUICK_TESTS, -k "$QUICK_K") under that torch.
#
# Everything runs in a throwaway copy of the tree (the clone's own in-place CPU build is left alone).
# Cached between runs, under ${HSU_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hsu-kernels}:
#   venv-cuda-<key>   the CUDA torch venv (~5.5 GB), keyed by the torch version, the packages and python3
#   build-cuda-<key>  the built .so, keyed by the contents of csrc/ and setup.py, the venv, the
#                     architectures and nvcc's version
# An entry is used only once complete (a .complete file is written last); entries of older keys are
# removed when a new one is made. HSU_CACHE_DIR=/some/dir to move it, HSU_NO_CACHE=1 to rebuild both.
set -euo pipefail
# The whole script is one function, read before it runs: editing this file during a run cannot change it.
main() {
cd "$(dirname "$0")/.."
ROOT=$PWD

CUDA_TORCH=${CUDA_TORCH:-2.14.1}
ARCHS="8.0;9.0"
PY3=${PY3:-python3}
PKGS="torch==$CUDA_TORCH numpy ninja pybind11 pytest setuptools wheel"
QUICK_TESTS="tests/test_energy.py tests/test_errors.py tests/test_regularizers.py tests/test_compile_model.py \
tests/test_cuda.py tests/test_setup_cuda_home.py tests/test_gpu_backends.py"
QUICK_K="not large_odd_n"
CACHE=${HSU_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hsu-kernels}
export MAX_JOBS=${MAX_JOBS:-2}

T_START=$SECONDS
phase() { echo; echo "== cuda-check [$((SECONDS - T_START)) s, load $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)]: $*"; }
hash_of() { sha256sum | cut -c1-16; }

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
if command -v flock >/dev/null 2>&1; then flock 9; fi  # one cuda-check at a time per cache

# ---- 1. the CUDA torch venv ---------------------------------------------------------------------------
VKEY=$(printf '%s\n' "$PKGS" "$("$PY3" -c 'import sys; print(sys.version)')" | hash_of)
VENV=$CACHE/venv-cuda-$VKEY
phase "venv $VENV"
if [ "${HSU_NO_CACHE:-0}" = 1 ] || [ ! -e "$VENV/.complete" ]; then
  rm -rf "$VENV"
  find "$CACHE" -maxdepth 1 -name 'venv-cuda-*' -exec rm -rf {} +
  "$PY3" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install -q $PKGS
  touch "$VENV/.complete"
else
  echo "reused (cached)"
fi
VPY=$VENV/bin/python
"$VPY" -c "import torch; assert torch.version.cuda, 'torch ' + torch.__version__ + ' is not a CUDA build'; \
print('torch', torch.__version__, 'CUDA', torch.version.cuda, '| GPU present:', torch.cuda.is_available())"
CUOBJDUMP=$("$VPY" -c "import os, triton; print(os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin', 'cuobjdump'))")
[ -x "$CUOBJDUMP" ] || { echo "cuobjdump not found at $CUOBJDUMP (it ships with the triton wheel)"; exit 1; }

# ---- the throwaway tree ----------------------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/hsu-cuda-check.XXXXXX")
if [ "${KEEP_WORK:-0}" != 1 ]; then trap 'rm -rf "$WORK"' EXIT; fi
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$f" ] && printf '%s\0' "$f"
done | tar -cf - --null -T - | tar -xf - -C "$WORK"
echo "tree copied to $WORK"

# ---- 2. the CUDA build, by bench/gpu_check.sh --dry-run -------------------------------------------------
# The dry run's build stage is the command a GPU machine runs (FORCE_CUDA=1 setup.py build_ext --inplace);
# its other stages check their commands without a GPU. A cached build is put in place, where the dry run
# keeps it (torch's ninja build would recompile everything in a new folder).
BKEY=$( { cd "$ROOT" && find csrc setup.py -type f | LC_ALL=C sort | xargs sha256sum;
          echo "$VKEY $ARCHS"; nvcc --version 2>/dev/null || echo "no nvcc"; } | hash_of)
BUILD=$CACHE/build-cuda-$BKEY
HIT=0
if [ "${HSU_NO_CACHE:-0}" != 1 ] && [ -e "$BUILD/.complete" ]; then
  HIT=1
  cp "$BUILD"/_C*.so "$WORK/hsu_kernels/"
fi
phase "bench/gpu_check.sh --dry-run: the build for $ARCHS ($([ $HIT = 1 ] && echo "cached in $BUILD" || echo "not cached: compiling, minutes")) and the GPU script's set-up"
DRY_OUT=$WORK/gpu-check-dry
# nvcc compiles the two architectures in parallel threads (NVCC_APPEND_FLAGS is read by nvcc itself)
if ! (cd "$WORK" && env -u HSU_NO_CUDA -u CUDA_VISIBLE_DEVICES OUT="$DRY_OUT" PYTHON="$VPY" \
      HSU_COMMIT="$(git -C "$ROOT" rev-parse HEAD)" \
      TORCH_CUDA_ARCH_LIST="$ARCHS" NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:---threads 2}" \
      GPU_CHECK_LIMIT_BUILD="${GPU_CHECK_LIMIT_BUILD:-3600}" bash bench/gpu_check.sh --dry-run); then
  echo "--- the dry run failed; its build log ends:"
  tail -40 "$DRY_OUT/build.log" 2>/dev/null
  # last, so that a shortened CI log still shows which stage failed
  echo "--- the dry run's summary:"
  cat "$DRY_OUT/summary.txt" 2>/dev/null
  exit 1
fi
SO=$(ls "$WORK"/hsu_kernels/_C*.so)
echo "extension: $SO ($(du -h "$SO" | cut -f1))"
if [ $HIT = 0 ]; then
  find "$CACHE" -maxdepth 1 -name 'build-cuda-*' -exec rm -rf {} +
  mkdir -p "$BUILD"
  cp "$SO" "$BUILD/"
  touch "$BUILD/.complete"
fi

cd "$WORK"

# ---- 3. import and dispatch table ------------------------------------------------------------------------
phase "import and dispatch table"
"$VPY" - <<'EOF'
import os

import torch

import hsu_kernels
from hsu_kernels import _ext

assert _ext.available(), _ext.load_error()
assert os.path.dirname(_ext._C.__file__) == os.path.join(os.getcwd(), "hsu_kernels"), _ext._C.__file__
for op in ("hsu::energy_grad", "hsu::cross_energy_grad"):
    for key in ("CPU", "CUDA", "Meta"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, key), f"{op} has no {key} kernel"
    print(f"{op}: CPU, CUDA and Meta kernels registered")
assert _ext.has_cuda_kernel()
print("backends for cuda tensors here:", hsu_kernels.available_backends("cuda"))
EOF

# ---- 4. SASS for both architectures ----------------------------------------------------------------------
phase "cuobjdump"
ELFS=$("$CUOBJDUMP" --list-elf "$SO")
echo "$ELFS"
for a in $(echo "$ARCHS" | tr -d . | tr ';' ' '); do
  echo "$ELFS" | grep -q "sm_$a\b" || { echo "no SASS for sm_$a in $SO"; exit 1; }
done
"$CUOBJDUMP" --dump-resource-usage "$SO" >"$WORK/resource-usage.txt"
"$VPY" - "$WORK/resource-usage.txt" <<'EOF'
import re
import sys

arch, worst = None, {}
for line in open(sys.argv[1]):
    m = re.search(r"arch = (sm_\d+)", line)
    if m:
        arch = m.group(1)
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", line)
    if m and arch:
        reg, stack, shared, local = map(int, m.groups())
        w = worst.setdefault(arch, dict(kernels=0, reg=0, stack=0, local=0, shared=0))
        w["kernels"] += 1
        for k, v in (("reg", reg), ("stack", stack), ("local", local), ("shared", shared)):
            w[k] = max(w[k], v)
for arch, w in sorted(worst.items()):
    print(f"{arch}: {w['kernels']} kernels, max {w['reg']} registers, max stack frame {w['stack']} B "
          f"(where spills would live), max local {w['local']} B, max static shared {w['shared']} B")
if not worst:
    sys.exit("cuobjdump printed no resource usage")
EOF

# ---- 5. the quick subset of the CPU suite under the CUDA torch --------------------------------------------
phase "quick tests under torch $CUDA_TORCH"
# shellcheck disable=SC2086
"$VPY" -m pytest -q -rs -p no:cacheprovider $QUICK_TESTS -k "$QUICK_K"

phase "done in $((SECONDS - T_START)) s"
}
main "$@"
