#!/usr/bin/env bash
# The GPU check of cnnkit, for a machine with a CUDA device and no network (the
# device tool's H100 / H200: python3 with torch, nvcc, ninja, pybind11, pytest,
# compute-sanitizer). From the repository root, one or more phases per call,
# each call well inside the device tool's 10 minutes:
#
#   bash scripts/gpu_check.sh build tests    # build (2-4 min); CUDA tests but the slow ones
#   bash scripts/gpu_check.sh slow sanitize  # 64-bit and torch.compile tests; compute-sanitizer
#   bash scripts/gpu_check.sh bench          # the CUDA issue's benchmarks
#
# Phases, run in the order given after "env", which always runs first:
#   env           nvidia-smi, nvcc, compute-sanitizer, Python / torch / cuDNN versions, GPU memory,
#                 which optional Python packages are there (xdist, hypothesis, tqdm, ...)
#   build         pip install --no-build-isolation -e . (log: build.log), then one forward and
#                 backward of every op on CUDA ("op availability" in summary.txt)
#   tests         pytest -m "cuda and not slow" over tests/ (every device-parametrized test on
#                 "cuda", and tests/test_cuda.py), in parallel with pytest-xdist when present
#   slow          pytest -m "cuda and slow", one at a time (tensors past 2^31 elements need
#                 tens of GiB each; torch.compile)
#   sanitize      compute-sanitizer memcheck, racecheck, synccheck and initcheck over
#                 scripts/sanitizer_workload.py
#   bench-conv    benchmarks/run.py --device cuda: ResNet-50 convs at batch 32, fwd and fwd+bwd,
#                 in float32, float16 and bfloat16 against cuDNN
#   bench-layers  the pools of ResNet-50 and VGG-16 at batch 32 (timed eagerly, and as CUDA graph
#                 replays), DeepFace's local layers at batches 1, 8, 32, the tiled suite
#   bench         bench-conv and bench-layers
# Every phase after env builds first, unless build/gpu-cnnkit/ holds a build of the current
# sources (carried back, see below, or left by an earlier call on a machine still warm).
#
# Output in $OUT (the device tool's folder; /tmp/gpu-check-out when unset), at most 8 files:
#   summary.txt              what ran, status and time of every step, test counts and
#                            failures, sanitizer summaries, benchmark targets met or not
#                            (printed at the end too)
#   build.log tests.log tests-slow.log sanitizer.log bench.log
#   results.tar.gz           junit XML of the test runs; benchmark JSON, Markdown and PNG files
#   cnnkit-gpu-build.tar.xz  the extension this call built, and the stamp of its sources
#
# Reusing a build between calls (a fresh machine has none): unpack the returned
# cnnkit-gpu-build.tar.xz into build/gpu-cnnkit/ of the checkout (build/ is git-ignored) and
# name build/gpu-cnnkit in the device tool's carry; a later call installs that extension
# instead of building when its stamp (hash of setup.py, pyproject.toml, csrc/, the Python,
# torch and CUDA versions and TORCH_CUDA_ARCH_LIST) matches the tree.
#
# Environment: PYTHON (python3), TORCH_CUDA_ARCH_LIST (9.0: H100 and H200), MAX_JOBS (all cores),
# PYTEST_WORKERS (12), PYTEST_ARGS (more pytest arguments, e.g. "-k conv2d"), GPU_CHECK_BUDGET_S
# (560: seconds this call may take; a step is cut to what is left, later steps are skipped),
# CNNKIT_REBUILD=1 (build even when a matching build was carried).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

