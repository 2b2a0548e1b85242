"""Training-step mode: ``python -m cringe_kernels.bench --train-step``.

A decoder-only model built from a ``transformers.LlamaConfig`` (random
weights, nothing downloaded), ``batch`` sequences of ``seq_len`` random
tokens, and one optimizer step (AdamW) per sample: forward, loss, backward,
update, gradients freed. Losses (providers):

``hf-ce``
    ``model(input_ids, labels=input_ids).loss``: Hugging Face's own
    cross-entropy, an SFT step (the reference cost of a step).
``cringe-logits``
    ``cringe_loss`` on ``model(input_ids).logits`` (the logits path).
``cringe-hidden``
    ``linear_cringe_loss`` on the decoder's last hidden state
    (``model.model(...)``) and ``lm_head.weight`` (never the logits).
``liger-flce``, ``cce``
    Liger-Kernel's fused linear cross-entropy and Cut Cross-Entropy on the
    same hidden state and weight (plain CE; CUDA only, when installed).

Targets are the next tokens (the last position ignored); the Cringe losses
get per-sequence feedback, even sequences positive. Timing: median over
steps after warm-up steps (which create the optimizer state), one step of
every provider per round (interleaved, so a shared machine's changing load
reaches all of them alike), on one model and optimizer. Peak memory:
above what was allocated before the step (the model and the optimizer
state), so it holds the gradients, the activations and the loss's own
memory; the gradients' size is recorded (``grads_mib``) to read it by.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import Callable, List, Optional, Tuple

import torch

from . import env as env_mod
from . import output, steps, timing
from .config import DTYPES
from .hidden_states import gpu_library_unavailable, linear_unavailable
from .progress import Progress

COLUMNS = (
    "device", "provider", "dtype", "batch", "seq_len", "tokens", "hidden_size", "layers", "V", "params_m",
    "status", "reason", "median_ms", "p20_ms", "p80_ms", "reps", "first_call_ms", "tokens_per_s",
    "peak_mem_mib", "grads_mib", "speedup_vs_hf_ce", "mem_vs_hf_ce", "speedup_vs_cringe_logits",
    "mem_vs_cringe_logits", "note",
)

MEMORY_TEXT = ("peak memory of the step above the memory allocated before it (model and optimizer state): "
               "gradients (grads_mib), activations and the loss's own memory")


@dataclass(frozen=True)
class TrainStepConfig:
    """One training-step benchmark.

    Attributes
    ----------
    device, preset : str
    batch, seq_len : int
        Sequences per step and tokens per sequence.
    hidden_size, layers, vocab_size, intermediate_size, heads, kv_heads : int
        The LlamaConfig.
    dtype : str
        The model's (and optimizer's) dtype, a key of :data:`.config.DTYPES`.
    providers : tuple of str or None
    k : int
    chunk_size : int or None
    lr : float
    warmup, min_reps, max_reps : int
    warmup_ms : float or None
    rep_ms : float
    time_budget_s : float or None
    seed : int
    threads : int or None
    value_checks : bool
    out_dir : str or None
    plot, progress : bool
    """

    device: str = "cpu"
    preset: str = "default"
    batch: int = 2
    seq_len: int = 256
    hidden_size: int = 256
    layers: int = 2
    vocab_size: int = 32000
    intermediate_size: int = 1024
    heads: int = 4
    kv_heads: int = 2
    dtype: str = "fp32"
    providers: Optional[Tuple[str, ...]] = None
    k: int = 5
    chunk_size: Optional[int] = None
    lr: float = 1e-5
    warmup: int = 1
    warmup_ms: Optional[float] = None
    min_reps: int = 3
    max_reps: int = 10
    rep_ms: float = 2000.0
    time_budget_s: Optional[float] = None
    seed: int = 0
    threads: Optional[int] = None
    value_checks: bool = False
    out_dir: Optional[str] = None
    plot: bool = True
    progress: bool = True

    def with_(self, **changes) -> "TrainStepConfig":
        return replace(self, **changes)


def preset(device: str, name: str = "default") -> TrainStepConfig:
    """The training-step benchmark ``name`` for ``device``'s type.

    GPU: a Llama 3.2 1B-like decoder cut to 8 layers (hidden 2048, MLP 8192,
    32 heads, 8 KV heads, V=128256, untied output layer), bf16, 4 x 2048
    tokens. CPU: hidden 256, 2 layers, V=32000, float32, 2 x 256 tokens
    (seconds a step on two cores).
    """
    if name not in ("quick", "default", "full"):
        raise ValueError(f"preset must be quick, default or full, got {name!r}")
    if torch.device(device).type == "cuda":
        base = TrainStepConfig(device=device, preset=name, batch=4, seq_len=2048, hidden_size=2048, layers=8,
                               vocab_size=128256, intermediate_size=8192, heads=32, kv_heads=8, dtype="bf16",
                               warmup=2, min_reps=5, max_reps=20, rep_ms=2000.0)
        if name == "quick":
            return base.with_(layers=2, batch=2, min_reps=3, max_reps=5, rep_ms=200.0)
        if name == "full":
            return base.with_(min_reps=10, max_reps=50, rep_ms=10000.0)
        return base
    base = TrainStepConfig(device=device, preset=name)
    if name == "quick":
        return base.with_(batch=2, seq_len=16, hidden_size=32, layers=1, vocab_size=512, intermediate_size=64,
                          heads=2, kv_heads=1, min_reps=2, max_reps=3, rep_ms=20.0, warmup_ms=5.0)
    if name == "full":
        return base.with_(batch=4, seq_len=512, hidden_size=512, layers=4, intermediate_size=2048, heads=8,
                          kv_heads=4, min_reps=5)
    return base


# ---------------------------------------------------------------- model and providers


def build_model(cfg: TrainStepConfig):
    """A randomly initialized ``LlamaForCausalLM`` on ``cfg.device`` in ``cfg.dtype``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=max(cfg.seq_len, 128), tie_word_embeddings=False, use_cache=False,
    )
    torch.manual_seed(cfg.seed)
    # Built on the device: initializing a 1B-parameter model on the host
    # first would cost the GPU session tens of seconds.
    with torch.device(cfg.device):
        model = LlamaForCausalLM(config)
    model = model.to(dtype=DTYPES[cfg.dtype])
    model.train()
    return model


