"""The benchmark suite's own logic (not its timings): arguments, schema,
byte model, percentiles, skips and a tiny end-to-end sweep on the CPU."""

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cringe_kernels.bench import cli, metrics, output, providers, runner, timing, workloads
from cringe_kernels.bench.config import SweepConfig, preset

TINY = ["--device", "cpu", "--quick", "--V", "512", "--N", "32", "--no-plot", "--no-progress",
        "--compile-at", "none", "--max-reps", "2", "--rep-ms", "1", "--warmup-ms", "1",
        "--threads", "1"]


# ---------------------------------------------------------------- arguments


def test_defaults_come_from_the_device_preset():
    cfg = cli.parse_args(["--device", "cpu"])
    assert cfg == preset("cpu", "default")
    assert cfg.device == "cpu" and cfg.preset == "default"
    assert set(cfg.modes) == {"fwd", "bwd", "full"} and set(cfg.losses) == {"binary", "pairwise"}
    assert cli.parse_args(["--device", "cpu", "--quick"]).preset == "quick"
    assert cli.parse_args(["--device", "cpu", "--full"]).compile_at == "all"


def test_gpu_preset_is_the_standard_sweep():
    cfg = preset("cuda", "default")
    assert cfg.vocab_sizes == (32000, 128256, 256000)
    assert cfg.row_counts == (4096, 16384)
    assert cfg.dtypes == ("bf16", "fp32")
    assert cfg.standard in cfg.points()


def test_options_override_the_preset(tmp_path):
    cfg = cli.parse_args(["--device", "cpu", "--V", "1000,2000", "--N", "64", "--dtypes", "bfloat16,fp32,bf16",
                          "--modes", "forward,full", "--losses", "pairwise", "--providers", "reference,ce",
                          "--out", str(tmp_path), "--no-plot", "--time-budget", "30", "--threads", "1",
                          "--compile-at", "all", "--k", "3"])
    assert cfg.vocab_sizes == (1000, 2000) and cfg.row_counts == (64,)
    assert cfg.dtypes == ("bf16", "fp32")  # aliases normalized, duplicates dropped
    assert cfg.modes == ("fwd", "full") and cfg.losses == ("pairwise",)
    assert cfg.providers == ("reference", "ce")
    assert cfg.out_dir == str(tmp_path) and cfg.plot is False
    assert cfg.time_budget_s == 30 and cfg.threads == 1 and cfg.compile_at == "all" and cfg.k == 3


@pytest.mark.parametrize("argv", [
    ["--modes", "sideways"], ["--dtypes", "int8"], ["--V", "1"], ["--N", "abc"], ["--quick", "--full"],
    ["--losses", "hinge"], ["--compile-at", "sometimes"],
])
def test_bad_arguments_exit_with_status_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(["--device", "cpu"] + argv)
    assert exc.value.code == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(SystemExit):
        cli.parse_args(["--device", "cuda"])
    assert cli.resolve_device("auto") == "cpu"


def test_unknown_provider_names_the_known_ones():
    known = providers.all_providers("cpu")
    with pytest.raises(ValueError, match="reference"):
        providers.select(known, ["referense"])
    names = [p.name for p in providers.select(known, ["baselines"])]
    assert names[:2] == ["reference", "reference-compiled"] and "ce-eager" in names


def test_a_backend_named_but_unavailable_is_kept_as_a_skip():
    chosen = providers.select(providers.all_providers("cpu"), ["triton"], "cpu")
    assert [p.name for p in chosen] == ["triton"] and "interpreter" in chosen[0].unavailable


def test_every_kernel_backend_also_runs_in_place():
    names = [p.name for p in providers.all_providers("cpu")]
    for backend in providers.kernel_backends(torch.device("cpu")):
        assert backend in names and f"{backend}-inplace" in names


def test_a_single_pass_backend_gets_a_single_pass_provider(monkeypatch):
    # The CUDA kernels under the simulator stand in for the cuda backend.
    cuda_sim = pytest.importorskip("cuda_sim")
    if cuda_sim.MODULE is None:
        pytest.skip("the CUDA simulator module is not built")
    monkeypatch.setattr(providers, "kernel_backends", lambda device: ["cuda_sim"])
    by_name = {p.name: p for p in providers.all_providers("cpu")}
    assert "single_pass" in by_name["cuda_sim-two-pass"].note and "inplace" in by_name["cuda_sim-inplace"].note
    single = by_name["cuda_sim"]  # the loss's default: the single pass
    assert single.losses() == providers.CRINGE_LOSSES
    x = torch.randn(2, 3, 50, requires_grad=True)
    target = torch.randint(0, 50, (2, 3))
    feedback = torch.tensor([[True], [False]])
    loss = single.fn("binary")(x, target, feedback, torch.rand(2, 3))
    loss.backward()
    assert torch.isfinite(x.grad).all()
    xw = torch.randn(2, 3, 50, requires_grad=True)
    single.fn("pairwise")(xw, target, x.detach(), target, torch.rand(2, 3)).backward()
    assert torch.isfinite(xw.grad).all()


