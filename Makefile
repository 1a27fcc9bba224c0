# hsu-kernels: every target does its own set-up from a fresh clone.
#
#   make dev                  the development set-up alone: venv in .venv with torch==2.13.0 (CPU wheel) and the
#                             test/example tools, the package installed editable into it (`pip install
#                             --no-build-isolation -e .`, which compiles the extension in place, printing each
#                             compile step), and an import check. Then `source .venv/bin/activate`.
#   make test                 `make dev`, then the suite in stages: pytest (tests/), the Triton tests under
#                             TRITON_INTERPRET=1 in their own process, and the CMake/ctest host tests of the
#                             per-pair header and the emulated CUDA kernels. A failing stage does not stop the
#                             others; the summary names every failed stage and make exits non-zero. Afterwards `.venv/bin/python`
#                             runs every README command.
#   make test-long            the property suites (tests/test_properties.py, tests/test_triton_properties.py)
#                             with HSU_HYPOTHESIS_PROFILE=long: 10,000 examples per backend (hours on 2 cores;
#                             `make test` runs the ci profile, under a minute).
#   make bench                the same set-up, then the benchmark table and the scaling plot (into bench/out/).
#   make test PYTHON=python3  on a machine that already has torch (e.g. a CUDA build on a GPU box, no
#                             internet): no venv, nothing downloaded or installed, the extension built in place
#                             against that torch (run from the repository root).
#   HSU_DEBUG=1 make dev      the extension with debug info (-g); the default is a release build.
#   HSU_CPU_ARCH=native make dev   a build for this CPU only (the default is portable: see setup.py).
#   make test PYTEST_ARGS="--durations=15"   extra pytest options.
#   make triton-aot-check     every Triton autotuning config of every kind compiled for sm_80/sm_90 with ptxas
#                             (no GPU), failing on any register spill (the committed table:
#                             bench/results/triton-ptxas-*); reports cached under the same cache directory.
#   make cuda-check           the CUDA build checked without a GPU: the CMake compile check of the CUDA sources
#                             with nvcc (make cmake-cuda-check), then .ci/cuda_check.sh: a CUDA torch in its
#                             own cached venv, the extension for sm_80 and sm_90, its dispatch table and
#                             SASS, the quick tests under that torch, bench/gpu_check.sh --dry-run.
#   .ci/run                   what CI runs: make test, make triton-aot-check, make cuda-check, each stage
#                             timed, all of them run even when one fails.

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c

PYTHON ?=
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
MAX_JOBS ?= 2
export MAX_JOBS

ifeq ($(strip $(PYTHON)),)
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-installed
INSTALLED := $(VENV)/.hsu-installed
else
PY := $(PYTHON)
DEPS :=
INSTALLED :=
endif

