"""cringe_kernels.hf data: TRL's forms, chat templates, one EOS, the boundary, truncation, collators."""

import logging

import pytest
import torch

pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from hf_tiny import BINARY, PAIRS, conversational, tiny_tokenizer  # noqa: E402

from cringe_kernels.hf import CringeCollator, PairwiseCringeCollator, prepare_dataset, shift_labels  # noqa: E402
from cringe_kernels.hf.data import extract_prompt, tokenize_pair  # noqa: E402

datasets.disable_progress_bars()


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_shift_labels():
    labels = torch.tensor([[-100, 5, 6, 7], [-100, -100, 8, -100]])
    assert shift_labels(labels).tolist() == [[5, 6, 7, -100], [-100, 8, -100, -100]]


def test_text_rows_get_one_eos_and_the_joined_tokens(tok):
    prompt_ids, (completion_ids,) = tokenize_pair(tok, "Q: hi? A:", [" hello"])
    assert prompt_ids + completion_ids == tok("Q: hi? A: hello" + tok.eos_token)["input_ids"]
    assert completion_ids[-1] == tok.eos_token_id and completion_ids.count(tok.eos_token_id) == 1
    # A completion that already ends with EOS gets no second one.
    _, (again,) = tokenize_pair(tok, "Q: hi? A:", [" hello" + tok.eos_token])
    assert again == completion_ids
    # Nor one whose turn a hand-rendered template closed with EOS and a newline.
    _, (closed,) = tokenize_pair(tok, "Q: hi? A:", [" hello<|im_end|>\n"])
    assert closed.count(tok.eos_token_id) == 1 and tok.decode(closed) == " hello<|im_end|>\n"
    _, (bare,) = tokenize_pair(tok, "Q: hi? A:", [" hello"], add_eos=False)
    assert bare == completion_ids[:-1]


def test_conversational_rows_use_the_template_once_and_no_extra_eos(tok):
    prompt = [{"role": "user", "content": "hi"}]
    completion = [{"role": "assistant", "content": "yo"}]
    prompt_ids, (completion_ids,) = tokenize_pair(tok, prompt, [completion])
    whole = tok.apply_chat_template(prompt + completion, tokenize=False)
    assert tok.decode(prompt_ids + completion_ids) == whole
    assert tok.decode(prompt_ids) == tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert tok.decode(completion_ids) == "yo<|im_end|>\n"
    assert completion_ids.count(tok.eos_token_id) == 1
    # A conversational prompt with a sampled text completion: the text follows the rendered prompt.
    _, (sampled,) = tokenize_pair(tok, prompt, ["yo"])
    assert tok.decode(sampled) == "yo<|im_end|>"


class MergingTokenizer:
    """Whole words, and "ab" one token: a boundary "a|b" merges across prompt and completion."""

    eos_token = "<e>"
    vocab = {"<e>": 0, "ab": 1, "a": 2, "b": 3, "c": 4, " ": 5}

    def __call__(self, text, add_special_tokens=True):
        ids, i = [], 0
        while i < len(text):
            for piece in ("<e>", "ab", "a", "b", "c", " "):
                if text.startswith(piece, i):
                    ids.append(self.vocab[piece])
                    i += len(piece)
                    break
        return {"input_ids": ids}


def test_boundary_is_where_prompt_and_joined_tokens_differ():
    prompt_ids, (completion_ids,) = tokenize_pair(MergingTokenizer(), "c a", ["bc"])
    # "c a" alone is [c, ' ', a]; joined "c abc<e>" is [c, ' ', ab, c, <e>]: the merged token is the completion's.
    assert prompt_ids == [4, 5] and completion_ids == [1, 4, 0]