# ---------------------------------------------------------------- numbers


@pytest.mark.parametrize("values", [[3.0], [5.0, 1.0], [1.0, 2.0, 3.0, 4.0, 10.0], list(range(17))])
@pytest.mark.parametrize("q", [0, 20, 50, 80, 100])
def test_percentile_matches_numpy(values, q):
    np = pytest.importorskip("numpy")
    assert timing.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_rejects_bad_input():
    with pytest.raises(ValueError):
        timing.percentile([], 50)
    with pytest.raises(ValueError):
        timing.percentile([1.0], 101)


def test_byte_model():
    N, V = 4096, 128256
    assert metrics.model_bytes("fwd", N, V, 2) == N * V * 2  # one read
    assert metrics.model_bytes("bwd", N, V, 2) == 2 * N * V * 2  # read + write
    assert metrics.model_bytes("full", N, V, 4) == 3 * N * V * 4  # two reads + one write
    assert metrics.gbps(2e9, 1000.0) == pytest.approx(2.0)
    assert metrics.gbps(1, 0) is None
    r = {"mode": "bwd", "N": 10, "V": 100, "median_ms": 1.0}
    metrics.fill_bandwidth(r, 4, copy_gbps=0.016)
    assert r["model_bytes"] == 8000 and r["gbps"] == pytest.approx(0.008) and r["frac_copy_bw"] == pytest.approx(0.5)
    # Ignored rows are not read: only the rows read count.
    r = {"mode": "bwd", "N": 10, "rows_read": 6, "V": 100, "median_ms": 1.0}
    metrics.fill_bandwidth(r, 4, copy_gbps=0.016)
    assert r["model_bytes"] == 4800 and r["frac_copy_bw"] == pytest.approx(0.3)


def test_speedups_compare_with_baselines_of_the_same_point():
    def rec(provider, loss, ms, mode="full", V=100):
        return {"provider": provider, "loss": loss, "mode": mode, "V": V, "N": 8, "dtype": "fp32",
                "status": "ok", "median_ms": ms}
    records = [rec("reference", "binary", 10.0), rec("cpu", "binary", 2.0), rec("ce-eager", "ce", 1.0),
               rec("cpu", "binary", 5.0, V=200), rec("cpu", "pairwise", 4.0)]
    metrics.add_speedups(records)
    assert records[1]["speedup_vs_reference"] == pytest.approx(5.0)
    assert records[1]["speedup_vs_ce_eager"] == pytest.approx(0.5)
    assert records[1]["speedup_vs_reference_compiled"] is None
    assert records[2]["speedup_vs_reference"] is None  # CE is not the Cringe loss
    assert records[3]["speedup_vs_reference"] is None  # no baseline at V=200
    assert records[4]["speedup_vs_reference"] is None  # no pairwise reference


def test_shape_rows_gives_an_even_number_of_sequences():
    for N in (2, 32, 64, 256, 1000, 4096, 16384):
        for seq_len in (1, 32, 256, 1024):
            B, T = workloads.shape_rows(N, seq_len)
            assert B * T == N and B % 2 == 0 and T <= seq_len
    with pytest.raises(ValueError):
        workloads.shape_rows(7, 4)


def test_workloads_have_n_rows_and_fixed_draws():
    for loss in ("binary", "pairwise", "ce"):
        w = workloads.make_workload(loss, 64, 16, "fp32", "cpu", seq_len=4)
        assert sum(t.shape[0] * t.shape[1] if t.dim() == 3 else t.shape[0] for t in w.leaves) == 16
        assert all(t.requires_grad and t.shape[-1] == 64 for t in w.leaves)
        assert w.rows_read == 16  # no row ignored
    w = workloads.make_workload("binary", 64, 16, "bf16", "cpu", seq_len=4)
    feedback = w.args[2]
    assert feedback.shape == (4, 1) and feedback.sum().item() == 2  # half the sequences negative
    assert w.leaves[0].dtype == torch.bfloat16


# ---------------------------------------------------------------- timing and memory


def test_setup_is_not_timed():
    timer = timing.CpuTimer(warmup=1, rep_ms=1.0, min_reps=3, max_reps=3)
    t = timer.measure(lambda: None, setup=lambda: time.sleep(0.02))
    assert t.reps == 3 and t.median_ms < 10.0
    assert t.p20_ms <= t.median_ms <= t.p80_ms


