"""The ``cuda`` backend: the hand-written kernels of ``cringe_kernels._C_cuda``.

The kernels are torch-free (csrc/cuda) and take raw pointers, sizes, strides
and a stream; this module launches them on the logits' device and torch's
current stream, and :func:`cringe_kernels.backends._native.define_row_stats_ops`
checks the arguments, allocates the outputs and registers the calls as
``torch.library`` custom ops with fake implementations (``torch.compile``
traces through them):

``cringe_kernels::cuda_row_stats``, ``cringe_kernels::cuda_row_stats_backward``
and the in-place ``cringe_kernels::cuda_row_stats_backward_`` (same
signatures as the ``cpu_*`` ops in :mod:`cringe_kernels.backends.cpu_backend`).

The forward kernel keeps its top-k lists in shared memory, for
``k_eff = min(k, V - 1)`` up to ``_C_cuda.max_k`` (64). Beyond that the
kernel computes ``lse`` and the target logit and the draw is made by
:func:`cringe_kernels.reference.sample_columns` on the non-ignored rows
(same rule, so the same column; slower and with ``[rows, V]`` temporaries).

With few rows the kernels cut each row into pieces, one block each
(:func:`_row_pieces`); the forward's pieces leave their statistics in a
workspace this module allocates, which a second kernel merges.
"""

import os
from typing import Callable, Tuple

import torch

from .. import reference
from . import _native
from .base import BackendStatus, stats_dtype

try:
    from .. import _C_cuda
except ImportError as err:
    _C_cuda = None
    _IMPORT_ERROR = (f"cringe_kernels._C_cuda is not built ({err}); it is built when nvcc is found at install "
                     "time (CUDA_HOME, or CRINGE_KERNELS_FORCE_CUDA=1 to make that an error)")
else:
    _IMPORT_ERROR = ""


def _archs() -> Tuple[int, ...]:
    """Compute capabilities the module has SASS for, e.g. ``(80, 90)``."""
    return tuple(int(a.replace("sm_", "").rstrip("a")) for a in _C_cuda.archs.split(",") if a.startswith("sm_"))


_GATES = {"thread": 0, "warp": 1, "row": 2, "row-async": 3}
# CRINGE_KERNELS_CUDA_SINGLE_PASS=auto: rows up to this many bytes take
# `256,3,64` (the whole row, or most of it, in shared memory), longer ones
# `512,2,0,async` (see _single_pass_shape for the measurements).
_AUTO_SHORT_ROW_BYTES = 128 * 1024


def _forward_gate() -> int:
    """The forward's top-k strategy (csrc/cuda/launch.h, ForwardGate).

    ``CRINGE_KERNELS_CUDA_FWD_GATE``: ``row`` (the default: one row-wide
    threshold and a shared candidate buffer), ``row-async`` (the same, with
    each round's loads copied to shared memory by ``cp.async`` while the
    previous round computes, so its barriers do not drain them),
    ``thread`` (one list per thread) or ``warp`` (those lists with a
    warp-shared gate). All give the same results. Measured on an H100 at
    bf16, N=16384, V=128256, k=5 (benchmarks/results/cuda-h100-6,
    tune.csv): ``row`` 1.68 ms, ``row-async`` 1.67 ms, ``warp`` 5.03 ms,
    ``thread`` 5.39 ms; at V=32000 (cuda-h100-7) ``row`` 0.63 ms,
    ``row-async`` 0.65 ms. ``row`` stays the default: as fast within 1%,
    and no cp.async stages in shared memory.
    """
    name = os.environ.get("CRINGE_KERNELS_CUDA_FWD_GATE", "row")
    if name not in _GATES:
        raise ValueError(f"CRINGE_KERNELS_CUDA_FWD_GATE must be one of {sorted(_GATES)}; got {name!r}")
    return _GATES[name]


