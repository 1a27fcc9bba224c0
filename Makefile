# hsu-kernels: `make test` and `make bench` do all their own set-up from a fresh clone.
#
#   make test                 venv in .venv, torch==2.13.0 (CPU wheel), the package and its extension,
#                             then the whole suite (Triton tests under TRITON_INTERPRET=1 in their own
#                             process) and the CMake/ctest compile check of the CUDA sources and header.
#   make bench                the same set-up, then the benchmark table and the scaling plot.
#   make test PYTHON=python3  on a machine that already has torch (e.g. a CUDA build on a GPU box, no
#                             internet): no venv, nothing downloaded, the extension built against that torch.

PYTHON ?=
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
MAX_JOBS ?= 2
export MAX_JOBS

ifeq ($(strip $(PYTHON)),)
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-installed
else
PY := $(PYTHON)
DEPS :=
endif

PYTEST := $(PY) -m pytest -q -p no:cacheprovider

.PHONY: test bench bench-pytest build lint cmake-check clean

$(VENV)/.deps-installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q torch==$(TORCH_VERSION)
	$(VENV)/bin/pip install -q numpy ninja pybind11 pytest pytest-benchmark hypothesis triton tqdm matplotlib scikit-learn
	touch $@

build: $(DEPS)
	$(PY) setup.py -q build_ext --inplace
	$(PY) -c "import hsu_kernels._ext as e; assert e.available(), e.load_error(); print('hsu_kernels._C loaded; backends on cpu:', __import__('hsu_kernels').available_backends('cpu'))"

test: build
	$(PYTEST) tests --ignore=tests/test_triton.py --ignore=tests/test_triton_properties.py
	TRITON_INTERPRET=1 $(PYTEST) tests/test_triton.py tests/test_triton_properties.py
	$(MAKE) cmake-check

# The CUDA sources compile on their own (no torch, no GPU needed) and the per-pair header is tested on
# the host with ctest. Without nvcc, CMake still builds and runs the host test.
cmake-check:
	@if command -v cmake >/dev/null 2>&1; then \
		cmake -S . -B _build_cmake -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null && \
		cmake --build _build_cmake -j $(MAX_JOBS) && \
		ctest --test-dir _build_cmake --output-on-failure; \
	else echo "cmake not found: compile check skipped"; fi

bench: build
	$(PY) -m bench
	$(PY) -m bench --sweep

bench-pytest: build
	$(PY) -m pytest bench/test_micro.py --benchmark-only -q

lint: $(DEPS)
	$(PY) -m pip install -q ruff && $(PY) -m ruff check hsu_kernels tests bench examples

clean:
	rm -rf build _build_cmake hsu_kernels/_C*.so *.egg-info