@dataclass
class Batch:
    """Token ids ``[B, T]``, next-token targets ``[B, T]`` (last one ignored), feedback ``[B, 1]``,
    and the Cringe draws ``[B, T]`` (fixed, so both Cringe providers sample the same columns)."""

    input_ids: torch.Tensor
    targets: torch.Tensor
    feedback: torch.Tensor
    uniform: torch.Tensor


def make_batch(cfg: TrainStepConfig) -> Batch:
    gen = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
    ids = torch.randint(0, cfg.vocab_size, (cfg.batch, cfg.seq_len), generator=gen, device=cfg.device)
    targets = torch.full_like(ids, -100)
    targets[:, :-1] = ids[:, 1:]
    feedback = (torch.arange(cfg.batch, device=cfg.device) % 2 == 0).unsqueeze(1)
    uniform = torch.rand(ids.shape, generator=gen, device=cfg.device)
    return Batch(ids, targets, feedback, uniform)


def loss_fns(cfg: TrainStepConfig) -> dict:
    """provider name -> ``fn(model, batch) -> scalar loss``."""
    k, chunk = cfg.k, ({"chunk_size": cfg.chunk_size} if cfg.chunk_size else {})

    def hf_ce(model, b):
        return model(input_ids=b.input_ids, labels=b.input_ids).loss

    def cringe_logits(model, b):
        from .. import cringe_loss

        return cringe_loss(model(input_ids=b.input_ids).logits, b.targets, b.feedback, uniform=b.uniform, k=k)

    def last_hidden(model, b):
        return model.model(input_ids=b.input_ids).last_hidden_state

    def cringe_hidden(model, b):
        from ..linear import linear_cringe_loss

        return linear_cringe_loss(last_hidden(model, b), model.lm_head.weight, b.targets, b.feedback,
                                  uniform=b.uniform, k=k, **chunk)

    def liger_flce(model, b):
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        h = last_hidden(model, b)
        return LigerFusedLinearCrossEntropyLoss()(model.lm_head.weight, h.reshape(-1, h.shape[-1]),
                                                  b.targets.reshape(-1))

    def cce(model, b):
        from cut_cross_entropy import linear_cross_entropy

        return linear_cross_entropy(last_hidden(model, b), model.lm_head.weight, b.targets)

    return {"hf-ce": hf_ce, "cringe-logits": cringe_logits, "cringe-hidden": cringe_hidden,
            "liger-flce": liger_flce, "cce": cce}


