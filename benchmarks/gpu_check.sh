#!/usr/bin/env bash
# One GPU session, one script: environment, build, backend table, kernel
# launch-parameter sweep, benchmark, tests, sanitizers; everything lands in
# OUT_DIR.
#
#   benchmarks/gpu_check.sh OUT_DIR
#
# Expects a machine with a CUDA GPU, torch + triton, nvcc and pybind11 already
# installed, and no internet: it installs nothing from an index (the build
# uses --no-build-isolation --no-deps). Each step is time-boxed with
# `timeout`; a failing or timed-out step is reported and the script goes on;
# the exit status is non-zero when any step failed. Order: the numbers
# (tune, benchmark), then the checks (tests, compute-sanitizer), then the
# diagnostics (host overhead, trace, ncu profile), so that a hung test cannot
# cost the numbers and a call cut short loses a diagnostic first; a kernel
# that faults in the benchmark shows as an ERR cell and again in the tests.
# The whole run takes about 7.5 minutes on an H100. Run 6 measured: build
# 60 s, tune 43 s, benchmark 15 s (six providers at the goal point), host
# 23 s, trace 14 s, profile 37 s, 714 GPU tests 86 s; memcheck over the
# quick cases and the N*V > 2^31 case ~60 s, racecheck over the quick cases
# ~140 s (run 7). A device call returns only so many files: tar OUT_DIR.
#
# OUT_DIR receives: gpu_check.log (everything printed), env.txt, build.log,
# info.txt, tune.csv, bench/ (results.csv, results.json, summary.txt,
# plot_*.png), host/host_overhead.csv, trace.txt, ncu.txt, pytest.log + pytest.xml, sanitizer.log,
# racecheck.txt and steps.txt (one line per step). To publish a run: copy
# bench/*, tune.csv, ncu.txt and gpu_check.log into
# benchmarks/results/cuda-<gpu>/ and commit them.
#
# Knobs (environment):
#   GPU_CHECK_BUILD_S, GPU_CHECK_TUNE_S, GPU_CHECK_TEST_S, GPU_CHECK_SANITIZER_S
#       per-step limits in seconds; GPU_CHECK_BENCH_S the benchmark's
#       measuring budget.
#   GPU_CHECK_BENCH_ARGS  benchmark arguments; without them it measures the
#       issues' goal point (GOAL_POINT below) for every provider.
#   GPU_CHECK_BASELINE_S  > 0 adds a step timing the compiled reference alone
#       with that budget (it needs minutes to compile at the goal point).
#   GPU_CHECK_TESTS       test paths (default "tests"). The simulator's tests
#       (ids with "sim": the CUDA kernels on the CPU, tests/cuda_sim.py) are
#       left out: CI runs them, and here they would spend device time on CPU
#       work; GPU_CHECK_WITH_SIM=1 keeps them.
#   GPU_CHECK_SANITIZER_QUICK=1  memcheck on the quick cases and on the
#       N*V > 2^31 case alone (sanitizer_case.py --quick, --large-only),
#       racecheck on the quick cases: ~2.5 min instead of ~6.
#   GPU_CHECK_SKIP        steps to leave out, e.g. "tune sanitizer profile".
#   GPU_CHECK_PROFILE_S   limit of the ncu profile of the forwards (120 s).
# After the tune, its fastest Triton forward configuration, (when all agree
# with Triton) its fastest CUDA forward gate and (when the completed gradient
# matched) its fastest CUDA single-pass launch shape are exported as
# CRINGE_KERNELS_TRITON_FWD / CRINGE_KERNELS_CUDA_FWD_GATE /
# CRINGE_KERNELS_CUDA_SINGLE_PASS for the later steps, unless already set, so
# the benchmark shows what to commit as default.

set -u -o pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 OUT_DIR" >&2
  exit 2
fi
mkdir -p "$1"
OUT="$(cd "$1" && pwd)"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"

BUILD_S="${GPU_CHECK_BUILD_S:-120}"
TUNE_S="${GPU_CHECK_TUNE_S:-120}"
BENCH_BUDGET_S="${GPU_CHECK_BENCH_S:-120}"
TEST_S="${GPU_CHECK_TEST_S:-200}"
if [ "${GPU_CHECK_SANITIZER_QUICK:-0}" = 1 ]; then
  SANITIZER_S="${GPU_CHECK_SANITIZER_S:-200}"
