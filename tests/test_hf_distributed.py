"""Two processes (torchrun, CPU, gloo) against one process on the same global batch.

The trainers' count of loss tokens spans the processes, their draws hash the
example's id (not its place in a batch) and their metrics are summed over
processes before they are divided: the gradient, the logged loss and every
logged metric of a 2-process step with 2 rows each equal those of one
process with the 4 rows.
"""

import os
import socket
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("datasets")

import hf_ddp_worker  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
METRICS = {
    "binary": ("loss", "ce", "cringe", "positive_fraction", "logps/chosen", "logps/rejected", "num_tokens"),
    "pairwise": ("loss", "ce", "cringe", "gate", "margins", "accuracies", "logps/chosen", "logps/rejected",
                 "num_tokens"),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp_path, kind, strategy="ddp"):
    out = tmp_path / f"{kind}_{strategy}.pt"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), os.path.join(HERE, "hf_ddp_worker.py"), str(out), kind, strategy]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return torch.load(out, weights_only=False)


def test_two_processes_match_one(tmp_path):
    kind = "pairwise"  # the binary trainer runs under FSDP below; one launch each keeps the suite short
    two = _torchrun(tmp_path, kind)
    one = hf_ddp_worker.run(str(tmp_path / "one"), kind, per_device_batch=4)
    assert two["processes"] == 2 and one["processes"] == 1
    for a, b in zip(two["grads"], one["grads"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    for key in METRICS[kind] + ("grad_norm",):
        assert two["logged"][key] == pytest.approx(one["logged"][key], rel=1e-4, abs=1e-6), key
        if key not in ("loss", "num_tokens", "grad_norm"):
            name = "eval_" + key
            assert two["evaluated"][name] == pytest.approx(one["evaluated"][name], rel=1e-4, abs=1e-6), name


def test_fsdp_two_processes_match_one(tmp_path):
    """FSDP (full shard) runs on the CPU too: the logged loss, gradient norm and metrics of the sharded
    step equal one process's (its gradients are shards, so the norm stands for them)."""
    two = _torchrun(tmp_path, "binary", strategy="fsdp")
    one = hf_ddp_worker.run(str(tmp_path / "one"), "binary", per_device_batch=4)
    for key in METRICS["binary"] + ("grad_norm",):
        assert two["logged"][key] == pytest.approx(one["logged"][key], rel=1e-4, abs=1e-6), key
    for key in METRICS["binary"][1:-1]:
        name = "eval_" + key
        assert two["evaluated"][name] == pytest.approx(one["evaluated"][name], rel=1e-4, abs=1e-6), name
