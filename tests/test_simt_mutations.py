"""The simulator catches the bugs it claims to: two mutations of the shipped kernels.

Each test copies ``csrc`` under ``build/cuda_sim/mutants/``, puts one bug
into ``csrc/cuda/forward.cu``, builds the simulated ``_C_cuda`` from the copy
(cached by source hash like every simulator build) and runs the suite's
reference comparison of the forward (test_cuda_backend.py) on it in a
subprocess, which must fail:

* the ``atomicAdd`` that reserves slots in a row's shared candidate buffer,
  replaced by a plain read-modify-write: warps that reserve together get the
  same slots and overwrite each other's candidates (the simulator lets the
  threads take turns access by access, tests/simt/simt_host.h);
* the initialisation of the row top-k state in shared memory deleted: the
  block starts from whatever its shared memory held (the simulator fills it
  with NaN bytes before every block).

The bugs are found by pattern; when a pattern no longer matches, the test
fails and names it, so that a change of the kernels cannot turn these tests
into ones that pass without checking anything.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest

cuda_sim = pytest.importorskip("cuda_sim")

pytestmark = pytest.mark.slow  # two simulator builds (cached) and two subprocesses

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
FORWARD = os.path.join("cuda", "forward.cu")

# The suite's test that must fail on a mutant: the forward and backward of
# every dtype against the reference on the simulator.
CHECK = ["tests/test_cuda_backend.py", "-k", "sim and test_binary_matches_reference"]

# Every atomicAdd( call of forward.cu.
ATOMIC_ADD = re.compile(r"\batomicAdd\(")
# A plain read-modify-write with atomicAdd's arguments and result.
PLAIN_ADD = "[](auto* address, auto v) { const auto old = *address; *address = old + v; return old; }("
# `if (threadIdx.x == 0) { sh.field = value; ... }`: one thread setting the
# fields of the row top-k state `sh` before the block's first barrier.
TOPK_STATE_INIT = re.compile(r"if\s*\(\s*threadIdx\.x\s*==\s*0\s*\)\s*\{(?:\s*sh\.\w+\s*=\s*[^;{}]+;)+\s*\}")


def _mutant(name, mutate):
    """A copy of csrc with ``mutate`` applied to forward.cu's text; its csrc path."""
    csrc = os.path.join(ROOT, "build", "cuda_sim", "mutants", name, "csrc")
    shutil.rmtree(csrc, ignore_errors=True)
    shutil.copytree(os.path.join(ROOT, "csrc"), csrc)
    path = os.path.join(csrc, FORWARD)
    with open(path) as f:
        text = f.read()
    mutated = mutate(text)
    assert mutated != text
    with open(path, "w") as f:
        f.write(mutated)
    return csrc


def _suite_on(csrc):
    """Builds the simulator from ``csrc`` and runs CHECK on it; pytest's (exit code, output)."""
    cuda_sim.build("module", csrc=csrc)  # a mutant that does not compile fails here, with the compiler's log
    env = dict(os.environ, CRINGE_KERNELS_SIM_CSRC=csrc, CRINGE_KERNELS_FORCE_CUDA="1")
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *CHECK], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600)
    return res.returncode, res.stdout + res.stderr


@pytest.fixture(autouse=True)
def _simulator():
    if cuda_sim.MODULE is None:
        pytest.skip("the CUDA simulator module is not built")


def test_a_plain_read_modify_write_for_atomic_add_fails_the_suite():
    def mutate(text):
        found = len(ATOMIC_ADD.findall(text))
        assert found >= 1, f"no atomicAdd( in csrc/{FORWARD}: update this mutation"
        return ATOMIC_ADD.sub(lambda _: PLAIN_ADD, text)

    rc, out = _suite_on(_mutant("plain_add", mutate))
    # 1: a test failed (not 0, passed; 2-5, an error before any test ran; < 0, a crash).
    assert rc == 1 and " failed" in out, out[-3000:]


def test_no_initialised_topk_state_fails_the_suite():
    def mutate(text):
        found = TOPK_STATE_INIT.findall(text)
        assert len(found) == 1, (f"{len(found)} initialisations of the row top-k state `sh` in csrc/{FORWARD}, "
                                 "expected 1: update this mutation")
        return TOPK_STATE_INIT.sub("", text)

    rc, out = _suite_on(_mutant("no_topk_init", mutate))
    assert rc == 1 and " failed" in out, out[-3000:]
