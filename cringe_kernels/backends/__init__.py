"""Registry of backends: which exist, which can run here, which ``"auto"`` picks.

``"reference"`` is the pure PyTorch oracle (:mod:`cringe_kernels.reference`,
differentiated by autograd). The kernel backends implement the row-statistics
primitive (:mod:`cringe_kernels.backends.base`) and are imported lazily, so
importing the package never touches a GPU or compiles anything.
"""

from __future__ import annotations

import importlib
from typing import Dict, List, Optional, Union

import torch

from .base import BackendStatus, RowStatsBackend

REFERENCE = "reference"
PUBLIC_BACKENDS = (REFERENCE, "triton", "cuda", "cpu")

# name -> (module, class). "torch" is internal: the primitive in PyTorch,
# used to test the autograd plumbing; it is accepted but not advertised. The
# tests add "cuda_sim" here (tests/cuda_sim.py: the CUDA kernels on the CPU).
_KERNEL_BACKENDS = {
    "triton": ("cringe_kernels.backends.triton_backend", "TritonRowStats"),
    "cuda": ("cringe_kernels.backends.cuda_backend", "CudaRowStats"),
    "cpu": ("cringe_kernels.backends.cpu_backend", "CpuRowStats"),
    "torch": ("cringe_kernels.backends.torch_impl", "TorchRowStats"),
}

# Fastest first, per device type, as measured (benchmarks/results/cuda-h100-6
# and -7: H100, bf16, N=16384, forward + backward: V=128256 CUDA 4.95 ms,
# Triton 5.52; V=32000 CUDA 1.54, Triton 2.86; cuda-h200-5, V=128256: 4.46
# against 4.73). Triton stays the choice where _C_cuda is not built or has
# no code for the GPU.
_AUTO_ORDER = {"cuda": ("cuda", "triton"), "cpu": ("cpu",)}

