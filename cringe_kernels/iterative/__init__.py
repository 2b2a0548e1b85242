"""The iterative Cringe procedure: generate, label, pair (or label), train; repeat.

The loop of the Cringe papers (Adolphs et al. 2022; Xu et al. 2023) and
BlenderBot 3x as a library function, :func:`run_iterative`, and a command::

    python -m cringe_kernels.iterative --model PATH_OR_DIR [--gguf-file F] \\
        --prompts prompts.jsonl --reward mypkg.rewards:politeness --rounds 3 --output-dir out/

Each round

1. samples ``num_generations`` completions per prompt from the current model
   (conversational prompts through the chat template);
2. labels them: reward functions in TRL's signature,
   ``f(prompts, completions, **kwargs) -> list[float]`` (weighted sum; the
   prompt file's other columns as keyword arguments), or any labeller
   (:mod:`.labelling`);
3. builds training data: the best and the worst completion of each prompt
   as a pair (``mode="pairwise"``), or every completion labelled
   (``mode="binary"``);
4. measures the per-token log-likelihood of the chosen / rejected
   completions, trains one :class:`~cringe_kernels.hf.PairwiseCringeTrainer`
   or :class:`~cringe_kernels.hf.CringeTrainer` pass, and measures again;
5. writes the metrics so far (Markdown, CSV, strict JSON) and, with
   matplotlib installed, a PNG plot.

After the last round the final model is sampled and judged once more, and
saved with its tokenizer to ``output_dir/final_model``.

Modules: :mod:`.config`, :mod:`.generate`, :mod:`.labelling`, :mod:`.loop`,
:mod:`.report`, :mod:`.cli`. Needs the ``[hf]`` extra; matplotlib is optional.
"""

from .cli import load_model, load_prompts, main
from .config import IterativeConfig, RoundResult
from .generate import Completion, generate_completions
from .labelling import Labels, RewardLabeller
from .loop import build_examples, run_iterative, save_model, train_round
from .report import format_table, plot_rounds, write_table

__all__ = [
    "Completion",
    "IterativeConfig",
    "Labels",
    "RewardLabeller",
    "RoundResult",
    "build_examples",
    "format_table",
    "generate_completions",
    "load_model",
    "load_prompts",
    "main",
    "plot_rounds",
    "run_iterative",
    "save_model",
    "train_round",
    "write_table",
]