def test_cuda_timer_keeps_setup_out_with_fake_events(monkeypatch):
    # The GPU timer's bookkeeping, checked without a GPU: events that read
    # the host clock when recorded stand in for CUDA events.
    class FakeEvent:
        def __init__(self, enable_timing=False):
            self.t = None

        def record(self):
            self.t = time.perf_counter()

        def synchronize(self):
            pass

        def elapsed_time(self, end):
            return (end.t - self.t) * 1e3

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    timer = timing.CudaTimer(2, 5.0, 3, 10, device="cpu")
    t = timer.measure(lambda: time.sleep(0.002), setup=lambda: time.sleep(0.02))
    assert 3 <= t.reps <= 10
    assert 1.5 <= t.median_ms < 15.0  # the 20 ms setup is not in it


def test_cpu_peak_memory_sees_a_large_tensor():
    meter = timing.make_memory_meter(torch.device("cpu"))
    if not meter.available:
        pytest.skip(meter.reason)
    reading = meter.measure(lambda: torch.ones(16 << 20).sum())  # 64 MiB of float32, written, freed
    assert 48 << 20 <= reading.peak_bytes <= 256 << 20


def test_bwd_mode_runs_the_forward_in_setup_and_inplace_refills():
    calls = {"fwd": 0, "refill": 0}
    w = workloads.make_workload("ce", 32, 8, "fp32", "cpu", seq_len=4)
    w.refill = lambda: calls.__setitem__("refill", calls["refill"] + 1)

    def fn(x, y):
        calls["fwd"] += 1
        return (x.float() ** 2).sum()

    setup, run = runner.mode_functions(fn, w, "bwd", mutates="backward")
    setup()
    assert calls == {"fwd": 1, "refill": 1}
    (grad,) = run()
    assert torch.allclose(grad, 2 * w.leaves[0].detach())
    setup, run = runner.mode_functions(fn, w, "fwd", mutates="backward")
    assert setup is None  # a forward does not overwrite the logits


# ---------------------------------------------------------------- sweeps


def _cfg(tmp_path, **kw):
    base = dict(device="cpu", preset="quick", vocab_sizes=(256,), row_counts=(16,), dtypes=("fp32",),
                standard=(256, 16, "fp32"), compile_at="none", seq_len=4, warmup=1, min_reps=1, max_reps=2,
                rep_ms=1.0, out_dir=str(tmp_path), plot=False, progress=False, copy_mib=16, warmup_ms=1.0,
                threads=1)
    base.update(kw)
    return SweepConfig(**base)


def test_failures_and_budgets_become_records(tmp_path):
    def broken(loss):
        def fn(*args):
            raise RuntimeError("kernel exploded\nsecond line")
        return fn
    provs = [providers.Provider("boom", "cringe", broken),
             providers.Provider("absent", "ce", lambda loss: None, unavailable="not installed here"),
             providers.Provider("ce-eager", "ce", lambda loss: providers.ce_fn)]
    result = runner.run_sweep(_cfg(tmp_path, modes=("full",)), providers=provs)
    by = {(r["provider"], r["loss"]): r for r in result.records}
    assert by[("boom", "binary")]["status"] == "error"
    assert by[("boom", "binary")]["reason"] == "RuntimeError: kernel exploded"
    assert by[("absent", "ce")]["status"] == "skipped" and by[("absent", "ce")]["reason"] == "not installed here"
    assert by[("ce-eager", "ce")]["status"] == "ok"
    flaky = providers.Provider("boom-compiled", "cringe", broken, compiled=True)
    result = runner.run_sweep(_cfg(tmp_path, modes=("fwd", "full"), compile_at="standard"), providers=[flaky])
    assert [r["status"] for r in result.records] == ["skipped"] * 4  # 2 losses x 2 modes
    assert result.records[0]["reason"] == "torch.compile failed: RuntimeError: kernel exploded"
    assert result.records[1]["reason"].endswith("(earlier)")  # not compiled again
    result = runner.run_sweep(_cfg(tmp_path, modes=("full",), time_budget_s=0.0), providers=provs[2:])
    assert [r["status"] for r in result.records] == ["skipped"]
    assert "time budget" in result.records[0]["reason"]


def test_a_measurement_running_past_the_budget_is_cut(tmp_path):
    def slow(loss):
        def fn(logits, target):
            time.sleep(0.3)
            return logits.sum()
        return fn
    provs = [providers.Provider("slow", "ce", slow), providers.Provider("slow-compiled", "ce", slow, compiled=True)]
    start = time.perf_counter()
    result = runner.run_sweep(_cfg(tmp_path, modes=("fwd", "full"), time_budget_s=0.5, compile_at="standard",
                                   min_reps=5), providers=provs)
    assert time.perf_counter() - start < 10
    assert [r["status"] for r in result.records] == ["skipped"] * 4
    assert result.records[0]["reason"] == "time budget ended during this measurement"
    assert not result.interrupted


