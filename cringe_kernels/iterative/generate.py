"""Sampling completions from the current model."""

from __future__ import annotations

from typing import Any, List, NamedTuple, Optional, Sequence

import torch

from ..hf.data import is_conversational


def _progress(iterable, enabled: bool, **kwargs):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, **kwargs)


def as_conversation(prompt: Any, tokenizer, use_chat_template: bool, system_prompt: Optional[str]) -> Any:
    """The prompt as the trainers will read it.

    Conversational prompts stay as they are. A text prompt becomes one user
    turn (after ``system_prompt``, if any) when ``use_chat_template`` and the
    tokenizer has a chat template; otherwise it stays text.
    """
    if is_conversational(prompt):
        return list(prompt)
    if not isinstance(prompt, str):
        raise TypeError(f"a prompt must be a string or a list of messages, got {type(prompt).__name__}")
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}]
        if system_prompt is not None:
            messages.insert(0, {"role": "system", "content": system_prompt})
        return messages
    return prompt


def render_prompt(prompt: Any, tokenizer) -> tuple:
    """``(text, add_special_tokens)`` to tokenize for generation, as :mod:`cringe_kernels.hf.data` does."""
    if is_conversational(prompt):
        text = tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
        return text, False
    return prompt, True


class Completion(NamedTuple):
    """A sampled reply: its text (no special tokens) and whether the model ended it with EOS."""

    text: str
    finished: bool


@torch.no_grad()
def generate_completions(model, tokenizer, prompts: Sequence[Any], *, num_generations: int, max_new_tokens: int,
                         temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 16,
                         progress: bool = False) -> List[List[Completion]]:
    """Sample ``num_generations`` completions for each prompt (text or messages).

    Returns
    -------
    list of list of Completion
        ``result[i][j]``: the j-th completion of prompt i.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    # Left padding so that every prompt ends where generation starts.
    tokenizer.padding_side = "left"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    stop = [stop] if isinstance(stop, int) else list(stop or [])
    if tokenizer.eos_token_id is not None:
        stop.append(tokenizer.eos_token_id)
    stop_ids = torch.tensor(stop, dtype=torch.long, device=device)
    rendered = [render_prompt(p, tokenizer) for p in prompts]
    result: List[List[Completion]] = []
    try:
        for start in _progress(range(0, len(rendered), batch_size), progress, desc="generate", leave=False):
            chunk = rendered[start:start + batch_size]
            special = chunk[0][1]
            if any(s != special for _, s in chunk):
                raise ValueError("mix of text and conversational prompts in one generation batch")
            enc = tokenizer([t for t, _ in chunk], return_tensors="pt", padding=True,
                            add_special_tokens=special).to(device)
            out = model.generate(**enc, do_sample=True, temperature=temperature, top_p=top_p,
                                 max_new_tokens=max_new_tokens, num_return_sequences=num_generations,
                                 pad_token_id=pad_id)
            new_tokens = out[:, enc["input_ids"].shape[1]:]
            texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            finished = torch.isin(new_tokens, stop_ids).any(dim=1).tolist()
            for i in range(len(chunk)):
                part = slice(i * num_generations, (i + 1) * num_generations)
                result.append([Completion(t.strip(), f) for t, f in zip(texts[part], finished[part])])
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return result