def all_providers(cfg: TrainStepConfig) -> List[steps.StepProvider]:
    """Every training-step provider, runnable here or skipped with a reason."""
    device = torch.device(cfg.device)
    fns = loss_fns(cfg)
    no_hf = _transformers_unavailable()
    notes = {
        "hf-ce": ("model(input_ids, labels=input_ids).loss: Hugging Face cross-entropy (SFT step)", no_hf),
        "cringe-logits": ("cringe_loss on model(...).logits", no_hf),
        "cringe-hidden": ("linear_cringe_loss on model.model(...) last hidden state and lm_head.weight",
                          no_hf or linear_unavailable()),
        "liger-flce": ("Liger-Kernel fused linear CE on the last hidden state (plain CE)",
                       no_hf or gpu_library_unavailable("liger_kernel.transformers", "Liger-Kernel's fused linear CE",
                                                        device)),
        "cce": ("Cut Cross-Entropy on the last hidden state (plain CE)",
                no_hf or gpu_library_unavailable("cut_cross_entropy", "Cut Cross-Entropy", device)),
    }
    return [steps.StepProvider(name, "step", _step_builder(fns[name]), note=note, unavailable=why)
            for name, (note, why) in notes.items()]


def _transformers_unavailable() -> str:
    try:
        import transformers  # noqa: F401
    except Exception as err:
        return f"transformers does not import ({type(err).__name__}: {err}); pip install 'cringe_kernels[hf]'"
    return ""


@dataclass
class TrainState:
    """The model, its optimizer and the batch, shared by every provider."""

    model: object
    optimizer: torch.optim.Optimizer
    batch: Batch


def _step_builder(loss_fn: Callable) -> Callable:
    def build(state: TrainState):
        def step():
            loss = loss_fn(state.model, state.batch)
            loss.backward()
            state.optimizer.step()
            state.optimizer.zero_grad(set_to_none=True)
            return ()
        return step
    return build


# ---------------------------------------------------------------- run


@dataclass
class TrainStepResult:
    config: TrainStepConfig
    records: List[dict]
    env: dict
    memory_method: str
    elapsed_s: float = 0.0
    interrupted: bool = False


