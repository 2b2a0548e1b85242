"""``python -m cringe_kernels.info``: which backends are built and can run here."""

from __future__ import annotations

import platform

import torch

from . import __version__
from .backends import PUBLIC_BACKENDS, available_backends, backend_info


def format_table() -> str:
    """The backend table as text: name, installed, runs on, why not."""
    rows = [("backend", "installed", "runs on", "notes")]
    for name, st in backend_info().items():
        rows.append((name, "yes" if st.installed else "no", ", ".join(st.devices) or "-", st.reason))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


def main() -> None:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    print(f"cringe_kernels {__version__} | torch {torch.__version__} | python {platform.python_version()} | GPU: {gpu}")
    print(format_table())
    for device in ("cpu",) + (("cuda",) if torch.cuda.is_available() else ()):
        print(f'backend="auto" on {device}: {available_backends(device)[0]}')
    assert set(backend_info()) == set(PUBLIC_BACKENDS)


if __name__ == "__main__":
    main()
