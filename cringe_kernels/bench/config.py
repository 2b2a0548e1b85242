"""The sweep configuration and the per-device presets.

Presets (``--quick``, default, ``--full``) differ by device type because the
same sizes cannot serve both: the GPU sweep uses production sizes (Llama 2's
32000, Llama 3's 128256 and Gemma's 256000 vocabularies; 4096 and 16384 rows,
i.e. 4 or 16 sequences of 1024 tokens), while the CPU default is sized to run
in about two minutes on a busy 2-core machine: the pure-PyTorch reference
takes about a second per call there at ``V=32000, N=256``, and compiling it
takes half a minute, so the CPU default is two points (``V`` 8192 and
32000, ``N=256``, fp32) plus the compiled providers at the smaller one.

The *standard size* is the one point where the slow-to-compile provider
(``torch.compile`` of the reference) runs unless ``--compile-at all``:
compiling a Python loop over vocabulary chunks costs tens of seconds per
shape, more than the rest of a sweep. On a GPU it is ``V=128256, N=4096``
bf16, the smaller of the sweep's row counts, and the summary says so; the
compiled cross-entropy compiles in seconds and runs at every point.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Tuple

import torch

LOSSES = ("binary", "pairwise")
MODES = ("fwd", "bwd", "full")
MODE_ALIASES = {"forward": "fwd", "fwd": "fwd", "backward": "bwd", "bwd": "bwd", "full": "full",
                "fwd+bwd": "full", "both": "full"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
DTYPE_ALIASES = {"float32": "fp32", "fp32": "fp32", "f32": "fp32", "bfloat16": "bf16", "bf16": "bf16",
                 "float16": "fp16", "fp16": "fp16", "half": "fp16", "float64": "fp64", "fp64": "fp64"}
PRESETS = ("quick", "default", "full")


@dataclass(frozen=True)
class SweepConfig:
    """Everything a sweep needs; built by :mod:`.cli` or directly in tests.

    Attributes
    ----------
    device : str
        ``"cpu"``, ``"cuda"`` or ``"cuda:1"``.
    preset : str
        ``"quick"``, ``"default"`` or ``"full"`` (the sizes came from it).
    vocab_sizes, row_counts : tuple of int
        ``V`` and ``N`` values; every combination is a point.
    dtypes : tuple of str
        Keys of :data:`DTYPES`.
    losses : tuple of str
        Subset of :data:`LOSSES`.
    modes : tuple of str
        Subset of :data:`MODES`.
    providers : tuple of str or None
        Provider names to run; None means every default provider.
    standard : tuple (V, N, dtype)
        Where the compiled providers run when ``compile_at == "standard"``.
    compile_at : {"standard", "all", "none"}
    seq_len : int
        Tokens per sequence; ``N`` rows are ``N // seq_len`` sequences
        (at least 2, so that half of them can be negative).
    k : int
        Candidates of the Cringe sample.
    warmup, min_reps, max_reps : int
    warmup_ms : float or None
        Keep warming up until the warm-up calls add up to this much (None:
        the timer's default, 25 ms on a GPU, 50 ms on the CPU).
    rep_ms : float
        Target sampling time per measurement (see :class:`.timing.Timer`).
    time_budget_s : float or None
        Stop starting new measurements after this many seconds (the rest are
        recorded as skipped); None means no limit.
    value_checks : bool
        Keep the package's value checks (one host sync per call) on.
    seed : int
    threads : int or None
        ``torch.set_num_threads`` for the sweep (CPU); None keeps torch's default.
    copy_mib : int or None
        Size of the copy that measures the device bandwidth; None: 1024 on a
        GPU, 256 on the CPU (both far beyond the last-level cache).
    out_dir : str or None
        Where results go; None means ``benchmarks/results/<device tag>``.
    plot : bool
    progress : bool
    """

    device: str = "cpu"
    preset: str = "default"
    vocab_sizes: Tuple[int, ...] = (8192, 32000)
    row_counts: Tuple[int, ...] = (256,)
    dtypes: Tuple[str, ...] = ("fp32",)
    losses: Tuple[str, ...] = LOSSES
    modes: Tuple[str, ...] = MODES
    providers: Optional[Tuple[str, ...]] = None
    standard: Tuple[int, int, str] = (8192, 256, "fp32")
    compile_at: str = "standard"
    seq_len: int = 1024
    k: int = 5
    warmup: int = 1
    warmup_ms: Optional[float] = None
    min_reps: int = 3
    max_reps: int = 20
    rep_ms: float = 400.0
    time_budget_s: Optional[float] = None
    value_checks: bool = False
    seed: int = 0
    threads: Optional[int] = None
    copy_mib: Optional[int] = None
    out_dir: Optional[str] = None
    plot: bool = True
    progress: bool = True

    def with_(self, **changes) -> "SweepConfig":
        """A copy with some fields changed."""
        return replace(self, **changes)

    def points(self):
        """Every ``(V, N, dtype)`` point, smallest logits first.

        Smallest first so that a time budget cuts the largest (slowest,
        most likely to be skipped for memory anyway) points.
        """
        pts = [(V, N, dt) for dt in self.dtypes for N in self.row_counts for V in self.vocab_sizes]
        return sorted(pts, key=lambda p: (p[0] * p[1] * torch.empty((), dtype=DTYPES[p[2]]).element_size(),
                                          p[1], p[0], p[2]))


def preset(device: str, name: str = "default") -> SweepConfig:
    """The preset sweep ``name`` for ``device``'s type.

    Parameters
    ----------
    device : str
    name : {"quick", "default", "full"}

    Returns
    -------
    SweepConfig
    """
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {name!r}")
    gpu = torch.device(device).type == "cuda"
    if gpu:
        base = SweepConfig(
            device=device, preset=name,
            vocab_sizes=(32000, 128256, 256000), row_counts=(4096, 16384), dtypes=("bf16", "fp32"),
            standard=(128256, 4096, "bf16"), seq_len=1024,
            warmup=2, min_reps=3, max_reps=50, rep_ms=40.0,
        )
        if name == "quick":
            return base.with_(vocab_sizes=(32000, 128256), row_counts=(4096,), dtypes=("bf16",),
                              min_reps=3, max_reps=20, rep_ms=20.0)
        if name == "full":
            return base.with_(compile_at="all", warmup=3, min_reps=10, max_reps=200, rep_ms=200.0)
        return base
    base = SweepConfig(
        device=device, preset=name,
        vocab_sizes=(8192, 32000), row_counts=(256,), dtypes=("fp32",),
        standard=(8192, 256, "fp32"), seq_len=256,
        warmup=1, min_reps=3, max_reps=20, rep_ms=300.0,
    )
    if name == "quick":
        return base.with_(vocab_sizes=(2048,), row_counts=(64,), standard=(2048, 64, "fp32"), seq_len=32,
                          min_reps=2, max_reps=5, rep_ms=50.0, copy_mib=64,
                          warmup_ms=10.0)
    if name == "full":
        return base.with_(vocab_sizes=(8192, 32000, 128256), row_counts=(512, 2048), dtypes=("fp32", "bf16"),
                          standard=(32000, 512, "fp32"), compile_at="all", min_reps=5, max_reps=50,
                          rep_ms=1000.0)
    return base
