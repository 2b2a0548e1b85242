"""Benchmark suite: ``python -m cringe_kernels.bench``.

Times every loss provider (the eager and compiled reference, each kernel
backend with and without ``inplace_backward``, and plain cross-entropy as the
floor of any fused loss) over a sweep of vocabulary sizes ``V``, row counts
``N`` and dtypes, in three modes (forward, backward, forward+backward), and
writes a CSV, a JSON with the environment, a text summary and plots.
Two whole-step modes sit beside the sweep: ``--linear`` (the losses from
hidden states against the logits path, the matmul floors and the fused
cross-entropy libraries) and ``--train-step`` (one optimizer step of a
Llama-style model per loss).

Modules, one job each
---------------------
cli        command-line arguments -> :class:`~.config.SweepConfig`; ``main``
config     the sweep configuration and the per-device presets
workloads  input tensors for one (loss, V, N, dtype) point
providers  what is timed: name -> a loss function over a workload
timing     timers (CUDA events / perf_counter), percentiles, peak memory
metrics    byte model, bandwidth, device copy bandwidth, speedups
runner     the sweep loop (records, skips, time budget, progress)
progress   a dependency-free progress bar (tqdm when installed)
env        environment facts (device, versions, git commit, CPU)
output     CSV / JSON / summary table
plots      matplotlib figures (optional dependency)
steps      whole-step providers, measured in interleaved rounds (the two modes below)
hidden_states  ``--linear``: workloads, providers, goals, output
train_step     ``--train-step``: the model, providers, output

Importing this package touches no GPU.
"""
