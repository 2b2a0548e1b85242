"""Trainer integration (cringe_kernels.hf) and the iterative loop, on a tiny random Llama.

Everything is built here from a config and a character-level tokenizer: no
downloads, a few seconds on two cores.
"""

import math
import string
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from cringe_kernels import cringe_loss, pairwise_cringe_loss  # noqa: E402
from cringe_kernels.hf import (  # noqa: E402
    CringeCollator,
    CringeTrainer,
    PairwiseCringeCollator,
    PairwiseCringeTrainer,
    completion_logps,
    make_compute_loss_func,
    shift_labels,
)


def tiny_tokenizer():
    """Character-level tokenizer: one token per printable character."""
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for ch in string.ascii_letters + string.digits + string.punctuation + " ":
        vocab.setdefault(ch, len(vocab))
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.Split("", "isolated")
    tk.decoder = tokenizers.decoders.Fuse()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>",
                                                eos_token="</s>", unk_token="<unk>")


def tiny_model(vocab_size, seed=0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    return transformers.LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


BINARY = [
    {"prompt": "Q: hi? A:", "completion": " hello there", "label": True},
    {"prompt": "Q: how are you? A:", "completion": " go away", "label": False},
    {"prompt": "Q: bye? A:", "completion": " see you soon, friend", "label": True},
    {"prompt": "Q: food? A:", "completion": " no", "label": False},
]
PAIRS = [
    {"prompt": "Q: hi? A:", "chosen": " hello there", "rejected": " go away"},
    {"prompt": "Q: how are you? A:", "chosen": " fine", "rejected": " none of your business"},
    {"prompt": "Q: bye? A:", "chosen": " see you soon, friend", "rejected": " bye"},
    {"prompt": "Q: food? A:", "chosen": " yes please", "rejected": " no"},
]


def training_args(tmp_path, **overrides):
    options = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, logging_steps=1,
                   report_to=[], use_cpu=True, save_strategy="no", learning_rate=1e-3, seed=0,
                   disable_tqdm=True)
    options.update(overrides)
    return transformers.TrainingArguments(**options)


def test_import_does_not_import_transformers():
    code = "import sys, cringe_kernels; sys.exit('transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ---------------------------------------------------------------- alignment


def test_shift_labels():
    labels = torch.tensor([[-100, 5, 6, 7], [-100, -100, 8, -100]])
    assert shift_labels(labels).tolist() == [[5, 6, 7, -100], [-100, 8, -100, -100]]


def test_binary_loss_func_matches_manual_shift():
    torch.manual_seed(0)
    B, T, V = 3, 7, 11
    logits = torch.randn(B, T, V, requires_grad=True)
    labels = torch.randint(0, V, (B, T))
    labels[0, :3] = -100
    labels[2, -2:] = -100
    feedback = torch.tensor([1, 0, 1])
    uniform = torch.rand(B, T)
    num_items = 17
    func = make_compute_loss_func(k=3, alpha=0.7, backend="reference", uniform=uniform)
    loss = func({"logits": logits}, labels, num_items, feedback=feedback)

    # The textbook alignment: drop the last logit, drop the first label.
    manual = cringe_loss(logits[:, :-1], labels[:, 1:], feedback[:, None], k=3, alpha=0.7, reduction="sum",
                         uniform=uniform[:, :-1], backend="reference") / num_items
    torch.testing.assert_close(loss, manual)
    g1, = torch.autograd.grad(loss, logits)
    g2, = torch.autograd.grad(manual, logits)
    torch.testing.assert_close(g1, g2)
    assert g1[:, -1].abs().max() == 0  # the last position predicts nothing


def test_all_positive_is_hf_cross_entropy():
    torch.manual_seed(1)
    B, T, V = 2, 6, 9
    logits = torch.randn(B, T, V)
    labels = torch.randint(0, V, (B, T))
    labels[1, :2] = -100
    func = make_compute_loss_func(backend="reference")
    # num_items_in_batch=None: the batch's own mean, as HF's causal LM loss.
    loss = func({"logits": logits}, labels, feedback=torch.ones(B))
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(loss, expected)


def test_pairwise_loss_func_matches_manual_shift():
    torch.manual_seed(2)
    B, T, V = 2, 6, 13
    logits = torch.randn(2 * B, T, V, requires_grad=True)
    labels = torch.randint(0, V, (2 * B, T))
    labels[:, :2] = -100
    uniform = torch.rand(B, T)
    func = make_compute_loss_func(pairwise=True, k=4, margin=0.5, backend="reference", uniform=uniform)
    loss = func({"logits": logits}, labels, 30)
    manual = pairwise_cringe_loss(logits[:B, :-1], labels[:B, 1:], logits[B:, :-1], labels[B:, 1:], k=4,
                                  margin=0.5, reduction="sum", uniform=uniform[:, :-1], backend="reference") / 30
    torch.testing.assert_close(loss, manual)
    assert set(func.last_metrics) >= {"gate", "margin", "logps/chosen", "logps/rejected"}


