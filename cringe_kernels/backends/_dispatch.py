"""Eager calls of our ops that skip the dispatcher when nothing would see them.

Every kernel entry point is a ``torch.library`` op so that ``torch.compile``,
fake tensors, functionalisation, ``torch.func`` transforms and dispatch modes
see it. A plain eager call on ordinary tensors needs none of that, yet the
op's Python layers (``custom_op``'s autograd wrapper, redispatch, the dynamo
guard around the body) cost tens of microseconds of host time per call, on
the path to every kernel launch: with the GPU idle until that launch, the
time adds to every small loss call (``benchmarks/host_overhead.py``).
:class:`EagerOp` runs the op's body directly in that case (the very function
the op runs, so the results are the same) and calls the op otherwise.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

_C = torch._C


def _interceptors_active() -> bool:
    """Whether anything may need to see the op: a compile trace, a dispatch or
    ``__torch_function__`` mode, or a ``torch.func`` transform (vmap, grad).

    The probes are private torch functions; where one is missing the answer
    is yes, and the op is called as before.
    """
    try:
        return bool(
            torch.compiler.is_compiling()
            or _C._len_torch_dispatch_stack()
            or _C._is_torch_function_mode_enabled()
            or _C._functorch.peek_interpreter_stack() is not None
        )
    except AttributeError:  # pragma: no cover - depends on the torch version
        return True


def direct_call_ok(args) -> bool:
    """True when an eager call with ``args`` may run an op's body directly.

    Parameters
    ----------
    args : sequence
        The op's arguments; every tensor among them must be a plain
        ``torch.Tensor`` (not a subclass such as a fake or a DTensor).
    """
    if _interceptors_active():
        return False
    for a in args:
        if isinstance(a, torch.Tensor) and type(a) is not torch.Tensor:
            return False
    return True


class EagerOp:
    """A registered op with its Python body; calling it picks one.

    A direct call of a mutating op bumps the version counter of every
    argument the op's schema marks as written, as the dispatcher does: a
    tensor that autograd saved elsewhere and that the op then overwrote
    raises torch's in-place error instead of giving a wrong gradient.

    Parameters
    ----------
    op : callable
        The ``torch.ops`` overload packet (what :attr:`op` returns, for
        ``torch.library.opcheck`` and friends).
    body : callable
        The function the op was registered with.
    """

    __slots__ = ("op", "body", "unchecked_body", "mutated")

    def __init__(self, op: Callable, body: Callable, unchecked_body: Optional[Callable] = None):
        self.op = op
        self.body = body
        self.unchecked_body = unchecked_body or body
        schema = op.default._schema
        self.mutated = tuple(i for i, a in enumerate(schema.arguments) if a.alias_info is not None
                             and a.alias_info.is_write)

    @classmethod
    def registered(cls, qualname: str, body: Callable, unchecked_body: Optional[Callable] = None) -> "EagerOp":
        """The op registered as ``qualname`` (``"namespace::name"``) with ``body``."""
        namespace, name = qualname.split("::")
        return cls(getattr(getattr(torch.ops, namespace), name), body, unchecked_body)

    def __call__(self, *args):
        return self._call(self.body, args)

    def unchecked(self, *args):
        """The call for arguments the caller has already checked (the losses):
        the direct path skips the op's own argument checks."""
        return self._call(self.unchecked_body, args)

    def _call(self, body: Callable, args):
        if not direct_call_ok(args):
            return self.op(*args)
        out = body(*args)
        for i in self.mutated:
            torch.autograd.graph.increment_version(args[i])
        return out

    def __repr__(self) -> str:
        return f"EagerOp({self.op!r})"
