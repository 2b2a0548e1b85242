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
``python -m cringe_kernels.bench --linear``
    The losses from hidden states against the logits path, the matmul
    floors and the fused cross-entropy libraries, at issue 18's goal shape
    for the device, into ``benchmarks/results/<device tag>-linear/``.
``python -m cringe_kernels.bench --train-step``
    One optimizer step of a Llama-style model per sample, per loss, into
    ``benchmarks/results/<device tag>-train-step/``.

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
        epilog="Defaults come from the preset for the device and mode (cringe_kernels/bench/config.py, "
               "hidden_states.py for --linear, train_step.py for --train-step); each option overrides one field.")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda when available)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="preset", const="quick", help="smallest sweep (smoke test)")
    size.add_argument("--full", action="store_const", dest="preset", const="full",
                      help="larger sweep, compiled providers at every point, more repetitions")
    p.set_defaults(preset="default")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--linear", action="store_true",
                      help="hidden-state mode: linear_cringe_loss against hidden @ weight.T + cringe_loss, the "
                           "matmul floors, Liger's fused linear CE and CCE (one forward+backward step per sample)")
    mode.add_argument("--train-step", action="store_true",
                      help="training-step mode: one AdamW step of a LlamaConfig decoder per sample, per loss")
    p.add_argument("--providers", type=_list, default=None,
                   help="comma list of providers or groups (all, kernels, baselines, ce, reference; --linear "
                        "and --train-step: names only); see --list-providers")
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
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (every mode)")
    p.add_argument("--k", type=int, default=None, help="Cringe candidates (default 5)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads for the sweep (on a loaded CPU, 1 gives steadier numbers)")
    p.add_argument("--value-checks", action="store_true",
                   help="keep the package's input value checks on (one host sync per call)")
    p.add_argument("--list-providers", action="store_true", help="print the providers and whether they run here")
    p.add_argument("--D", type=_ints, default=None, help="hidden sizes (--linear; --train-step: one value)")
    p.add_argument("--chunk-size", type=int, default=None, help="rows per chunk of the fused losses (default: theirs)")
    p.add_argument("--layers", type=int, default=None, help="decoder layers (--train-step)")
    p.add_argument("--batch", type=int, default=None, help="sequences per step (--train-step; --seq-len tokens each)")
    return p


#: Options of the logits sweep that the whole-step modes do not take.
SWEEP_ONLY = ("modes", "compile_at")
#: Options of the whole-step modes that the logits sweep does not take.
STEP_ONLY = ("D", "chunk_size", "layers", "batch")