def test_missing_feedback_is_a_clear_error():
    func = make_compute_loss_func(backend="reference")
    with pytest.raises(ValueError, match="feedback"):
        func({"logits": torch.randn(1, 3, 5)}, torch.tensor([[1, 2, 3]]))
    with pytest.raises(TypeError, match="reduction"):
        make_compute_loss_func(reduction="sum")


# ---------------------------------------------------------------- collators


def test_collators_mask_prompts(tok):
    batch = CringeCollator(tok)(BINARY[:2])
    assert batch["feedback"].tolist() == [1, 0]
    prompt_len = len(tok(BINARY[0]["prompt"])["input_ids"])
    assert (batch["labels"][0, :prompt_len] == -100).all()
    completion = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert tok.decode(completion[:-1]) == BINARY[0]["completion"] and completion[-1] == tok.eos_token_id
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()

    pairs = PairwiseCringeCollator(tok)(PAIRS[:3])
    assert pairs["input_ids"].shape[0] == 6
    assert tok.decode(pairs["labels"][4][pairs["labels"][4] >= 3].tolist()) == PAIRS[1]["rejected"]


# ---------------------------------------------------------------- trainers


def test_trainers_step_and_log(tmp_path, tok):
    model = tiny_model(len(tok))
    before = [p.detach().clone() for p in model.parameters()]
    trainer = CringeTrainer(model, training_args(tmp_path), train_dataset=BINARY, eval_dataset=BINARY,
                            processing_class=tok, loss_kwargs=dict(k=3))
    trainer.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    logged = trainer.state.log_history[0]
    for key in ("loss", "ce", "cringe", "positive_fraction", "logps/positive", "logps/negative"):
        assert math.isfinite(logged[key]), key
    assert logged["logps/positive"] == pytest.approx(-logged["ce"], rel=1e-5)
    assert "eval_cringe" in trainer.evaluate()

    pair_trainer = PairwiseCringeTrainer(tiny_model(len(tok)), training_args(tmp_path), train_dataset=PAIRS,
                                         eval_dataset=PAIRS, processing_class=tok,
                                         loss_kwargs=dict(k=3, length_normalize=True))
    pair_trainer.train()
    logged = pair_trainer.state.log_history[0]
    for key in ("ce", "cringe", "gate", "margin", "margin_accuracy", "logps/chosen", "logps/rejected"):
        assert math.isfinite(logged[key]), key
    assert logged["margin"] == pytest.approx(logged["logps/chosen"] - logged["logps/rejected"], abs=1e-4)
    metrics = pair_trainer.evaluate()
    assert 0 < metrics["eval_gate"] < 1


class _GradCatcher(transformers.TrainerCallback):
    def __init__(self):
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = [p.grad.detach().clone() for p in model.parameters()]


def _first_step_grads(tmp_path, tok, kind, batch_size, accumulation, **extra):
    model = tiny_model(len(tok), seed=3)
    catcher = _GradCatcher()
    args = training_args(tmp_path, per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
                         max_steps=1, max_grad_norm=0.0, remove_unused_columns=False)
    # k=1: one candidate, so the sampled token does not depend on the draws,
    # which differ between the micro-batch and big-batch runs.
    loss_kwargs = dict(dict(k=1, alpha=0.8, backend="reference"), **extra)
    if kind == "binary":
        trainer = CringeTrainer(model, args, train_dataset=BINARY, processing_class=tok, loss_kwargs=loss_kwargs,
                                callbacks=[catcher])
    elif kind == "pairwise":
        trainer = PairwiseCringeTrainer(model, args, train_dataset=PAIRS, processing_class=tok,
                                        loss_kwargs=dict(loss_kwargs, margin=5.0), callbacks=[catcher])
    else:  # a plain Trainer with compute_loss_func, feedback routed by attach()
        func = make_compute_loss_func(**loss_kwargs)
        trainer = transformers.Trainer(model=func.attach(model), args=args, train_dataset=BINARY,
                                       data_collator=CringeCollator(tok), compute_loss_func=func,
                                       callbacks=[catcher])
    trainer.train()
    return catcher.grads


@pytest.mark.parametrize("kind", ["binary", "pairwise", "plain"])
def test_gradient_accumulation_equals_big_batch(tmp_path, tok, kind):
    big = _first_step_grads(tmp_path, tok, kind, batch_size=4, accumulation=1)
    accumulated = _first_step_grads(tmp_path, tok, kind, batch_size=1, accumulation=4)
    assert big is not None and accumulated is not None
    for a, b in zip(big, accumulated):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["binary", "plain", "pairwise"])
