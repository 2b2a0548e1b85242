"""Command line: ``python -m cringe_kernels.bench [options]``.

Examples
--------
``python -m cringe_kernels.bench``
    The default sweep on the GPU when there is one, else the short CPU sweep
    (about two minutes), into ``benchmarks/results/<device tag>/``.
``python -m cringe_kernels.bench --quick --no-plot``
    A smoke run.
``python -m cringe_kernels.bench --providers reference,cuda,ce-eager --modes full --V 128256 --N 4096 --dtypes bf16``
    One point, three providers.

Exit status: 0 when every measurement ran or was skipped for a recorded
reason, 1 when a measurement raised an error or the sweep was interrupted
(SIGINT/SIGTERM; what was measured is still written), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import List, Optional, Sequence

import torch

from . import output
from .config import DTYPE_ALIASES, LOSSES, MODE_ALIASES, SweepConfig, preset


def _list(text: str) -> List[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _ints(text: str) -> List[int]:
    try:
        values = [int(float(t)) if "e" in t.lower() else int(t) for t in _list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or any(v < 2 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 2, got {text!r}")
    return values


def _choices(aliases: dict, what: str):
    def parse(text: str) -> List[str]:
        out = []
        for t in _list(text):
            if t.lower() not in aliases:
                raise argparse.ArgumentTypeError(f"unknown {what} {t!r}; choose from {', '.join(sorted(aliases))}")
            if aliases[t.lower()] not in out:
                out.append(aliases[t.lower()])
        if not out:
            raise argparse.ArgumentTypeError(f"no {what} given")
        return out
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cringe_kernels.bench",
        description="Benchmark the Cringe losses: providers x modes x (V, N, dtype).",
        epilog="Defaults come from the preset for the device (see cringe_kernels/bench/config.py); "
               "each option overrides one field.")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda when available)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="preset", const="quick", help="smallest sweep (smoke test)")
    size.add_argument("--full", action="store_const", dest="preset", const="full",
                      help="larger sweep, compiled providers at every point, more repetitions")
    p.set_defaults(preset="default")
    p.add_argument("--providers", type=_list, default=None,
                   help="comma list of providers or groups (all, kernels, baselines, ce, reference); "
                        "see --list-providers")
    p.add_argument("--modes", type=_choices(MODE_ALIASES, "mode"), default=None, help="fwd,bwd,full")
    p.add_argument("--losses", type=_choices({l: l for l in LOSSES}, "loss"), default=None, help="binary,pairwise")
    p.add_argument("--dtypes", type=_choices(DTYPE_ALIASES, "dtype"), default=None, help="fp32,bf16,fp16")
    p.add_argument("--V", type=_ints, default=None, help="vocabulary sizes, e.g. 32000,128256")
    p.add_argument("--N", type=_ints, default=None, help="row counts (tokens), e.g. 4096,16384")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results/<device tag>)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--compile-at", choices=("standard", "all", "none"), default=None,
                   help="where torch.compile'd providers run (default: the standard point only)")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="start no measurement after this many seconds (eager providers: after 70%% of it "
                        "when compiled ones are planned); the rest are recorded as skipped")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls before sampling")
    p.add_argument("--warmup-ms", type=float, default=None, help="keep warming up until this much time is spent")
    p.add_argument("--min-reps", type=int, default=None)
    p.add_argument("--max-reps", type=int, default=None)
    p.add_argument("--rep-ms", type=float, default=None, help="target sampling time per measurement")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence")
    p.add_argument("--k", type=int, default=None, help="Cringe candidates (default 5)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads for the sweep (on a loaded CPU, 1 gives steadier numbers)")
    p.add_argument("--value-checks", action="store_true",
                   help="keep the package's input value checks on (one host sync per call)")
    p.add_argument("--list-providers", action="store_true", help="print the providers and whether they run here")
    return p


def resolve_device(text: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is usable, else ``cpu``; others are checked."""
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except RuntimeError as err:
        raise ValueError(f"bad --device {text!r}: {err}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA GPU")
    return text


