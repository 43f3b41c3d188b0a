"""How a big object is cut into parts, and how many go at once: the part size
(:func:`choose_part_size`), the plan (:func:`plan_parts`), the concurrency bounds, and which
failure a group of part workers reports (:func:`root_cause`). The resumable upload and the
multipart copy both use them.
"""

from __future__ import annotations

import math
import sys

import anyio

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_PART_SIZE",
    "MAX_CONCURRENCY",
    "choose_part_size",
    "plan_parts",
    "root_cause",
]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
MIN_PART_SIZE = 100 * KiB
MAX_PART_SIZE = 5 * GiB
MAX_PARTS = 10_000
#: Defaults chosen from the scaling table in ``benchmarks/RESULTS.md`` (1 GiB into the
#: nginx sink, 2 cores): 1 MiB parts are 2-3x slower (per-request cost); every 8 and 32 MiB
#: cell lies within 0.45-0.95 s, run-to-run noise included, and 8 MiB re-sends 4x less than
#: 32 MiB when a part is retried or resumed. On loopback one stream already saturates the
#: two cores, so concurrency shows no gain there; 4 in flight hide the per-request latency
#: of real links (tens of ms per OSS round trip). A part in flight holds a 1 MiB buffer at most.
DEFAULT_PART_SIZE = 8 * MiB
DEFAULT_CONCURRENCY = 4
MAX_CONCURRENCY = 256


def choose_part_size(size: int, part_size: int | None = None) -> int:
    """The part size for a ``size``-byte file: validated if given, else automatic.

    Automatic: :data:`DEFAULT_PART_SIZE`, grown (rounded up to whole KiB) just enough that
    the file needs at most 10,000 parts; ``ceil`` keeps that true for every size up to
    10,000 x 5 GiB.

    Raises:
        ValueError: a given part size out of 100 KiB..5 GiB, one that needs more than 10,000
            parts, or a file too large for OSS.
    """
    if size < 0:
        raise ValueError("size must be >= 0")
    if size > MAX_PARTS * MAX_PART_SIZE:
        raise ValueError(f"{size} bytes is more than OSS allows in one object (10,000 x 5 GiB)")
    if part_size is None:
        needed = math.ceil(size / MAX_PARTS)
        needed = math.ceil(needed / KiB) * KiB
        return min(max(DEFAULT_PART_SIZE, needed), MAX_PART_SIZE)
    if isinstance(part_size, bool) or not isinstance(part_size, int):
        raise TypeError(f"part_size must be an int (bytes), got {type(part_size).__name__}")
    if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
        raise ValueError(
            f"part_size must be between 100 KiB ({MIN_PART_SIZE}) and 5 GiB ({MAX_PART_SIZE}) "
            f"bytes, got {part_size}"
        )
    if math.ceil(size / part_size) > MAX_PARTS:
        minimum = math.ceil(size / MAX_PARTS)
        raise ValueError(
            f"part_size {part_size} would need {math.ceil(size / part_size)} parts for "
            f"{size} bytes; OSS allows 10,000: use part_size >= {minimum} (or None for automatic)"
        )
    return part_size


def plan_parts(size: int, part_size: int) -> list[tuple[int, int, int]]:
    """``(part_number, offset, length)`` for every part, covering each byte exactly once."""
    return [
        (i + 1, offset, min(part_size, size - offset))
        for i, offset in enumerate(range(0, size, part_size))
    ]


def root_cause(group: BaseExceptionGroup[BaseException]) -> BaseException:
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    cancel = anyio.get_cancelled_exc_class()
    for exc in leaves:
        if not isinstance(exc, cancel):
            return exc
    return leaves[0] if leaves else group