else
  SANITIZER_S="${GPU_CHECK_SANITIZER_S:-420}"
fi
SKIP=" ${GPU_CHECK_SKIP:-} "
PY="${PYTHON:-$(command -v python || command -v python3)}"
# nvcc and compute-sanitizer often live only in the toolkit's folder.
for d in "${CUDA_HOME:-}/bin" /usr/local/cuda/bin; do
  [ -d "$d" ] && case ":$PATH:" in *":$d:"*) ;; *) PATH="$PATH:$d" ;; esac
done
export PATH
T0="$(date +%s)"

exec > >(tee -a "$OUT/gpu_check.log") 2>&1

FAILED=()
: > "$OUT/steps.txt"

# step NAME LIMIT_S CMD...: run CMD under a time limit, record the outcome.
step() {
  local name="$1" limit="$2"
  shift 2
  local start rc
  case "$SKIP" in *" $name "*)
    echo "=== step '$name' skipped (GPU_CHECK_SKIP)"
    echo "$name rc=skipped" >> "$OUT/steps.txt"
    return 0 ;;
  esac
  start="$(date +%s)"
  echo
  echo "=== [$(date -u +%H:%M:%S)] step '$name' (limit ${limit}s): $*"
  # -k: a process that ignores SIGTERM is killed 15 s later.
  timeout -k 15 "$limit" "$@"
  rc=$?
  local took=$(( $(date +%s) - start ))
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "=== step '$name': TIMED OUT after ${took}s (rc=$rc)"
    FAILED+=("$name(timeout)")
  elif [ "$rc" -ne 0 ]; then
    echo "=== step '$name': FAILED rc=$rc after ${took}s"
    FAILED+=("$name(rc=$rc)")
  else
    echo "=== step '$name': ok after ${took}s"
  fi
  echo "$name rc=$rc seconds=$took" >> "$OUT/steps.txt"
  return 0
}

environment() {
  echo "date (UTC): $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "git: $(git rev-parse HEAD 2>/dev/null) $(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo '(dirty)')"
  nvidia-smi || echo "nvidia-smi: not available"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit --format=csv || true
  command -v nvcc >/dev/null && nvcc --version || echo "nvcc: not on PATH"
  command -v compute-sanitizer >/dev/null && compute-sanitizer --version | head -3 || echo "compute-sanitizer: not on PATH"
  lscpu 2>/dev/null | grep -E "Model name|^CPU\(s\)" || true
  "$PY" - <<'EOF'
import platform, sys
import torch
print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("cuda available", torch.cuda.is_available(), "devices", torch.cuda.device_count())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.1f} GiB", f"sm_{p.major}{p.minor}", p.multi_processor_count, "SMs")
for name in ("triton", "pybind11", "numpy", "pytest", "hypothesis", "matplotlib", "liger_kernel", "tqdm"):
    try:
        mod = __import__(name)
        print(name, getattr(mod, "__version__", "?"))
    except Exception as err:
        print(name, "not available:", type(err).__name__)
EOF
}

build() {
  # FORCE_CUDA: a missing nvcc or a failed .cu compile must fail the build,
  # not silently produce a package without the CUDA module.
  CRINGE_KERNELS_FORCE_CUDA=1 "$PY" -m pip install --no-build-isolation --no-deps -v -e . > "$OUT/build.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT/build.log"
  # ptxas register/spill report, when the build printed one.
  grep -E "registers|spill" "$OUT/build.log" | head -n 40 || true
  return $rc
}

info() {
  "$PY" -m cringe_kernels.info 2>&1 | tee "$OUT/info.txt"
}

tune() {
  "$PY" benchmarks/kernel_tune.py --csv "$OUT/tune.csv" --best-fwd "$OUT/best_triton_fwd.txt" \
    --best-cuda-gate "$OUT/best_cuda_gate.txt" --best-cuda-single-pass "$OUT/best_cuda_single_pass.txt"
}

