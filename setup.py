"""Build and install cringe_kernels.

The package is pure Python plus optional torch-free compiled modules (added
by the kernel work); it installs on a machine with no GPU and no CUDA driver.
"""

from setuptools import find_packages, setup

EXTRAS = {
    "triton": ["triton>=3.0"],
    "test": ["pytest>=7", "hypothesis>=6", "numpy", "triton>=3.0"],
}

setup(
    name="cringe_kernels",
    version="0.1.0",
    description="Fast, exact Cringe and Pairwise Cringe losses for PyTorch",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["cringe_kernels", "cringe_kernels.*"]),
    python_requires=">=3.9",
    install_requires=["torch>=2.4", "numpy"],
    extras_require=EXTRAS,
)