def _single_pass_shape(row_bytes: int) -> Tuple[int, int, int, bool]:
    """Threads per block, blocks per SM, row-cache bytes and staging of the single-pass forward (csrc/cuda/launch.h).

    ``CRINGE_KERNELS_CUDA_SINGLE_PASS="THREADS,BLOCKS_PER_SM[,CACHE_KB[,async]]"``
    or ``auto`` (the default): more rows in flight hide more latency, as
    long as their second read still finds them on chip; ``CACHE_KB`` of
    each row's first bytes are kept in shared memory for that read (clamped
    to what a block may have), the rest is read again from L2 or memory.
    ``async`` copies the rounds with cp.async (the ``row-async`` kernel,
    whatever ``CRINGE_KERNELS_CUDA_FWD_GATE`` says; ``row-async`` there
    stages the single pass too); staged, 4 or more blocks per SM of at most
    256 threads run a build limited to 64 registers, so that all four are
    resident.

    ``auto`` takes ``256,3,64`` for rows of up to 128 KB and
    ``512,2,0,async`` for longer ones. Measured on an H100, bf16,
    N=16384, k=5, forward + gradient, 1 row in 7 ignored
    (benchmarks/results/cuda-h100-6 and -7, tune*.csv): V=32000 (a 62.5 KB
    row, all of it cached) 1.12 ms at ``256,3,64`` against 1.21-1.29 ms for
    the best staged shapes without a cache; V=50257 (98 KB) 1.73 against
    1.76 ms; V=128256 (250 KB) 4.06 ms at ``256,3,64``, 4.02 at
    ``256,3,0,async`` and 3.98 at ``512,2,0,async``, the fastest.

    Parameters
    ----------
    row_bytes : int
        ``V`` times the logits' element size: what ``auto`` decides on.
    """
    raw = os.environ.get("CRINGE_KERNELS_CUDA_SINGLE_PASS", "auto")
    if raw == "auto":
        return (256, 3, 64 * 1024, False) if row_bytes <= _AUTO_SHORT_ROW_BYTES else (512, 2, 0, True)
    fields = raw.split(",")
    staged = len(fields) == 4 and fields[3] == "async"
    try:
        if len(fields) == 4 and not staged:
            raise ValueError
        values = [int(v) for v in fields[:3]]
        threads, blocks, cache_kb = values if len(values) == 3 else (*values, 0)
    except ValueError:
        raise ValueError(f"CRINGE_KERNELS_CUDA_SINGLE_PASS must be 'auto' or "
                         f"'THREADS,BLOCKS_PER_SM[,CACHE_KB[,async]]'; got {raw!r}") from None
    if threads not in (32, 64, 128, 256, 512) or not 1 <= blocks <= 32 or not 0 <= cache_kb <= 1024:
        raise ValueError(f"CRINGE_KERNELS_CUDA_SINGLE_PASS: THREADS must be a power of two in [32, 512], "
                         f"BLOCKS_PER_SM in [1, 32] and CACHE_KB in [0, 1024]; got {raw!r}")
    return threads, blocks, cache_kb * 1024, staged


def _row_pieces(module, N: int, V: int, device_index: int) -> int:
    """Blocks per row (csrc/cuda/launch.h, RowSplit).

    ``CRINGE_KERNELS_CUDA_SPLIT``: ``auto`` (the default: one block per row
    unless there are too few rows to give every SM four blocks, then the
    most pieces of at least 8192 columns that still fit one wave of four
    blocks per SM) or a number of pieces
    from 1 to ``max_pieces`` (32). The forward's pieces write their
    statistics to a workspace that a second kernel merges per row; the
    backward's pieces are independent.
    """
    raw = os.environ.get("CRINGE_KERNELS_CUDA_SPLIT", "auto")
    if raw == "auto":
        return module.row_pieces(N, V, device_index)
    try:
        pieces = int(raw)
    except ValueError:
        pieces = 0
    if not 1 <= pieces <= module.max_pieces:
        raise ValueError(f"CRINGE_KERNELS_CUDA_SPLIT must be 'auto' or a number of pieces from 1 to "
                         f"{module.max_pieces}; got {raw!r}")
    return pieces


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def launchers(module, stream_of: Callable[[torch.device], int]):
    """The forward and backward launches of :func:`_native.define_row_stats_ops` over ``module``.

    Parameters
    ----------
    module
        ``_C_cuda``, or the same binding built for the tests' SIMT simulator
        (tests/cuda_sim.py), which runs these kernels on CPU tensors.
    stream_of : callable
        ``stream_of(device)``: the stream handle (an int) to launch on.

    Returns
    -------
    (launch_forward, launch_backward)
    """
    max_k = module.max_k

    def launch_forward(logits, target, uniform, k, ignore_index, out, lse_weight=None, grad=None) -> None:
        B, T, V = logits.shape
        device = logits.device.index or 0
        code = _native.DTYPE_CODES[logits.dtype]
        kernel_k = k if min(k, V - 1) <= max_k else 0
        # The single pass keeps each row in one block (it needs the row's lse).
        pieces = _row_pieces(module, B * T, V, device) if grad is None else 1
        workspace = None
        if pieces > 1:
            workspace = torch.empty(module.forward_workspace_bytes(code, B * T, V, kernel_k, pieces),
                                    dtype=torch.uint8, device=logits.device)
        shape = _single_pass_shape(V * logits.element_size()) if grad is not None else (512, 1, 0, False)
        module.forward(
            code, logits.data_ptr(), B, T, V, logits.stride(0), logits.stride(1),
            target.data_ptr(), _native.ptr(uniform if kernel_k > 0 else None), kernel_k, ignore_index,
            *(t.data_ptr() for t in out), device, stream_of(logits.device), _forward_gate(),
            _native.ptr(lse_weight), _native.ptr(grad), *(grad.stride()[:2] if grad is not None else (0, 0)),
            *shape[:3], pieces, _native.ptr(workspace), shape[3],
        )
        if kernel_k != k:
            _sample_large_k(logits, target, uniform, k, ignore_index, out)

    def launch_backward(grad, logits, target, sample_index, lse, grad_lse, grad_target, grad_sample, ignore_index,
                        lse_weight=None):
        B, T, V = logits.shape
        device = logits.device.index or 0
        module.backward(
            _native.DTYPE_CODES[logits.dtype], logits.data_ptr(), B, T, V, logits.stride(0), logits.stride(1),
            target.data_ptr(), sample_index.data_ptr(), lse.data_ptr(), grad_lse.data_ptr(),
            grad_target.data_ptr(), grad_sample.data_ptr(), ignore_index, grad.data_ptr(), grad.stride(0),
            grad.stride(1), device, stream_of(logits.device), _native.ptr(lse_weight),
            _row_pieces(module, B * T, V, device),
        )

    return launch_forward, launch_backward


