"""CringeTrainer / PairwiseCringeTrainer on a tiny random Llama: data forms, configs, metrics, accumulation."""

import math
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from hf_tiny import BINARY, PAIRS, conversational, tiny_model, tiny_tokenizer, training_args  # noqa: E402

from cringe_kernels.hf import (  # noqa: E402
    CringeCollator,
    CringeConfig,
    CringeTrainer,
    PairwiseCringeConfig,
    PairwiseCringeTrainer,
    completion_logps,
    make_compute_loss_func,
)

datasets.disable_progress_bars()


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


BINARY_KEYS = ("loss", "ce", "cringe", "positive_fraction", "logps/chosen", "logps/rejected", "num_tokens")
PAIRWISE_KEYS = ("loss", "ce", "cringe", "gate", "margins", "accuracies", "logps/chosen", "logps/rejected",
                 "num_tokens")


@pytest.mark.parametrize("chat", [False, True], ids=["standard", "conversational"])
def test_trainers_train_and_evaluate_on_each_form(tmp_path, tok, chat):
    pairs = conversational(PAIRS) if chat else PAIRS
    binary = conversational(BINARY) if chat else BINARY
    model = tiny_model(len(tok))
    before = [p.detach().clone() for p in model.parameters()]
    args = training_args(CringeConfig, tmp_path, max_steps=1, k=3)
    # Labelled completions for training, preference pairs (unpaired) for evaluation.
    trainer = CringeTrainer(model, args, train_dataset=binary, eval_dataset=pairs, processing_class=tok)
    trainer.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    logged = trainer.state.log_history[0]
    for key in BINARY_KEYS:
        assert math.isfinite(logged[key]), key
    metrics = trainer.evaluate()
    assert 0 < metrics["eval_positive_fraction"] < 1 and "eval_cringe" in metrics

    pair_trainer = PairwiseCringeTrainer(tiny_model(len(tok)), training_args(PairwiseCringeConfig, tmp_path,
                                                                             max_steps=1, k=3),
                                         train_dataset=pairs, eval_dataset=pairs, processing_class=tok)
    pair_trainer.train()
    logged = pair_trainer.state.log_history[0]
    for key in PAIRWISE_KEYS:
        assert math.isfinite(logged[key]), key
    assert 0 <= logged["accuracies"] <= 1 and 0 < logged["gate"] < 1
    assert 0 < pair_trainer.evaluate()["eval_gate"] < 1


def test_metrics_are_weighted_by_counts_over_micro_batches_and_in_eval(tmp_path, tok):
    """Batches of 2 rows, one of them without negatives; logged every 2 steps at lr 0: the logged
    means are the pooled means over all four rows, in training and in evaluation (batches of 1)."""
    rows = [BINARY[0], BINARY[2], BINARY[1], BINARY[3]]
    model = tiny_model(len(tok))
    args = training_args(CringeConfig, tmp_path, per_device_train_batch_size=2, per_device_eval_batch_size=1,
                         max_steps=2, logging_steps=2, learning_rate=0.0, k=3)
    trainer = CringeTrainer(model, args, train_dataset=rows, eval_dataset=rows, processing_class=tok)
    trainer.train()
    logged = trainer.state.log_history[0]

    batch = CringeCollator(tok)(rows)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    target = batch["labels"][:, 1:]
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, target.clamp(min=0)[..., None])[..., 0]
    valid = target != -100
    logp = torch.where(valid, logp, 0.0)
    good = batch["feedback"].bool()
    ce = -(logp[good].sum() / valid[good].sum()).item()
    assert logged["ce"] == pytest.approx(ce, rel=1e-5)
    assert logged["logps/chosen"] == pytest.approx(logp[good].sum(1).mean().item(), rel=1e-5)
    assert logged["logps/rejected"] == pytest.approx(logp[~good].sum(1).mean().item(), rel=1e-5)
    assert logged["positive_fraction"] == pytest.approx((valid[good].sum() / valid.sum()).item())
    assert logged["num_tokens"] == batch["attention_mask"].sum().item()
    metrics = trainer.evaluate()
    assert metrics["eval_ce"] == pytest.approx(ce, rel=1e-5)
    assert metrics["eval_logps/rejected"] == pytest.approx(logged["logps/rejected"], rel=1e-5)


class _GradCatcher(transformers.TrainerCallback):
    def __init__(self):
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = [p.grad.detach().clone() for p in model.parameters()]


