"""Build checks of ``cringe_kernels._C_cuda`` that need nvcc but no GPU.

Wherever nvcc exists the package must have been built with the CUDA module
(CI: ``CRINGE_KERNELS_FORCE_CUDA=1 pip install -e .[test]``): the module must
import without a GPU, the ptxas resource report saved by the build must
list every kernel for every architecture, and no kernel may spill registers.
Skipped only when nvcc is absent (or the build was told to skip CUDA).
"""

import importlib
import os
import re
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "csrc"))
from cringe_build import PTXAS_REPORT, find_cuda_home  # noqa: E402

if find_cuda_home() is None:
    pytest.skip("nvcc not found (no CUDA toolkit: set CUDA_HOME); _C_cuda is not built here", allow_module_level=True)
if os.environ.get("CRINGE_KERNELS_SKIP_CUDA", "0") not in ("", "0"):
    pytest.skip("CRINGE_KERNELS_SKIP_CUDA is set: _C_cuda was not built on purpose", allow_module_level=True)

# Kernel instantiations per architecture: the backward and the single
# pass's completion per dtype (float32, float64, float16, bfloat16); the
# forward per dtype with the per-thread top-k gate, and once more with the
# warp-shared gate for all but float64 (which walks column by column); the
# row-threshold forward per dtype, plain and with the single-pass gradient,
# each with and without cp.async rounds (row-async), and the staged single
# pass's 64-register build for all but float64; the merge of split rows per
# dtype.
KERNELS = {"forward_kernel": 7, "forward_row_threshold_kernel": 19, "merge_pieces_kernel": 4, "backward_kernel": 4,
           "complete_kernel": 4}


@pytest.fixture(scope="module")
def module():
    try:
        return importlib.import_module("cringe_kernels._C_cuda")
    except ImportError as err:
        pytest.fail(f"nvcc exists but cringe_kernels._C_cuda does not import ({err}); "
                    "build with CRINGE_KERNELS_FORCE_CUDA=1 pip install -e .")


@pytest.fixture(scope="module")
def report(module):
    path = os.path.join(os.path.dirname(module.__file__), PTXAS_REPORT)
    assert os.path.exists(path), f"the build did not save the ptxas report at {path}"
    with open(path) as f:
        return f.read()


def parse_report(text):
    """[(arch, kernel, registers, spill_stores, spill_loads, stack)] from ``-Xptxas -v`` output."""
    rows = []
    pending = None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\S+)' for '(sm_\w+)'", line)
        if m:
            pending = {"kernel": m.group(1), "arch": m.group(2)}
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and pending is not None:
            pending.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m and pending is not None:
            pending["registers"] = int(m.group(1))
            rows.append(pending)
            pending = None
    return rows


def test_module_imports_without_gpu(module):
    assert module.archs.startswith("sm_")
    count, err = module.device_count()
    assert isinstance(count, int) and isinstance(err, str)


def test_every_kernel_in_report(module, report):
    rows = parse_report(report)
    archs = module.archs.split(",")
    for arch in archs:
        for kernel, count in KERNELS.items():
            found = [r for r in rows if r["arch"] == arch and kernel in r["kernel"]]
            assert len(found) == count, f"{kernel} for {arch}: {len(found)} entries in the ptxas report"


def test_no_register_spills(report):
    rows = parse_report(report)
    assert rows, "no kernels found in the ptxas report"
    spilling = [r for r in rows if r.get("spill_stores", 1) or r.get("spill_loads", 1)]
    assert not spilling, f"kernels spill registers: {spilling}"
    for r in rows:  # shown with -s / on failure: the register budget per kernel
        print(f"{r['arch']} {r['registers']:3d} regs {r['kernel']}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the failure without a GPU")
def test_call_without_gpu_raises_cuda_error(module):
    with pytest.raises(RuntimeError, match="cuda"):
        module.forward(0, 0, 1, 1, 2, 2, 2, 0, 0, 1, -100, 0, 0, 0, 0, 0, 0)


def test_forward_gate_argument_is_checked(module, monkeypatch):
    """An unknown top-k gate is refused before anything is launched, by name."""
    with pytest.raises(ValueError, match="gate"):
        module.forward(0, 0, 1, 1, 2, 2, 2, 0, 0, 1, -100, 0, 0, 0, 0, 0, 0, 4)
    from cringe_kernels.backends import cuda_backend

    # gpu_check.sh exports the tune's fastest gate: the default needs the variable unset.
    monkeypatch.delenv("CRINGE_KERNELS_CUDA_FWD_GATE", raising=False)
    assert cuda_backend._forward_gate() == 2  # row, the fastest measured
    monkeypatch.setenv("CRINGE_KERNELS_CUDA_FWD_GATE", "thread")
    assert cuda_backend._forward_gate() == 0
    monkeypatch.setenv("CRINGE_KERNELS_CUDA_FWD_GATE", "warp")
    assert cuda_backend._forward_gate() == 1
    monkeypatch.setenv("CRINGE_KERNELS_CUDA_FWD_GATE", "row-async")
    assert cuda_backend._forward_gate() == 3
    monkeypatch.setenv("CRINGE_KERNELS_CUDA_FWD_GATE", "block")
    with pytest.raises(ValueError, match="CRINGE_KERNELS_CUDA_FWD_GATE"):
        cuda_backend._forward_gate()


def test_single_pass_auto_shape_follows_the_row_length(monkeypatch):
    """`auto` (the default) keeps short rows whole in shared memory and stages
    long ones without a cache: the fastest shapes measured on each side of
    128 KB (cuda_backend._single_pass_shape); a shape given is taken as is."""
    from cringe_kernels.backends import cuda_backend

    short, long_ = (256, 3, 64 * 1024, False), (512, 2, 0, True)
    for value in (None, "auto"):
        if value is None:
            monkeypatch.delenv("CRINGE_KERNELS_CUDA_SINGLE_PASS", raising=False)
        else:
            monkeypatch.setenv("CRINGE_KERNELS_CUDA_SINGLE_PASS", value)
        assert cuda_backend._single_pass_shape(32000 * 2) == short
        assert cuda_backend._single_pass_shape(128 * 1024) == short
        assert cuda_backend._single_pass_shape(128 * 1024 + 2) == long_
        assert cuda_backend._single_pass_shape(128256 * 2) == long_
    monkeypatch.setenv("CRINGE_KERNELS_CUDA_SINGLE_PASS", "128,4,1,async")
    assert cuda_backend._single_pass_shape(2) == (128, 4, 1024, True)
    monkeypatch.setenv("CRINGE_KERNELS_CUDA_SINGLE_PASS", "Auto")
    with pytest.raises(ValueError, match="CRINGE_KERNELS_CUDA_SINGLE_PASS must be 'auto'"):
        cuda_backend._single_pass_shape(2)


def test_nvcc_present_means_backend_installed():
    from cringe_kernels import backends

    st = backends.status("cuda")
    assert st.installed, st.reason
    if not torch.cuda.is_available():
        assert st.devices == () and "_C_cuda built for" in st.reason

