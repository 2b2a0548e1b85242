"""One training step (and an evaluation) of a Cringe trainer, for the multi-process test.

Run by ``tests/test_hf_distributed.py`` under ``torchrun --nproc_per_node 2``
(CPU, gloo) and in-process for the one-process reference: the gradient just
before the optimizer step, the first logged entry and the evaluation's
metrics, saved by rank 0 to the path given on the command line.
"""

import sys

import datasets
import torch
import transformers

from hf_tiny import BINARY, PAIRS, tiny_model, tiny_tokenizer, training_args

from cringe_kernels.hf import CringeConfig, CringeTrainer, PairwiseCringeConfig, PairwiseCringeTrainer


class GradCatcher(transformers.TrainerCallback):
    grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = [p.grad.detach().clone() for p in model.parameters()]


def run(output_dir: str, kind: str, per_device_batch: int, **extra):
    datasets.disable_progress_bars()
    tok = tiny_tokenizer()
    model = tiny_model(len(tok), seed=5)
    catcher = GradCatcher()
    options = dict(per_device_train_batch_size=per_device_batch, per_device_eval_batch_size=per_device_batch,
                   max_steps=1, max_grad_norm=0.0, k=5, logging_steps=1)
    options.update(extra)
    if kind == "binary":
        trainer = CringeTrainer(model, training_args(CringeConfig, output_dir, **options), train_dataset=BINARY,
                                eval_dataset=BINARY, processing_class=tok, callbacks=[catcher])
    else:
        trainer = PairwiseCringeTrainer(model, training_args(PairwiseCringeConfig, output_dir, **options),
                                        train_dataset=PAIRS, eval_dataset=PAIRS, processing_class=tok,
                                        callbacks=[catcher])
    trainer.train()
    evaluated = trainer.evaluate()
    return {"grads": catcher.grads, "logged": trainer.state.log_history[0], "evaluated": evaluated,
            "processes": trainer.accelerator.num_processes, "rank": trainer.accelerator.process_index}


if __name__ == "__main__":
    out_path, kind, strategy = sys.argv[1], sys.argv[2], sys.argv[3]
    extra = {"ddp_backend": "gloo"}
    if strategy == "fsdp":
        extra.update(fsdp=True, fsdp_config={"use_orig_params": True})
    result = run(out_path + ".dir", kind, per_device_batch=2, **extra)
    if result["rank"] == 0:
        torch.save(result, out_path)