def _first_step_grads(tmp_path, tok, kind, batch_size, accumulation, **extra):
    model = tiny_model(len(tok), seed=3)
    catcher = _GradCatcher()
    options = dict(per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation, max_steps=1,
                   max_grad_norm=0.0, k=5, alpha=0.8)
    options.update(extra)
    if kind == "binary":
        trainer = CringeTrainer(model, training_args(CringeConfig, tmp_path, **options), train_dataset=BINARY,
                                processing_class=tok, callbacks=[catcher])
    else:
        options.setdefault("margin", 5.0)
        trainer = PairwiseCringeTrainer(model, training_args(PairwiseCringeConfig, tmp_path, **options),
                                        train_dataset=PAIRS, processing_class=tok, callbacks=[catcher])
    trainer.train()
    return catcher.grads


@pytest.mark.parametrize("kind", ["binary", "pairwise"])
def test_gradient_accumulation_equals_big_batch_at_k5(tmp_path, tok, kind):
    big = _first_step_grads(tmp_path, tok, kind, batch_size=4, accumulation=1)
    accumulated = _first_step_grads(tmp_path, tok, kind, batch_size=1, accumulation=4)
    for a, b in zip(big, accumulated):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    if kind == "binary":
        # The loss's own torch.rand draws depend on the micro-batch's shape: the gradients differ.
        big = _first_step_grads(tmp_path, tok, kind, batch_size=4, accumulation=1, layout_free_draws=False)
        accumulated = _first_step_grads(tmp_path, tok, kind, batch_size=1, accumulation=4, layout_free_draws=False)
        assert max((a - b).abs().max().item() for a, b in zip(big, accumulated)) > 1e-4


def test_plain_trainer_with_compute_loss_func(tmp_path, tok):
    model = tiny_model(len(tok))
    func = make_compute_loss_func(k=3, backend="reference")
    args = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=1,
                                          report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True,
                                          remove_unused_columns=False)
    trainer = transformers.Trainer(model=func.attach(model), args=args, train_dataset=BINARY,
                                   data_collator=CringeCollator(tok), compute_loss_func=func)
    out = trainer.train()
    assert math.isfinite(out.training_loss) and set(func.last_metrics) >= {"ce", "cringe"}


def test_gate_shut_warns_once_naming_the_knobs(tmp_path, tok):
    # Rejected replies far longer than chosen ones and summed log-likelihoods: M >> 0, gate ~ 0.
    pairs = [{"prompt": r["prompt"], "chosen": " ok", "rejected": " " + "no way, " * 6} for r in PAIRS]
    args = training_args(PairwiseCringeConfig, tmp_path, max_steps=2, length_normalize=False)
    with pytest.warns(UserWarning, match="length_normalize=False") as record:
        PairwiseCringeTrainer(tiny_model(len(tok)), args, train_dataset=pairs, processing_class=tok).train()
    messages = [str(w.message) for w in record if "gate" in str(w.message)]
    assert len(messages) == 1 and "margin=" in messages[0] and "temperature=" in messages[0]
    # The default, per-token log-likelihoods, keeps the gate open on the same data.
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        args = training_args(PairwiseCringeConfig, tmp_path, max_steps=1)
        PairwiseCringeTrainer(tiny_model(len(tok)), args, train_dataset=pairs, processing_class=tok).train()


def test_configs_hold_the_loss_options_and_are_saved(tmp_path, tok):
    args = training_args(PairwiseCringeConfig, tmp_path, max_steps=1, k=3, alpha=0.5, margin=-1.0,
                         temperature=2.0, save_strategy="no")
    trainer = PairwiseCringeTrainer(tiny_model(len(tok)), args, train_dataset=PAIRS, processing_class=tok)
    assert trainer.loss_func.loss_kwargs["margin"] == -1.0 and trainer.loss_func.loss_kwargs["k"] == 3
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    saved = torch.load(tmp_path / "saved" / "training_args.bin", weights_only=False)
    assert (saved.k, saved.alpha, saved.margin, saved.temperature) == (3, 0.5, -1.0, 2.0)
    assert '"margin": -1.0' in saved.to_json_string()
    with pytest.raises(ValueError, match="temperature"):
        PairwiseCringeConfig(output_dir=str(tmp_path), temperature=0.0)
    with pytest.raises(ValueError, match="truncation_mode"):
        CringeConfig(output_dir=str(tmp_path), truncation_mode="middle")


def test_wrong_arguments_are_clear_errors(tmp_path, tok):
    args = training_args(CringeConfig, tmp_path)
    with pytest.raises(TypeError, match="CringeConfig"):
        CringeTrainer(tiny_model(len(tok)), args, train_dataset=BINARY, processing_class=tok, loss_kwargs={"k": 3})
    with pytest.raises(ValueError, match="compute_metrics"):
        CringeTrainer(tiny_model(len(tok)), args, train_dataset=BINARY, processing_class=tok,
                      compute_metrics=lambda p: {})
    with pytest.raises(ValueError, match="processing_class"):
        CringeTrainer(tiny_model(len(tok)), args, train_dataset=BINARY)