PHASES="env build tests slow sanitize bench bench-conv bench-layers"
if (( $# == 0 )); then
  sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 2
fi
for phase in "$@"; do
  if [[ " $PHASES " != *" $phase "* ]]; then
    echo "unknown phase '$phase'; phases: $PHASES" >&2
    exit 2
  fi
done

START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-560}
OUT=${OUT:-/tmp/gpu-check-out}
PY=${PYTHON:-python3}
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
CARRIED=build/gpu-cnnkit  # a build returned by an earlier call, carried back
RESULTS="$WORK/results"
SUMMARY="$OUT/summary.txt"
mkdir -p "$OUT" "$RESULTS"
export PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH="$PATH:/usr/local/cuda/bin"
fi

# --------------------------------------------------------------------------- helpers

note() { echo "$*" >> "$SUMMARY"; }

remaining() { echo $(( BUDGET - ($(date +%s) - START) )); }

# step NAME LOG LIMIT COMMAND...: runs COMMAND with its output appended to LOG,
# for at most LIMIT seconds or what is left of the budget (less a reserve for
# packing the results); one line in summary.txt. Returns COMMAND's status, 124
# when cut by the time limit, 99 when skipped for lack of time.
step() {
  local name=$1 log=$2 limit=$3
  shift 3
  local left=$(( $(remaining) - 30 ))
  if (( left < 20 )); then
    note "SKIPPED  $name: the call's time budget is spent"
    return 99
  fi
  (( limit > left )) && limit=$left
  echo "==================== $name: $*" >> "$log"
  local t0 rc took
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >> "$log" 2>&1
  rc=$?
  took=$(( $(date +%s) - t0 ))
  if (( rc == 0 )); then
    note "ok       $name (${took} s)"
  elif (( rc == 124 || rc == 137 )); then
    note "TIMEOUT  $name: stopped after ${took} s (limit ${limit} s), see $(basename "$log")"
  else
    note "FAILED   $name: exit status $rc after ${took} s, see $(basename "$log")"
  fi
  return $rc
}

# shellcheck disable=SC2317  # runs from the EXIT trap
finish() {
  if [[ -n "$(ls -A "$RESULTS" 2>/dev/null)" ]]; then
    tar -C "$RESULTS" -czf "$OUT/results.tar.gz" .
  fi
  # The device tool returns at most 8 files: pack any surplus (none is expected).
  local files
  files=$(find "$OUT" -type f | wc -l)
  if (( files > 8 )); then
    (cd "$OUT" && find . -type f ! -name summary.txt ! -name all-output.tar.gz -print0 |
       tar --null -T - --remove-files -czf all-output.tar.gz)
    note "more than 8 output files: all but summary.txt packed into all-output.tar.gz"
  fi
  note "total: $(( $(date +%s) - START )) s"
  echo
  cat "$SUMMARY"
  rm -rf "$WORK"
}
trap finish EXIT

# The extension file name this Python loads (cnnkit/_C.cpython-312-x86_64-linux-gnu.so).
extension_path() {
  echo "cnnkit/_C$($PY -c 'import importlib.machinery as m; print(m.EXTENSION_SUFFIXES[0])')"
}

# Hash of everything a build depends on.
source_stamp() {
  {
    cat setup.py pyproject.toml
    find csrc -type f | LC_ALL=C sort | while read -r file; do echo "$file"; cat "$file"; done
    $PY -c 'import sys, torch; print(sys.version, torch.__version__, torch.version.cuda)'
    echo "$TORCH_CUDA_ARCH_LIST"
  } | sha256sum | cut -d' ' -f1
}

cuda_build_imports() {
  $PY -c 'import sys, cnnkit; sys.exit(0 if cnnkit.build_info()["with_cuda"] else 1)' \
    >/dev/null 2>&1
}

# One forward and backward of every op on small CUDA tensors: which kernels
# exist and run, before the test suite says more.
op_availability() {
  $PY - <<'EOF' 2>&1
import torch
import cnnkit
import cnnkit.functional as CF

print("cnnkit build:", cnnkit.build_info())

def t(*shape):
    return torch.randn(*shape, device="cuda", requires_grad=True)

calls = {
    "conv2d": lambda: CF.conv2d(t(2, 4, 9, 9), t(6, 2, 3, 3), t(6), 2, 1, 1, 2),
    "conv_transpose2d": lambda: CF.conv_transpose2d(t(2, 4, 5, 5), t(4, 3, 3, 3), t(3), 2, 1, 1),
    "local_conv2d": lambda: CF.local_conv2d(t(2, 4, 7, 7), t(3, 5, 5, 4, 3, 3), t(3, 5, 5)),
    "tiled_conv2d": lambda: CF.tiled_conv2d(t(2, 4, 7, 7), t(3, 4, 3, 3, 2, 2), t(3, 2, 2)),
    "max_pool2d": lambda: CF.max_pool2d(t(2, 3, 9, 9), 3, 2, 1),
    "avg_pool2d": lambda: CF.avg_pool2d(t(2, 3, 9, 9), 3, 2, 1),
    "adaptive_max_pool2d": lambda: CF.adaptive_max_pool2d(t(2, 3, 9, 9), (2, 3)),
    "adaptive_avg_pool2d": lambda: CF.adaptive_avg_pool2d(t(2, 3, 9, 9), (2, 3)),
    "channel_max_pool": lambda: CF.channel_max_pool(t(2, 4, 5, 5), 2),
}
for name, call in calls.items():
    try:
        out = call()
        out.sum().backward()
        torch.cuda.synchronize()
        print(f"  {name:<20} forward + backward ok")
    except Exception as exc:  # report every op, go on
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"  {name:<20} {type(exc).__name__}: {message[:200]}")
EOF
}

# --------------------------------------------------------------------------- phases

