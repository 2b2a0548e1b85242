"""The SIMT simulator that runs the CUDA kernels on the CPU (tests/simt).

test_cuda_backend.py trusts it to execute the kernels as a GPU would, so it
must compute a correct block reduction and a segmented shuffle right, and
must report, not paper over, what would hang or misbehave on the hardware:
warp operations in divergent code, a shuffle waiting on a barrier, reads
of uninitialised shared memory (dynamic, and static in every block, not only
the first), lost updates of a plain read-modify-write that atomicAdd
prevents, shared accesses outside every variable, and launches the hardware
refuses. test_simt_mutations.py shows the same on the shipped kernels.

Its AddressSanitizer build is the CPU counterpart of compute-sanitizer's
memcheck: the last tests run every edge case of ``benchmarks/kernel_tune.py
--sanitizer-case`` through the CUDA kernels under ASan, after showing that
ASan does report a read past a buffer's end.
"""

import ctypes
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

cuda_sim = pytest.importorskip("cuda_sim")

# cudaError_t values (driver_types.h).
CUDA_SUCCESS, CUDA_INVALID_VALUE, CUDA_INVALID_CONFIGURATION = 0, 1, 9


@pytest.fixture(scope="module")
def selftest():
    try:
        lib = ctypes.CDLL(cuda_sim.build("selftest"))
    except RuntimeError as err:
        if cuda_sim.MODULE is None:
            pytest.skip(str(err))
        raise
    fn = lib.simt_selftest
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    fn.restype = ctypes.c_int

    def run(which, out_size=64, inp=None):
        out = np.zeros(out_size, dtype=np.float32)
        msg = ctypes.create_string_buffer(1024)
        rc = fn(which, None if inp is None else inp.ctypes.data, out.ctypes.data, msg, len(msg))
        return rc, out, msg.value.decode()

    return run


def test_block_reduction(selftest):
    x = np.random.default_rng(0).standard_normal((3, 1000)).astype(np.float32)
    rc, out, msg = selftest(0, inp=x)
    assert rc == CUDA_SUCCESS, msg
    np.testing.assert_allclose(out[:3], x.sum(1), rtol=1e-5, atol=1e-4)


def test_shuffle_width_keeps_segments(selftest):
    rc, out, msg = selftest(1, out_size=32)
    assert rc == CUDA_SUCCESS, msg
    lane = np.arange(32)
    np.testing.assert_array_equal(out, (lane ^ 1) + 100 * lane)


def test_divergent_warp_operations_are_reported(selftest):
    rc, _, msg = selftest(2)
    assert rc == -1 and "divergent warp operations" in msg


def test_shuffle_waiting_on_a_barrier_is_a_deadlock(selftest):
    rc, _, msg = selftest(3)
    assert rc == -1 and "deadlock" in msg and "__shfl_xor_sync" in msg and "__syncthreads" in msg


def test_uninitialised_dynamic_shared_memory_reads_nan(selftest):
    rc, out, msg = selftest(4)
    assert rc == CUDA_SUCCESS, msg
    assert np.isnan(out).all()


def test_static_shared_memory_is_uninitialised_in_every_block(selftest):
    # Block 0 writes 1 everywhere after reading; blocks 1 and 2 still find NaN.
    rc, out, msg = selftest(9, out_size=3 * 64)
    assert rc == CUDA_SUCCESS, msg
    assert np.isnan(out).all(), out


@pytest.mark.parametrize("schedule", ["forward", "reverse", "shuffle"])
def test_a_plain_read_modify_write_loses_updates_and_atomic_add_does_not(selftest, schedule, monkeypatch):
    monkeypatch.setenv("CRINGE_SIMT_SCHEDULE", schedule)
    rc, out, msg = selftest(10, out_size=2)
    assert rc == CUDA_SUCCESS, msg
    assert out[1] == 128 and out[0] < 128, out


def test_a_shared_access_outside_every_variable_is_reported(selftest):
    rc, _, msg = selftest(11, out_size=32)
    assert rc == -1 and "thread 0 of block 0" in msg and "outside every variable" in msg, msg


def test_more_static_shared_memory_than_ptxas_allows_is_reported(selftest):
    rc, _, msg = selftest(12, out_size=32)
    assert rc == -1 and "48 KiB of static __shared__" in msg, msg


def test_shared_declarations_the_rewrite_cannot_read_are_refused():
    shared_decls = cuda_sim.shared_decls
    text = "  __shared__ RowTopK<Acc, 2> sh;  // state\n  __shared__ decltype(f(Acc(0))) seed[32][2];\nint x;"
    out = shared_decls.rewrite(text, "k.cu").split("\n")
    assert out == ['#line 1 "k.cu"', "  auto& sh = ::simt::shared_variable<RowTopK<Acc, 2>>([] {});  // state",
                   "  auto& seed = ::simt::shared_variable<decltype(f(Acc(0)))[32][2]>([] {});", "int x;"]
    for bad in ("__shared__ int a, b;", "__shared__ int a = 0;", "__shared__ x;"):
        with pytest.raises(ValueError, match="k.cu:1: the simulator rewrites only"):
            shared_decls.rewrite(bad, "k.cu")


