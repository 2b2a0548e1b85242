"""The command ``python -m cringe_kernels.iterative``."""

from __future__ import annotations

import argparse
import importlib
import json
from typing import Any, Dict, List, Optional, Sequence

import torch

from .config import IterativeConfig
from .labelling import RewardFunc
from .loop import run_iterative
from .report import format_table


def load_reward(spec: str) -> RewardFunc:
    """``"package.module:function"`` -> the function."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not attr:
        raise argparse.ArgumentTypeError(f"reward must look like package.module:function, got {spec!r}")
    return getattr(importlib.import_module(module_name), attr)


def load_prompts(path: str) -> List[Any]:
    """Prompts from a file.

    A text file gives one prompt per non-empty line. A ``.jsonl`` file gives
    one row per line: a ``prompt`` (text, or a list of ``{"role",
    "content"}`` messages, rendered with the chat template) and any other
    columns, which reach the reward functions as keyword arguments.
    """
    with open(path, encoding="utf-8") as fh:
        lines = [line.strip() for line in fh if line.strip()]
    if path.endswith(".jsonl"):
        rows = [json.loads(line) for line in lines]
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or "prompt" not in row:
                raise ValueError(f"{path} line {i + 1}: each row needs a 'prompt' entry")
        return rows
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cringe_kernels.iterative",
                                     description="Iterative Cringe training: generate, judge, train; repeat.")
    parser.add_argument("--model", required=True, help="model directory (or hub name, if reachable)")
    parser.add_argument("--gguf-file", help="GGUF file inside --model to load (dequantised to float32)")
    parser.add_argument("--prompts", required=True,
                        help="text file (one prompt per line) or .jsonl (a 'prompt' per row, text or messages; "
                             "other columns go to the reward functions)")
    parser.add_argument("--max-prompts", type=int, help="use only the first N prompts")
    parser.add_argument("--reward", action="append", required=True, type=load_reward,
                        help="module:function with TRL's signature; repeatable")
    parser.add_argument("--reward-weight", action="append", type=float, help="one per --reward")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--no-save-model", action="store_true",
                        help="do not save the final model (default: OUTPUT_DIR/final_model, with its tokenizer)")
    parser.add_argument("--save-every-round", action="store_true",
                        help="also save each round's model to OUTPUT_DIR/round_N_model")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mode", choices=("pairwise", "binary"), default="pairwise")
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--generation-batch-size", type=int, default=16)
    parser.add_argument("--threshold", type=float)
    parser.add_argument("--min-gap", type=float, default=0.0)
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--margin", type=float, default=0.0)
    parser.add_argument("--gate-temperature", type=float, default=1.0)
    parser.add_argument("--summed-logps", action="store_true",
                        help="pairwise gate on summed log-likelihoods (default: per-token, length_normalize=True)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--no-chat-template", action="store_true")
    parser.add_argument("--system-prompt", help="system turn for the chat template (default: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def config_from_args(args: argparse.Namespace) -> IterativeConfig:
    loss_kwargs: Dict[str, Any] = dict(k=args.k, alpha=args.alpha, backend=args.backend)
    if args.mode == "pairwise":
        loss_kwargs.update(margin=args.margin, temperature=args.gate_temperature,
                           length_normalize=not args.summed_logps)
    return IterativeConfig(
        rounds=args.rounds, mode=args.mode, num_generations=args.num_generations,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
        generation_batch_size=args.generation_batch_size, threshold=args.threshold, min_gap=args.min_gap,
        loss_kwargs=loss_kwargs, max_length=args.max_length, use_chat_template=not args.no_chat_template,
        system_prompt=args.system_prompt, reward_weights=args.reward_weight, seed=args.seed,
        output_dir=args.output_dir, save_final_model=not args.no_save_model,
        save_round_models=args.save_every_round, progress=not args.no_progress,
        training_args=dict(learning_rate=args.learning_rate, num_train_epochs=args.epochs,
                           per_device_train_batch_size=args.batch_size,
                           gradient_accumulation_steps=args.gradient_accumulation_steps),
    )


def load_model(name: str, gguf_file: Optional[str] = None):
    """Model (float32) and tokenizer from a directory, optionally a GGUF file in it."""
    import transformers
    from packaging.version import Version
    from transformers import AutoModelForCausalLM, AutoTokenizer

    extra = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(name, **extra)
    # transformers 4.56 renamed torch_dtype to dtype.
    dtype_key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    model = AutoModelForCausalLM.from_pretrained(name, **{dtype_key: torch.float32}, **extra)
    if gguf_file and getattr(model, "hf_quantizer", None) is not None:
        # The GGUF weights are already dequantised to float32, but the model
        # stays tagged as quantised, and Trainer refuses to fine-tune that:
        # move the weights into a plain model of the same config.
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, **{dtype_key: torch.float32})
        plain.load_state_dict(model.state_dict())
        plain.generation_config = model.generation_config
        model = plain
    return model, tokenizer


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = config_from_args(args)
    prompts = load_prompts(args.prompts)[: args.max_prompts]
    model, tokenizer = load_model(args.model, args.gguf_file)
    results = run_iterative(model, tokenizer, prompts, args.reward, config)
    print(format_table(results))
    return 0