def run(cfg: TrainStepConfig, providers: Optional[List[steps.StepProvider]] = None,
        on_record: Optional[Callable[[dict], None]] = None) -> TrainStepResult:
    """Time one optimizer step per sample for every provider."""
    from ..validate import set_value_checks

    device = torch.device(cfg.device)
    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if providers is None:
        providers = select(all_providers(cfg), list(cfg.providers) if cfg.providers else None)
    environment = env_mod.collect(device)
    try:
        from importlib.metadata import version

        environment["transformers"] = version("transformers")
        environment["cut_cross_entropy"] = version("cut-cross-entropy")
    except Exception:
        environment.setdefault("transformers", None)
    timer = timing.make_timer(device, cfg.warmup, cfg.rep_ms, cfg.min_reps, cfg.max_reps, cfg.warmup_ms)
    meter = timing.make_memory_meter(device)
    result = TrainStepResult(cfg, [], environment, meter.method if meter.available else f"NA: {meter.reason}")
    previous_checks = set_value_checks(cfg.value_checks)
    budget = steps.Budget(cfg.time_budget_s)
    progress = Progress(len(providers), enabled=cfg.progress)
    state = None
    shape = {"device": cfg.device, "loss": "step", "dtype": cfg.dtype, "batch": cfg.batch, "seq_len": cfg.seq_len,
             "tokens": cfg.batch * cfg.seq_len, "hidden_size": cfg.hidden_size, "layers": cfg.layers,
             "V": cfg.vocab_size}
    try:
        runnable = [p for p in providers if not p.unavailable]
        measured, reason = {}, ""
        if runnable and budget.exhausted():
            reason = budget.reason()
        elif runnable:
            model = build_model(cfg)
            # foreach=False: the optimizer's temporaries stay per parameter,
            # so its peak does not hide the loss's.
            state = TrainState(model, torch.optim.AdamW(model.parameters(), lr=cfg.lr, foreach=False),
                               make_batch(cfg))

            def build(p):
                # A step that failed half way leaves its gradients behind.
                state.optimizer.zero_grad(set_to_none=True)
                return p.build(state)

            # Interleaved: one step of every provider per round (see
            # steps.measure_group), on one model and optimizer.
            measured = steps.measure_group([(p.name, lambda p=p: build(p)) for p in runnable], timer, meter,
                                           device)
        params = sum(t.numel() for t in state.model.parameters()) if state is not None else None
        for p in providers:
            record = dict(shape, provider=p.name, status="ok", reason="", note=p.note)
            if p.unavailable:
                record.update(status="skipped", reason=p.unavailable)
            elif reason:
                record.update(status="skipped", reason=reason)
            else:
                record.update(measured[p.name])
                record.pop("kept_mib", None)
            if params is not None:
                record["params_m"] = params / 1e6
                record["grads_mib"] = params * DTYPES[cfg.dtype].itemsize / 2**20
            if record["status"] == "ok":
                record["tokens_per_s"] = record["tokens"] / (record["median_ms"] * 1e-3)
            result.records.append(record)
            if on_record is not None:
                on_record(record)
            shown = (f"{record['median_ms']:.1f} ms" if record["status"] == "ok"
                     else f"{record['status']}: {record['reason'][:70]}")
            progress.update(p.name, shown)
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        state = None
        steps.release(device)
        progress.close()
        set_value_checks(previous_checks)
        torch.set_num_threads(previous_threads)
    add_ratios(result.records)
    try:
        result.env["load_average_end"] = os.getloadavg()
    except OSError:  # pragma: no cover
        pass
    result.elapsed_s = time.perf_counter() - started
    return result


def select(providers: List[steps.StepProvider], names: Optional[List[str]]) -> List[steps.StepProvider]:
    """The providers named (None: all); an unknown name raises with the known ones."""
    if not names:
        return list(providers)
    known = [p.name for p in providers]
    for name in names:
        if name not in known:
            raise ValueError(f"unknown training-step provider {name!r}; known: {', '.join(known)}")
    return [p for p in providers if p.name in names]


def add_ratios(records: List[dict]) -> None:
    """Same-run ratios: speed and memory against ``hf-ce`` and ``cringe-logits``."""
    point = lambda r: ()
    for base, suffix in (("hf-ce", "hf_ce"), ("cringe-logits", "cringe_logits")):
        steps.fill_ratio(records, point, f"speedup_vs_{suffix}", lambda r, b=base: [("step", b)], "median_ms",
                         invert=True)
        steps.fill_ratio(records, point, f"mem_vs_{suffix}", lambda r, b=base: [("step", b)], "peak_mem_mib")


# ---------------------------------------------------------------- output


