"""Training data: TRL's data forms, chat templates, tokenization once per dataset.

Accepted rows (TRL's names; "conversational" means a list of
``{"role", "content"}`` messages instead of a string):

=====================  ===========================================  ==========================
form                   columns                                      trainers
=====================  ===========================================  ==========================
prompt-completion      ``prompt``, ``completion``, ``label`` (bool)  binary
preference             ``prompt``, ``chosen``, ``rejected``          pairwise; binary (unpaired)
implicit-prompt pref.  ``chosen``, ``rejected`` (shared start)       pairwise; binary (unpaired)
tokenized              ``prompt_ids`` + ``completion_ids``/``label``  as their columns say
                       or ``chosen_ids`` + ``rejected_ids``
=====================  ===========================================  ==========================

A conversational prompt may also come with a plain-text completion (what a
model sampled after the rendered prompt): the prompt is rendered with the
generation prompt and the text follows it as it is.

Tokenization follows TRL's rule for the prompt/completion boundary: the
prompt alone and the prompt joined with its completion are tokenized, and
the completion starts where the two token lists first differ (a token that
merges across the boundary belongs to the completion). Chat templates are
applied once, to the whole conversation; a plain-text completion gets one
EOS token (not added when it already ends with one, trailing whitespace
aside, as a hand-rendered template's ``<|im_end|>\n`` does, nor to
conversational completions, whose template closes the turn).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)

TRUNCATION_MODES = ("keep_start", "keep_end")


def is_conversational(value: Any) -> bool:
    """True for a list of ``{"role", "content"}`` messages."""
    return (isinstance(value, (list, tuple)) and len(value) > 0 and isinstance(value[0], Mapping)
            and "role" in value[0])


def _common_prefix_length(a: Sequence, b: Sequence) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def extract_prompt(example: Mapping[str, Any]) -> Dict[str, Any]:
    """Split an implicit-prompt preference row into ``prompt``, ``chosen``, ``rejected``.

    Conversational rows: the prompt is the longest run of leading messages
    that ``chosen`` and ``rejected`` share. Text rows: the longest common
    string prefix, cut back to the last whitespace so no word is split.
    """
    chosen, rejected = example["chosen"], example["rejected"]
    if is_conversational(chosen):
        n = _common_prefix_length(chosen, rejected)
        if n == 0 or n == len(chosen) or n == len(rejected):
            raise ValueError("chosen and rejected must share their leading prompt messages and then differ")
        return {"prompt": list(chosen[:n]), "chosen": list(chosen[n:]), "rejected": list(rejected[n:])}
    n = _common_prefix_length(chosen, rejected)
    cut = max(chosen.rfind(" ", 0, n + 1), rejected.rfind(" ", 0, n + 1))
    n = cut if 0 < cut <= n else n
    return {"prompt": chosen[:n], "chosen": chosen[n:], "rejected": rejected[n:]}


def _render(tokenizer, messages, *, add_generation_prompt: bool) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("conversational data needs a tokenizer with a chat template "
                         "(tokenizer.chat_template is unset)")
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def _ids(tokenizer, text: str, add_special_tokens: bool) -> List[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def tokenize_pair(tokenizer, prompt, completions: Sequence[Any], *, add_eos: bool = True
                  ) -> Tuple[List[int], List[List[int]]]:
    """Token ids of a prompt and of each completion that follows it.

    Parameters
    ----------
    tokenizer : PreTrainedTokenizerBase
    prompt : str or list of messages
    completions : sequence of (str or list of messages)
        One (binary) or two (chosen, rejected) completions of ``prompt``.
    add_eos : bool
        Plain-text completions end with EOS (added once, when missing).

    Returns
    -------
    prompt_ids : list of int
        The shared prompt tokens (up to where the first completion's joined
        tokens differ from the prompt's).
    completion_ids : list of list of int
    """
    eos = tokenizer.eos_token
    conversational = is_conversational(prompt)
    if conversational:
        prompt_text = _render(tokenizer, prompt, add_generation_prompt=True)
        special = False  # the template writes its own BOS, if any
    else:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string or a list of messages, got {type(prompt).__name__}")
        prompt_text = prompt
        special = True
    prompt_ids = _ids(tokenizer, prompt_text, special)
    joined = []
    for completion in completions:
        if is_conversational(completion):
            if not conversational:
                raise ValueError("a conversational completion needs a conversational prompt")
            text = _render(tokenizer, list(prompt) + list(completion), add_generation_prompt=False)
        elif isinstance(completion, str):
            # A template rendered by hand ends its turn with EOS and a newline.
            if add_eos and eos and not completion.rstrip().endswith(eos):
                completion = completion + eos
            text = prompt_text + completion
        else:
            raise TypeError(f"completions must be strings or lists of messages, got {type(completion).__name__}")
        joined.append(_ids(tokenizer, text, special))
    boundary = min(_common_prefix_length(prompt_ids, ids) for ids in joined)
    if boundary < len(prompt_ids):
        logger.debug("the tokenized prompt is not a prefix of prompt + completion; the completion starts at the "
                     "first differing token (%d of %d prompt tokens kept)", boundary, len(prompt_ids))
    return prompt_ids[:boundary], [ids[boundary:] for ids in joined]


def tokenize_binary_example(example: Mapping[str, Any], tokenizer, add_eos: bool = True) -> Dict[str, Any]:
    """``prompt``/``completion`` row -> ``prompt_ids``, ``completion_ids``."""
    prompt_ids, (completion_ids,) = tokenize_pair(tokenizer, example["prompt"], [example["completion"]],
                                                  add_eos=add_eos)
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids}


def tokenize_preference_example(example: Mapping[str, Any], tokenizer, add_eos: bool = True) -> Dict[str, Any]:
    """``prompt``/``chosen``/``rejected`` row -> ``prompt_ids``, ``chosen_ids``, ``rejected_ids``."""
    prompt_ids, (chosen_ids, rejected_ids) = tokenize_pair(
        tokenizer, example["prompt"], [example["chosen"], example["rejected"]], add_eos=add_eos)
    return {"prompt_ids": prompt_ids, "chosen_ids": chosen_ids, "rejected_ids": rejected_ids}


def _unpair(batch: Mapping[str, List[Any]]) -> Dict[str, List[Any]]:
    """Preference rows -> two binary rows each: (prompt, chosen, 1) and (prompt, rejected, 0)."""
    out: Dict[str, List[Any]] = {"prompt": [], "completion": [], "label": []}
    for prompt, chosen, rejected in zip(batch["prompt"], batch["chosen"], batch["rejected"]):
        out["prompt"] += [prompt, prompt]
        out["completion"] += [chosen, rejected]
        out["label"] += [True, False]
    return out


def _add_row_id(example, index):
    return {"row_id": index}


def _check_label(example):
    value = example["label"]
    if value not in (0, 1, True, False):
        raise ValueError(f"label must be a bool or 0/1, got {value!r}")
    return True


def as_dataset(data):
    """A ``datasets.Dataset`` from a list of dicts (``Dataset``/``IterableDataset`` pass through)."""
    import datasets

    if isinstance(data, (datasets.Dataset, datasets.IterableDataset)):
        return data
    if isinstance(data, (list, tuple)):
        if not data:
            raise ValueError("the dataset is empty")
        return datasets.Dataset.from_list([dict(row) for row in data])
    if isinstance(data, Mapping):
        return datasets.Dataset.from_dict(dict(data))
    raise TypeError(f"train_dataset/eval_dataset must be a datasets.Dataset, an IterableDataset or a list of dicts, "
                    f"got {type(data).__name__}")


def prepare_dataset(data, tokenizer, *, pairwise: bool, add_eos: bool = True, max_length: Optional[int] = None,
                    truncation_mode: str = "keep_start", num_proc: Optional[int] = None, name: str = "train"):
    """Tokenize a dataset once (``datasets.map``) into the collators' columns.

    Parameters
    ----------
    data : datasets.Dataset, datasets.IterableDataset or list of dicts
        Any form in this module's table.
    tokenizer : PreTrainedTokenizerBase
    pairwise : bool
        Pairwise trainer (preference rows) or binary trainer (labelled
        completions; preference rows are unpaired into two labelled rows).
    add_eos, max_length, truncation_mode, num_proc
        As in :class:`~cringe_kernels.hf.CringeConfig`. With ``keep_start``,
        rows whose prompt alone fills ``max_length`` are dropped (no
        completion token would be left); a warning gives their number.
    name : str
        For progress messages.

    Returns
    -------
    datasets.Dataset or IterableDataset
        Binary: ``prompt_ids``, ``completion_ids``, ``label``, ``row_id``.
        Pairwise: ``prompt_ids``, ``chosen_ids``, ``rejected_ids``, ``row_id``.
        ``row_id`` numbers the rows (the key of the sampled tokens' draws).
        Other columns are kept.
    """
    import datasets

    dataset = as_dataset(data)
    iterable = isinstance(dataset, datasets.IterableDataset)
    map_kwargs: Dict[str, Any] = {} if iterable else {"num_proc": num_proc}

    def step(desc: str) -> Dict[str, Any]:
        return map_kwargs if iterable else dict(map_kwargs, desc=f"{desc} ({name})")

    columns = set(next(iter(dataset)).keys())
    tokenized = "prompt_ids" in columns
    if not tokenized:
        if "chosen" in columns and "rejected" in columns and "prompt" not in columns:
            dataset = dataset.map(extract_prompt, **step("extracting prompts"))
            columns |= {"prompt"}
        preference = {"prompt", "chosen", "rejected"} <= columns
        if pairwise:
            if not preference:
                raise ValueError(f"the pairwise trainer needs preference rows (prompt, chosen, rejected); "
                                 f"the {name} dataset has columns {sorted(columns)}")
            dataset = dataset.map(tokenize_preference_example, fn_kwargs={"tokenizer": tokenizer, "add_eos": add_eos},
                                  **step("tokenizing"))
        else:
            if preference and "completion" not in columns:
                keep = [c for c in (dataset.column_names or columns) if c not in ("prompt", "chosen", "rejected")]
                dataset = dataset.map(_unpair, batched=True, remove_columns=["prompt", "chosen", "rejected"] + keep,
                                      **step("unpairing preferences"))
                columns = {"prompt", "completion", "label"}
            if not {"prompt", "completion", "label"} <= columns:
                raise ValueError(f"the binary trainer needs prompt, completion and label columns (or preference rows); "
                                 f"the {name} dataset has columns {sorted(columns)}")
            dataset = dataset.filter(_check_label, **step("checking labels"))
            dataset = dataset.map(tokenize_binary_example, fn_kwargs={"tokenizer": tokenizer, "add_eos": add_eos},
                                  **step("tokenizing"))
    else:
        needed = {"chosen_ids", "rejected_ids"} if pairwise else {"completion_ids"}
        if not needed <= columns:
            raise ValueError(f"tokenized {name} rows need {sorted(needed | {'prompt_ids'})}; got {sorted(columns)}")
    if max_length is not None and truncation_mode == "keep_start" and not iterable:
        before = len(dataset)
        dataset = dataset.filter(lambda ex: len(ex["prompt_ids"]) < max_length, **step("dropping prompts that fill "
                                                                                           "max_length"))
        dropped = before - len(dataset)
        if dropped:
            logger.warning("%d of %d %s rows dropped: their prompt alone has max_length=%d tokens or more, so "
                           "truncation_mode='keep_start' would leave no completion token", dropped, before, name,
                           max_length)
            if len(dataset) == 0:
                raise ValueError(f"every {name} row's prompt fills max_length={max_length}; raise max_length")
    if "row_id" not in columns:
        dataset = dataset.map(_add_row_id, with_indices=True, **step("numbering rows"))
    return dataset
