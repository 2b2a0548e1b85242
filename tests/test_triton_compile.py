"""The Triton kernels compile for a real GPU (sm_90) on a machine without one.

The interpreter tests check what the kernels compute; this checks that
Triton can lower them (no type mismatch between branches, no unsupported op)
and how: every kernel reads the logits with 16-byte accesses, the backward
writes the gradient with them, and no array lands in local memory. Runs
tests/triton_aot.py in a fresh process without ``TRITON_INTERPRET`` (the
kernels must be JIT functions there, not interpreted ones).
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton's own default, stated (silences its warning)
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "triton_aot.py"), "90"], env=env,
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0 and "GPUTarget" in out.stderr and "ImportError" in out.stderr:
        pytest.skip(f"this Triton cannot compile ahead of time: {out.stderr[-300:]}")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    for r in rows:  # shown with -s: the resource budget per launch configuration
        print(r)
    return rows


def test_every_configuration_compiles(compiled):
    assert len(compiled) == 9 and all(r["cubin_bytes"] > 0 for r in compiled)


def test_logits_are_read_and_gradient_written_in_16_byte_accesses(compiled):
    for r in compiled:
        assert r["vector_loads"] > 0, r
        if r["kernel"].startswith(("bwd", "fwd+grad")):
            assert r["vector_stores"] > 0, r


def test_nothing_in_local_memory(compiled):
    for r in compiled:
        if "local_bytes" not in r:
            pytest.skip("Triton's cuobjdump is not there to read the resource usage")
        # The top-k list and the draw index registers with compile-time
        # indices only; a run-time index would move them to local memory.
        assert r["local_bytes"] == 0, r
        assert r["stack_bytes"] <= 64, r
