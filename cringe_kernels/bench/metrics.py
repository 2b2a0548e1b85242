"""Byte model, achieved bandwidth, device copy bandwidth and speedups.

Byte model
----------
One model for every provider, counted in passes over the ``N x V`` logits
(``E = N * V`` elements of the logits' dtype, ``s`` bytes each):

====== ================== ============
mode   passes             bytes
====== ================== ============
fwd    1 read             ``E * s``
bwd    1 read + 1 write   ``2 * E * s``
full   2 reads + 1 write  ``3 * E * s``
====== ================== ============

``N`` counts the rows the kernels read: a row whose target is
``ignore_index`` is neither read nor written by them, so it is not counted
(the column ``rows_read``, counted on the workload's own targets; this
suite's workloads ignore no row, so it equals ``N`` there).

This is what a fused two-pass design must move (docs/design.md section 1: the
forward reads the logits once; the backward reads them again and writes the
gradient); the ``[N]`` vectors are negligible. Applying it to every provider
makes ``achieved GB/s = model bytes / time`` an *effective* bandwidth: for
the reference, which moves many times more, it shows how far it is from the
fused floor; for a fused kernel it shows how close it is to the memory system
(``frac_copy_bw``, against a device-to-device copy timed in the same run,
itself counted as 1 read + 1 write). A one-pass ``full`` (gradient written
while the row is on chip) could reach ``2 * E * s`` and so exceed 1.0 of the
two-pass model's floor time: the model states the target, not a law.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional

import torch

#: mode -> (reads, writes) of the logits.
BYTE_MODEL = {"fwd": (1, 0), "bwd": (1, 1), "full": (2, 1)}

BYTE_MODEL_TEXT = ("bytes = (reads + writes) * rows_read * V * sizeof(dtype), rows_read = rows whose target is "
                   "not ignore_index (ignored rows are not read; counted on the benchmark's own targets); "
                   "fwd: 1 read; bwd: 1 read + 1 write; "
                   "full: 2 reads + 1 write (the fused two-pass design), the same for every provider; "
                   "copy bandwidth: dst.copy_(src) counted as 1 read + 1 write")


def model_bytes(mode: str, N: int, V: int, element_size: int) -> int:
    """Bytes the byte model assigns to ``mode`` at ``N x V`` logits.

    Parameters
    ----------
    mode : {"fwd", "bwd", "full"}
    N, V : int
    element_size : int
        Bytes per logit.

    Returns
    -------
    int
    """
    reads, writes = BYTE_MODEL[mode]
    return (reads + writes) * N * V * element_size


def gbps(nbytes: float, ms: float) -> Optional[float]:
    """Achieved bandwidth in GB/s (1e9 bytes per second); None without a time."""
    if not ms or ms <= 0:
        return None
    return nbytes / (ms * 1e-3) / 1e9


def measure_copy_bandwidth(device: torch.device, timer, nbytes: Optional[int] = None) -> Dict[str, float]:
    """Time ``dst.copy_(src)`` on ``device``: the practical bandwidth ceiling.

    Parameters
    ----------
    device : torch.device
    timer : Timer
        From :func:`.timing.make_timer`.
    nbytes : int, optional
        Size of ``src``; default 1 GiB on a GPU, 256 MiB on the CPU (larger
        than any cache, small enough for a laptop).

    Returns
    -------
    dict
        ``bytes`` (moved per copy: read + write), ``median_ms``, ``gbps``.
    """
    if nbytes is None:
        nbytes = (1 << 30) if device.type == "cuda" else (256 << 20)
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    timing = timer.measure(lambda: dst.copy_(src))
    moved = 2 * nbytes
    return {"bytes": moved, "median_ms": timing.median_ms, "p20_ms": timing.p20_ms, "p80_ms": timing.p80_ms,
            "gbps": gbps(moved, timing.median_ms)}


#: Speedup columns: column -> (baseline provider, compare with the same loss?).
SPEEDUP_BASELINES = {
    "speedup_vs_reference": ("reference", True),
    "speedup_vs_reference_compiled": ("reference-compiled", True),
    "speedup_vs_ce_eager": ("ce-eager", False),
    "speedup_vs_ce_compiled": ("ce-compiled", False),
}


def add_speedups(records: List[dict]) -> None:
    """Fill the speedup columns in place: baseline median / this median.

    A Cringe row is compared with the reference of the same loss, mode and
    point, and with cross-entropy at the same mode and point (above 1: faster
    than that baseline). A cross-entropy row gets only the cross-entropy
    ratios. Missing baselines leave None.
    """
    ok = {(r["provider"], r["loss"], r["mode"], r["V"], r["N"], r["dtype"]): r["median_ms"]
          for r in records if r.get("status") == "ok" and r.get("median_ms")}
    for r in records:
        for column, (base, same_loss) in SPEEDUP_BASELINES.items():
            r[column] = None
            if r.get("status") != "ok" or not r.get("median_ms"):
                continue
            if same_loss and r["loss"] == "ce":
                continue
            loss = r["loss"] if same_loss else "ce"
            t = ok.get((base, loss, r["mode"], r["V"], r["N"], r["dtype"]))
            if t:
                r[column] = t / r["median_ms"]


def fill_bandwidth(record: dict, element_size: int, copy_gbps: Optional[float]) -> None:
    """Set ``model_bytes``, ``gbps`` and ``frac_copy_bw`` of one record.

    Rows counted: ``record["rows_read"]`` when set (the rows not ignored),
    else ``record["N"]``.
    """
    rows = record.get("rows_read")
    record["model_bytes"] = model_bytes(record["mode"], record["N"] if rows is None else rows, record["V"],
                                        element_size)
    bw = gbps(record["model_bytes"], record.get("median_ms"))
    record["gbps"] = bw
    record["frac_copy_bw"] = bw / copy_gbps if (bw and copy_gbps) else None


def best_by(records: Iterable[dict], key) -> Dict:
    """Group ok records by ``key(record)``, keeping the fastest of each group."""
    best: Dict = {}
    for r in records:
        if r.get("status") != "ok":
            continue
        k = key(r)
        if k not in best or r["median_ms"] < best[k]["median_ms"]:
            best[k] = r
    return best
