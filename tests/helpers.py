"""Shared test utilities: which backends to compare, tolerances, random inputs."""

from __future__ import annotations

import os

import torch

from cringe_kernels import backends

# Backends that implement the row-statistics primitive and are compared with
# the reference. "torch" (the primitive in PyTorch) always runs; the kernel
# backends join wherever they can run on the CPU of this machine, the CUDA
# kernels as "cuda_sim" (tests/cuda_sim.py) wherever the CUDA headers exist.
KERNEL_CANDIDATES = ("torch", "cpu", "triton", "cuda_sim")


def cpu_kernel_backends():
    """Names of primitive backends that run on CPU tensors here."""
    probe = torch.zeros(1, 2)
    names = []
    # CRINGE_KERNELS_TEST_BACKENDS=torch,cpu narrows a local run to some backends
    wanted = os.environ.get("CRINGE_KERNELS_TEST_BACKENDS")
    for name in KERNEL_CANDIDATES if wanted is None else wanted.split(","):
        try:
            backends.resolve(name, probe)
        except (backends.BackendUnavailableError, ValueError):
            continue
        names.append(name)
    return names


# Loss tolerances per logits dtype, relative to the reference. Low precision
# dtypes are compared against a reference fed the same (rounded) values, so
# only accumulation order differs.
TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=2e-5, atol=2e-6),
    torch.bfloat16: dict(rtol=1e-2, atol=1e-2),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
}


def random_case(B, T, V, *, dtype=torch.float32, ignore_frac=0.2, seed=0, device="cpu"):
    """Logits ``[B, T, V]``, targets ``[B, T]`` with some ignored rows, per-sequence feedback, uniforms."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, T, V, generator=g, dtype=torch.float64) * 2).to(dtype).to(device)
    target = torch.randint(0, V, (B, T), generator=g)
    target[torch.rand(B, T, generator=g) < ignore_frac] = -100
    feedback = (torch.arange(B) % 2 == 0)[:, None]
    uniform = torch.rand(B, T, generator=g)
    return logits, target.to(device), feedback.to(device), uniform.to(device)