def test_extract_prompt():
    row = extract_prompt({"chosen": "The sky is blue.", "rejected": "The sky is green."})
    assert row == {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
    messages = extract_prompt({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                               "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]})
    assert messages["prompt"] == [{"role": "user", "content": "q"}]
    assert messages["rejected"] == [{"role": "assistant", "content": "b"}]


def _decoded_rows(tok, dataset, key):
    return [tok.decode(row[key]) for row in dataset]


@pytest.mark.parametrize("chat", [False, True], ids=["standard", "conversational"])
def test_four_forms(tok, chat):
    binary = conversational(BINARY) if chat else BINARY
    pairs = conversational(PAIRS) if chat else PAIRS
    ds = prepare_dataset(binary, tok, pairwise=False)
    assert set(ds.column_names) >= {"prompt_ids", "completion_ids", "label", "row_id"}
    assert list(ds["row_id"]) == [0, 1, 2, 3] and list(ds["label"]) == [True, False, True, False]
    pw = prepare_dataset(pairs, tok, pairwise=True)
    assert set(pw.column_names) >= {"prompt_ids", "chosen_ids", "rejected_ids", "row_id"}
    # Preference rows for the binary trainer: each pair is a good and a bad completion.
    unpaired = prepare_dataset(pairs, tok, pairwise=False)
    assert len(unpaired) == 8 and list(unpaired["label"]) == [True, False] * 4
    assert _decoded_rows(tok, unpaired, "completion_ids")[0::2] == _decoded_rows(tok, pw, "chosen_ids")
    assert _decoded_rows(tok, unpaired, "completion_ids")[1::2] == _decoded_rows(tok, pw, "rejected_ids")
    # Implicit prompts: the shared start of chosen and rejected.
    implicit = [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in pairs]
    again = prepare_dataset(implicit, tok, pairwise=True)
    full = [tok.decode(p + c) for p, c in zip(pw["prompt_ids"], pw["chosen_ids"])]
    assert [tok.decode(p + c) for p, c in zip(again["prompt_ids"], again["chosen_ids"])] == full
    with pytest.raises(ValueError, match="preference rows"):
        prepare_dataset(binary, tok, pairwise=True)


def test_prepare_keeps_datasets_and_rejects_wrong_rows(tok):
    ds = datasets.Dataset.from_list(BINARY)
    assert len(prepare_dataset(ds, tok, pairwise=False)) == 4
    with pytest.raises(ValueError, match="label"):
        prepare_dataset([{"prompt": "a", "completion": "b"}], tok, pairwise=False)
    with pytest.raises(ValueError, match="label must be"):
        prepare_dataset([{"prompt": "a", "completion": "b", "label": 3}], tok, pairwise=False)
    with pytest.raises(TypeError, match="train_dataset"):
        prepare_dataset(42, tok, pairwise=False)


def test_prompts_that_fill_max_length_are_dropped_with_a_warning(tok, caplog):
    rows = BINARY + [{"prompt": "x" * 40, "completion": " y", "label": True}]
    with caplog.at_level(logging.WARNING, logger="cringe_kernels.hf.data"):
        ds = prepare_dataset(rows, tok, pairwise=False, max_length=30)
    assert len(ds) == 4 and "1 of 5 train rows dropped" in caplog.text
    # keep_end keeps the completion's end: nothing dropped.
    assert len(prepare_dataset(rows, tok, pairwise=False, max_length=30, truncation_mode="keep_end")) == 5


def test_collator_truncation_modes_and_padding(tok):
    row = {"prompt": "Q: hi? A:", "completion": " hello there", "label": 1}
    full = CringeCollator(tok)([row])
    n = int(full["attention_mask"].sum())
    start = CringeCollator(tok, max_length=12)([row])
    assert start["input_ids"].shape[1] == 12 and torch.equal(start["input_ids"][0], full["input_ids"][0, :12])
    assert torch.equal(start["labels"][0], full["labels"][0, :12])
    end = CringeCollator(tok, max_length=12, truncation_mode="keep_end")([row])
    assert torch.equal(end["input_ids"][0], full["input_ids"][0, n - 12:n])
    assert torch.equal(end["labels"][0], full["labels"][0, n - 12:n])
    padded = CringeCollator(tok, pad_to_multiple_of=8)([row])
    assert padded["input_ids"].shape[1] % 8 == 0 and padded["input_ids"].shape[1] >= n
    with pytest.raises(ValueError, match="truncation_mode"):
        CringeCollator(tok, truncation_mode="middle")


def test_collators_mask_prompts_and_padding(tok):
    batch = CringeCollator(tok)(BINARY[:2])
    assert batch["feedback"].tolist() == [1, 0]
    prompt_len = len(tok(BINARY[0]["prompt"])["input_ids"])
    assert (batch["labels"][0, :prompt_len] == -100).all()
    completion = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert tok.decode(completion[:-1]) == BINARY[0]["completion"] and completion[-1] == tok.eos_token_id
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    pairs = PairwiseCringeCollator(tok)(PAIRS[:3])
    assert pairs["input_ids"].shape[0] == 6
    rejected = pairs["labels"][4][pairs["labels"][4] != -100].tolist()
    assert tok.decode(rejected[:-1]) == PAIRS[1]["rejected"]
    # Tokenized rows with row ids keep them.
    ds = prepare_dataset(PAIRS, tok, pairwise=True)
    assert PairwiseCringeCollator(tok)([ds[2], ds[0]])["row_id"].tolist() == [2, 0]


def test_iterable_datasets_and_worker_processes_give_the_same_rows(tok):
    plain = prepare_dataset(PAIRS, tok, pairwise=True)
    streamed = prepare_dataset(datasets.Dataset.from_list(PAIRS).to_iterable_dataset(), tok, pairwise=True)
    rows = list(streamed)
    assert [r["chosen_ids"] for r in rows] == plain["chosen_ids"] and [r["row_id"] for r in rows] == [0, 1, 2, 3]
    parallel = prepare_dataset(PAIRS, tok, pairwise=True, num_proc=2)
    assert parallel["rejected_ids"] == plain["rejected_ids"] and parallel["row_id"] == plain["row_id"]