_loaded: Dict[str, Union[RowStatsBackend, BackendStatus]] = {}


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name but cannot run here; the message says why."""


def _import_backend(name: str) -> None:
    """Import and instantiate a kernel backend once."""
    if name not in _loaded:
        module_name, class_name = _KERNEL_BACKENDS[name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name == module_name:
                reason = f"the {name} backend is not part of this version of cringe_kernels"
            else:
                reason = f"the {name} backend needs {err.name!r}, which is not installed"
            _loaded[name] = BackendStatus(name, False, (), reason)
        else:
            _loaded[name] = getattr(module, class_name)()


def _load(name: str) -> Union[RowStatsBackend, BackendStatus]:
    """The backend object, or a BackendStatus saying why it is missing."""
    _import_backend(name)
    return _loaded[name]


def _reference_status() -> BackendStatus:
    devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    return BackendStatus(REFERENCE, True, devices)


def status(name: str) -> BackendStatus:
    """The :class:`BackendStatus` of one backend."""
    if name == REFERENCE:
        return _reference_status()
    backend = _load(name)
    return backend if isinstance(backend, BackendStatus) else backend.status()


def backend_info() -> Dict[str, BackendStatus]:
    """Per public backend: installed, the device types it runs on here, and why not.

    Returns
    -------
    dict of str to BackendStatus
    """
    return {name: status(name) for name in PUBLIC_BACKENDS}


def available_backends(device: Union[str, torch.device, None] = None) -> List[str]:
    """Public backends that can run on ``device`` (default: CPU), fastest first.

    Parameters
    ----------
    device : str or torch.device, optional

    Returns
    -------
    list of str
    """
    device_type = torch.device(device if device is not None else "cpu").type
    order = [n for n in _AUTO_ORDER.get(device_type, ())] + [n for n in PUBLIC_BACKENDS if n not in _AUTO_ORDER.get(device_type, ())]
    return [n for n in order if device_type in status(n).devices]


def resolve(name: str, logits: torch.Tensor, k: Optional[int] = None) -> Union[str, RowStatsBackend]:
    """Map a ``backend=`` argument to ``"reference"`` or a kernel backend object.

    ``"auto"`` takes the first backend of :data:`_AUTO_ORDER` that runs on
    these logits and accepts ``k_eff = min(k, V - 1)`` (``max_k``), passing
    over one whose kernels stop short of it (``kernel_max_k``, then a slower
    fallback) when a later one does not; the reference when none runs. The answer depends only on
    the name, the logits' device and dtype and ``k``, and is cached per
    such key: a loss call pays a dictionary lookup, and a compiled step
    never traces the resolution (see :func:`_resolve`).

    Parameters
    ----------
    name : str
        ``"auto"``, ``"reference"`` or a backend's name.
    logits : Tensor, ``[..., V]``
    k : int, optional
        The loss's ``k``; None: no preference by ``k``.

    Raises
    ------
    ValueError
        For an unknown name.
    BackendUnavailableError
        For a known backend that cannot run on these logits, saying why.
    """
    if not isinstance(name, str):
        raise ValueError(f"backend must be 'auto' or one of {', '.join(map(repr, PUBLIC_BACKENDS))}; got {name!r}")
    device = logits.device
    V = logits.shape[-1]
    if k is not None and isinstance(V, int):  # a symbolic V (dynamic shapes) keys on k itself
        k = min(k, V - 1)
    chosen = _resolve(name, device.type, device.index, logits.dtype, k)
    return chosen if chosen == REFERENCE else _loaded[chosen]


_resolved: Dict[tuple, str] = {}


def _resolve(name, device_type: str, device_index: Optional[int], dtype: torch.dtype, k: Optional[int]) -> str:
    """The name of the backend :func:`resolve` picks, from constants, cached.

    Marked constant (below): Dynamo runs it eagerly instead of tracing the
    status queries (a CUDA runtime call, a module import) that a first
    resolution makes, and its answer, a string, is a constant of the graph.
    """
    key = (name, device_type, device_index, dtype, k)
    chosen = _resolved.get(key)
    if chosen is None:
        probe = torch.empty(0, 2, dtype=dtype, device=torch.device(device_type, device_index))
        backend = _resolve_uncached(name, probe, k)
        chosen = _resolved[key] = backend if backend == REFERENCE else backend.name
    return chosen


# What torch.compiler.assume_constant_result does, without importing Dynamo
# (and with it triton) when the package is imported; a test compiles a first
# call with fullgraph=True in a fresh process, with a status that raises when
# traced, to keep this honest.
_resolve._dynamo_marked_constant = True


def _resolve_uncached(name, probe: torch.Tensor, k: Optional[int]):
    """The resolution itself; ``probe`` is an empty tensor of the logits' device and dtype."""
    if not isinstance(name, str) or (name not in PUBLIC_BACKENDS and name != "auto" and name not in _KERNEL_BACKENDS):
        raise ValueError(f"backend must be 'auto' or one of {', '.join(map(repr, PUBLIC_BACKENDS))}; got {name!r}")
    if name == REFERENCE:
        return REFERENCE
    if name == "auto":
        runnable = [b for b in map(_load, _AUTO_ORDER.get(probe.device.type, ()))
                    if isinstance(b, RowStatsBackend) and b.supports(probe)[0]
                    and (k is None or b.max_k is None or k <= b.max_k)]
        for backend in runnable:
            if k is None or backend.kernel_max_k is None or k <= backend.kernel_max_k:
                return backend
        return runnable[0] if runnable else REFERENCE
    backend = _load(name)
    if isinstance(backend, BackendStatus):
        raise BackendUnavailableError(f"backend {name!r} is unavailable: {backend.reason}")
    ok, reason = backend.supports(probe)
    if not ok:
        raise BackendUnavailableError(f"backend {name!r} cannot run on these logits: {reason}")
    return backend


def clear_resolution_cache() -> None:
    """Forget every cached :func:`resolve` answer (after a backend was built or installed)."""
    _resolved.clear()
