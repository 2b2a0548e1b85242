"""The build does what its variables say (csrc/cringe_build.py), and the sdist carries its tests.

The rebuild checks run the real setup.py and cringe_build.py on a small tree
of stubs, so that a build takes seconds: each compiled module is a one-line
C-API module (``_C_cuda`` reports the ``CRINGE_CUDA_ARCHS`` it was compiled
with), and ``CUDA_HOME`` points at a stub toolkit whose ``nvcc`` compiles the
``.cu`` stubs with the host compiler and prints a ptxas-style line per
architecture. What they check is the glue's decisions: what a build
rebuilds, drops or leaves out, and that a missing compiler does not stop it.
The sdist check packs a copy of the whole tree.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")
VARIABLES = ("CRINGE_KERNELS_SKIP_CUDA", "CRINGE_KERNELS_FORCE_CUDA", "CRINGE_CUDA_ARCH_LIST", "CUDA_HOME",
             "CUDA_PATH", "CC", "CXX", "LDSHARED")

STUBS = {
    "csrc/bindings/cpu_module.cpp": """
        #include <Python.h>
        static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C_cpu", nullptr, -1, nullptr};
        PyMODINIT_FUNC PyInit__C_cpu() { return PyModule_Create(&module); }
    """,
    "csrc/cpu/row_stats_cpu.cpp": "int cringe_stub_row_stats = 0;\n",
    "csrc/bindings/cuda_module.cpp": """
        #include <Python.h>
        extern "C" int stub_forward();
        extern "C" int stub_backward();
        static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C_cuda", nullptr, -1, nullptr};
        PyMODINIT_FUNC PyInit__C_cuda() {
          PyObject* m = PyModule_Create(&module);
          if (m != nullptr) PyModule_AddIntConstant(m, "kernels", stub_forward() + stub_backward());
          if (m != nullptr) PyModule_AddStringConstant(m, "archs", CRINGE_CUDA_ARCHS);
          return m;
        }
    """,
    "csrc/cuda/forward.cu": 'extern "C" int stub_forward() { return 1; }\n',
    "csrc/cuda/backward.cu": 'extern "C" int stub_backward() { return 1; }\n',
    "cringe_kernels/__init__.py": "",
    # nvcc's command line as cringe_build gives it; a ptxas line per -gencode
    # architecture; the object compiled by $CXX.
    "cuda/bin/nvcc": f"""
        #!{sys.executable}
        import os, subprocess, sys
        args = sys.argv[1:]
        src, out = args[args.index("-c") + 1], args[args.index("-o") + 1]
        try:
            subprocess.run([os.environ.get("CXX", "c++"), "-x", "c++", "-fPIC", "-c", src, "-o", out], check=True)
        except (OSError, subprocess.CalledProcessError) as err:
            sys.exit(f"stub nvcc: {{err}}")
        if "-MF" in args:
            with open(args[args.index("-MF") + 1], "w") as f:
                f.write(f"{{out}}: {{src}}\\n")
        for a in args:
            if a.startswith("arch=") and ",code=sm_" in a:
                print(f"ptxas info    : Compiling entry function 'stub' for '{{a.split('code=')[1]}}'")
    """,
    "cuda/include/cuda_runtime_api.h": "",
}


@pytest.fixture
def tree(tmp_path):
    """A tree of stubs with the real setup.py and csrc/cringe_build.py; its root."""
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("building the stubs needs a C++ compiler")
    for rel, text in STUBS.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    (tmp_path / "cuda" / "bin" / "nvcc").chmod(0o755)
    (tmp_path / "cuda" / "lib64").mkdir()
    (tmp_path / "cuda" / "lib64" / "libcudart_static.a").write_bytes(b"!<arch>\n")  # an empty archive
    shutil.copy(os.path.join(ROOT, "setup.py"), tmp_path)
    shutil.copy(os.path.join(ROOT, "csrc", "cringe_build.py"), tmp_path / "csrc")
    return tmp_path


def run_setup(root, *command, **variables):
    """``python setup.py <command>`` in ``root`` with only ``variables`` of the build's own set; the result."""
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env["CUDA_HOME"] = str(root / "cuda")
    env.update(variables)
    return subprocess.run([sys.executable, "setup.py", *command], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)


def build(root, *command, **variables):
    res = run_setup(root, *(command or ("build_ext", "--inplace")), **variables)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    return res


# Python code that keeps the copies under test from borrowing the modules of
# an editable install of this repository (whose finder serves a submodule
# that the copy lacks).
NO_EDITABLE_FINDER = "import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'Editable' not in repr(f)]; "


def imported(package_dir, module):
    """What ``module`` (``_C_cpu`` or ``_C_cuda``) of the package in ``package_dir`` holds: (archs, its file)."""
    code = NO_EDITABLE_FINDER + f"import cringe_kernels.{module} as m; print(getattr(m, 'archs', '-'), m.__file__)"
    res = subprocess.run([sys.executable, "-c", code], cwd=package_dir, capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(package_dir)))
    assert res.returncode == 0, res.stderr[-2000:]
    archs, path = res.stdout.split()
    assert path.startswith(str(package_dir)), path
    return archs