phase_env() {
  {
    echo "# cnnkit GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), phases: $*"
    echo "## nvidia-smi"
    nvidia-smi 2>&1 || echo "nvidia-smi failed"
    echo "## nvcc: $(nvcc --version 2>&1 | grep -i release || echo 'not found')"
    echo "## compute-sanitizer: $("$(sanitizer)" --version 2>&1 | grep -i version | head -1)"
    echo "## Python packages"
    $PY - <<'EOF' 2>&1
import importlib
import platform

import torch

print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"cuDNN {torch.backends.cudnn.version()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    free, total = torch.cuda.mem_get_info()
    print(f"GPU {p.name}, compute capability {p.major}.{p.minor}, {p.multi_processor_count} SMs, "
          f"{total / 2**30:.1f} GiB ({free / 2**30:.1f} GiB free)")
else:
    print("NO CUDA DEVICE visible to torch")
for name in ("pytest", "xdist", "hypothesis", "torchvision", "sklearn", "tqdm", "matplotlib",
             "ninja", "pybind11", "setuptools"):
    try:
        module = importlib.import_module(name)
        print(f"  {name} {getattr(module, '__version__', '')}")
    except ImportError:
        print(f"  {name}: MISSING")
EOF
    echo "## steps"
  } >> "$SUMMARY"
}

# compute-sanitizer's path (it is not always on the PATH).
sanitizer() {
  local candidate
  for candidate in "$(command -v compute-sanitizer)" /usr/local/cuda/bin/compute-sanitizer \
                   /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
    [[ -n "$candidate" && -x "$candidate" ]] && { echo "$candidate"; return 0; }
  done
  echo compute-sanitizer
  return 1
}

BUILD_STATUS=""  # empty until ensure_built ran: then 0 (a CUDA build is in place) or 1