def test_eager_providers_leave_part_of_the_budget_to_compiled_ones(tmp_path):
    provs = providers.all_providers("cpu")
    cfg = _cfg(tmp_path, compile_at="standard", time_budget_s=100.0)
    assert runner._deadlines(cfg, runner.plan(cfg, provs)) == {False: 100.0 * runner.EAGER_SHARE, True: 100.0}
    cfg = cfg.with_(compile_at="none")
    assert runner._deadlines(cfg, runner.plan(cfg, provs)) == {False: 100.0, True: 100.0}
    assert runner._deadlines(cfg.with_(time_budget_s=None), [])[False] == float("inf")


def test_points_run_smallest_first():
    cfg = preset("cuda", "default")
    sizes = [V * N * (2 if dt == "bf16" else 4) for V, N, dt in cfg.points()]
    assert sizes == sorted(sizes) and len(sizes) == 12


def test_compiled_providers_run_last_and_the_reference_only_at_the_standard_point(tmp_path):
    provs = providers.all_providers("cpu")
    cfg = _cfg(tmp_path, vocab_sizes=(256, 512), compile_at="standard")
    tasks = runner.plan(cfg, provs)
    compiled = [t for t in tasks if t.provider.compiled]
    reference = [t for t in compiled if t.provider.name == "reference-compiled"]
    assert reference and all((t.V, t.N, t.dtype) == (256, 16, "fp32") for t in reference)
    # Compiled cross-entropy, quick to compile, is the baseline at every point.
    assert {t.V for t in compiled if t.provider.name == "ce-compiled"} == {256, 512}
    first_compiled = tasks.index(compiled[0])
    assert all(t.provider.compiled for t in tasks[first_compiled:])
    assert not [t for t in runner.plan(cfg.with_(compile_at="none"), provs) if t.provider.compiled]
    assert {t.V for t in runner.plan(cfg.with_(compile_at="all"), provs) if t.provider.name == "reference-compiled"} \
        == {256, 512}


def test_tiny_sweep_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("CRINGE_KERNELS_CUDA_SPLIT", "auto")  # a knob in effect is recorded with the results
    out = tmp_path / "out"
    threads = torch.get_num_threads()
    start = time.perf_counter()
    status = cli.main(TINY + ["--providers", "reference,kernels,ce-eager", "--out", str(out)])
    assert time.perf_counter() - start < 60
    assert status == 0
    assert torch.get_num_threads() == threads  # restored after the sweep
    rows = output.read_csv(out / output.CSV_NAME)
    with open(out / output.CSV_NAME) as f:
        assert tuple(f.readline().strip().split(",")) == output.COLUMNS
    kernels = providers.kernel_backends(torch.device("cpu"))
    single = [name for name in kernels if providers._has_single_pass(name)]
    # 2 losses x 3 modes per Cringe provider (kernels: plain, in place and,
    # where there is one, single pass), 3 modes of CE.
    assert len(rows) == 6 * (1 + 2 * len(kernels) + len(single)) + 3
    assert all(r["status"] == "ok" for r in rows), [r for r in rows if r["status"] != "ok"]
    for r in rows:
        assert float(r["median_ms"]) > 0 and float(r["p20_ms"]) <= float(r["median_ms"]) <= float(r["p80_ms"])
        assert int(r["rows_read"]) == 32
        assert int(r["model_bytes"]) == metrics.model_bytes(r["mode"], 32, 512, 4)
    ref = [r for r in rows if r["provider"] == "reference"]
    assert all(float(r["speedup_vs_reference"]) == pytest.approx(1.0) for r in ref)
    assert all(r["speedup_vs_ce_eager"] for r in ref)
    with open(out / output.JSON_NAME) as f:
        doc = json.load(f)
    for key in ("device_name", "torch", "triton", "python", "git_commit", "date_utc", "cpu_model", "cpu_count"):
        assert key in doc["environment"]
    assert doc["environment"]["settings"]["CRINGE_KERNELS_CUDA_SPLIT"] == "auto"
    assert doc["byte_model"] and doc["copy_bandwidth"]["gbps"] > 0
    assert len(doc["records"]) == len(rows) and doc["columns"] == list(output.COLUMNS)
    summary = (out / output.SUMMARY_NAME).read_text()
    assert "reference" in summary and "ce-eager" in summary and "median time" in summary
    assert "settings: " in summary and "CRINGE_KERNELS_CUDA_SPLIT=auto" in summary
    assert "byte model: " in summary and "rows_read" in summary


def test_plots_are_written_when_matplotlib_exists(tmp_path):
    pytest.importorskip("matplotlib")
    from cringe_kernels.bench.plots import plot_all

    records = []
    for provider, loss in (("reference", "binary"), ("ce-eager", "ce")):
        for V in (256, 512):
            for mode in ("fwd", "full"):
                records.append({"provider": provider, "loss": loss, "mode": mode, "V": V, "N": 16,
                                "dtype": "fp32", "status": "ok", "median_ms": V / 100, "peak_mem_mib": V / 64})
    paths, note = plot_all(records, str(tmp_path))
    assert note == "" and [os.path.basename(p) for p in paths] == ["plot_binary_fp32_N16.png"]
    assert os.path.getsize(paths[0]) > 1000


