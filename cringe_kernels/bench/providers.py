"""What is timed: providers, each a loss function over a workload.

Cringe providers (losses ``binary`` and ``pairwise``):

``reference``
    ``backend="reference"``: the pure PyTorch oracle, eager.
``reference-compiled``
    ``torch.compile`` of the same call (graph breaks where the reference is
    data dependent); skipped with the error when compiling fails.
``<backend>``, ``<backend>-inplace``
    Every kernel backend in ``available_backends(device)`` with the loss's
    defaults (the single pass, gradient written during the forward, where
    the backend has one: compare it in ``full`` mode, its ``bwd`` is nearly
    free), and with ``inplace_backward=True`` (two passes, the gradient
    over the logits).
``<backend>-two-pass``
    For a backend with a single-pass kernel (all of ours):
    ``single_pass=False``, statistics in the forward, the gradient in the
    backward.

Cross-entropy providers (loss ``ce``), the floor a fused Cringe loss is
measured against, since Cringe does the same vocabulary pass plus a top-k:

``ce-eager``, ``ce-compiled``
    ``torch.nn.functional.cross_entropy``, eager and ``torch.compile``'d;
    the compiled one runs at every point (its compile takes seconds), unlike
    the compiled reference (see :mod:`.config`).
``liger-ce``
    Liger-Kernel's fused cross-entropy (``LigerCrossEntropyLoss``), when
    ``liger_kernel`` is installed and the device is CUDA. It computes the
    gradient during the forward and stores it over the logits, so its
    "forward" includes the gradient and its "backward" is nearly free; compare
    it in ``full`` mode.

Liger-Kernel's fused *linear* cross-entropy and Cut Cross-Entropy take the
hidden states and the output weight, not logits: they are providers of the
hidden-state mode (``--linear``, :mod:`.hidden_states`) and of the training
step (``--train-step``, :mod:`.train_step`).

A provider's function takes the workload's ``args`` and returns a scalar loss.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

CRINGE_LOSSES = ("binary", "pairwise")
BASELINES = ("reference", "reference-compiled", "ce-eager", "ce-compiled")


@dataclass
class Provider:
    """One thing to time.

    Attributes
    ----------
    name : str
    family : {"cringe", "ce"}
        Cringe providers serve ``binary`` and ``pairwise``; ``ce`` ones the
        cross-entropy workload.
    build : callable
        ``build(loss) -> fn(*workload.args) -> scalar Tensor``; called once per
        loss and cached (a compiled function is compiled once per shape).
    compiled : bool
        Runs after every eager provider (a slow compile cannot starve the
        rest), and only at the standard point unless ``--compile-at all`` or
        ``compile_everywhere``.
    compile_everywhere : bool
        A compiled provider quick enough to compile at every point (unless
        ``--compile-at none``).
    mutates : {None, "forward", "backward"}
        Which pass overwrites the logits; the runner refills them (untimed)
        before the next call.
    extra_bytes : callable
        ``extra_bytes(elements, element_size) -> int``: rough peak memory
        beyond the inputs in ``full`` mode, used only to skip points that
        cannot fit on a GPU before trying them.
    note : str
    unavailable : str
        Non-empty when the provider cannot run here (then it is recorded as
        skipped with this reason).
    """

    name: str
    family: str
    build: Callable[[str], Callable]
    compiled: bool = False
    compile_everywhere: bool = False
    mutates: Optional[str] = None
    extra_bytes: Callable[[int, int], int] = lambda n, s: n * s
    note: str = ""
    unavailable: str = ""
    _cache: Dict[str, Callable] = field(default_factory=dict, repr=False)

    def losses(self) -> tuple:
        return CRINGE_LOSSES if self.family == "cringe" else ("ce",)

    def fn(self, loss: str) -> Callable:
        """The loss function for ``loss`` (built on first use)."""
        if loss not in self._cache:
            self._cache[loss] = self.build(loss)
        return self._cache[loss]


def cringe_fn(loss: str, backend: str, k: int, inplace: bool = False, single_pass: Optional[bool] = None) -> Callable:
    """Plain function computing the ``loss`` Cringe loss with ``backend``.

    ``single_pass`` None keeps the loss's default (the single pass where the
    backend has one, unless ``inplace``).
    """
    from .. import cringe_loss, pairwise_cringe_loss

    opts = dict(k=k, backend=backend)
    if inplace:
        opts["inplace_backward"] = True
    if single_pass is not None:
        opts["single_pass"] = single_pass
    if loss == "binary":
        def binary(logits, target, feedback, uniform):
            return cringe_loss(logits, target, feedback, uniform=uniform, **opts)
        return binary
    if loss == "pairwise":
        def pairwise(chosen, chosen_target, rejected, rejected_target, uniform):
            return pairwise_cringe_loss(chosen, chosen_target, rejected, rejected_target, uniform=uniform, **opts)
        return pairwise
    raise ValueError(f"no Cringe loss named {loss!r}")


def ce_fn(logits, target):
    """Plain cross-entropy, mean over rows (the floor of any fused loss)."""
    return F.cross_entropy(logits, target)


def _compile(fn: Callable) -> Callable:
    return torch.compile(fn)


def compile_unavailable(device: torch.device) -> str:
    """Why ``torch.compile`` cannot run on ``device`` here, or ``""``.

    Only cheap, certain checks (importing ``torch._dynamo`` alone takes
    seconds); anything else shows up as an error on the first call and is
    recorded there.
    """
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "torch.compile on CUDA needs triton, which is not installed"
    return ""


def kernel_backends(device: torch.device) -> List[str]:
    """Kernel backends of ours that can run on ``device`` (not the reference).

    Triton on the CPU runs only in its interpreter (``TRITON_INTERPRET=1``),
    which checks correctness and says nothing about speed, so it is left out.
    """
    from .. import available_backends

    names = [n for n in available_backends(device) if n != "reference"]
    if device.type == "cpu":
        names = [n for n in names if n != "triton"]
    return names


def _liger_unavailable(device: torch.device) -> str:
    if device.type != "cuda":
        return "Liger-Kernel's cross-entropy is a Triton GPU kernel; the device is not CUDA"
    try:
        import liger_kernel.transformers  # noqa: F401
    except Exception as err:
        return f"liger_kernel is not installed or does not import ({type(err).__name__}: {err})"
    return ""


def _liger_build(loss: str) -> Callable:
    from liger_kernel.transformers import LigerCrossEntropyLoss

    module = LigerCrossEntropyLoss()

    def liger(logits, target):
        return module(logits, target)
    return liger


def all_providers(device, k: int = 5) -> List[Provider]:
    """Every provider this suite knows for ``device``, runnable or not.

    Parameters
    ----------
    device : str or torch.device
    k : int
        Candidates of the Cringe sample.

    Returns
    -------
    list of Provider
        Baselines first, then our kernels, then the cross-entropy floor.
    """
    device = torch.device(device)
    no_compile = compile_unavailable(device)
    # Peak-memory guesses (bytes per logit) for skipping what cannot fit:
    # the reference materializes an fp32 copy, the softmax and a scattered
    # gradient; compiled code fuses some of that away; our kernels write only
    # the gradient (nothing in place); cross-entropy keeps log-softmax.
    providers = [
        Provider("reference", "cringe", lambda loss: cringe_fn(loss, "reference", k),
                 extra_bytes=lambda n, s: n * (2 * s + 16), note="backend='reference', eager"),
        Provider("reference-compiled", "cringe", lambda loss: _compile(cringe_fn(loss, "reference", k)),
                 compiled=True, extra_bytes=lambda n, s: n * (s + 8), unavailable=no_compile,
                 note="torch.compile(backend='reference')"),
    ]
    for name in kernel_backends(device):
        single = _has_single_pass(name)
        providers.append(Provider(name, "cringe", lambda loss, b=name: cringe_fn(loss, b, k),
                                  extra_bytes=lambda n, s: n * s,
                                  note=f"backend={name!r}" + (" (single pass: gradient in the forward)" if single
                                                              else "")))
        if single:
            providers.append(Provider(f"{name}-two-pass", "cringe",
                                      lambda loss, b=name: cringe_fn(loss, b, k, single_pass=False),
                                      extra_bytes=lambda n, s: n * s,
                                      note=f"backend={name!r}, single_pass=False (gradient in the backward)"))
        providers.append(Provider(f"{name}-inplace", "cringe", lambda loss, b=name: cringe_fn(loss, b, k, True),
                                  mutates="backward", extra_bytes=lambda n, s: 0,
                                  note=f"backend={name!r}, inplace_backward=True"))
    providers += [
        Provider("ce-eager", "ce", lambda loss: ce_fn, extra_bytes=lambda n, s: n * (2 * s + 4),
                 note="F.cross_entropy, eager"),
        Provider("ce-compiled", "ce", lambda loss: _compile(ce_fn), compiled=True, compile_everywhere=True,
                 extra_bytes=lambda n, s: n * (s + 4), unavailable=no_compile,
                 note="torch.compile(F.cross_entropy)"),
        Provider("liger-ce", "ce", _liger_build, mutates="forward", extra_bytes=lambda n, s: 0,
                 unavailable=_liger_unavailable(device),
                 note="Liger-Kernel fused CE; gradient computed in the forward, in place"),
    ]
    return providers


def select(providers: List[Provider], names: Optional[List[str]], device="cpu") -> List[Provider]:
    """Providers named in ``names`` (None: all), in suite order.

    ``names`` may contain groups: ``all``, ``kernels`` (our backends and their
    in-place variants), ``baselines``, ``ce``; an unknown name raises with the
    list of known ones, so a typo does not silently shrink a sweep.
    """
    if not names:
        return list(providers)
    known = {p.name for p in providers}
    groups = {
        "all": known,
        "kernels": {p.name for p in providers if p.family == "cringe" and not p.name.startswith("reference")},
        "baselines": set(BASELINES),
        "ce": {p.name for p in providers if p.family == "ce"},
        "reference": {"reference"},
    }
    wanted = set()
    for name in names:
        if name in groups:
            wanted |= groups[name]
        elif name in known or _is_backend_name(name):
            wanted.add(name)
        else:
            raise ValueError(f"unknown provider {name!r}; known: {', '.join(sorted(known | set(groups)))}")
    chosen = [p for p in providers if p.name in wanted]
    # A backend asked for by name but not available here is recorded as
    # skipped rather than dropped, so the output says why it is missing.
    for name in sorted(wanted - known):
        base = _base_backend(name)
        chosen.append(Provider(name, "cringe", lambda loss: None,
                               unavailable=_backend_reason(base, torch.device(device))))
    return chosen


def _has_single_pass(name: str) -> bool:
    from ..backends import _load

    return bool(getattr(_load(name), "single_pass", False))


def _base_backend(name: str) -> str:
    """``cuda`` for ``cuda``, ``cuda-inplace`` and ``cuda-two-pass``."""
    for suffix in ("-inplace", "-two-pass"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_backend_name(name: str) -> bool:
    from ..backends import PUBLIC_BACKENDS

    base = _base_backend(name)
    return base in PUBLIC_BACKENDS and base != "reference"


def _backend_reason(name: str, device: torch.device) -> str:
    from ..backends import status

    if name == "triton" and device.type == "cpu":
        return "Triton runs on the CPU only in its interpreter, which says nothing about speed"
    st = status(name)
    return st.reason or f"backend {name!r} does not run on this device (runs on: {', '.join(st.devices) or 'none'})"