def config_from_args(args: argparse.Namespace) -> SweepConfig:
    """The preset for the device, overridden by every option given."""
    device = resolve_device(args.device)
    cfg = preset(device, args.preset)
    changes = {}
    for field_name, value in (
        ("providers", tuple(args.providers) if args.providers else None),
        ("modes", tuple(args.modes) if args.modes else None),
        ("losses", tuple(args.losses) if args.losses else None),
        ("dtypes", tuple(args.dtypes) if args.dtypes else None),
        ("vocab_sizes", tuple(args.V) if args.V else None),
        ("row_counts", tuple(args.N) if args.N else None),
        ("out_dir", args.out),
        ("compile_at", args.compile_at),
        ("time_budget_s", args.time_budget),
        ("warmup", args.warmup),
        ("warmup_ms", args.warmup_ms),
        ("min_reps", args.min_reps),
        ("max_reps", args.max_reps),
        ("rep_ms", args.rep_ms),
        ("seq_len", args.seq_len),
        ("k", args.k),
        ("seed", args.seed),
        ("threads", args.threads),
    ):
        if value is not None:
            changes[field_name] = value
    if args.no_plot:
        changes["plot"] = False
    if args.no_progress:
        changes["progress"] = False
    if args.value_checks:
        changes["value_checks"] = True
    return cfg.with_(**changes)


def parse_args(argv: Optional[Sequence[str]] = None) -> SweepConfig:
    """Parse ``argv`` into a :class:`SweepConfig` (exits with status 2 on bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return config_from_args(args)
    except ValueError as err:
        parser.error(str(err))


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def list_providers(device: str) -> str:
    from .providers import all_providers

    lines = [f"providers on {device}:"]
    for p in all_providers(device):
        state = "runs" if not p.unavailable else f"skipped: {p.unavailable}"
        lines.append(f"  {p.name:20s} {('compiled ' if p.compiled else '')}{p.note}  [{state}]")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the sweep and write the results; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    if args.list_providers:
        print(list_providers(cfg.device))
        return 0

    from . import env
    from .plots import plot_all
    from .runner import run_sweep

    out_dir = output.ensure_dir(cfg.out_dir or os.path.join("benchmarks", "results", env.device_tag(cfg.device)))
    cfg = cfg.with_(out_dir=out_dir)
    print(f"cringe_kernels.bench: {cfg.preset} sweep on {cfg.device}: V={list(cfg.vocab_sizes)} "
          f"N={list(cfg.row_counts)} dtypes={list(cfg.dtypes)} losses={list(cfg.losses)} modes={list(cfg.modes)}"
          f" -> {out_dir}", flush=True)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    csv_path = os.path.join(out_dir, output.CSV_NAME)
    appender = output.CsvAppender(csv_path)
    try:
        result = run_sweep(cfg, on_record=appender)
    finally:
        appender.close()
        signal.signal(signal.SIGTERM, previous)
    # Rewritten whole: the speedups need baselines measured after the row.
    output.write_csv(result.records, csv_path)
    # Names relative to the output folder, so a committed result stays readable.
    files = {"csv": output.CSV_NAME}
    if cfg.plot:
        title = f"{result.env.get('device_name')} | torch {result.env.get('torch')} | {result.env.get('date_utc')}"
        paths, note = plot_all(result.records, out_dir, title)
        if note:
            print(note)
            result.notes.append(note)
        files["plots"] = [os.path.basename(p) for p in paths]
    text = output.summary(result)
    summary_path = os.path.join(out_dir, output.SUMMARY_NAME)
    with open(summary_path, "w") as f:
        f.write(text + "\n")
    files["summary"] = output.SUMMARY_NAME
    json_path = os.path.join(out_dir, output.JSON_NAME)
    output.write_json(result, json_path, files)
    print()
    print(text)
    print(f"\nwrote {csv_path}, {json_path}, {summary_path}" +
          (f", {len(files.get('plots', []))} plots" if cfg.plot else ""))
    failed = result.interrupted or any(r["status"] == "error" for r in result.records)
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