tests() {
  # --maxfail rather than -x: one GPU session should show more than the first
  # failure, but a broken build should not spend the whole limit failing.
  # pytest-xdist, where installed, spreads the suite over the machine's cores
  # (one GPU context per worker; the largest test needs ~9 GB).
  local par=() only=(-k "not sim")
  "$PY" -c "import xdist" 2>/dev/null && par=(-n 6)
  [ "${GPU_CHECK_WITH_SIM:-0}" = 1 ] && only=()
  # shellcheck disable=SC2086
  "$PY" -m pytest -q -ra --maxfail=10 --durations=15 "${par[@]}" "${only[@]}" --junitxml="$OUT/pytest.xml" \
    ${GPU_CHECK_TESTS:-tests} 2>&1 | tee "$OUT/pytest.log"
}

sanitizer() {
  local cs
  cs="$(command -v compute-sanitizer || true)"
  [ -z "$cs" ] && [ -x /usr/local/cuda/bin/compute-sanitizer ] && cs=/usr/local/cuda/bin/compute-sanitizer
  if [ -z "$cs" ]; then
    echo "compute-sanitizer not found" | tee "$OUT/sanitizer.log"
    return 1
  fi
  # No caching allocator: each tensor is its own allocation, so an overrun is
  # caught instead of landing in a pooled block's slack.
  local rc=0
  {
    if [ "${GPU_CHECK_SANITIZER_QUICK:-0}" = 1 ]; then
      echo "--- memcheck: the quick cases, then the N*V > 2^31 case alone (GPU_CHECK_SANITIZER_QUICK=1)"
      PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$cs" --tool memcheck --error-exitcode 1 \
        "$PY" benchmarks/sanitizer_case.py --quick || rc=1
      PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$cs" --tool memcheck --error-exitcode 1 \
        "$PY" benchmarks/sanitizer_case.py --large-only || rc=1
    else
      echo "--- memcheck: every edge case, plus N*V > 2^31"
      PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$cs" --tool memcheck --error-exitcode 1 \
        "$PY" benchmarks/sanitizer_case.py --large || rc=1
    fi
    # Warnings count: an intra-warp hazard is a race on Volta and later
    # (run 3 reported 210 of them, 0 errors, and exited 0 without this).
    echo "--- racecheck (the forwards' shared top-k state): the quick cases"
    "$cs" --tool racecheck --error-exitcode 1 "$PY" benchmarks/sanitizer_case.py --quick \
      2>&1 | tee "$OUT/racecheck.txt" || rc=1
    grep -q "RACECHECK SUMMARY: 0 hazards" "$OUT/racecheck.txt" || { echo "racecheck: hazards reported"; rc=1; }
    # The group runs in a subshell (it feeds tee): its status carries rc out.
    exit $rc
  } 2>&1 | tee "$OUT/sanitizer.log"
}

# Nsight Compute on one launch of each forward and of the CUDA single pass
# (benchmarks/profile_forward.py): why they stop short of the copy
# bandwidth, not only how long they take.
# SourceCounters samples where the warps stall (run 3's small-N rows say a
# row-kernel round is bound by its own serial path: this says which part).
profile() {
  local ncu
  ncu="$(command -v ncu || true)"
  [ -z "$ncu" ] && ncu="$(ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | tail -n 1)"
  if [ -z "$ncu" ]; then
    echo "ncu not found" | tee "$OUT/ncu.txt"
    return 1
  fi
  # --clock-control none: the card is measured as found (ncu would lock its clocks).
  "$ncu" --clock-control none --kernel-name regex:"row_threshold|row_stats_fwd" --launch-skip 0 --launch-count 8 \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section MemoryWorkloadAnalysis --section SourceCounters "$PY" benchmarks/profile_forward.py 2>&1 \
    | tee "$OUT/ncu.txt"
}

# One loss call traced with torch.profiler (benchmarks/profile_loss_call.py):
# how long the device waits for the host before the large kernel, and what
# the small kernels of the loss algebra add.
trace() {
  "$PY" benchmarks/profile_loss_call.py 2>&1 | tee "$OUT/trace.txt"
}

# The default measures the issues' goal point (bf16, 16384 tokens, Llama 3's
# 128256 vocabulary, forward + backward) for every provider; the preset
# sweeps (--quick, the default, --full) need far more than one lease.
GOAL_POINT="--N 16384 --V 128256 --dtypes bf16 --losses binary --modes full --compile-at all"

bench() {
  # shellcheck disable=SC2086
  "$PY" -m cringe_kernels.bench --device cuda --out "$OUT/bench" --time-budget "$BENCH_BUDGET_S" \
    --no-progress ${GPU_CHECK_BENCH_ARGS:-$GOAL_POINT}
}

