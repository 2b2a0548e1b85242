#!/usr/bin/env bash
# Download, on a machine with a registry, the wheels that the GPU machine
# lacks for the benchmark's baselines and the training-step mode, so they can
# travel with a device call (the GPU machine reaches no registry).
#
#   benchmarks/gpu_wheels.sh [DIR]        # default DIR: .whl (git-ignored)
#
# Then, on the GPU machine (Python 3.12, x86_64, torch 2.11+cu130 with its
# triton, numpy, tqdm and packaging already there), before the benchmark:
#
#   python -m pip install --no-index --no-deps .whl/*.whl
#
# What is downloaded: Liger-Kernel, Cut Cross-Entropy, transformers, and the
# closure of their requirements minus what a CUDA torch 2.11 wheel brings
# (filelock, fsspec, jinja2, markupsafe, mpmath, networkx, setuptools, sympy,
# typing-extensions, triton, the nvidia-* libraries). The versions are the
# ones the suite was run with on the CPU; `--no-deps` downloads exactly this
# list. The total must stay under a device call's 64 MiB of carried files.
set -euo pipefail

DIR="${1:-.whl}"
PY="${PYTHON:-python}"
LIMIT_MIB=64

WHEELS=(
  liger-kernel==0.8.5
  cut-cross-entropy==25.1.1
  transformers==5.25.0
  huggingface-hub==2.4.0
  tokenizers==0.23.3
  safetensors==0.8.0
  hf-xet==1.8.0
  kernels==0.19.1
  regex==2026.12.2
  pyyaml==6.0.4
  httpx2==2.17.0
  httpcore2==2.17.0
  h11==0.16.0
  anyio==4.16.0
  idna==3.21
  truststore==0.10.5
  click==8.5.1
  typer==0.29.2
  shellingham==1.5.4
  rich==15.0.0
  markdown-it-py==4.3.0
  mdurl==0.1.2
  pygments==2.21.0
  annotated-doc==0.0.7
  annotated-types==0.8.0
  pydantic==2.14.4
  pydantic-core==2.50.5
  typing-inspection==0.4.5
  tomlkit==0.15.3
)

mkdir -p "$DIR"
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_34_x86_64 --platform any \
  --dest "$DIR" "${WHEELS[@]}"

bytes=$(du -cb "$DIR"/*.whl | tail -1 | cut -f1)
mib=$(( (bytes + (1 << 20) - 1) >> 20 ))
echo "$(ls "$DIR"/*.whl | wc -l) wheels, ${mib} MiB in $DIR (limit ${LIMIT_MIB} MiB)"
if (( mib > LIMIT_MIB )); then
  echo "too large to carry with a device call" >&2
  exit 1
fi
