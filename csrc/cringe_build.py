"""setuptools glue for the torch-free compiled modules of cringe_kernels.

``cringe_kernels._C_cpu`` (C++17 + OpenMP + pybind11) is always built.
``cringe_kernels._C_cuda`` is built when nvcc is found: the ``.cu`` files are
compiled by nvcc (through ninja when it is installed, else one by one), the
pybind11 binding by the host compiler, and the CUDA runtime is linked
statically, so the module imports on machines without a GPU or driver and
does not depend on the CUDA build of torch.

The package's pure-PyTorch and Triton backends need no compiler, so a
missing toolchain does not stop the install: without a C++ compiler
(``$CC``/``$CXX`` or Python's configured ones not installed) ``_C_cpu`` is
optional, and ``_C_cuda`` always is (an nvcc that cannot build, e.g. for an
unsupported host compiler); the build warns, the package installs without
the module, and ``python -m cringe_kernels.info`` names what is missing.
Where a compiler exists, a ``_C_cpu`` that does not compile fails the build,
and ``CRINGE_KERNELS_FORCE_CUDA=1`` (CI) makes both modules required.

Every build leaves exactly the modules it built: one it skipped
(``CRINGE_KERNELS_SKIP_CUDA=1``) or failed to build is removed from the
build directory (which a wheel packs) and, for in-place and editable
builds, from the package sources, with its ptxas report. ``_C_cuda`` is
rebuilt whenever its nvcc command or compile flags change (a new
``CRINGE_CUDA_ARCH_LIST``), not only when a source is newer.

Environment variables
---------------------
CRINGE_CUDA_ARCH_LIST
    Semicolon (or comma) separated SM versions, default ``"80;90"``. SASS is
    built for each, plus PTX of the highest for newer GPUs.
CRINGE_KERNELS_SKIP_CUDA=1
    Do not build ``_C_cuda`` even if nvcc exists.
CRINGE_KERNELS_FORCE_CUDA=1
    Fail the build when nvcc is missing or either module fails to compile
    (CI uses this).
CUDA_HOME / CUDA_PATH
    CUDA toolkit root (default: the toolkit of ``nvcc`` on PATH, else
    ``/usr/local/cuda``).
MAX_JOBS
    Parallel nvcc jobs under ninja (default 2).

The ptxas resource report (``-Xptxas -v``: registers, shared memory and
spills per kernel) is saved next to the built module as
``cringe_kernels/_C_cuda.ptxas.txt``; ``tests/test_cuda_build.py`` reads it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess

from setuptools import Extension
from setuptools.command.build_ext import build_ext
from setuptools.errors import CompileError

PTXAS_REPORT = "_C_cuda.ptxas.txt"
CUDA_SOURCES = ["csrc/cuda/forward.cu", "csrc/cuda/backward.cu"]
MODULES = ("cringe_kernels._C_cpu", "cringe_kernels._C_cuda")


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0", "false", "False")


def find_host_compilers() -> bool:
    """Whether the C and C++ compilers setuptools will call are installed."""
    import sysconfig

    for var, default in (("CC", "cc"), ("CXX", "c++")):
        cmd = os.environ.get(var) or sysconfig.get_config_var(var) or default
        words = shlex.split(cmd)
        if not words or shutil.which(words[0]) is None:
            return False
    return True


def find_cuda_home():
    """CUDA toolkit root holding ``bin/nvcc`` and ``include/cuda_runtime_api.h``, or None."""

    def ok(home):
        return bool(home) and all(
            os.path.exists(os.path.join(home, *p)) for p in (("bin", "nvcc"), ("include", "cuda_runtime_api.h")))

    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:  # may be a wrapper script outside the toolkit; then it fails ok()
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for home in candidates:
        if ok(home):
            return home
    return None


def cuda_arch_list():
    """SM versions from CRINGE_CUDA_ARCH_LIST, e.g. ``["80", "90"]``."""
    raw = os.environ.get("CRINGE_CUDA_ARCH_LIST", "80;90")
    archs = [a.strip().replace(".", "").replace("sm_", "") for a in raw.replace(",", ";").split(";") if a.strip()]
    if not archs or not all(a.rstrip("a").isdigit() for a in archs):
        raise RuntimeError(f"CRINGE_CUDA_ARCH_LIST must look like '80;90'; got {raw!r}")
    return archs


def _nvcc_flags(include_dirs, archs):
    flags = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden", "-Xptxas", "-v", "-lineinfo"]
    for a in archs:
        flags += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    top = archs[-1]
    flags += ["-gencode", f"arch=compute_{top},code=compute_{top}"]
    for d in include_dirs:
        flags += ["-I", d]
    return flags


class BuildExt(build_ext):
    """build_ext that first compiles an extension's ``cuda_sources`` with nvcc
    and leaves no module from an earlier build that this one did not make."""

    def initialize_options(self):
        super().initialize_options()
        self._failed = set()  # extensions whose build raised

    def run(self):
        self._failed = set()
        super().run()
        in_sources = self.inplace or getattr(self, "editable_mode", False)
        build_py = self.get_finalized_command("build_py")
        made = {ext.name for ext in self.extensions} - self._failed
        for name in MODULES:
            if name not in made:
                self._drop(name, build_py if in_sources else None)
        # In-place and editable builds copy only the .so into the source
        # package (setuptools builds them with inplace switched off); put the
        # report beside it too.
        if in_sources:
            for name, text in getattr(self, "_reports", {}).items():
                if name in made:
                    self._write_report(self._package_dir(build_py, name), text)

    @staticmethod
    def _package_dir(build_py, name):
        return os.path.abspath(build_py.get_package_dir(name.rpartition(".")[0]))

    def _drop(self, name, build_py=None):
        """Remove module ``name`` and its ptxas report from the build directory
        and, given ``build_py``, from the package sources."""
        filename = self.get_ext_filename(name)
        dirs = [os.path.dirname(os.path.join(self.build_lib, filename))]
        if build_py is not None:
            dirs.append(self._package_dir(build_py, name))
        for d in dirs:
            for f in (os.path.basename(filename), PTXAS_REPORT if name.endswith("_C_cuda") else None):
                if f and os.path.exists(os.path.join(d, f)):
                    print(f"removing {os.path.join(d, f)}: this build did not make {name}")
                    os.remove(os.path.join(d, f))

    @staticmethod
    def _write_report(out_dir, text):
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, PTXAS_REPORT), "w") as f:
            f.write(text)

    def build_extension(self, ext):
        # setuptools skips a failed optional extension with a warning; its
        # output from an earlier build must not be shipped instead.
        try:
            cuda_sources = getattr(ext, "cuda_sources", None)
            if cuda_sources:
                ext.extra_objects = list(ext.extra_objects or []) + self._compile_cuda(ext, cuda_sources)
            super().build_extension(ext)
        except Exception:
            self._failed.add(ext.name)
            self._drop(ext.name)
            raise

    def _compile_cuda(self, ext, sources):
        nvcc = os.path.join(ext.cuda_home, "bin", "nvcc")
        build_dir = os.path.abspath(os.path.join(self.build_temp, "cuda"))
        os.makedirs(build_dir, exist_ok=True)
        flags = _nvcc_flags([os.path.abspath(d) for d in ext.include_dirs], ext.cuda_archs)
        self._relink_if_configuration_changed(ext, build_dir, [nvcc, *flags, "|", *ext.extra_compile_args])
        objects = [os.path.join(build_dir, os.path.basename(s) + ".o") for s in sources]
        ninja = shutil.which("ninja")
        if ninja:
            self._compile_with_ninja(ninja, nvcc, flags, sources, objects, build_dir)
        else:
            for src, obj in zip(sources, objects):
                cmd = [nvcc, *flags, "-c", os.path.abspath(src), "-o", obj]
                print(" ".join(shlex.quote(c) for c in cmd))
                try:
                    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                except OSError as err:
                    raise CompileError(f"nvcc could not run on {src}: {err}") from err
                with open(obj + ".ptxas", "w") as f:
                    f.write(res.stdout)
                if res.returncode != 0:
                    raise CompileError(f"nvcc failed on {src}:\n{res.stdout}")
        report = []
        for src, obj in zip(sources, objects):
            with open(obj + ".ptxas") as f:
                report.append(f"== {src} ==\n{f.read()}")
        text = f"# nvcc {' '.join(flags)}\n" + "\n".join(report)
        self._write_report(os.path.dirname(os.path.abspath(self.get_ext_fullpath(ext.name))), text)
        self._reports = getattr(self, "_reports", {})
        self._reports[ext.name] = text
        return objects

    def _relink_if_configuration_changed(self, ext, build_dir, command):
        """Remove the built module when ``command`` (nvcc, its flags and the
        binding's flags) differs from the last build's: setuptools relinks
        only a missing module or one older than a source, and ninja reruns
        nvcc on a changed command but does not relink."""
        stamp = os.path.join(build_dir, "configuration.txt")
        text = "\n".join(command) + "\n"
        if os.path.exists(stamp):
            with open(stamp) as f:
                if f.read() == text:
                    return
        target = self.get_ext_fullpath(ext.name)
        if os.path.exists(target):
            print(f"removing {target}: its nvcc command or compile flags changed")
            os.remove(target)
        with open(stamp, "w") as f:
            f.write(text)

    @staticmethod
    def _compile_with_ninja(ninja, nvcc, flags, sources, objects, build_dir):
        q = " ".join(shlex.quote(f) for f in flags)
        lines = [
            "ninja_required_version = 1.3",
            "rule nvcc",
            # Keep each file's ptxas report (and show it when nvcc fails).
            f"  command = {shlex.quote(nvcc)} {q} -MD -MF $out.d -c $in -o $out > $out.ptxas 2>&1"
            " || { cat $out.ptxas; exit 1; }",
            "  depfile = $out.d",
            "  deps = gcc",
            "  description = nvcc $in",
        ]
        for src, obj in zip(sources, objects):
            lines.append(f"build {obj}: nvcc {os.path.abspath(src)}")
        with open(os.path.join(build_dir, "build.ninja"), "w") as f:
            f.write("\n".join(lines) + "\n")
        jobs = os.environ.get("MAX_JOBS", "2")
        if subprocess.run([ninja, "-C", build_dir, "-j", jobs]).returncode != 0:
            raise CompileError("nvcc failed (the log is above)")


def compiled_extensions(root: str) -> dict:
    """``ext_modules`` and ``cmdclass`` for setup(); ``root`` is the repository root."""
    import pybind11

    rel = os.path.relpath
    # setuptools relinks only when a source or one of these is newer than the
    # module; nvcc objects are tracked by ninja's depfiles.
    depends = sorted(rel(os.path.join(d, f)) for d, _, files in os.walk(os.path.join(root, "csrc"))
                     for f in files if f.endswith((".h", ".cuh", ".cu", ".cpp")))
    include = [rel(os.path.join(root, "csrc", "include")), rel(os.path.join(root, "csrc")), pybind11.get_include()]
    cpu = Extension(
        "cringe_kernels._C_cpu",
        sources=[rel(os.path.join(root, p)) for p in ("csrc/bindings/cpu_module.cpp", "csrc/cpu/row_stats_cpu.cpp")],
        include_dirs=include,
        depends=depends,
        # -fno-trapping-math lets GCC if-convert the NaN/inf selects and
        # vectorise the exp loops; unlike -ffast-math it keeps IEEE NaN and
        # inf semantics (and sets no flush-to-zero mode at load time).
        extra_compile_args=["-O3", "-std=c++17", "-fopenmp", "-fvisibility=hidden", "-fno-trapping-math",
                            "-fno-math-errno"],
        extra_link_args=["-fopenmp"],
        language="c++",
        optional=not (find_host_compilers() or _flag("CRINGE_KERNELS_FORCE_CUDA")),
    )
    ext_modules = [cpu]

    cuda_home = find_cuda_home()
    if _flag("CRINGE_KERNELS_FORCE_CUDA") and cuda_home is None:
        raise RuntimeError("CRINGE_KERNELS_FORCE_CUDA=1 but nvcc was not found (set CUDA_HOME)")
    if cuda_home is not None and not _flag("CRINGE_KERNELS_SKIP_CUDA"):
        lib_dir = os.path.join(cuda_home, "lib64")
        if not os.path.exists(os.path.join(lib_dir, "libcudart_static.a")):
            lib_dir = os.path.join(cuda_home, "targets", "x86_64-linux", "lib")
        archs = cuda_arch_list()
        ext = Extension(
            "cringe_kernels._C_cuda",
            sources=[rel(os.path.join(root, "csrc/bindings/cuda_module.cpp"))],
            include_dirs=include + [os.path.join(cuda_home, "include")],
            depends=depends,
            library_dirs=[lib_dir],
            # The static runtime: the module needs no libcudart.so at run time.
            libraries=["cudart_static", "rt", "pthread", "dl"],
            extra_compile_args=["-O2", "-std=c++17", "-fvisibility=hidden",
                                f"-DCRINGE_CUDA_ARCHS=\"{','.join('sm_' + a for a in archs)}\""],
            language="c++",
            optional=not _flag("CRINGE_KERNELS_FORCE_CUDA"),
        )
        ext.cuda_sources = [rel(os.path.join(root, s)) for s in CUDA_SOURCES]
        ext.cuda_home = cuda_home
        ext.cuda_archs = archs
        ext_modules.append(ext)
    return {"ext_modules": ext_modules, "cmdclass": {"build_ext": BuildExt}}
