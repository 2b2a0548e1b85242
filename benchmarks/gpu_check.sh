#!/usr/bin/env bash
# One GPU session, one script: environment, build, backend table, tests,
# memcheck, benchmark sweep; everything lands in OUT_DIR.
#
#   benchmarks/gpu_check.sh OUT_DIR
#
# Expects a machine with a CUDA GPU, torch + triton, nvcc and pybind11 already
# installed, and no internet: it installs nothing from an index (the build
# uses --no-build-isolation --no-deps). Each step is time-boxed with
# `timeout`; a failing or timed-out step is reported and the script goes on;
# the exit status is non-zero when any step failed. The whole run is sized to
# about 5 minutes (GPU_CHECK_TOTAL_S, default 300): the benchmark gets what the
# earlier steps left, at most GPU_CHECK_BENCH_S (default 150) seconds of
# measuring, and starts no measurement after that (see --time-budget).
#
# OUT_DIR receives: gpu_check.log (everything printed), env.txt, build.log,
# info.txt, pytest.log + pytest.xml, sanitizer.log, bench/ (results.csv,
# results.json, summary.txt, plot_*.png) and steps.txt (one line per step).
# To publish a run: copy bench/* and gpu_check.log into
# benchmarks/results/cuda-<gpu>/ and commit them.
#
# Per-step limits in seconds can be overridden: GPU_CHECK_BUILD_S,
# GPU_CHECK_TEST_S, GPU_CHECK_SANITIZER_S. Extra benchmark arguments:
# GPU_CHECK_BENCH_ARGS (for example "--quick" or "--providers kernels,ce").

set -u -o pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 OUT_DIR" >&2
  exit 2
fi
mkdir -p "$1"
OUT="$(cd "$1" && pwd)"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"

TOTAL_S="${GPU_CHECK_TOTAL_S:-300}"
BUILD_S="${GPU_CHECK_BUILD_S:-100}"
TEST_S="${GPU_CHECK_TEST_S:-75}"
SANITIZER_S="${GPU_CHECK_SANITIZER_S:-45}"
BENCH_MAX_S="${GPU_CHECK_BENCH_S:-150}"
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

tests() {
  # --maxfail rather than -x: one GPU session should show more than the first
  # failure, but a broken build should not spend the whole limit failing.
  "$PY" -m pytest -q -ra --maxfail=10 --junitxml="$OUT/pytest.xml" tests 2>&1 | tee "$OUT/pytest.log"
}

sanitizer() {
  local cs
  cs="$(command -v compute-sanitizer || true)"
  [ -z "$cs" ] && [ -x /usr/local/cuda/bin/compute-sanitizer ] && cs=/usr/local/cuda/bin/compute-sanitizer
  if [ -z "$cs" ]; then
    echo "compute-sanitizer not found" | tee "$OUT/sanitizer.log"
    return 1
  fi
  "$cs" --tool memcheck --error-exitcode 1 "$PY" benchmarks/sanitizer_case.py 2>&1 | tee "$OUT/sanitizer.log"
}

bench() {
  # shellcheck disable=SC2086
  "$PY" -m cringe_kernels.bench --device cuda --out "$OUT/bench" --time-budget "$BENCH_BUDGET_S" \
    ${GPU_CHECK_BENCH_ARGS:-}
}

# `timeout` runs programs, not shell functions: run each in a child bash.
export OUT PY
export -f environment build info tests sanitizer bench

step environment 60 bash -o pipefail -c 'environment 2>&1 | tee "$OUT/env.txt"'
step build "$BUILD_S" bash -o pipefail -c build
step info 60 bash -o pipefail -c info
step tests "$TEST_S" bash -o pipefail -c tests
if [ -f benchmarks/sanitizer_case.py ]; then
  step sanitizer "$SANITIZER_S" bash -o pipefail -c sanitizer
else
  echo "=== step 'sanitizer' not run: benchmarks/sanitizer_case.py does not exist"
  echo "sanitizer rc=skipped" >> "$OUT/steps.txt"
fi
# The sweep gets what is left of the total, at most BENCH_MAX_S of measuring
# (and at least 45 s); +60 s for start-up, the compile in flight when the
# budget runs out, and writing the results (SIGTERM still writes them).
LEFT=$(( TOTAL_S - ($(date +%s) - T0) - 60 ))
BENCH_BUDGET_S=$BENCH_MAX_S
[ "$LEFT" -lt "$BENCH_BUDGET_S" ] && BENCH_BUDGET_S=$LEFT
[ "$BENCH_BUDGET_S" -lt 45 ] && BENCH_BUDGET_S=45
export BENCH_BUDGET_S
step bench $(( BENCH_BUDGET_S + 60 )) bash -o pipefail -c bench

echo
echo "=== gpu_check finished in $(( $(date +%s) - T0 ))s; outputs in $OUT"
cat "$OUT/steps.txt"
if [ ${#FAILED[@]} -ne 0 ]; then
  echo "=== FAILED steps: ${FAILED[*]}"
  exit 1
fi
echo "=== all steps passed"
