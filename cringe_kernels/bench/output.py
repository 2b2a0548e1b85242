"""Results on disk (CSV, JSON) and the summary table printed at the end."""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import asdict
from typing import Dict, Iterable, List, Optional, Sequence, TextIO

from .metrics import BYTE_MODEL_TEXT

#: The CSV schema, in column order. Times in milliseconds, memory in MiB
#: (2**20 bytes), bandwidth in GB/s (1e9 bytes/s); empty cells are "not
#: measured" (see ``status`` and ``reason``).
COLUMNS = (
    "device", "provider", "loss", "mode", "V", "N", "dtype", "status", "reason",
    "median_ms", "p20_ms", "p80_ms", "reps", "first_call_ms",
    "peak_mem_mib", "rows_read", "model_bytes", "gbps", "frac_copy_bw",
    "speedup_vs_reference", "speedup_vs_reference_compiled", "speedup_vs_ce_eager", "speedup_vs_ce_compiled",
    "note",
)

CSV_NAME = "results.csv"
JSON_NAME = "results.json"
SUMMARY_NAME = "summary.txt"


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


class CsvAppender:
    """Writes the header, then one row per record as it arrives (flushed),
    so that a sweep killed by a time limit still leaves what it measured."""

    def __init__(self, path: str):
        self.path = path
        self._file: TextIO = open(path, "w", newline="")
        self._writer = csv.writer(self._file)
        self._writer.writerow(COLUMNS)
        self._file.flush()

    def __call__(self, record: dict) -> None:
        self._writer.writerow([_cell(record.get(c)) for c in COLUMNS])
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def write_csv(records: Iterable[dict], path: str, columns: Sequence[str] = COLUMNS) -> None:
    """All records under ``columns`` (default :data:`COLUMNS`; other keys are left to the JSON)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in records:
            writer.writerow([_cell(r.get(c)) for c in columns])


def write_doc(doc: dict, path: str) -> None:
    """``doc`` as indented JSON (NaN and infinities as null)."""
    with open(path, "w") as f:
        json.dump(_jsonable(doc), f, indent=1)
        f.write("\n")


def write_mode(result, out_dir: str, columns: Sequence[str], plot, summary_text: str, mode: str,
               memory_text: str, timing_method: str, extra: Optional[dict] = None) -> List[str]:
    """The files of one of the suite's whole-step modes (``--linear``,
    ``--train-step``): CSV, summary, plots (``plot(records, out_dir, title)
    -> (paths, note)``) and the JSON document with the environment, the
    configuration and how time and memory were measured. Returns the notes."""
    write_csv(result.records, os.path.join(out_dir, CSV_NAME), columns)
    files = {"csv": CSV_NAME}
    notes = []
    if result.config.plot:
        title = f"{result.env.get('device_name')} | torch {result.env.get('torch')} | {result.env.get('date_utc')}"
        paths, note = plot(result.records, out_dir, title)
        if note:
            notes.append(note)
        files["plots"] = [os.path.basename(p) for p in paths]
    with open(os.path.join(out_dir, SUMMARY_NAME), "w") as f:
        f.write(summary_text + "\n")
    files["summary"] = SUMMARY_NAME
    write_doc({
        "mode": mode,
        "environment": result.env,
        "config": asdict(result.config),
        "memory_method": f"{memory_text}; meter: {result.memory_method}",
        "timing_method": timing_method,
        **(extra or {}),
        "elapsed_s": result.elapsed_s,
        "interrupted": result.interrupted,
        "notes": notes,
        "columns": list(columns),
        "files": files,
        "records": result.records,
    }, os.path.join(out_dir, JSON_NAME))
    return notes


def read_csv(path: str) -> List[Dict[str, str]]:
    """Rows of a results CSV as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _jsonable(value):
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_json(result, path: str, files: Optional[Dict[str, str]] = None) -> None:
    """The whole sweep: environment, configuration, byte model, copy bandwidth, records."""
    doc = {
        "environment": result.env,
        "config": asdict(result.config),
        "byte_model": BYTE_MODEL_TEXT,
        "memory_method": result.memory_method,
        "timing_method": ("CUDA events per call, L2 flushed before each call, warm-up excluded"
                          if result.config.device.startswith("cuda")
                          else "time.perf_counter per call, warm-up excluded"),
        "copy_bandwidth": result.copy_bandwidth,
        "elapsed_s": result.elapsed_s,
        "interrupted": result.interrupted,
        "notes": result.notes,
        "columns": list(COLUMNS),
        "files": files or {},
        "records": result.records,
    }
    with open(path, "w") as f:
        json.dump(_jsonable(doc), f, indent=1)
        f.write("\n")


# ---------------------------------------------------------------- summary


def _fmt_ms(r: Optional[dict]) -> str:
    if r is None:
        return "-"
    if r["status"] == "ok":
        ms = r["median_ms"]
        return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"
    return "skip" if r["status"] == "skipped" else "ERR"


def _fmt_mib(r: Optional[dict]) -> str:
    if r is None or r["status"] != "ok":
        return "-"
    v = r.get("peak_mem_mib")
    return "NA" if v is None else f"{v:.0f}"