def test_single_pass_in_the_trainer_takes_the_fast_backward(tmp_path, tok, kind, monkeypatch):
    """grad_in_forward=True under gradient accumulation: Trainer backpropagates
    the loss with weight 1, so the forward's guess of d loss / d lse is what
    autograd passes back on every micro-batch (two columns a row left for the
    backward), and the gradients are those of the two-pass run."""
    from cringe_kernels.backends.cpu_backend import CpuRowStats

    matched = []
    backward_with_grad = CpuRowStats.backward_with_grad

    def spy(self, grad, logits, target, sample_index, lse, lse_weight, grad_lse, *rest):
        matched.append(torch.equal(grad_lse, lse_weight))
        return backward_with_grad(self, grad, logits, target, sample_index, lse, lse_weight, grad_lse, *rest)

    monkeypatch.setattr(CpuRowStats, "backward_with_grad", spy)
    two_pass = _first_step_grads(tmp_path, tok, kind, batch_size=1, accumulation=2, backend="cpu")
    single = _first_step_grads(tmp_path, tok, kind, batch_size=1, accumulation=2, backend="cpu",
                               grad_in_forward=True)
    assert matched and all(matched), matched
    for a, b in zip(single, two_pass):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_completion_logps(tok):
    model = tiny_model(len(tok))
    prompts = [ex["prompt"] for ex in PAIRS[:2]]
    completions = [ex["chosen"] for ex in PAIRS[:2]]
    got = completion_logps(model, tok, prompts, completions, batch_size=1, normalize=False)
    batch = CringeCollator(tok)([{"prompt": p, "completion": c, "label": 1} for p, c in zip(prompts, completions)])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = torch.log_softmax(logits[:, :-1], -1)
    target = batch["labels"][:, 1:]
    mask = target != -100
    expected = (logp.gather(-1, target.clamp(min=0)[..., None])[..., 0] * mask).sum(1)
    assert got == pytest.approx(expected.tolist(), rel=1e-5)


# ---------------------------------------------------------------- iterative loop


def char_sum(prompts, completions, **kwargs):
    """Toy judge: any deterministic score that varies between completions."""
    return [float(sum(map(ord, c)) % 11) for c in completions]


@pytest.mark.parametrize("mode", ["pairwise", "binary"])
def test_iterative_one_round(tmp_path, tok, mode):
    from cringe_kernels.iterative import IterativeConfig, run_iterative

    config = IterativeConfig(rounds=1, mode=mode, num_generations=3, max_new_tokens=6, min_gap=-1.0,
                             loss_kwargs=dict(k=3), output_dir=str(tmp_path), progress=False,
                             training_args=dict(learning_rate=1e-3, per_device_train_batch_size=2))
    lines = []
    results = run_iterative(tiny_model(len(tok)), tok, ["Q: hi? A:", "Q: bye? A:"], [char_sum], config,
                            log=lines.append)
    assert [r.round for r in results] == [1, 2]  # one trained round, then the final model's judge row
    first = results[0]
    assert first.examples == (2 if mode == "pairwise" else 6)
    assert math.isfinite(first.train_loss) and math.isfinite(first.logp_rejected_after)
    assert "ce" in first.train_metrics
    for name in ("metrics.md", "metrics.csv", "metrics.json", "samples_round_1.jsonl"):
        assert (tmp_path / name).exists(), name
    assert "| final |" in (tmp_path / "metrics.md").read_text()
    assert len(lines) == 3


def test_iterative_command(tmp_path, tok, capsys, monkeypatch):
    from cringe_kernels import iterative

    # --reward takes module:function; a module of its own keeps this
    # independent of how pytest imports the test files.
    (tmp_path / "toy_rewards.py").write_text(
        "def char_sum(prompts, completions, **kwargs):\n"
        "    return [float(sum(map(ord, c)) % 11) for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model_dir = tmp_path / "model"
    tiny_model(len(tok)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Q: hi? A:\nQ: bye? A:\n\n")
    out = tmp_path / "out"
    code = iterative.main(["--model", str(model_dir), "--prompts", str(prompts), "--reward", "toy_rewards:char_sum",
                           "--output-dir", str(out), "--rounds", "1", "--num-generations", "2",
                           "--max-new-tokens", "4", "--min-gap", "-1", "--learning-rate", "1e-3",
                           "--no-progress", "--length-normalize"])
    assert code == 0
    assert "| final |" in capsys.readouterr().out
    assert (out / "metrics.json").exists()