def _sample_large_k(logits, target, uniform, k, ignore_index, out) -> None:
    """Draw for ``k_eff > max_k`` with the reference's rule (rows with a target in range)."""
    V = logits.shape[-1]
    rows = logits.reshape(-1, V)
    keep = ((target != ignore_index) & (target >= 0) & (target < V)).nonzero().squeeze(1)
    if keep.numel() == 0:
        return
    x = rows.index_select(0, keep).to(stats_dtype(logits.dtype))
    s = reference.sample_columns(x, target.index_select(0, keep), uniform.index_select(0, keep), k)
    out[3].index_copy_(0, keep, s)
    out[2].index_copy_(0, keep, x.gather(1, s[:, None]).squeeze(1))


# Allocation and launches run on the logits' device, whatever the current one.
if _C_cuda is not None:
    _launch_forward, _launch_backward = launchers(_C_cuda, _stream)
else:  # the ops exist either way; status() says why they cannot run
    def _launch_forward(*args, **kwargs):
        raise RuntimeError(_IMPORT_ERROR)

    _launch_backward = _launch_forward
OPS = _native.define_row_stats_ops("cuda", _launch_forward, _launch_backward, device_guard=torch.cuda.device)
SINGLE_PASS_OPS = _native.define_single_pass_ops("cuda", _launch_forward, _launch_backward,
                                                 device_guard=torch.cuda.device)


class CudaRowStats(_native.NativeRowStats):
    """Row statistics by the hand-written CUDA kernels (float16/bfloat16/float32/float64)."""

    name = "cuda"
    kernel_max_k = 64  # csrc/cuda/launch.h kMaxK, _C_cuda.max_k
    ops = OPS
    single_pass_ops = SINGLE_PASS_OPS

    def status(self) -> BackendStatus:
        if _C_cuda is None:
            return BackendStatus(self.name, False, (), _IMPORT_ERROR)
        built = f"_C_cuda built for {_C_cuda.archs} (CUDA runtime {_C_cuda.cuda_runtime_version}, linked statically)"
        if torch.version.cuda is None:
            return BackendStatus(self.name, True, (), f"{built}, but torch {torch.__version__} has no CUDA support")
        if not torch.cuda.is_available():
            return BackendStatus(self.name, True, (), f"{built}, but no CUDA device is visible")
        count, err = _C_cuda.device_count()
        if count == 0:
            return BackendStatus(self.name, True, (), f"{built}, but its runtime sees no device ({err})")
        return BackendStatus(self.name, True, ("cuda",))

    def supports(self, logits: torch.Tensor) -> tuple:
        ok, reason = super().supports(logits)  # device and dtype
        if not ok:
            return ok, reason
        major, minor = torch.cuda.get_device_capability(logits.device)
        cc = 10 * major + minor
        archs = _archs()
        # SASS for sm_X runs on sm_X.y (same major, y >= 0); PTX of the
        # highest arch is JIT-compiled on newer majors.
        if not any(a // 10 == major and a <= cc for a in archs) and not (archs and cc > max(archs)):
            return False, f"_C_cuda was built for {_C_cuda.archs}, not for this GPU (sm_{cc}); set CRINGE_CUDA_ARCH_LIST"
        return True, ""
