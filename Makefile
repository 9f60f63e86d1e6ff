# make bench            benchmark suite (the main job): installs and builds first when needed
# make test             test suite, the emulated CUDA backend's included: installs and builds first
# make install          .venv/ with the pinned requirements, extension built in place
# make emulate          cnnkit._C_emu: the CUDA kernels compiled as host C++, run on CPU tensors
# make emulate-sanitize the emulated kernels under AddressSanitizer + UBSan and ThreadSanitizer
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEPS   := $(VENV)/.requirements-installed
SOURCES := setup.py $(wildcard csrc/*.h csrc/*.cpp csrc/cpu/*.h csrc/cpu/*.cpp csrc/cuda/*.cuh csrc/cuda/*.cu)
EMULATION_SOURCES := $(SOURCES) $(wildcard csrc/emulation/*.h csrc/emulation/*.cpp csrc/emulation/include/*.h)
BUILT  := cnnkit/.built
EMULATED := cnnkit/.built-emulation
MAX_JOBS ?= 2
export MAX_JOBS

.PHONY: install build emulate emulate-sanitize test bench clean

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

$(EMULATED): $(DEPS) $(EMULATION_SOURCES)
	CNNKIT_EMULATION=fibers flock .build.lock $(PY) setup.py -q build_ext --inplace
	touch $@

emulate: $(EMULATED)

# Each sanitizer build goes to build/emulation-<mode>/lib; the workload loads it
# into a Python whose process has the sanitizer's runtime preloaded.
emulate-sanitize: $(BUILT)
	CNNKIT_EMULATION=asan flock .build.lock $(PY) setup.py -q build_ext
	CNNKIT_EMULATION=tsan flock .build.lock $(PY) setup.py -q build_ext
	$(PY) tools/sanitize_emulation.py asan
	$(PY) tools/sanitize_emulation.py tsan

test: $(BUILT) $(EMULATED)
	$(PY) -m pytest -q tests

bench: $(BUILT)
	$(PY) benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf build cnnkit/_C*.so $(BUILT) $(EMULATED)