def test_a_new_arch_list_rebuilds_the_cuda_module(tree):
    build(tree, CRINGE_CUDA_ARCH_LIST="80")
    assert imported(tree, "_C_cuda") == "sm_80"
    build(tree, CRINGE_CUDA_ARCH_LIST="90")
    assert imported(tree, "_C_cuda") == "sm_90"
    report = (tree / "cringe_kernels" / "_C_cuda.ptxas.txt").read_text()
    assert "'sm_90'" in report and "sm_80" not in report
    res = build(tree, CRINGE_CUDA_ARCH_LIST="90")  # nothing changed: nothing rebuilt
    assert "removing" not in res.stdout and imported(tree, "_C_cuda") == "sm_90"


@pytest.mark.parametrize("inplace", [True, False])
def test_skip_cuda_drops_the_cuda_module(tree, inplace):
    command = ("build_ext", "--inplace") if inplace else ("build",)
    package = tree / "cringe_kernels" if inplace else tree / "build" / f"lib.{sysconfig.get_platform()}-" \
        f"{sys.implementation.cache_tag}" / "cringe_kernels"
    build(tree, *command)
    assert (package / f"_C_cuda{SUFFIX}").exists() and (package / "_C_cuda.ptxas.txt").exists()
    build(tree, *command, CRINGE_KERNELS_SKIP_CUDA="1")
    assert not (package / f"_C_cuda{SUFFIX}").exists() and not (package / "_C_cuda.ptxas.txt").exists()
    assert (package / f"_C_cpu{SUFFIX}").exists()
    build(tree, *command)
    assert (package / f"_C_cuda{SUFFIX}").exists()


NO_COMPILER = {"CC": "/nonexistent/cc", "CXX": "/nonexistent/c++", "LDSHARED": "/nonexistent/cc -shared"}


def test_without_a_compiler_the_package_builds_without_its_modules(tree):
    missing = NO_COMPILER
    res = build(tree, **missing)
    assert 'building extension "cringe_kernels._C_cpu" failed' in res.stderr
    assert 'building extension "cringe_kernels._C_cuda" failed' in res.stderr
    assert not list((tree / "cringe_kernels").glob("_C_*"))
    # A wheel, as pip builds it for an install.
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env.update(missing, CUDA_HOME=str(tree / "cuda"))
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                          str(tree / "dist"), str(tree)], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    (wheel,) = (tree / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "cringe_kernels/__init__.py" in names and not [n for n in names if "_C_" in n], names
    # CI (CRINGE_KERNELS_FORCE_CUDA=1) must not pass without the modules.
    assert run_setup(tree, "build_ext", "--inplace", CRINGE_KERNELS_FORCE_CUDA="1", **missing).returncode != 0


def test_a_module_that_fails_to_rebuild_is_not_left_from_the_last_build(tree):
    build(tree)
    source = tree / "csrc" / "bindings" / "cpu_module.cpp"
    source.write_text(source.read_text() + "// changed\n")
    os.utime(source, (source.stat().st_atime + 10, source.stat().st_mtime + 10))
    res = build(tree, **NO_COMPILER)
    assert 'building extension "cringe_kernels._C_cpu" failed' in res.stderr
    assert not (tree / "cringe_kernels" / f"_C_cpu{SUFFIX}").exists()


def test_info_says_why_the_compiled_backends_are_missing(tmp_path):
    shutil.copytree(os.path.join(ROOT, "cringe_kernels"), tmp_path / "cringe_kernels",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__", "*.ptxas.txt"))
    code = NO_EDITABLE_FINDER + "import runpy; runpy.run_module('cringe_kernels.info', run_name='__main__')"
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert res.returncode == 0, res.stderr[-3000:]
    rows = {line.split()[0]: line for line in res.stdout.splitlines() if line.split()}
    assert "_C_cpu is not built" in rows["cpu"] and "C++ compiler" in rows["cpu"], res.stdout
    assert "_C_cuda is not built" in rows["cuda"] and "nvcc" in rows["cuda"], res.stdout


def _tree_files(top):
    skip_dirs = {"__pycache__", ".pytest_cache", ".hypothesis", "results"}
    for d, dirs, files in os.walk(os.path.join(ROOT, top)):
        dirs[:] = [x for x in dirs if x not in skip_dirs]
        for f in files:
            if not f.endswith((".pyc", ".so", ".o")):
                yield os.path.relpath(os.path.join(d, f), ROOT)


def test_the_sdist_carries_what_its_tests_need(tmp_path):
    src = tmp_path / "tree"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "*.so", "__pycache__", ".pytest_cache", ".hypothesis", ".venv*"))
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    res = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")], cwd=src, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    (sdist,) = (tmp_path / "dist").glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    want = {"setup.py", "pyproject.toml", "README.md", "tests/conftest.py", "tests/helpers.py",
            "tests/simt/simt_runtime.cpp", "csrc/cringe_build.py"}
    for top in ("tests", "csrc", "benchmarks", "docs"):
        want.update(_tree_files(top))
    want = {w for w in want if not w.startswith(os.path.join("benchmarks", "results"))}
    assert not want - names, sorted(want - names)
    assert not [n for n in names if n.endswith((".so", ".pyc")) or n.startswith(("build/", "benchmarks/results/"))]