ensure_built() {
  [[ -n "$BUILD_STATUS" ]] && return "$BUILD_STATUS"
  BUILD_STATUS=1
  local stamp extension
  stamp=$(source_stamp)
  extension=$(extension_path)
  if [[ ${CNNKIT_REBUILD:-0} != 1 && -f $CARRIED/stamp \
        && -f $CARRIED/$(basename "$extension") ]]; then
    if [[ "$(cat "$CARRIED/stamp")" == "$stamp" ]]; then
      cp "$CARRIED/$(basename "$extension")" "$extension"
      if cuda_build_imports; then
        note "build: installed the carried $CARRIED (its stamp matches the sources)"
        BUILD_STATUS=0
      else
        note "build: the carried $CARRIED does not import with CUDA; building"
      fi
    else
      note "build: the carried $CARRIED is of other sources or versions; building"
    fi
  fi
  if [[ $BUILD_STATUS != 0 ]]; then
    step "build: pip install --no-build-isolation -e ." "$OUT/build.log" 420 \
      "$PY" -m pip install --no-build-isolation --no-deps --no-index -v -e . || return 1
    if ! cuda_build_imports; then
      note "FAILED   build: cnnkit does not import, or imports without its CUDA kernels (build.log)"
      return 1
    fi
    BUILD_STATUS=0
    local pack="$WORK/build-pack"
    mkdir -p "$pack"
    cp "$extension" "$pack/"
    strip --strip-debug "$pack/$(basename "$extension")" 2>/dev/null
    echo "$stamp" > "$pack/stamp"
    mkdir -p "$CARRIED"
    cp "$pack"/* "$CARRIED/"
    tar -C "$pack" -cf - . | xz -T0 -6 > "$OUT/cnnkit-gpu-build.tar.xz"
    local size
    size=$(stat -c %s "$OUT/cnnkit-gpu-build.tar.xz")
    if (( size > 16 * 1024 * 1024 )); then
      rm "$OUT/cnnkit-gpu-build.tar.xz"
      note "build: the packed build is $(( size / 1024 / 1024 )) MiB, over the 16 MiB" \
        "a returned file may have: not returned"
    else
      note "build: packed into cnnkit-gpu-build.tar.xz" \
        "($(( size / 1024 / 1024 )) MiB), for $CARRIED/"
    fi
  fi
  note "## op availability on CUDA"
  op_availability >> "$SUMMARY"
  return 0
}

# pytest over tests/ with a marker expression; the counts and failures into the
# summary. Verbose: every test's outcome is in the log as it completes, so a run
# stopped by the time limit still shows what failed before.
run_pytest() {
  local name=$1 log=$2 limit=$3 markers=$4
  shift 4
  local extra=()
  [[ -n "${PYTEST_ARGS:-}" ]] && read -r -a extra <<< "$PYTEST_ARGS"
  local rc
  step "$name" "$log" "$limit" "$PY" -m pytest tests -m "$markers" -v -rfEs --durations=15 \
    --continue-on-collection-errors -p no:cacheprovider \
    --junitxml="$RESULTS/junit-$(basename "$log" .log).xml" "$@" ${extra[@]+"${extra[@]}"}
  rc=$?
  note "  pytest: $(grep -E '(passed|failed|error|skipped|deselected|no tests ran)' "$log" |
                   tail -1)"
  if grep -qE '^(FAILED|ERROR) ' "$log"; then  # pytest's closing list of failures
    grep -E '^(FAILED|ERROR) ' "$log" | head -60 | sed 's/^/  /' >> "$SUMMARY"
  else  # stopped before it: the outcomes reported so far
    grep -E '(FAILED|ERROR) tests/|tests/[^ ]+ (FAILED|ERROR)' "$log" | head -60 |
      sed 's/^/  /' >> "$SUMMARY"
  fi
  return $rc
}

phase_tests() {
  ensure_built || return 1
  local parallel=()
  if $PY -c 'import xdist' 2>/dev/null; then
    parallel=(-n "${PYTEST_WORKERS:-12}")
  fi
  run_pytest "tests: CUDA, not slow" "$OUT/tests.log" 480 "cuda and not slow" \
    ${parallel[@]+"${parallel[@]}"}
}

phase_slow() {
  ensure_built || return 1
  run_pytest "tests: CUDA, slow (64-bit indexing, torch.compile)" "$OUT/tests-slow.log" 420 \
    "cuda and slow"
}

phase_sanitize() {
  ensure_built || return 1
  local tool_path
  if ! tool_path=$(sanitizer); then
    note "SKIPPED  sanitize: compute-sanitizer not found"
    return 1
  fi
  local log="$OUT/sanitizer.log" tool dtypes status=0
  # memcheck and racecheck (shared-memory hazards) on every case in both 16- and
  # 32-bit; synccheck and initcheck (uninitialised global reads) in float32.
  for tool in memcheck racecheck synccheck initcheck; do
    case $tool in
      memcheck|racecheck) dtypes=float32,float16 ;;
      *) dtypes=float32 ;;
    esac
    step "compute-sanitizer --tool $tool ($dtypes)" "$log" 240 \
      env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$tool_path" --tool "$tool" --error-exitcode 1 \
      --print-limit 100 --show-backtrace device \
      "$PY" scripts/sanitizer_workload.py --dtypes "$dtypes" || status=1
    note "  $(grep -E '(ERROR|RACECHECK|SYNCCHECK|INITCHECK) SUMMARY|cases ran' "$log" |
              tail -2 | tr '\n' ' ')"
  done
  return $status
}

# benchmarks/run.py on CUDA; the targets' verdicts and any failing row into the summary.
run_bench() {
  local name=$1 limit=$2
  shift 2
  local log="$OUT/bench.log" before rc
  before=0
  [[ -f "$log" ]] && before=$(wc -l < "$log")
  step "bench: $name" "$log" "$limit" "$PY" benchmarks/run.py --device cuda \
    --out "$RESULTS/bench" "$@"
  rc=$?
  tail -n +"$(( before + 1 ))" "$log" | grep -E '\): (met|NOT met)' | sed 's/^/  /' >> "$SUMMARY"
  tail -n +"$(( before + 1 ))" "$log" | grep -E '\| (ERROR|WRONG): ' | head -10 |
    sed 's/^/  row: /' >> "$SUMMARY"
  return $rc
}

phase_bench_conv() {
  ensure_built || return 1
  local dtype status=0
  for dtype in float32 float16 bfloat16; do
    run_bench "resnet50-b32 conv2d $dtype" 240 --suite resnet50-b32 --ops conv2d \
      --dtype "$dtype" --min-run-time 0.2 || status=1
  done
  return $status
}

phase_bench_layers() {
  ensure_built || return 1
  local status=0
  run_bench "pools float32" 150 --suite pools --min-run-time 0.2 || status=1
  run_bench "pools float32, CUDA graph replays" 150 --suite pools --min-run-time 0.2 \
    --cuda-graph || status=1
  run_bench "local (DeepFace L4-L6, batches 1, 8, 32)" 200 --suite local --min-run-time 0.3 \
    || status=1
  run_bench "tiled" 240 --suite tiled --min-run-time 0.3 || status=1
  return $status
}

# --------------------------------------------------------------------------- main

phase_env "$@"
status=0
for phase in "$@"; do
  case $phase in
    env) ;;
    build) ensure_built || status=1 ;;
    tests) phase_tests || status=1 ;;
    slow) phase_slow || status=1 ;;
    sanitize) phase_sanitize || status=1 ;;
    bench-conv) phase_bench_conv || status=1 ;;
    bench-layers) phase_bench_layers || status=1 ;;
    bench) phase_bench_conv || status=1; phase_bench_layers || status=1 ;;
  esac
done
exit $status