def test_summary_marks_skips_and_errors():
    records = [
        {"provider": "reference", "loss": "binary", "mode": "full", "V": 8, "N": 2, "dtype": "fp32",
         "status": "ok", "median_ms": 2.0, "peak_mem_mib": 1.0},
        {"provider": "cuda", "loss": "binary", "mode": "full", "V": 8, "N": 2, "dtype": "fp32",
         "status": "skipped", "reason": "no GPU", "median_ms": None},
        {"provider": "cpu", "loss": "binary", "mode": "full", "V": 8, "N": 2, "dtype": "fp32",
         "status": "error", "reason": "boom", "median_ms": None},
    ]
    result = runner.SweepResult(SweepConfig(), records, {"device_name": "x"}, None, "m")
    text = output.summary(result)
    assert "skip" in text and "ERR" in text and "boom" in text
    empty = runner.SweepResult(SweepConfig(), [], {}, None, "m", interrupted=True)
    assert "no measurements" in output.summary(empty) and "INTERRUPTED" in output.summary(empty)


def test_list_providers_says_what_runs_here(capsys):
    assert cli.main(["--device", "cpu", "--list-providers"]) == 0
    out = capsys.readouterr().out
    assert "reference" in out and "ce-eager" in out and "liger-ce" in out


def test_kernel_tune_script_runs_under_the_interpreter(tmp_path):
    """benchmarks/kernel_tune.py (run by gpu_check.sh) works end to end: every
    launch it makes, its CSV and the configuration it hands on. On the CPU
    through Triton's interpreter and (CRINGE_KERNELS_TUNE_CUDA_SIM=1) the CUDA
    simulator, so a broken script never costs GPU time."""
    pytest.importorskip("triton")
    cuda_sim = pytest.importorskip("cuda_sim")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "kernel_tune.py"
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="", CRINGE_KERNELS_TUNE_CUDA_SIM="1")
    out = subprocess.run(
        [sys.executable, str(script), "--N", "3", "--V", "70", "--csv", str(tmp_path / "t.csv"),
         "--best-fwd", str(tmp_path / "best.txt"), "--best-cuda-single-pass", str(tmp_path / "shape.txt"),
         "--small-n", "1,3"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    kinds = {r["kind"] for r in rows}
    assert {"copy", "triton-fwd", "triton-fwd-k0", "triton-bwd", "triton-bwd-sparse", "triton-small-fwd N=1",
            "triton-small-bwd N=3"} <= kinds
    # The Triton single pass's two-column completion gave the two-pass gradient bit for bit.
    assert "triton single pass: completed gradient == two-pass gradient: True" in out.stdout, out.stdout[-3000:]
    block, warps, sub = (int(v) for v in (tmp_path / "best.txt").read_text().split(","))
    assert block & (block - 1) == 0 and sub <= block and warps in (4, 8, 16)
    if cuda_sim.MODULE is not None:
        assert {"cuda-fwd", "cuda-bwd", "cuda-fwd+grad", "cuda-bwd-sparse"} <= kinds, out.stdout[-3000:]
        # Every CUDA forward agreed with Triton's, and the single pass
        # completed to the two-pass gradient bit for bit.
        # with and without cache, staged and not, and Triton's
        assert out.stdout.count("cuda single pass (cache=") == 4
        assert out.stdout.count("completed gradient == two-pass gradient: True") == 5
        assert "two-pass gradient: False" not in out.stdout
        # Few rows: one block per row against pieces, which agree.
        assert {"cuda-small-fwd N=1", "cuda-small-bwd N=3"} <= kinds and "DISAGREES" not in out.stdout
        assert "cuda split rows failed" not in out.stdout
        # THREADS,BLOCKS_PER_SM,CACHE_KB,STAGED: compared by hand with heuristics.single_pass_shape.
        shape = (tmp_path / "shape.txt").read_text().strip()
        threads, blocks, cache_kb = (int(v) for v in shape.split(",")[:3])
        assert threads in (128, 256, 512) and blocks in (1, 2, 3, 4) and cache_kb in (0, 48, 64, 100, 200)
        assert shape.split(",")[3] in ("True", "False")



def test_host_overhead_script_runs(tmp_path):
    """benchmarks/host_overhead.py (run by gpu_check.sh) works end to end on
    the CPU: F.cross_entropy's row and every (loss, path, value checks) row of
    the CPU backend are filled, with ratios to the baseline of the same run,
    and the time to the launch is below the whole call."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "host_overhead.py"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    out = subprocess.run([sys.executable, str(script), "--device", "cpu", "--reps", "20", "--out", str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line for line in open(tmp_path / "host_overhead.csv") if not line.startswith("#")]
    rows = list(csv.DictReader(lines))
    assert rows[0]["loss"] == "F.cross_entropy" and float(rows[0]["ratio_to_ce"]) == 1.0
    cpu = [r for r in rows if r["backend"] == "cpu"]
    assert {(r["loss"], r["path"], r["value_checks"]) for r in cpu} == {
        (loss, p, c) for loss in ("cringe_loss", "pairwise_cringe_loss")
        for p in ("two passes", "single pass (auto)") for c in ("on", "off")}
    ce_us = float(rows[0]["fwd_bwd_us"])
    for r in cpu:
        assert float(r["fwd_bwd_us"]) > 0
        assert abs(float(r["ratio_to_ce"]) - float(r["fwd_bwd_us"]) / ce_us) < 0.01 * float(r["ratio_to_ce"]) + 0.01
        assert 0 < float(r["to_launch_us"]) < float(r["fwd_bwd_us"])


# ---------------------------------------------------------------- hidden-state and training-step modes


def test_step_modes_take_their_own_options():
    from cringe_kernels.bench import hidden_states, train_step

    cfg = cli.parse_args(["--device", "cpu", "--linear"])
    assert cfg == hidden_states.preset("cpu")
    # Issue 18's CPU goal shape is the default point.
    assert cfg.points() == [(8192, 512, 32000, "fp32")]
    assert hidden_states.preset("cuda").points() == [(16384, 4096, 128256, "bf16")]
    cfg = cli.parse_args(["--device", "cpu", "--linear", "--N", "64,128", "--D", "32", "--V", "500",
                          "--chunk-size", "16", "--losses", "pairwise", "--providers", "linear,matmuls"])
    assert cfg.row_counts == (64, 128) and cfg.hidden_sizes == (32,) and cfg.vocab_sizes == (500,)
    assert cfg.chunk_size == 16 and cfg.losses == ("pairwise",) and cfg.providers == ("linear", "matmuls")
    cfg = cli.parse_args(["--device", "cpu", "--train-step", "--D", "128", "--layers", "3", "--batch", "4",
                          "--seq-len", "64", "--V", "1000", "--dtypes", "bf16"])
    assert isinstance(cfg, train_step.TrainStepConfig)
    assert (cfg.hidden_size, cfg.layers, cfg.batch, cfg.seq_len, cfg.vocab_size, cfg.dtype) == (
        128, 3, 4, 64, 1000, "bf16")
    assert cfg.hidden_size % cfg.heads == 0
    gpu = train_step.preset("cuda")
    assert (gpu.hidden_size, gpu.layers, gpu.vocab_size, gpu.batch, gpu.seq_len) == (2048, 8, 128256, 4, 2048)


@pytest.mark.parametrize("argv", [
    ["--D", "32"], ["--layers", "2"], ["--linear", "--modes", "fwd"], ["--linear", "--layers", "2"],
    ["--train-step", "--N", "64"], ["--train-step", "--V", "100,200"], ["--linear", "--train-step"],
    ["--linear", "--chunk-size", "0"], ["--train-step", "--compile-at", "all"],
])
def test_step_mode_options_in_the_wrong_mode_exit_with_status_2(argv):
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(["--device", "cpu"] + argv)
    assert exc.value.code == 2


class _FakeMeter(timing.MemoryMeter):
    """Reports a fixed peak, so the subtraction of what the step keeps is checked exactly."""

    method = "fake"

    def __init__(self, peak):
        self.peak = peak

    def measure(self, fn):
        fn()
        return timing.MemoryReading(self.peak)


def test_measure_step_subtracts_what_the_step_keeps():
    from cringe_kernels.bench import steps

    timer = timing.CpuTimer(warmup=1, rep_ms=1.0, min_reps=2, max_reps=2)
    kept = (torch.zeros(1024), torch.zeros(256, dtype=torch.float64))  # 4 KiB + 2 KiB
    values = steps.measure_step(lambda: kept, timer, _FakeMeter(10 << 20))
    assert values["kept_mib"] == pytest.approx(6 / 1024)
    assert values["peak_mem_mib"] == pytest.approx(10 - 6 / 1024)
    assert values["reps"] == 2 and values["median_ms"] >= 0
    # Never below zero when the peak came before what is kept.
    assert steps.measure_step(lambda: kept, timer, _FakeMeter(1024))["peak_mem_mib"] == 0


def test_fill_ratio_compares_only_the_same_point():
    from cringe_kernels.bench import steps

    def rec(provider, loss, ms, N=8):
        return {"provider": provider, "loss": loss, "N": N, "status": "ok", "median_ms": ms}
    records = [rec("base", "binary", 10.0), rec("fast", "binary", 2.0), rec("other", "binary", 5.0),
               rec("fast", "binary", 4.0, N=16), {"provider": "broken", "loss": "binary", "N": 8,
                                                    "status": "error", "median_ms": None}]
    point = lambda r: (r["N"],)
    steps.fill_ratio(records, point, "speedup", lambda r: [("binary", "base")], "median_ms", invert=True)
    steps.fill_ratio(records, point, "vs_best", lambda r: [("binary", "fast"), ("binary", "other")], "median_ms")
    assert [r["speedup"] for r in records] == [1.0, 5.0, 2.0, None, None]
    assert records[0]["vs_best"] == pytest.approx(5.0)  # the faster of the two baselines
    assert records[3]["vs_best"] == 1.0 and records[4]["vs_best"] is None


def test_hidden_state_providers_compute_the_same_gradients():
    """Every Cringe provider of --linear computes the loss's gradients (the
    floor excepted, which does only its matmuls); the CE ones plain CE's."""
    from cringe_kernels.bench import hidden_states

    provs = {p.name: p for p in hidden_states.all_providers("cpu", k=3, chunk_size=24)}
    assert provs["liger-flce"].unavailable and provs["cce"].unavailable  # GPU kernels: skipped with a reason
    assert not provs["linear"].unavailable, provs["linear"].unavailable
    for loss in ("binary", "pairwise"):
        w = hidden_states.make_workload(loss, 64, 16, 300, "fp64", "cpu", seq_len=16)
        want = provs["logits+cringe"].build(w)()
        assert len(want) == len(w.hidden) + 1
        for name in ("linear", "matmuls+kernel", "matmuls+kernel-single-pass"):
            got = provs[name].build(w)()
            for g, ref in zip(got, want):
                torch.testing.assert_close(g, ref, rtol=1e-9, atol=1e-12, msg=f"{name} {loss}")
        floor = provs["matmuls"].build(w)()
        logits = [h.detach() @ w.weight.detach().T for h in w.hidden]
        torch.testing.assert_close(floor[0], (logits[0] @ w.weight.detach()).view_as(w.hidden[0]))
        torch.testing.assert_close(floor[-1], sum(x.reshape(-1, 300).T @ h.detach().reshape(-1, 16)
                                                  for x, h in zip(logits, w.hidden)))
    w = hidden_states.make_workload("binary", 64, 16, 300, "fp64", "cpu", seq_len=16)
    got = provs["logits+ce"].build(w)()
    h, W = (t.detach().requires_grad_(True) for t in (w.hidden[0], w.weight))
    want = torch.autograd.grad(torch.nn.functional.cross_entropy((h @ W.T).reshape(-1, 300),
                                                                 w.targets[0].reshape(-1)), (h, W))
    for g, ref in zip(got, want):
        torch.testing.assert_close(g, ref)


def test_linear_mode_end_to_end(tmp_path):
    from cringe_kernels.bench import hidden_states

    out = tmp_path / "linear"
    start = time.perf_counter()
    status = cli.main(["--device", "cpu", "--linear", "--quick", "--N", "64", "--D", "16", "--V", "300",
                       "--out", str(out), "--no-progress", "--threads", "1", "--max-reps", "2", "--min-reps", "1",
                       "--rep-ms", "1", "--warmup-ms", "1"])
    assert time.perf_counter() - start < 60
    assert status == 0
    rows = output.read_csv(out / output.CSV_NAME)
    with open(out / output.CSV_NAME) as f:
        assert tuple(f.readline().strip().split(",")) == hidden_states.COLUMNS
    by = {(r["provider"], r["loss"]): r for r in rows}
    cringe = ["linear", "logits+cringe", "matmuls", "matmuls+kernel", "matmuls+kernel-single-pass"]
    assert set(by) == {(p, loss) for p in cringe for loss in ("binary", "pairwise")} | {
        ("logits+ce", "ce"), ("liger-flce", "ce"), ("cce", "ce")}
    assert by[("liger-flce", "ce")]["status"] == "skipped" and "CUDA" in by[("liger-flce", "ce")]["reason"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == len(rows) - 2
    for r in ok:
        assert (r["N"], r["D"], r["V"], r["dtype"]) == ("64", "16", "300", "fp32")
        assert float(r["median_ms"]) > 0 and r["peak_mem_mib"] != ""
        # The step keeps the gradients of hidden and weight: (N + V) * D floats.
        assert float(r["kept_mib"]) == pytest.approx((64 + 300) * 16 * 4 / 2**20)
        assert float(r["matmul_tflops"]) == pytest.approx(6 * 64 * 16 * 300 / float(r["median_ms"]) / 1e9, rel=1e-4)
    for loss in ("binary", "pairwise"):
        assert float(by[("logits+cringe", loss)]["speedup_vs_logits"]) == pytest.approx(1.0)
        assert float(by[("matmuls", loss)]["time_vs_matmuls"]) == pytest.approx(1.0)
        lin = by[("linear", loss)]
        assert float(lin["speedup_vs_logits"]) == pytest.approx(
            float(by[("logits+cringe", loss)]["median_ms"]) / float(lin["median_ms"]), rel=1e-4)
        floor = min(float(by[(p, loss)]["median_ms"]) for p in ("matmuls+kernel", "matmuls+kernel-single-pass"))
        assert float(lin["time_vs_matmuls_kernel"]) == pytest.approx(float(lin["median_ms"]) / floor, rel=1e-4)
    with open(out / output.JSON_NAME) as f:
        doc = json.load(f)
    assert doc["mode"].startswith("hidden states") and "6 * N * D * V" in doc["flop_model"]
    assert "gradients" in doc["memory_method"] and doc["environment"]["git_commit"]
    summary = (out / output.SUMMARY_NAME).read_text()
    assert "goals (issue 18)" in summary and "linear" in summary and "N=64 D=16 V=300 fp32" in summary


def test_train_step_mode_end_to_end(tmp_path):
    pytest.importorskip("transformers")
    from cringe_kernels.bench import train_step

    out = tmp_path / "train"
    start = time.perf_counter()
    status = cli.main(["--device", "cpu", "--train-step", "--quick", "--out", str(out), "--no-progress",
                       "--threads", "1", "--max-reps", "2", "--min-reps", "1", "--rep-ms", "1", "--warmup-ms", "1"])
    assert time.perf_counter() - start < 60
    assert status == 0
    rows = output.read_csv(out / output.CSV_NAME)
    with open(out / output.CSV_NAME) as f:
        assert tuple(f.readline().strip().split(",")) == train_step.COLUMNS
    by = {r["provider"]: r for r in rows}
    assert list(by) == ["hf-ce", "cringe-logits", "cringe-hidden", "liger-flce", "cce"]
    for name in ("hf-ce", "cringe-logits", "cringe-hidden"):
        r = by[name]
        assert r["status"] == "ok", r
        assert int(r["tokens"]) == 2 * 16
        assert float(r["tokens_per_s"]) == pytest.approx(32 / (float(r["median_ms"]) * 1e-3), rel=1e-4)
        assert float(r["params_m"]) > 0 and r["peak_mem_mib"] != ""
    assert float(by["hf-ce"]["speedup_vs_hf_ce"]) == pytest.approx(1.0)
    assert by["cce"]["status"] == "skipped"
    with open(out / output.JSON_NAME) as f:
        doc = json.load(f)
    assert doc["config"]["layers"] == 1 and doc["environment"]["transformers"]
    if doc["files"].get("plots"):
        assert (out / "plot_train_step.png").stat().st_size > 1000


def test_train_step_losses_from_logits_and_from_hidden_states_agree():
    """The two Cringe providers of --train-step compute the same loss and
    gradients on the same model and batch (same draws)."""
    pytest.importorskip("transformers")
    from cringe_kernels.bench import train_step

    cfg = train_step.preset("cpu", "quick").with_(dtype="fp64")
    model, batch = train_step.build_model(cfg), train_step.make_batch(cfg)
    fns = train_step.loss_fns(cfg)
    results = []
    for name in ("cringe-logits", "cringe-hidden"):
        model.zero_grad(set_to_none=True)
        loss = fns[name](model, batch)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b)


def test_measure_group_interleaves_and_records_failures():
    from cringe_kernels.bench import steps

    calls = []

    def builder(name, fail_at=None):
        def build():
            def step():
                calls.append(name)
                if fail_at is not None and calls.count(name) >= fail_at:
                    raise RuntimeError(f"{name} broke\nmore")
                return (torch.zeros(8),)
            return step
        return build

    def no_build():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    timer = timing.CpuTimer(warmup=1, rep_ms=1.0, min_reps=3, max_reps=3, warmup_ms=0.0)
    got = steps.measure_group([("a", builder("a")), ("b", builder("b")), ("c", builder("c", fail_at=3)),
                               ("oom", no_build)], timer, _FakeMeter(1 << 20))
    assert list(got) == ["a", "b", "c", "oom"]
    assert got["a"]["reps"] == 3 and got["b"]["reps"] == 3
    assert got["a"]["peak_mem_mib"] == pytest.approx(1 - 32 / 2**20)
    assert got["c"] == {"status": "error", "reason": "RuntimeError: c broke"}
    assert got["oom"]["status"] == "skipped" and got["oom"]["reason"] == "out of memory"
    # Warm-ups one after another, then rounds of one call each: a b c a b c a b ...
    timed = calls[3:]
    assert timed[:5] == ["a", "b", "c", "a", "b"]