def test_a_race_shows_as_a_schedule_dependent_result(selftest, monkeypatch):
    seen = []
    for schedule in ("forward", "reverse"):
        monkeypatch.setenv("CRINGE_SIMT_SCHEDULE", schedule)
        rc, out, msg = selftest(8)
        assert rc == CUDA_SUCCESS, msg
        seen.append(float(out[0]))
    assert seen[0] == 1.0 and np.isnan(seen[1]), seen
    monkeypatch.setenv("CRINGE_SIMT_SCHEDULE", "sideways")
    rc, _, msg = selftest(8)
    assert rc == -1 and "CRINGE_SIMT_SCHEDULE" in msg


@pytest.mark.parametrize("which,err", [(5, CUDA_INVALID_CONFIGURATION), (6, CUDA_INVALID_VALUE)])
def test_launches_the_hardware_refuses_fail(selftest, which, err):
    # 2048 threads per block; 64 KiB of dynamic shared memory without opt-in.
    rc, out, _ = selftest(which)
    assert rc == err and not out.any()


TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


def _asan_env():
    preload = cuda_sim.asan_preload()
    if preload is None or cuda_sim.MODULE is None:
        pytest.skip("no AddressSanitizer runtime for this compiler, or no simulator build")
    return dict(os.environ, CRINGE_KERNELS_SIM_ASAN="1", LD_PRELOAD=preload, ASAN_OPTIONS="detect_leaks=0",
                PYTHONPATH=os.pathsep.join([TESTS, ROOT, os.environ.get("PYTHONPATH", "")]))


def test_asan_build_reports_a_read_past_the_end():
    code = (
        "import ctypes, numpy as np, cuda_sim\n"
        "lib = ctypes.CDLL(cuda_sim.build('selftest'))\n"
        "x, out = np.zeros(1000, np.float32), np.zeros(64, np.float32)\n"
        "msg = ctypes.create_string_buffer(256)\n"
        "lib.simt_selftest(7, ctypes.c_void_p(x.ctypes.data), ctypes.c_void_p(out.ctypes.data), msg, 256)\n"
        "print('not caught')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], env=_asan_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode != 0 and "heap-buffer-overflow" in res.stderr, (res.stdout + res.stderr)[-3000:]
    assert "not caught" not in res.stdout


def test_cuda_kernels_are_clean_under_asan():
    # Every dtype x vocabulary x k edge case (quick set) of the forward
    # (whole and split rows), both backwards, in place, the single pass and
    # out-of-range targets: no access outside the tensors torch allocated.
    script = os.path.join(ROOT, "benchmarks", "kernel_tune.py")
    res = subprocess.run([sys.executable, script, "--sanitizer-case", "--sim", "--quick"], env=_asan_env(),
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0 and "cases ran on cuda_sim" in res.stdout, (res.stdout + res.stderr)[-3000:]
    assert "ERROR: AddressSanitizer" not in res.stderr


@pytest.mark.parametrize("gate", ["row", "single-pass", "single-pass-cache", "single-pass-async", "split"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k", [5, 64])
def test_cuda_kernels_do_not_depend_on_the_thread_schedule(gate, dtype, k, monkeypatch):
    """The racecheck the simulator can do: the same launches with the threads
    run forward, in reverse and shuffled between synchronisation points give
    bit-identical statistics and gradients (a race between barriers would
    change them)."""
    if cuda_sim.MODULE is None:
        pytest.skip("the CUDA simulator module is not built")
    from cringe_kernels import backends
    from kernel_checks import adversarial_topk_rows, random_logits, random_target

    be = backends.resolve("cuda_sim", torch.zeros(1, 1, 2))
    x = torch.cat([adversarial_topk_rows(3001, dtype)[0], random_logits((1, 6, 3001), dtype, "cpu", seed=k)], 1)
    y = torch.cat([adversarial_topk_rows(3001, dtype)[1], random_target((1, 6), 3001, "cpu").reshape(-1)])
    u = torch.rand(12, generator=torch.Generator().manual_seed(k))
    g = [torch.randn(12, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    # Launch choices through cringe_kernels/backends/heuristics.py: a 2 KB
    # row cache (a third of each 6 KB row swept from shared memory), staged
    # or not.
    from kernel_checks import launch_with

    launch_with(monkeypatch, pieces=4 if gate == "split" else 1,
                shape=(64, 1, 2048, gate == "single-pass-async") if gate in ("single-pass-cache", "single-pass-async")
                else (512, 1, 0, False))
    # The completion: a third of the rows with another grad_lse than the
    # forward's guess, written in full.
    g_lse = torch.where(torch.arange(12) % 3 == 0, 2 * g[0], g[0])
    results = []
    for schedule in ("forward", "reverse", "shuffle"):
        monkeypatch.setenv("CRINGE_SIMT_SCHEDULE", schedule)
        if gate.startswith("single-pass"):
            stats, grad = be.forward_with_grad(x, y, u, k, -100, g[0])
            grad = be.backward_with_grad(grad, x, y, stats.sample_index, stats.lse, g[0], g_lse, *g[1:], -100)
        else:
            stats = be.forward(x, y, u, k, -100)
            grad = be.backward(x, y, stats.sample_index, stats.lse, *g, -100, False)
        results.append((*stats, grad))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a.nan_to_num(), b.nan_to_num()) and torch.equal(a.isnan(), b.isnan())
