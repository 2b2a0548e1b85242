"""The CUDA backend's kernels on the CPU: the ``cuda_sim`` test backend.

The shipped sources (``csrc/cuda/*.cu`` and the binding
``csrc/bindings/cuda_module.cpp``) are compiled by the host compiler against
``tests/simt``: a SIMT simulator that runs every CUDA thread as a fiber with
real block barriers and warp shuffles, plus the few CUDA runtime calls the
binding and the launchers make. The result is the ``_C_cuda`` module, built for the CPU; with
:func:`cringe_kernels.backends.cuda_backend.launchers` it becomes a backend
that runs the CUDA kernels' logic (pack walk, alignment head and tail, gates,
per-thread lists, block merges, the draw) on CPU tensors, so every CI run
checks it against the reference. Not checked here: speed, the PTX inline
assembly (``ex2.approx``; the simulator computes the same function in
C++), warp-level ``__activemask`` and anything else listed in
``tests/simt/simt_host.h``; those stay with the GPU tests.

The module is built once per source state into ``build/cuda_sim/<hash>/``
(about 15 s on two cores), under a file lock so parallel test workers share
one build. It needs a C++17 compiler (``$CXX``, default ``g++``) and the
CUDA headers (``cuda_runtime_api.h``, ``cuda_fp16.h``, ``cuda_bf16.h``) and
pybind11 (in the ``test`` extra); without them the backend reports itself
unavailable and its tests skip, unless ``CRINGE_KERNELS_FORCE_CUDA=1`` (as in
CI), which turns that into an error.

``CRINGE_KERNELS_SIM_CSRC=<dir>`` builds from another copy of ``csrc``
(test_simt_mutations.py: the kernels with a bug put in on purpose).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import shlex
import subprocess
import sys
import sysconfig

from cringe_kernels.backends import _native, cuda_backend
from cringe_kernels.backends.base import BackendStatus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIMT = os.path.join(ROOT, "tests", "simt")
CSRC = os.environ.get("CRINGE_KERNELS_SIM_CSRC") or os.path.join(ROOT, "csrc")
KERNEL_SOURCES = ["csrc/cuda/forward.cu", "csrc/cuda/backward.cu"]
HOST_SOURCES = ["csrc/bindings/cuda_module.cpp", "tests/simt/simt_runtime.cpp"]

sys.path.insert(0, os.path.join(ROOT, "csrc"))
from cringe_build import find_cuda_home  # noqa: E402

sys.path.insert(0, SIMT)
import shared_decls  # noqa: E402


def _cuda_include():
    """Directory holding the CUDA headers, or None."""
    homes = [find_cuda_home(), os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    for home in homes:
        if home and os.path.exists(os.path.join(home, "include", "cuda_runtime_api.h")):
            return os.path.join(home, "include")
    return None


def _flags(cuda_include: str, csrc: str):
    import pybind11

    return ["-O2", "-std=c++17", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wno-unknown-pragmas",
            "-DCRINGE_CUDA_ARCHS=\"simt\"", "-I", os.path.join(csrc, "include"), "-I", csrc,
            "-I", SIMT, "-I", cuda_include, "-I", pybind11.get_include(), "-I", sysconfig.get_paths()["include"]]


def _source_hash(cxx: str, flags, csrc: str) -> str:
    h = hashlib.sha256(" ".join([cxx, *flags, sys.version]).encode())
    for top in (csrc, SIMT):
        for d, _, files in sorted(os.walk(top)):
            for f in sorted(files):
                if f.endswith((".h", ".cuh", ".cu", ".cpp", ".py")):
                    with open(os.path.join(d, f), "rb") as fh:
                        h.update(f.encode() + fh.read())
    return h.hexdigest()[:16]


def _compile(cxx, flags, out_dir, sources, name):
    """Compile ``sources`` (absolute paths) in parallel into ``out_dir`` and link the shared library ``name``."""
    jobs = []
    for src in sources:
        obj = os.path.join(out_dir, name + "." + os.path.basename(src) + ".o")
        path = src
        sim = []
        if src.endswith(".cu"):
            # The .cu files see the simulator first: it replaces the CUDA
            # keywords; their __shared__ declarations are rewritten, and the
            # thread instrumentation's hooks let threads take turns at shared
            # memory accesses (tests/simt/simt_host.h). ASan excludes it.
            path = obj[:-2] + ".cpp"
            with open(src) as f, open(path, "w") as out:
                out.write(shared_decls.rewrite(f.read(), src))
            sim = ["-DCRINGE_SIMT_HOST", "-include", os.path.join(SIMT, "simt_host.h"), "-iquote",
                   os.path.dirname(src)]
            if not asan_enabled():
                sim += ["-fsanitize=thread", "--param=tsan-instrument-func-entry-exit=0"]
        cmd = [cxx, *flags, *sim, "-c", path, "-o", obj]
        jobs.append((cmd, obj, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    for cmd, _, proc in jobs:
        log, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"building the CUDA simulator failed:\n{shlex.join(cmd)}\n{log}")
    target = os.path.join(out_dir, name)
    link = [cxx, "-shared", *(f for f in flags if f.startswith("-fsanitize")), *(obj for _, obj, _ in jobs), "-o",
            target + ".tmp"]
    res = subprocess.run(link, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"linking the CUDA simulator failed:\n{shlex.join(link)}\n{res.stdout}")
    os.replace(target + ".tmp", target)


def asan_enabled() -> bool:
    """``CRINGE_KERNELS_SIM_ASAN=1``: the AddressSanitizer builds (memcheck).

    They load only into a process that has the ASan runtime preloaded
    (:func:`asan_preload`); see test_simt.py.
    """
    return os.environ.get("CRINGE_KERNELS_SIM_ASAN", "0") not in ("", "0")


def asan_preload():
    """``LD_PRELOAD`` for a process that loads the ASan builds, or None.

    The compiler's ASan runtime, and its libstdc++ next to it: torch throws
    C++ exceptions, and ASan's ``__cxa_throw`` interceptor finds the real one
    only if libstdc++ is loaded as early as the runtime.
    """
    cxx = os.environ.get("CXX", "g++")
    paths = []
    for lib in ("libasan.so", "libstdc++.so"):
        try:
            path = subprocess.run([cxx, f"-print-file-name={lib}"], capture_output=True, text=True).stdout.strip()
        except OSError:
            return None
        if not (os.path.isabs(path) and os.path.exists(path)):
            return None
        paths.append(path)
    return " ".join(paths)


def build(what: str = "module", csrc: str = CSRC) -> str:
    """Path of a simulator build, rebuilt when the sources change.

    ``what="module"``: ``_C_cuda`` from the shipped kernels and binding;
    ``what="selftest"``: the simulator's own test kernels (tests/simt/selftest.cu).
    With :func:`asan_enabled`, the AddressSanitizer build of either.
    ``csrc``: the directory that stands for the repository's ``csrc``.
    """
    cuda_include = _cuda_include()
    if cuda_include is None:
        raise RuntimeError("the CUDA headers were not found (CUDA_HOME)")
    cxx = os.environ.get("CXX", "g++")
    flags = _flags(cuda_include, csrc)
    if asan_enabled():
        flags += ["-fsanitize=address", "-fno-omit-frame-pointer", "-g"]
    out_dir = os.path.join(ROOT, "build", "cuda_sim", _source_hash(cxx, flags, csrc))
    os.makedirs(out_dir, exist_ok=True)
    if what == "module":
        name = "_C_cuda" + sysconfig.get_config_var("EXT_SUFFIX")
        sources = [os.path.join(csrc, s[len("csrc/"):]) if s.startswith("csrc/") else os.path.join(ROOT, s)
                   for s in KERNEL_SOURCES + HOST_SOURCES]
    else:
        name = "libsimt_selftest.so"
        sources = [os.path.join(SIMT, "selftest.cu"), os.path.join(SIMT, "simt_runtime.cpp")]
    target = os.path.join(out_dir, name)
    with open(os.path.join(out_dir, "lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(target):
            _compile(cxx, flags, out_dir, sources, name)
    return target


def load():
    """Import the simulator build of ``_C_cuda`` (named ``cuda_sim._C_cuda``)."""
    path = build()
    spec = importlib.util.spec_from_file_location("cuda_sim._C_cuda", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


try:
    MODULE = load()
except Exception as err:  # noqa: BLE001  reported by status(); fatal under FORCE_CUDA
    if os.environ.get("CRINGE_KERNELS_FORCE_CUDA", "0") not in ("", "0"):
        # Not an ImportError: the registry and importorskip would turn that
        # into a quiet skip, and CI must fail instead.
        raise RuntimeError(f"CRINGE_KERNELS_FORCE_CUDA=1 but the CUDA simulator module could not be built: "
                           f"{type(err).__name__}: {err}") from err
    MODULE, _REASON = None, f"the CUDA simulator module could not be built: {type(err).__name__}: {err}"
else:
    _REASON = ""

if MODULE is not None:
    _LAUNCHERS = cuda_backend.launchers(MODULE, lambda device: 0)
    OPS = _native.define_row_stats_ops("cpu", *_LAUNCHERS, name="cuda_sim")
    SINGLE_PASS_OPS = _native.define_single_pass_ops("cpu", *_LAUNCHERS, name="cuda_sim")


class SimRowStats(_native.NativeRowStats):
    """The CUDA kernels, run on CPU tensors by the SIMT simulator."""

    name = "cuda_sim"
    ops = OPS if MODULE is not None else None
    single_pass_ops = SINGLE_PASS_OPS if MODULE is not None else None

    def status(self) -> BackendStatus:
        if MODULE is None:
            return BackendStatus(self.name, False, (), _REASON)
        return BackendStatus(self.name, True, ("cpu",))

