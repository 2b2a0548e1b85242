"""A progress bar without dependencies (``tqdm`` when it is installed).

On a terminal it redraws one line; otherwise (a log file, CI) it prints one
line per finished task, so a raw log shows every measurement as it happens.
"""

from __future__ import annotations

import sys
import time


class Progress:
    """Counts finished tasks out of ``total``.

    Parameters
    ----------
    total : int
    enabled : bool
        False prints nothing.
    stream : file, optional
        Default ``sys.stderr``.
    """

    WIDTH = 28

    def __init__(self, total: int, enabled: bool = True, stream=None):
        self.total = max(0, total)
        self.done = 0
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._tqdm = None
        if enabled and self.tty:
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self._tqdm = tqdm(total=self.total, file=self.stream, dynamic_ncols=True, leave=True)

    def bar(self) -> str:
        """The text bar, e.g. ``[#######.....] 12/40``."""
        filled = int(self.WIDTH * self.done / self.total) if self.total else self.WIDTH
        return f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {self.done}/{self.total}"

    def update(self, label: str, result: str = "") -> None:
        """Mark one task finished; ``label`` names it, ``result`` is its outcome."""
        self.done += 1
        if not self.enabled:
            return
        if self._tqdm is not None:
            self._tqdm.set_postfix_str(f"{label} {result}"[:60], refresh=False)
            self._tqdm.update(1)
            return
        elapsed = time.perf_counter() - self.start
        if self.tty:
            line = f"\r{self.bar()} {elapsed:6.0f}s {label} {result}"
            self.stream.write(line[:160].ljust(160)[:160])
        else:
            self.stream.write(f"{self.bar()} {elapsed:6.1f}s {label} {result}\n")
        self.stream.flush()

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
        elif self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