def test_other_training_arguments_are_copied_not_changed(tmp_path, tok):
    trl = pytest.importorskip("trl")
    user_args = trl.DPOConfig(output_dir=str(tmp_path), max_length=16, per_device_train_batch_size=2, max_steps=1,
                              report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)
    trainer = PairwiseCringeTrainer(tiny_model(len(tok)), user_args, train_dataset=PAIRS, processing_class=tok)
    assert isinstance(trainer.args, PairwiseCringeConfig)
    assert trainer.args.max_length == 16 and trainer.args.per_device_train_batch_size == 2
    assert user_args.remove_unused_columns is True and trainer.args.remove_unused_columns is True
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    assert batch["input_ids"].shape[1] <= 16
    trainer.train()

    plain = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=1, report_to=[], use_cpu=True,
                                           save_strategy="no", disable_tqdm=True)
    trainer = CringeTrainer(tiny_model(len(tok)), plain, train_dataset=BINARY, processing_class=tok)
    assert trainer.args.max_length == 1024 and plain.remove_unused_columns is True
    trainer.train()


def test_datasets_are_tokenized_once(tmp_path, tok, monkeypatch):
    args = training_args(CringeConfig, tmp_path, max_steps=2, per_device_train_batch_size=2)
    trainer = CringeTrainer(tiny_model(len(tok)), args, train_dataset=BINARY, processing_class=tok)
    assert "prompt_ids" in trainer.train_dataset.column_names

    def no_more(*a, **k):
        raise AssertionError("tokenized during training")

    monkeypatch.setattr(type(tok), "__call__", no_more)
    trainer.train()


def test_model_by_path_and_peft(tmp_path, tok):
    path = tmp_path / "model"
    tiny_model(len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    args = training_args(CringeConfig, tmp_path, max_steps=1)
    trainer = CringeTrainer(str(path), args, train_dataset=BINARY)
    assert trainer.processing_class is not None
    trainer.train()
    args = training_args(CringeConfig, tmp_path, max_steps=1, model_init_kwargs={"dtype": torch.float64})
    assert CringeTrainer(str(path), args, train_dataset=BINARY).model.dtype == torch.float64
    with pytest.raises(ValueError, match="model_init_kwargs"):
        CringeTrainer(tiny_model(len(tok)), args, train_dataset=BINARY, processing_class=tok)

    peft = pytest.importorskip("peft")
    model = tiny_model(len(tok))
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    trainer = CringeTrainer(model, training_args(CringeConfig, tmp_path, max_steps=1), train_dataset=BINARY,
                            processing_class=tok, peft_config=config)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters() if n in before)


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


@pytest.mark.parametrize("kind", ["binary", "pairwise"])
def test_single_pass_in_the_trainers_never_rewrites_rows(tmp_path, tok, kind, monkeypatch):
    """The trainers backpropagate their loss with weight 1, also under gradient accumulation and over
    processes (the count is divided instead of the loss scaled): the single pass's assumed upstream
    gradient always holds, so no row is rewritten (that would warn), and the gradients are the two passes'."""
    from cringe_kernels import autograd, available_backends

    if "cpu" not in available_backends():
        pytest.skip("the cpu backend is not built here")
    monkeypatch.setattr(autograd.single_pass_misses, "warned", False)
    two_pass = _first_step_grads(tmp_path, tok, kind, batch_size=1, accumulation=2, backend="cpu",
                                 single_pass=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*single pass.*")
        single = _first_step_grads(tmp_path, tok, kind, batch_size=1, accumulation=2, backend="cpu",
                                   single_pass=True)
    for a, b in zip(single, two_pass):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_named_eval_sets_and_streamed_training_data(tmp_path, tok):
    args = training_args(CringeConfig, tmp_path, max_steps=1)
    streamed = datasets.Dataset.from_list(BINARY).to_iterable_dataset()
    trainer = CringeTrainer(tiny_model(len(tok)), args, train_dataset=streamed,
                            eval_dataset={"good_bad": BINARY, "pairs": PAIRS}, processing_class=tok)
    trainer.train()
    metrics = trainer.evaluate()
    assert math.isfinite(metrics["eval_good_bad_ce"]) and math.isfinite(metrics["eval_pairs_cringe"])
    assert metrics["eval_pairs_positive_fraction"] != metrics["eval_good_bad_positive_fraction"]
