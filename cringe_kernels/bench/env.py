"""Environment facts recorded with every result: what was measured where."""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from typing import Dict, Optional

import torch


def _run(cmd, cwd=None) -> Optional[str]:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (affinity), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def git_commit(path: Optional[str] = None) -> Dict[str, Optional[str]]:
    """Commit of the working tree at ``path`` (default: this package's), and whether it is dirty."""
    path = path or os.path.dirname(os.path.abspath(__file__))
    commit = _run(["git", "rev-parse", "HEAD"], cwd=path)
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path)
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def _slug(text: str) -> str:
    text = re.sub(r"\((r|tm|c)\)", "", text.lower())
    text = re.sub(r"\b(processor|cpu|corporation|@.*)\b", "", text)
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:48] or "unknown"


def device_tag(device) -> str:
    """A short folder name for results: ``cuda-nvidia-h100-80gb-hbm3``, ``cpu-intel-xeon-2c``."""
    device = torch.device(device)
    if device.type == "cuda":
        return "cuda-" + _slug(torch.cuda.get_device_name(device))
    return f"{device.type}-{_slug(cpu_model())}-{usable_cores()}c"


def collect(device) -> Dict:
    """Everything worth knowing to read a result later.

    Returns
    -------
    dict
        Device name, driver, torch/triton/CUDA versions, Python, git commit,
        date (UTC), CPU model, cores, torch threads, load average, and the
        ``CRINGE_KERNELS_*`` settings in effect (the kernels' tuning knobs:
        a result is read with the configuration that produced it).
    """
    device = torch.device(device)
    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "device_tag": device_tag(device),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        info["load_average_start"] = os.getloadavg()
    except OSError:  # pragma: no cover
        info["load_average_start"] = None
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:
        info["triton"] = None
    try:
        import liger_kernel  # noqa: F401
        from importlib.metadata import version

        info["liger_kernel"] = version("liger_kernel")
    except Exception:
        info["liger_kernel"] = None
    try:
        from .. import __version__

        info["cringe_kernels"] = __version__
    except Exception:  # pragma: no cover
        info["cringe_kernels"] = None
    info.update({f"git_{k}": v for k, v in git_commit().items()})
    info["settings"] = {k: v for k, v in sorted(os.environ.items()) if k.startswith("CRINGE_KERNELS_")}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["device_name"] = props.name
        info["device_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["compute_capability"] = f"{props.major}.{props.minor}"
        info["sm_count"] = props.multi_processor_count
        index = device.index if device.index is not None else torch.cuda.current_device()
        info["driver"] = _run(["nvidia-smi", f"--id={index}", "--query-gpu=driver_version",
                               "--format=csv,noheader"])
        info["cudnn"] = torch.backends.cudnn.version()
    else:
        info["device_name"] = cpu_model()
        info["driver"] = None
    return info
