"""Launch choices of the kernel backends: pure functions of the problem's sizes.

Each function takes everything it decides on as an argument (sizes, the
GPU's SM count) and reads nothing else: no environment, no device query,
so the same call gives the same launch everywhere and a test can check the
rule directly. The backends call these by attribute on this module at each
launch; ``benchmarks/kernel_tune.py`` times other choices by passing them to
the launchers or bindings explicitly.

The numbers are the fastest measured on an H100 (bf16, N = 16384, k = 5,
1 row in 7 ignored; ``benchmarks/results/``, the ``tune*.csv`` files).
The CUDA rules are also compiled into ``csrc/cuda/launch.h``
(``single_pass_shape``, ``row_pieces``), whose defaults are these; a test
checks that the two agree.
"""

from __future__ import annotations

from typing import NamedTuple


def _next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


# ---- CUDA ------------------------------------------------------------------


class SinglePassShape(NamedTuple):
    """Launch shape of the CUDA single pass (csrc/cuda/launch.h, SinglePassShape).

    Attributes
    ----------
    threads : int
        Threads per block, a power of two in [32, 512] (float64 uses at most 256).
    blocks_per_sm : int
        Blocks per SM of the persistent grid, 1 to 32 (clamped to what is resident).
    cache_bytes : int
        Bytes of each row kept in shared memory for the gradient sweep (clamped
        to what a block may have); 0: the sweep reads the row again from L2.
    staged : bool
        Each round's loads copied to shared memory by ``cp.async`` while the
        previous round computes.
    """

    threads: int
    blocks_per_sm: int
    cache_bytes: int
    staged: bool


# Rows up to this many bytes keep (most of) themselves in shared memory.
SHORT_ROW_BYTES = 128 * 1024
_SHORT_ROWS = SinglePassShape(256, 3, 64 * 1024, False)
_LONG_ROWS = SinglePassShape(512, 2, 0, True)


def single_pass_shape(row_bytes: int) -> SinglePassShape:
    """The CUDA single pass's launch shape for rows of ``row_bytes`` bytes.

    Short rows (up to 128 KB): 256 threads, 3 blocks per SM and 64 KB of
    each row in shared memory (all of a bf16 row at V = 32000), not staged:
    1.12 ms at V = 32000 against 1.21 ms for the best shape without a
    cache, 1.73 against 1.76 ms at V = 50257. Longer rows: 512 threads,
    2 blocks per SM, no cache, staged: 3.98 ms at V = 128256 against 4.06
    for the short-row shape (forward + gradient, H100).

    Parameters
    ----------
    row_bytes : int
        ``V`` times the logits' element size.

    Returns
    -------
    SinglePassShape
    """
    return _SHORT_ROWS if row_bytes <= SHORT_ROW_BYTES else _LONG_ROWS


# Row splitting (csrc/cuda/launch.h, RowSplit): at most this many pieces a
# row (the merge has one warp lane per piece), each at least this many
# columns (one round of the forward's 256 threads for 16-bit logits), aiming
# at this many blocks per SM (what the forward kernel is compiled to fit).
MAX_PIECES = 32
MIN_PIECE_COLUMNS = 8192
PIECE_BLOCKS_PER_SM = 4


def row_pieces(n_rows: int, V: int, sm_count: int) -> int:
    """Blocks per row of the CUDA forward and backward.

    One block per row while the rows give every SM four blocks; otherwise
    the most pieces that still run in one wave of four blocks per SM, each
    at least 8192 columns long, at most 32. Rounding up would start a
    second, mostly idle wave (V = 128256, N = 256: 3 pieces 0.119 ms, 2
    pieces 0.097 ms).

    Parameters
    ----------
    n_rows : int
        ``N = B * T``.
    V : int
        Columns per row.
    sm_count : int
        The GPU's number of SMs.

    Returns
    -------
    int
        1 to ``MAX_PIECES``.
    """
    want = sm_count * PIECE_BLOCKS_PER_SM
    if n_rows <= 0 or n_rows >= want:
        return 1
    pieces = min(want // n_rows, V // MIN_PIECE_COLUMNS, MAX_PIECES)
    return pieces if pieces > 1 else 1


# ---- Triton ----------------------------------------------------------------


class TritonForwardConfig(NamedTuple):
    """Launch parameters of the Triton forward.

    Attributes
    ----------
    block : int
        Columns per step (a power of two).
    num_warps : int
        Warps per row's program.
    sub : int
        Columns per top-k offer (a power of two, at most ``block``).
    """

    block: int
    num_warps: int
    sub: int


def triton_forward_config(V: int, k: int) -> TritonForwardConfig:
    """The Triton forward's ``(block, num_warps, sub)`` for rows of ``V`` columns and ``k_eff = k``.

    Small programs win (more rows in flight per SM), and offering a gated
    block to the top-k in 512-column pieces keeps the offer's key arrays in
    registers (ptxas, sm_90, bf16, k = 5: 128 registers with the whole
    block, 64 with 256-column pieces). At V = 128256, k = 5: 2048 columns,
    4 warps, 512-column pieces 2.17 ms; 256-column pieces 2.23 ms; whole
    blocks 2.94 ms; 4096 columns 2.71 ms; 1024 columns 3.10 ms; 8 warps
    3.5 ms or more. A row costs about ``k * (1 + ln(V / block))`` insertions,
    each scanning a piece, so k > 8 halves the block.

    Parameters
    ----------
    V : int
        Columns per row.
    k : int
        ``k_eff = min(k, V - 1)``.

    Returns
    -------
    TritonForwardConfig
    """
    block = min(2048 if k <= 8 else 1024, _next_power_of_2(V))
    return TritonForwardConfig(block, 4, min(512, block))


# Columns per program of the Triton backward (8 warps): at V = 128256,
# 8192 columns 2.93 ms, 2048 columns / 4 warps 2.95 ms, 4096 / 8 3.62 ms,
# 8192 / 16 warps 3.65 ms.
TRITON_BACKWARD_BLOCK = 8192
# Rows a program of the single pass's completion: N = 16384 gives 1024
# programs, a few waves on an H100, also when every row is written in full.
TRITON_COMPLETE_ROWS = 16


def triton_backward_block(V: int) -> int:
    """Columns per program of the Triton backward and completion."""
    return min(TRITON_BACKWARD_BLOCK, _next_power_of_2(V))


def triton_num_warps(block: int) -> int:
    """Warps of a Triton backward program of ``block`` columns."""
    return 8 if block >= 2048 else 4