# Host time of a tiny loss call per backend and path (benchmarks/host_overhead.py):
# the part of each call the GPU waits for; a few seconds.
host() {
  "$PY" benchmarks/host_overhead.py --device cuda --reps 300 --out "$OUT/host"
}

# torch.compile of the reference alone, with its own budget: at the goal
# point its compile and first call outran what the shared budget left it.
baseline() {
  # shellcheck disable=SC2086
  "$PY" -m cringe_kernels.bench --device cuda --out "$OUT/baseline" --time-budget "$BASELINE_S" \
    --no-progress --providers reference-compiled ${GPU_CHECK_BENCH_ARGS:-$GOAL_POINT}
}

# `timeout` runs programs, not shell functions: run each in a child bash.
export OUT PY
export -f environment build info tune tests sanitizer bench host baseline profile trace

step environment 60 bash -o pipefail -c 'environment 2>&1 | tee "$OUT/env.txt"'
step build "$BUILD_S" bash -o pipefail -c build
step info 60 bash -o pipefail -c info
step tune "$TUNE_S" bash -o pipefail -c tune
# The benchmark and the tests run the Triton forward with the configuration
# the tune found fastest (unless one was given), so that the numbers show the
# configuration to commit as the default.
if [ -z "${CRINGE_KERNELS_TRITON_FWD:-}" ] && [ -s "$OUT/best_triton_fwd.txt" ]; then
  CRINGE_KERNELS_TRITON_FWD="$(tr -d '[:space:]' < "$OUT/best_triton_fwd.txt")"
  export CRINGE_KERNELS_TRITON_FWD
  echo "=== Triton forward configuration for the rest of the run: CRINGE_KERNELS_TRITON_FWD=$CRINGE_KERNELS_TRITON_FWD"
fi
if [ -z "${CRINGE_KERNELS_CUDA_FWD_GATE:-}" ] && [ -s "$OUT/best_cuda_gate.txt" ]; then
  CRINGE_KERNELS_CUDA_FWD_GATE="$(tr -d '[:space:]' < "$OUT/best_cuda_gate.txt")"
  export CRINGE_KERNELS_CUDA_FWD_GATE
  echo "=== CUDA forward top-k gate for the rest of the run: CRINGE_KERNELS_CUDA_FWD_GATE=$CRINGE_KERNELS_CUDA_FWD_GATE"
fi
if [ -z "${CRINGE_KERNELS_CUDA_SINGLE_PASS:-}" ] && [ -s "$OUT/best_cuda_single_pass.txt" ]; then
  CRINGE_KERNELS_CUDA_SINGLE_PASS="$(tr -d '[:space:]' < "$OUT/best_cuda_single_pass.txt")"
  export CRINGE_KERNELS_CUDA_SINGLE_PASS
  echo "=== CUDA single-pass launch shape for the rest of the run: CRINGE_KERNELS_CUDA_SINGLE_PASS=$CRINGE_KERNELS_CUDA_SINGLE_PASS"
fi
# The sweep starts no measurement after BENCH_BUDGET_S; +90 s for start-up,
# the compile in flight when the budget runs out, and writing the results
# (SIGTERM still writes them).
export BENCH_BUDGET_S
step bench $(( BENCH_BUDGET_S + 90 )) bash -o pipefail -c bench
# Correctness before the diagnostics: a call cut short by its lease (run 6
# lost racecheck so) should lose a profile, not a check.
step tests "$TEST_S" bash -o pipefail -c tests
step sanitizer "$SANITIZER_S" bash -o pipefail -c sanitizer
step host 60 bash -o pipefail -c host
BASELINE_S="${GPU_CHECK_BASELINE_S:-0}"
export BASELINE_S GOAL_POINT
if [ "$BASELINE_S" -gt 0 ]; then
  step baseline $(( BASELINE_S + 60 )) bash -o pipefail -c baseline
fi
step trace 90 bash -o pipefail -c trace
step profile "${GPU_CHECK_PROFILE_S:-120}" bash -o pipefail -c profile
echo
echo "=== gpu_check finished in $(( $(date +%s) - T0 ))s; outputs in $OUT"
cat "$OUT/steps.txt"
if [ ${#FAILED[@]} -ne 0 ]; then
  echo "=== FAILED steps: ${FAILED[*]}"
  exit 1
fi
echo "=== all steps passed"
