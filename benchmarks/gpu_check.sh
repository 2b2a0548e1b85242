#!/usr/bin/env bash
# The GPU evidence at HEAD in one run, with defaults only: environment,
# build, the whole test suite, compute-sanitizer, N*V > 2^31, the goal point
# against a float64 reference, then the benchmark's standard sweep with its
# baselines. Everything lands in OUT_DIR.
#
#   benchmarks/gpu_check.sh OUT_DIR [all|checks|numbers]
#
# Expects a machine with a CUDA GPU, torch + triton, nvcc and pybind11, and
# no internet: it installs nothing from an index (the build uses
# --no-build-isolation --no-deps; wheels made by benchmarks/gpu_wheels.sh,
# carried in .whl/, are installed with --no-index). Each step is time-boxed
# with `timeout`; a failing or timed-out step is reported and the script goes
# on; the exit status is non-zero when any step failed. No launch setting is
# exported: every kernel runs with the package's own choices
# (cringe_kernels/backends/heuristics.py).
#
# Expected times on an H100 (seconds; the build, GPU tests, sanitizer, tune
# and host times are those of the runs in benchmarks/results/cuda-h100-6 and
# -7 scaled to today's 24 kernels and sanitizer cases; the rest estimated):
#
#   step         expected  limit  what
#   environment        10     60  versions, GPU, git commit
#   wheels             10     60  .whl/*.whl (baselines: Liger, CCE, transformers)
#   build              60    180  pip install -e . with nvcc (24 kernels x 2 archs)
#   info               10     60  python -m cringe_kernels.info
#   tests             200    330  the whole suite, pytest.xml (GPU tests ~90 s on
#                                 8 workers; the simulator's tests ~100 s of CPU)
#   memcheck          170    300  CUDA: every kernel path x dtype (~110 s);
#                                 N*V > 2^31 (~25 s); Triton, quick cases (~40 s)
#   racecheck          80    150  CUDA: the quick cases, 0 hazards required
#   goal               40    120  N=16384, V=128256 bf16: loss, gradient, samples
#                                 of cuda and triton vs float64 on 64 rows
#   bench             170    260  V {32000,128256,256000} x N {4096,16384} x
#                                 bf16/fp32, binary + pairwise, with baselines
#   linear             60    120  losses from hidden states, N=16384, D=4096,
#                                 V=128256 bf16, vs matmuls, Liger FLCE, CCE
#   train-step         60    120  one AdamW step of a 2048 x 8-layer decoder,
#                                 V=128256, 4 x 2048 tokens, per loss
#   host               25     60  host time per call (benchmarks/host_overhead.py)
#   tune               45    120  only with GPU_CHECK_TUNE=1: kernel_tune.py
#
# About 15 minutes in all. Where one call cannot hold that, run
# `gpu_check.sh OUT checks` (build to goal, ~10.5 min) and then
# `gpu_check.sh OUT2 numbers` (build, bench, linear, train-step, host,
# ~6.5 min).
#
# OUT_DIR receives gpu_check.log (everything printed), env.txt, build.log,
# info.txt, pytest.log + pytest.xml, memcheck.log, racecheck.log, goal.txt,
# bench/ (results.csv, results.json, summary.txt, plot_*.png), linear/,
# train-step/, host/host_overhead.csv, tune.csv (with GPU_CHECK_TUNE=1) and steps.txt (one
# line per step). To publish a run: copy them into
# benchmarks/results/cuda-<gpu>-<commit>/ and commit them.
#
# Knobs (environment): GPU_CHECK_<STEP>_S per-step limits (BUILD, TESTS,
# MEMCHECK, RACECHECK, BENCH: the benchmark's measuring budget);
# GPU_CHECK_SKIP, steps to leave out (e.g. "bench host"), for a second call
# after a first one was cut short; GPU_CHECK_TUNE=1 adds the tune.

set -u -o pipefail

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 OUT_DIR [all|checks|numbers]" >&2
  exit 2
fi
PHASE="${2:-all}"
case "$PHASE" in all|checks|numbers) ;; *) echo "unknown phase '$PHASE'" >&2; exit 2 ;; esac
mkdir -p "$1"
OUT="$(cd "$1" && pwd)"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"

BUILD_S="${GPU_CHECK_BUILD_S:-180}"
TESTS_S="${GPU_CHECK_TESTS_S:-330}"
MEMCHECK_S="${GPU_CHECK_MEMCHECK_S:-300}"
RACECHECK_S="${GPU_CHECK_RACECHECK_S:-150}"
BENCH_BUDGET_S="${GPU_CHECK_BENCH_S:-170}"
SKIP=" ${GPU_CHECK_SKIP:-} "
# The phase leaves out the other phase's steps.
case "$PHASE" in
  checks) SKIP="$SKIP bench linear train-step host tune " ;;
  numbers) SKIP="$SKIP tests memcheck racecheck goal " ;;
