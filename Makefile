# make bench   benchmark suite (the main job): installs and builds first when needed
# make test    test suite: installs and builds first when needed
# make install .venv/ with the pinned requirements, extension built in place
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEPS   := $(VENV)/.requirements-installed
SOURCES := setup.py $(wildcard csrc/*.h csrc/*.cpp csrc/cpu/*.h csrc/cpu/*.cpp csrc/cuda/*.cuh csrc/cuda/*.cu)
BUILT  := cnnkit/.built
MAX_JOBS ?= 2
export MAX_JOBS

.PHONY: install build test bench clean

install: $(BUILT)

$(DEPS): requirements-dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

# Incremental (ninja) in-place build; flock keeps concurrent builds apart.
$(BUILT): $(DEPS) $(SOURCES)
	flock .build.lock $(PY) setup.py -q build_ext --inplace
	touch $@

build: $(BUILT)

test: $(BUILT)
	$(PY) -m pytest -q tests

bench: $(BUILT)
	$(PY) benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf build cnnkit/_C*.so $(BUILT)