# -rs: every skipped test prints its reason
PYTEST := $(PY) -m pytest -q -rs -p no:cacheprovider $(PYTEST_ARGS)
EXT_SOURCES := setup.py pyproject.toml $(wildcard csrc/*.h csrc/*.cpp csrc/cpu/*.h csrc/cpu/*.cpp csrc/cpu/isa/*.h csrc/cpu/isa/*.cpp \
	csrc/cuda/*.h csrc/cuda/*.cu csrc/cuda/*.cuh)

.PHONY: dev test test-long bench bench-pytest build lint cmake-check clean

# What the tests and the README's commands need, nothing more: hypothesis for the property suites, triton for
# the Triton tests (under the interpreter), tqdm/matplotlib/scikit-learn for the examples and the plots
# (scikit-learn holds the digits data of examples/digits_mhe.py), setuptools>=77 for pyproject's SPDX license
# field.
$(VENV)/.deps-installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q torch==$(TORCH_VERSION)
	$(VENV)/bin/pip install -q "setuptools>=77" numpy ninja pytest hypothesis triton tqdm matplotlib scikit-learn
	touch $@

# The package, editable, in the venv: the build sees the venv's torch (no build isolation) and puts the
# extension next to the sources, so `python -m bench`, the examples and `import hsu_kernels` from any folder
# all use this checkout. (setuptools' note on flat-layout editable installs, that a folder named like the
# package may shadow it, does not apply: that folder is the package installed here.)
$(VENV)/.hsu-installed: $(DEPS) $(EXT_SOURCES)
	@echo "building hsu_kernels._C and installing hsu-kernels into $(VENV) (about 4 minutes on 2 idle cores)"
	PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install -v --no-build-isolation --no-deps -e . \
		2>&1 | python3 tools/build_progress.py build/build.log \
		|| { echo "---- the build failed; the last lines of build/build.log:"; tail -60 build/build.log; exit 1; }
	touch $@

build: $(DEPS) $(INSTALLED)
ifneq ($(strip $(PYTHON)),)
	$(PY) setup.py -q build_ext --inplace
endif
	$(PY) -c "import hsu_kernels._ext as e; assert e.available(), e.load_error(); print('hsu_kernels._C loaded; backends on cpu:', __import__('hsu_kernels').available_backends('cpu'))"

dev: build

TRITON_TESTS := tests/test_triton.py tests/test_triton_transforms.py tests/test_triton_properties.py

# Each stage runs whatever happened before it; .ci/stages.sh prints a summary naming the failed ones.
test: build
	bash .ci/stages.sh \
		"pytest" "$(PYTEST) tests $(addprefix --ignore=,$(TRITON_TESTS))" \
		"triton-interpreter" "TRITON_INTERPRET=1 $(PYTEST) $(TRITON_TESTS)" \
		"cmake-check" "$(MAKE) --no-print-directory cmake-check"

test-long: build
	bash .ci/stages.sh \
		"properties-long" "HSU_HYPOTHESIS_PROFILE=long $(PYTEST) tests/test_properties.py" \
		"triton-properties-long" "HSU_HYPOTHESIS_PROFILE=long TRITON_INTERPRET=1 $(PYTEST) tests/test_triton_properties.py"

# The per-pair header and the CUDA kernels' device code tested on the host with ctest (the header against
# closed forms, the kernels emulated on CPU threads); no torch, no GPU. `make test` runs it.
cmake-check:
	@if command -v cmake >/dev/null 2>&1; then \
		cmake -S . -B _build_cmake -G Ninja -DCMAKE_BUILD_TYPE=Release -DHSU_CUDA=OFF >/dev/null && \
		cmake --build _build_cmake -j $(MAX_JOBS) && \
		ctest --test-dir _build_cmake --output-on-failure; \
	else echo "cmake not found: compile check skipped"; fi

# The same with nvcc: the CUDA sources compiled and linked on their own for sm_80 and sm_90 (a few minutes;
# `make cuda-check` runs it, CI's CUDA stage). Without nvcc it fails: use cmake-check.
.PHONY: cmake-cuda-check
cmake-cuda-check:
	cmake -S . -B _build_cmake_cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DHSU_CUDA=ON >/dev/null
	cmake --build _build_cmake_cuda -j $(MAX_JOBS)
	ctest --test-dir _build_cmake_cuda --output-on-failure

# Needs python3 (with venv), nvcc and git; all else it installs into a venv cached under ~/.cache/hsu-kernels.
.PHONY: cuda-check
cuda-check: cmake-cuda-check
	bash .ci/cuda_check.sh

# Every Triton kernel a launch can run (each autotuning config the launcher can select, in each of the 16
# variants: kind, normalized or not, ragged or uniform batch; the other flags are runtime arguments),
# compiled for sm_80 and sm_90 with ptxas (no GPU): fails if one spills registers. Cold: 1,590 compiles,
# 713 s on 2 cores in a cold CI run (2026-12-07); each report is cached under a hash of the kernel's
# source (Triton's cache key, which includes its line numbers: an edit above a kernel in kernels.py
# recompiles it), the config, Triton, ptxas, the TRITON_* environment and the code that compiles and reads
# the report (tools/triton_aot.py, cache_key), so a run after a change recompiles only the kernels it
# touched, and one after a config table edit only the new configs. `make test` compiles one small config
# per kernel.
AOT_CACHE ?= $(or $(HSU_CACHE_DIR),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/hsu-kernels)/triton-aot
.PHONY: triton-aot-check
triton-aot-check: build
	$(PY) tools/triton_aot.py --fail-on-spill --no-write --cache "$(AOT_CACHE)"

bench: build
	$(PY) -m bench
	$(PY) -m bench --sweep

bench-pytest: build
ifneq ($(strip $(INSTALLED)),)
	$(PY) -m pip install -q pytest-benchmark
endif
	$(PY) -m pytest bench/test_micro.py --benchmark-only -q

lint: $(DEPS)
	$(PY) -m pip install -q ruff && $(PY) -m ruff check hsu_kernels tests bench examples tools

clean:
	rm -rf build _build_cmake hsu_kernels/_C*.so hsu_kernels/_build_info.py *.egg-info $(VENV)/.hsu-installed
