"""Shared test setup.

Without a GPU, Triton kernels run on the CPU through Triton's interpreter;
the variable must be set before anything imports triton, hence here. Nothing
here queries the GPU beyond ``torch.cuda.is_available()`` (no context is made).
"""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_CUDA = torch.cuda.is_available()

# backend="cuda_sim" (an internal name, like "torch"): the CUDA kernels on the
# CPU (tests/cuda_sim.py), imported and built on first use, not here.
from cringe_kernels import backends  # noqa: E402

backends._KERNEL_BACKENDS.setdefault("cuda_sim", ("cuda_sim", "SimRowStats"))

# Property tests: a fixed set of examples in CI (CI=true), so a submission
# passes or fails deterministically; fresh random examples on a developer's
# run; HYPOTHESIS_PROFILE=thorough for a long hunt.
_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("default", max_examples=25, derandomize=bool(os.environ.get("CI")), **_COMMON)
settings.register_profile("thorough", max_examples=500, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped cleanly without one)")
    config.addinivalue_line("markers", "slow: larger shapes; still part of the default run")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is available")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