def table(header: List[str], rows: List[List[str]]) -> List[str]:
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    line = lambda cells: "  ".join(c.rjust(w) if i >= 1 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return [line(header), "-" * len(line(header))] + [line(r) for r in rows]


def summary(result) -> str:
    """Median time per provider for every (loss, mode, point), then peak memory.

    Cross-entropy providers appear on the Cringe rows of the same mode and
    point, as the floor to compare with.
    """
    records = result.records
    providers: List[str] = []
    for r in records:
        if r["provider"] not in providers:
            providers.append(r["provider"])
    by_key = {(r["provider"], r["loss"], r["mode"], r["V"], r["N"], r["dtype"]): r for r in records}
    keys = []
    for r in records:
        if r["loss"] == "ce":
            continue
        k = (r["loss"], r["mode"], r["V"], r["N"], r["dtype"])
        if k not in keys:
            keys.append(k)
    if not keys:  # only cross-entropy was run
        keys = sorted({("ce", r["mode"], r["V"], r["N"], r["dtype"]) for r in records})
    mode_order = {"fwd": 0, "bwd": 1, "full": 2}
    keys.sort(key=lambda k: (k[0], k[4], k[3], k[2], mode_order.get(k[1], 9)))

    def cell(provider, k, fmt):
        loss = k[0]
        r = by_key.get((provider, loss, *k[1:])) or by_key.get((provider, "ce", *k[1:]))
        return fmt(r)

    env = result.env
    out = [
        f"device: {env.get('device_name')} ({env.get('device')}), torch {env.get('torch')}, "
        f"triton {env.get('triton')}, CUDA {env.get('torch_cuda')}, driver {env.get('driver')}, "
        f"{env.get('usable_cores')} usable cores, load avg start {load_text(env.get('load_average_start'))} "
        f"end {load_text(env.get('load_average_end'))}",
        f"commit {env.get('git_commit')}{' (dirty)' if env.get('git_dirty') else ''}, {env.get('date_utc')}, "
        f"sweep took {result.elapsed_s:.0f} s" + (" (INTERRUPTED)" if result.interrupted else ""),
    ]
    if result.copy_bandwidth:
        out.append(f"device copy bandwidth: {result.copy_bandwidth['gbps']:.1f} GB/s (read+write)")
    out.append(f"byte model: {BYTE_MODEL_TEXT}")
    compiled_at = {}
    for r in records:
        if r["provider"].endswith("-compiled") and r["status"] == "ok":
            compiled_at.setdefault(r["provider"], []).append(f"{r['V']}x{r['N']} {r['dtype']}")
    for name, where in compiled_at.items():
        where = list(dict.fromkeys(where))
        out.append(f"{name} measured at V x N = {', '.join(where)} only" if len(where) < len(
            {(r["V"], r["N"], r["dtype"]) for r in records}) else f"{name} measured at every point")
    settings = env.get("settings") or {}
    out.append("settings: " + (" ".join(f"{k}={v}" for k, v in settings.items()) or "defaults (no CRINGE_KERNELS_*)"))
    if not keys:
        return "\n".join(out + ["", "no measurements"])
    out += ["", "median time, ms (skip/ERR: see the CSV's reason column; -: not run)"]
    header = ["loss mode V N dtype"] + providers
    rows = [[f"{k[0]} {k[1]} {k[2]} {k[3]} {k[4]}"] + [cell(p, k, _fmt_ms) for p in providers] for k in keys]
    out += table(header, rows)
    full_keys = [k for k in keys if k[1] == "full"] or keys
    out += ["", f"peak memory beyond the inputs, MiB, mode {full_keys[0][1]} ({result.memory_method})"]
    rows = [[f"{k[0]} {k[1]} {k[2]} {k[3]} {k[4]}"] + [cell(p, k, _fmt_mib) for p in providers] for k in full_keys]
    out += table(header, rows)
    best = _best_kernel_lines(records)
    if best:
        out += ["", "fastest of our kernels, full mode: speedup vs eager reference / vs F.cross_entropy; "
                "effective bandwidth (byte model) as a fraction of the copy bandwidth"] + best
    problems = [r for r in records if r["status"] == "error"]
    if problems:
        out += ["", f"{len(problems)} errors:"] + [
            f"  {r['provider']} {r['loss']} {r['mode']} V={r['V']} N={r['N']} {r['dtype']}: {r['reason']}"
            for r in problems[:20]]
    return "\n".join(out)


def load_text(value) -> str:
    """A load-average triple as ``1.0/2.0/3.0`` (``?`` when unknown)."""
    return "?" if not value else "/".join(f"{x:.1f}" for x in value)


NO_MATPLOTLIB = "matplotlib is not installed: no plots (pip install 'cringe_kernels[bench]')"


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend, or None without matplotlib (then
    the caller reports :data:`NO_MATPLOTLIB`)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _best_kernel_lines(records: List[dict]) -> List[str]:
    lines = []
    best: Dict[tuple, dict] = {}
    for r in records:
        if (r["status"] != "ok" or r["mode"] != "full" or r["loss"] == "ce"
                or r["provider"].startswith("reference")):
            continue
        k = (r["loss"], r["V"], r["N"], r["dtype"])
        if k not in best or r["median_ms"] < best[k]["median_ms"]:
            best[k] = r
    for k, r in best.items():
        ref = r.get("speedup_vs_reference")
        ce = r.get("speedup_vs_ce_eager")
        frac = r.get("frac_copy_bw")
        lines.append(f"  {k[0]} V={k[1]} N={k[2]} {k[3]}: {r['provider']} {r['median_ms']:.3g} ms, "
                     f"x{ref:.2f} vs reference, " if ref else
                     f"  {k[0]} V={k[1]} N={k[2]} {k[3]}: {r['provider']} {r['median_ms']:.3g} ms, ")
        lines[-1] += (f"x{ce:.2f} vs cross_entropy" if ce else "no cross_entropy baseline") + (
            f", {frac:.2f} of copy bandwidth" if frac else "")
    return lines


def ensure_dir(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path
