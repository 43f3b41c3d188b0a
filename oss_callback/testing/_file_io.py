"""Reading and copying byte ranges of files: a GET's chunks, a multipart object's segments
assembled into one file."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["copy_bytes", "iter_file"]

_COPY_BUFFER = 1 << 20


def copy_bytes(src_fd: int, out: Any, size: int) -> None:
    """Append ``size`` bytes of ``src_fd`` (from its offset) to the file ``out``
    (``copy_file_range`` where it works, else read and write)."""
    copy_range = getattr(os, "copy_file_range", None)
    if copy_range is not None:
        out.flush()
        remaining = size
        try:
            while remaining:
                n = copy_range(src_fd, out.fileno(), remaining)
                if n == 0:
                    break
                remaining -= n
        except OSError:
            pass
        else:
            if remaining == 0:
                return
        os.lseek(src_fd, size - remaining, os.SEEK_SET)
        size = remaining
    while size:
        chunk = os.read(src_fd, min(_COPY_BUFFER, size))
        if not chunk:
            raise OSError("part file is shorter than recorded")
        out.write(chunk)
        size -= len(chunk)


def iter_file(path: Path, start: int, length: int, chunk: int = 1 << 18) -> Iterator[bytes]:
    """Read ``length`` bytes of ``path`` from ``start``, in chunks."""
    with open(path, "rb") as f:
        f.seek(start)
        while length > 0:
            data = f.read(min(chunk, length))
            if not data:
                return
            length -= len(data)
            yield data