def _check_mode_options(args: argparse.Namespace) -> None:
    mode = "--linear" if args.linear else "--train-step" if args.train_step else None
    if mode is None:
        bad = [name for name in STEP_ONLY if getattr(args, name) is not None]
        if bad:
            raise ValueError(f"--{bad[0].replace('_', '-')} applies to --linear or --train-step only")
        return
    bad = [name for name in SWEEP_ONLY if getattr(args, name) is not None]
    if mode == "--linear":
        bad += [name for name in ("layers", "batch") if getattr(args, name) is not None]
    else:
        bad += [name for name in ("N", "losses") if getattr(args, name) is not None]
        for name in ("V", "D", "dtypes"):
            if getattr(args, name) is not None and len(getattr(args, name)) != 1:
                raise ValueError(f"--{name} takes one value with --train-step")
    if bad:
        raise ValueError(f"--{bad[0].replace('_', '-')} does not apply to {mode}")
    if args.chunk_size is not None and args.chunk_size < 1:
        raise ValueError(f"--chunk-size must be >= 1, got {args.chunk_size}")
    for name in ("layers", "batch"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")


def _common_changes(args: argparse.Namespace) -> dict:
    changes = {name: value for name, value in (
        ("providers", tuple(args.providers) if args.providers else None), ("out_dir", args.out),
        ("time_budget_s", args.time_budget), ("warmup", args.warmup), ("warmup_ms", args.warmup_ms),
        ("min_reps", args.min_reps), ("max_reps", args.max_reps), ("rep_ms", args.rep_ms), ("seed", args.seed),
        ("threads", args.threads), ("k", args.k), ("chunk_size", args.chunk_size), ("seq_len", args.seq_len),
    ) if value is not None}
    if args.no_plot:
        changes["plot"] = False
    if args.no_progress:
        changes["progress"] = False
    if args.value_checks:
        changes["value_checks"] = True
    return changes


def hidden_config_from_args(args: argparse.Namespace):
    """The ``--linear`` preset for the device, overridden by every option given."""
    from . import hidden_states

    cfg = hidden_states.preset(resolve_device(args.device), args.preset)
    changes = _common_changes(args)
    for name, value in (("row_counts", args.N), ("hidden_sizes", args.D), ("vocab_sizes", args.V),
                        ("dtypes", args.dtypes), ("losses", args.losses)):
        if value is not None:
            changes[name] = tuple(value)
    return cfg.with_(**changes)


def train_config_from_args(args: argparse.Namespace):
    """The ``--train-step`` preset for the device, overridden by every option given."""
    from . import train_step

    cfg = train_step.preset(resolve_device(args.device), args.preset)
    changes = _common_changes(args)
    for name, value in (("vocab_size", args.V), ("hidden_size", args.D), ("dtype", args.dtypes)):
        if value is not None:
            changes[name] = value[0]
    for name in ("layers", "batch"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    cfg = cfg.with_(**changes)
    if cfg.hidden_size % cfg.heads:
        # Keep the head size when only the width was changed.
        heads = max(1, cfg.hidden_size // 64)
        cfg = cfg.with_(heads=heads, kv_heads=max(1, heads // 4))
    return cfg


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


def config_from_args(args: argparse.Namespace):
    """The preset for the device and mode, overridden by every option given.

    Returns a :class:`SweepConfig`, or with ``--linear`` a
    :class:`~.hidden_states.HiddenConfig`, with ``--train-step`` a
    :class:`~.train_step.TrainStepConfig`.
    """
    _check_mode_options(args)
    if args.linear:
        return hidden_config_from_args(args)
    if args.train_step:
        return train_config_from_args(args)
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


def parse_args(argv: Optional[Sequence[str]] = None):
    """Parse ``argv`` into a configuration (exits with status 2 on bad input); see :func:`config_from_args`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return config_from_args(args)
    except ValueError as err:
        parser.error(str(err))


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def list_providers(device: str, cfg=None) -> str:
    """The providers of the mode of ``cfg`` (default: the logits sweep) and whether they run here."""
    from . import hidden_states, train_step
    from .providers import all_providers

    if isinstance(cfg, hidden_states.HiddenConfig):
        found = hidden_states.all_providers(device, cfg.k, cfg.chunk_size)
    elif isinstance(cfg, train_step.TrainStepConfig):
        found = train_step.all_providers(cfg)
    else:
        found = all_providers(device)
    lines = [f"providers on {device}:"]
    for p in found:
        state = "runs" if not p.unavailable else f"skipped: {p.unavailable}"
        lines.append(f"  {p.name:26s} {('compiled ' if getattr(p, 'compiled', False) else '')}{p.note}  [{state}]")
    return "\n".join(lines)


def _main_steps(cfg) -> int:
    """Run ``--linear`` or ``--train-step`` and write its results; returns the exit status."""
    from . import env, hidden_states, train_step

    linear = isinstance(cfg, hidden_states.HiddenConfig)
    module = hidden_states if linear else train_step
    suffix = "linear" if linear else "train-step"
    out_dir = output.ensure_dir(cfg.out_dir or os.path.join("benchmarks", "results",
                                                            f"{env.device_tag(cfg.device)}-{suffix}"))
    cfg = cfg.with_(out_dir=out_dir)
    print(f"cringe_kernels.bench --{suffix}: {cfg.preset} on {cfg.device} -> {out_dir}", flush=True)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        result = module.run(cfg)
    finally:
        signal.signal(signal.SIGTERM, previous)
    text, notes = module.write(result, out_dir)
    for note in notes:
        print(note)
    print()
    print(text)
    print(f"\nwrote {out_dir}")
    failed = result.interrupted or any(r["status"] == "error" for r in result.records)
    return 1 if failed else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the sweep and write the results; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    if args.list_providers:
        print(list_providers(cfg.device, cfg))
        return 0
    if not isinstance(cfg, SweepConfig):
        return _main_steps(cfg)

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