esac
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
    echo "=== step '$name' skipped (phase $PHASE, GPU_CHECK_SKIP)"
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

wheels() {
  # The baselines' packages, downloaded elsewhere by benchmarks/gpu_wheels.sh.
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install --no-index --no-deps .whl/*.whl
  else
    echo "no .whl/ folder: the benchmark skips the baselines it cannot import"
  fi
}

build() {
  # FORCE_CUDA: a missing nvcc or a failed .cu compile must fail the build,
  # not silently produce a package without the CUDA module.
  CRINGE_KERNELS_FORCE_CUDA=1 "$PY" -m pip install --no-build-isolation --no-deps -v -e . > "$OUT/build.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT/build.log"
  grep -E "registers|spill" "$OUT/build.log" | head -n 60 || true
  return $rc
}

info() {
  "$PY" -m cringe_kernels.info 2>&1 | tee "$OUT/info.txt"
}

tests() {
  # The whole suite: GPU tests, the simulator's (CPU) tests and the rest.
  # --maxfail rather than -x: one GPU session should show more than the first
  # failure, but a broken build should not spend the whole limit failing.
  # pytest-xdist, where installed, spreads it over the cores (one GPU context
  # per worker; the largest test needs ~9 GB).
  local par=()
  "$PY" -c "import xdist" 2>/dev/null && par=(-n 8)
  "$PY" -m pytest -q -ra --maxfail=20 --durations=20 "${par[@]}" --junitxml="$OUT/pytest.xml" tests 2>&1 \
    | tee "$OUT/pytest.log"
}

sanitizer_bin() {
  local cs
  cs="$(command -v compute-sanitizer || true)"
  [ -z "$cs" ] && [ -x /usr/local/cuda/bin/compute-sanitizer ] && cs=/usr/local/cuda/bin/compute-sanitizer
  echo "$cs"
}

memcheck() {
  local cs rc=0
  cs="$(sanitizer_bin)"
  [ -z "$cs" ] && { echo "compute-sanitizer not found" | tee "$OUT/memcheck.log"; return 1; }
  # No caching allocator: each tensor is its own allocation, so an overrun is
  # caught instead of landing in a pooled block's slack.
  {
    echo "--- memcheck, CUDA: every edge case and dtype, split rows, both single-pass shapes"
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$cs" --tool memcheck --error-exitcode 1 \
      "$PY" benchmarks/kernel_tune.py --sanitizer-case || rc=1
    echo "--- memcheck, CUDA: N*V > 2^31 (two-pass in place, single pass)"
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$cs" --tool memcheck --error-exitcode 1 \
      "$PY" benchmarks/kernel_tune.py --sanitizer-case --large-only || rc=1
    echo "--- memcheck, Triton: the quick cases"
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$cs" --tool memcheck --error-exitcode 1 \
      "$PY" benchmarks/kernel_tune.py --sanitizer-case --triton --quick || rc=1
    exit $rc
  } 2>&1 | tee "$OUT/memcheck.log"
}

racecheck() {
  local cs
  cs="$(sanitizer_bin)"
  [ -z "$cs" ] && { echo "compute-sanitizer not found" | tee "$OUT/racecheck.log"; return 1; }
  # Warnings count: an intra-warp hazard is a race on Volta and later.
  "$cs" --tool racecheck --error-exitcode 1 "$PY" benchmarks/kernel_tune.py --sanitizer-case --quick 2>&1 \
    | tee "$OUT/racecheck.log" || return 1
  grep -q "RACECHECK SUMMARY: 0 hazards" "$OUT/racecheck.log" || { echo "racecheck: hazards reported"; return 1; }
}

# The goal point (bf16, 16384 tokens, V = 128256), every GPU backend, two
# passes and the single pass: per-row loss, gradient and sampled columns
# against the reference in float64 on 64 rows (the rows of a binary loss
# with reduction="sum" are independent, so a subset is a fair reference).
goal() {
  "$PY" - <<'PYEOF' 2>&1 | tee "$OUT/goal.txt"
import torch
import cringe_kernels as ck

N, V, dev = 16384, 128256, "cuda"
g = torch.Generator(device=dev).manual_seed(0)
x = (2 * torch.randn(1, N, V, device=dev, generator=g)).to(torch.bfloat16)
y = torch.randint(0, V, (1, N), device=dev, generator=g)
y[0, ::7] = -100
fb = torch.rand(1, N, device=dev, generator=g) < 0.5
u = torch.rand(1, N, device=dev, generator=g)
rows = torch.randperm(N, device=dev, generator=g)[:64].sort().values
xr = x[:, rows].double().requires_grad_(True)
ref = ck.cringe_loss(xr, y[:, rows], fb[:, rows], uniform=u[:, rows], backend="reference", reduction="none",
                     return_details=True)
ref.loss.sum().backward()
failed = []
for backend in ("cuda", "triton"):
    for single in (False, True):
        xx = x.clone().requires_grad_(True)
        out = ck.cringe_loss(xx, y, fb, uniform=u, backend=backend, reduction="none", single_pass=single,
                             return_details=True)
        out.loss.sum().backward()
        torch.cuda.synchronize()
        loss_err = (out.loss[0, rows].double() - ref.loss[0]).abs().max().item()
        grad_err = (xx.grad[0, rows].double() - xr.grad[0]).abs().max().item()
        same = bool(torch.equal(out.sample_index[0, rows], ref.sample_index[0]))
        # bf16 gradients are rounded once (entries <= 1 + alpha: 2^-8 relative).
        ok = loss_err < 2e-3 and grad_err < 1e-2 and same
        print(f"{backend:6s} single_pass={single!s:5s}: max |loss - ref| {loss_err:.2e}, "
              f"max |grad - ref| {grad_err:.2e}, sampled columns equal: {same}  {'ok' if ok else 'FAILED'}")
        if not ok:
            failed.append((backend, single))
        del xx, out
        torch.cuda.empty_cache()
raise SystemExit(1 if failed else 0)
PYEOF
}

# The standard sweep, with the baselines the suite has (F.cross_entropy eager
# and compiled, the compiled reference, Liger, CCE: each skipped with a
# reason when its package is absent) measured in the same run.
SWEEP="--V 32000,128256,256000 --N 4096,16384 --dtypes bf16,fp32 --losses binary,pairwise --modes full"

bench() {
  # shellcheck disable=SC2086
  "$PY" -m cringe_kernels.bench --device cuda --out "$OUT/bench" --time-budget "$BENCH_BUDGET_S" \
    --no-progress $SWEEP
}

# Issue 18's goals on the GPU: the hidden-state losses and a training step.
linear() {
  "$PY" -m cringe_kernels.bench --device cuda --linear --out "$OUT/linear" --no-progress
}

train_step() {
  "$PY" -m cringe_kernels.bench --device cuda --train-step --out "$OUT/train-step" --no-progress
}

# Host time of a tiny loss call per backend and path; a few seconds.
host() {
  "$PY" benchmarks/host_overhead.py --device cuda --reps 300 --out "$OUT/host"
}

tune() {
  "$PY" benchmarks/kernel_tune.py --csv "$OUT/tune.csv" --best-fwd "$OUT/best_triton_fwd.txt" \
    --best-cuda-single-pass "$OUT/best_cuda_single_pass.txt"
}

# `timeout` runs programs, not shell functions: run each in a child bash.
export OUT PY SWEEP BENCH_BUDGET_S
export -f environment wheels build info tests sanitizer_bin memcheck racecheck goal bench linear train_step host tune

step environment 60 bash -o pipefail -c 'environment 2>&1 | tee "$OUT/env.txt"'
step wheels 60 bash -o pipefail -c wheels
step build "$BUILD_S" bash -o pipefail -c build
step info 60 bash -o pipefail -c info
step tests "$TESTS_S" bash -o pipefail -c tests
step memcheck "$MEMCHECK_S" bash -o pipefail -c memcheck
step racecheck "$RACECHECK_S" bash -o pipefail -c racecheck
step goal 120 bash -o pipefail -c goal
# The sweep starts no measurement after BENCH_BUDGET_S; +90 s for start-up,
# the compile in flight when the budget runs out, and writing the results.
step bench $(( BENCH_BUDGET_S + 90 )) bash -o pipefail -c bench
step linear 120 bash -o pipefail -c linear
step train-step 120 bash -o pipefail -c train_step
step host 60 bash -o pipefail -c host
if [ "${GPU_CHECK_TUNE:-0}" = 1 ]; then
  step tune 120 bash -o pipefail -c tune
fi
echo
echo "=== gpu_check finished in $(( $(date +%s) - T0 ))s; outputs in $OUT"
cat "$OUT/steps.txt"
if [ ${#FAILED[@]} -ne 0 ]; then
  echo "=== FAILED steps: ${FAILED[*]}"
  exit 1
fi
echo "=== all steps passed"