def _f(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def summary(result: TrainStepResult) -> str:
    env, cfg = result.env, result.config
    params = next((r["params_m"] for r in result.records if r.get("params_m")), None)
    out = [
        f"training step on {env.get('device_name')} ({env.get('device')}), torch {env.get('torch')}, "
        f"transformers {env.get('transformers')}, {env.get('usable_cores')} usable cores, torch threads "
        f"{env.get('torch_threads')}, load avg start {output.load_text(env.get('load_average_start'))} end "
        f"{output.load_text(env.get('load_average_end'))}",
        f"commit {env.get('git_commit')}{' (dirty)' if env.get('git_dirty') else ''}, {env.get('date_utc')}, "
        f"took {result.elapsed_s:.0f} s" + (" (INTERRUPTED)" if result.interrupted else ""),
        f"LlamaForCausalLM: hidden {cfg.hidden_size}, {cfg.layers} layers, MLP {cfg.intermediate_size}, "
        f"{cfg.heads}/{cfg.kv_heads} heads, V={cfg.vocab_size}, untied output layer, {cfg.dtype}, "
        f"{_f(params, '.3g')}M parameters; {cfg.batch} x {cfg.seq_len} tokens; AdamW; k={cfg.k}",
        f"memory: {MEMORY_TEXT} ({result.memory_method})",
        "",
    ]
    header = ["provider", "step ms", "tokens/s", "peak MiB", "x hf-ce speed", "mem / hf-ce",
              "x cringe-logits speed", "mem / cringe-logits"]
    rows, reasons = [], []
    for r in result.records:
        if r["status"] != "ok":
            rows.append([r["provider"], r["status"]] + ["-"] * 6)
            reasons.append(f"  {r['provider']}: {r['status']}: {r['reason']}")
            continue
        rows.append([r["provider"], f"{r['median_ms']:.1f}", f"{r['tokens_per_s']:.0f}",
                     _f(r.get("peak_mem_mib"), ".0f"), _f(r.get("speedup_vs_hf_ce"), ".2f"),
                     _f(r.get("mem_vs_hf_ce"), ".3f"), _f(r.get("speedup_vs_cringe_logits"), ".2f"),
                     _f(r.get("mem_vs_cringe_logits"), ".3f")])
    out += output.table(header, rows) + reasons
    return "\n".join(out)


def plot(records: List[dict], out_dir: str, title: str = "") -> Tuple[List[str], str]:
    """``plot_train_step.png``: step time and peak memory, a bar per provider."""
    plt = output.pyplot()
    if plt is None:
        return [], output.NO_MATPLOTLIB
    ok = [r for r in records if r["status"] == "ok"]
    if not ok:
        return [], ""
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(ok)), 4.5))
    colors = ["tab:red" if r["provider"] == "cringe-hidden" else "tab:blue" for r in ok]
    axes[0].bar(range(len(ok)), [r["median_ms"] for r in ok], color=colors)
    axes[0].set_ylabel("median step time (ms)")
    axes[1].bar(range(len(ok)), [r.get("peak_mem_mib") or 0 for r in ok], color=colors)
    axes[1].set_ylabel("peak memory of the step (MiB)")
    for ax in axes:
        ax.set_xticks(range(len(ok)))
        ax.set_xticklabels([r["provider"] for r in ok], rotation=30, ha="right")
        ax.grid(True, axis="y", alpha=0.3)
    r = ok[0]
    fig.suptitle(f"training step: hidden {r['hidden_size']}, {r['layers']} layers, V={r['V']}, "
                 f"{r['batch']} x {r['seq_len']} tokens, {r['dtype']}" + (f"\n{title}" if title else ""),
                 fontsize="small")
    fig.tight_layout()
    path = os.path.join(out_dir, "plot_train_step.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path], ""


def write(result: TrainStepResult, out_dir: str) -> Tuple[str, List[str]]:
    """CSV, JSON, summary and plot into ``out_dir``; returns the summary and notes."""
    text = summary(result)
    timing = ("CUDA events per step, L2 flushed before each, warm-up steps excluded"
              if result.config.device.startswith("cuda") else "time.perf_counter per step, warm-up steps excluded")
    notes = output.write_mode(result, out_dir, COLUMNS, plot, text, "training step (--train-step)", MEMORY_TEXT,
                              timing)
    return text, notes
