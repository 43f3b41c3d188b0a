"""The progress display of ``oss-callback upload`` and ``demo``: a rich bar on a TTY, plain
lines otherwise (at most one a second, or every 10%)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["ProgressDisplay"]


class ProgressDisplay:
    """A rich progress bar on a TTY, plain lines otherwise.

    ``with ProgressDisplay(label, stream, quiet) as progress:`` gives the
    ``progress(done, total)`` callback that ``resumable_upload`` takes.
    """

    def __init__(self, label: str, stream: TextIO, quiet: bool) -> None:
        self.label = label
        self.stream = stream
        self.quiet = quiet
        self._rich: Any = None
        self._task: Any = None
        self._last = 0.0
        self._last_pct = -1
        self._last_done = -1

    def __enter__(self) -> Callable[[int, int | None], None]:
        if self.quiet:
            return lambda done, total: None
        if self.stream.isatty():
            try:
                from rich.progress import (
                    BarColumn,
                    DownloadColumn,
                    Progress,
                    TimeRemainingColumn,
                    TransferSpeedColumn,
                )
            except ImportError:
                pass
            else:
                self._rich = Progress(
                    "[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(),
                    console=None, transient=False,
                )
                self._rich.__enter__()
                self._task = self._rich.add_task(self.label, total=None)
        return self.update

    def update(self, done: int, total: int | None) -> None:
        if self._rich is not None:
            self._rich.update(self._task, completed=done, total=total)
            return
        now = time.monotonic()
        pct = int(done * 100 / total) if total else 0
        if done == 0 or (done, pct) == (self._last_done, self._last_pct):
            return
        if done == total or now - self._last >= 1.0 or pct >= self._last_pct + 10:
            self._last_done = done
            self._last, self._last_pct = now, pct
            print(f"{self.label}: {done}/{total if total is not None else '?'} bytes ({pct}%)",
                  file=self.stream, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self._rich.__exit__(None, None, None)
