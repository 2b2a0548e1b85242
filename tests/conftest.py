"""Shared test setup.

Without a GPU, Triton kernels run on the CPU through Triton's interpreter;
the variable must be set before anything imports triton, hence here. Nothing
here queries the GPU beyond ``torch.cuda.is_available()`` (no context is made).
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_CUDA = torch.cuda.is_available()


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
