"""Build and install cringe_kernels.

The package is pure Python plus two optional torch-free compiled modules
(csrc/cringe_build.py says when each is built); it installs on a machine
with no GPU, no CUDA driver and no C++ compiler.
"""

import os
import sys

from setuptools import find_packages, setup

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc"))
from cringe_build import compiled_extensions  # noqa: E402  the torch-free kernels; see csrc/cringe_build.py

EXTRAS = {
    "triton": ["triton>=3.0"],
    # pybind11: the tests build the CUDA kernels for their CPU simulator (tests/cuda_sim.py);
    # trl: a test passes TRL's DPOConfig to our trainers.
    "test": ["pytest>=7", "hypothesis>=6", "numpy", "triton>=3.0", "pybind11>=2.10", "trl>=1.0"],
    "hf": ["transformers>=4.46", "accelerate>=0.26", "datasets>=2.14", "peft>=0.10"],
    "bench": ["matplotlib>=3.5"],
    "feedback": ["scikit-learn>=1.0", "chatterbot-corpus>=1.3", "vaderSentiment>=3.3", "PyYAML>=5.1"],
}

setup(
    name="cringe_kernels",
    version="0.1.0",
    description="Fast, exact Cringe and Pairwise Cringe losses for PyTorch",
    long_description=open("README.md", encoding="utf-8").read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["cringe_kernels", "cringe_kernels.*"]),
    python_requires=">=3.9",
    install_requires=["torch>=2.4", "numpy"],
    extras_require=EXTRAS,
    **compiled_extensions(os.path.dirname(os.path.abspath(__file__))),
)
