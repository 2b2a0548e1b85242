"""The trainers' hidden-state path against their logits path on small Llama, Qwen2 and Gemma 2 configs."""

import logging

import pytest
import torch

transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from hf_tiny import BINARY, PAIRS, tiny_tokenizer, training_args  # noqa: E402

from cringe_kernels.hf import CringeConfig, CringeTrainer, PairwiseCringeConfig, PairwiseCringeTrainer  # noqa: E402
from cringe_kernels.hf.lm_head import head_of  # noqa: E402

datasets.disable_progress_bars()
SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def small_model(arch, vocab_size):
    torch.manual_seed(7)
    if arch == "llama":  # untied LM head
        config = transformers.LlamaConfig(vocab_size=vocab_size, **SIZES)
    elif arch == "llama_tied":
        config = transformers.LlamaConfig(vocab_size=vocab_size, tie_word_embeddings=True, **SIZES)
    elif arch == "qwen2":
        config = transformers.Qwen2Config(vocab_size=vocab_size, **SIZES)
    else:  # Gemma 2: tied weights and final logit softcapping (made small so that it bites)
        config = transformers.Gemma2Config(vocab_size=vocab_size, head_dim=8, final_logit_softcapping=0.5, **SIZES)
    return transformers.AutoModelForCausalLM.from_config(config)


class _GradCatcher(transformers.TrainerCallback):
    grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _step(tmp_path, tok, arch, pairwise, use_hidden_states):
    catcher = _GradCatcher()
    model = small_model(arch, len(tok))
    cls, config = (PairwiseCringeTrainer, PairwiseCringeConfig) if pairwise else (CringeTrainer, CringeConfig)
    args = training_args(config, tmp_path, max_steps=1, max_grad_norm=0.0, k=5, backend="auto",
                         use_hidden_states=use_hidden_states)
    trainer = cls(model, args, train_dataset=PAIRS if pairwise else BINARY, processing_class=tok,
                  callbacks=[catcher])
    trainer.train()
    return trainer, catcher.grads


@pytest.mark.parametrize("arch, pairwise", [("llama", False), ("llama_tied", True), ("qwen2", False),
                                            ("gemma2", False), ("gemma2", True)])
def test_hidden_state_path_gives_the_logits_path_loss_and_gradients(tmp_path, arch, pairwise, caplog):
    tok = tiny_tokenizer()
    if arch == "gemma2":
        head, _ = head_of(small_model(arch, len(tok)))
        assert head.logit_softcap == 0.5
    with caplog.at_level(logging.INFO, logger="cringe_kernels.hf.trainers"):
        fused, grads = _step(tmp_path, tok, arch, pairwise, True)
    assert "loss from the last hidden states" in caplog.text
    assert fused._head is not None
    plain, reference = _step(tmp_path, tok, arch, pairwise, False)
    assert plain._head is None
    assert grads.keys() == reference.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], reference[name], rtol=1e-4, atol=1e-6, msg=name)
    a, b = fused.state.log_history[0], plain.state.log_history[0]
    for key in ("loss", "ce", "cringe", "logps/chosen", "logps/rejected"):
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key


def test_lora_on_the_lm_head_falls_back_to_logits_with_a_reason(tmp_path, caplog):
    peft = pytest.importorskip("peft")
    tok = tiny_tokenizer()
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "lm_head"], lora_dropout=0.0)
    args = training_args(CringeConfig, tmp_path, max_steps=1)
    with caplog.at_level(logging.WARNING, logger="cringe_kernels.hf.trainers"):
        trainer = CringeTrainer(small_model("llama", len(tok)), args, train_dataset=BINARY, processing_class=tok,
                                peft_config=config)
        trainer.train()
    assert trainer._head is None
    assert "not from the hidden states: the LM head is a" in caplog.text and "LoRA" in caplog.text
