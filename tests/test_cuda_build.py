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

# Kernel instantiations per architecture, per dtype (float32, float64,
# float16, bfloat16): the row-threshold forward plain, as the single pass
# and as the staged single pass; the merge of split rows; the backward; the
# single pass's completion. Nothing else: a variant is built only while it
# wins a measurement.
KERNELS = {"forward_row_threshold_kernel": 12, "merge_pieces_kernel": 4, "backward_kernel": 4, "complete_kernel": 4}


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
        total = sum(1 for r in rows if r["arch"] == arch)
        assert total == sum(KERNELS.values()), f"{arch}: {total} kernels in the ptxas report"


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


def test_compiled_defaults_equal_the_python_heuristics(module):
    """The binding's defaults (csrc/cuda/launch.h) are the rules of
    cringe_kernels/backends/heuristics.py: a single pass launched without a
    shape, and the pieces per row, are what the Python side passes."""
    from cringe_kernels.backends import heuristics

    for row_bytes in (2, 1000, 64000, 128 * 1024, 128 * 1024 + 1, 128256 * 2, 256000 * 4):
        assert tuple(module.single_pass_shape(row_bytes)) == tuple(heuristics.single_pass_shape(row_bytes))
    for sms in (1, 3, 108, 132):
        for n in (0, 1, 2, 5, 100, 4 * sms - 1, 4 * sms, 16384):
            for V in (2, 8191, 8192, 32000, 128256, 10**6):
                assert module.row_pieces(n, V, sms) == heuristics.row_pieces(n, V, sms), (n, V, sms)
    assert module.max_pieces == heuristics.MAX_PIECES


def test_nvcc_present_means_backend_installed():
    from cringe_kernels import backends

    st = backends.status("cuda")
    assert st.installed, st.reason
    if not torch.cuda.is_available():
        assert st.devices == () and "_C_cuda built for" in st.reason

