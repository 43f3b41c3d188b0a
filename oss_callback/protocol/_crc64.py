"""CRC-64 as OSS computes it (``x-oss-hash-crc64ecma``).

OSS's "CRC-64/ECMA-182" is, in catalogue terms, CRC-64/XZ: polynomial
``0x42F0E1EBA9EA3693`` reflected, init ``~0``, xorout ``~0``.  The byte-crunching is done
by :mod:`fastcrc` (Rust, tens of GB/s, releases the GIL); the pure-Python part here is only
``combine``, which is O(log n) polynomial arithmetic and independent of data size.
"""

from __future__ import annotations

from collections.abc import Iterable

from fastcrc import crc64 as _fastcrc64

__all__ = ["CRC64", "crc64", "crc64_combine", "crc64_combine_many"]

_POLY_REFLECTED = 0xC96C5795D7870F42
_TOP = 1 << 63  # x^0 in the reflected representation
_MASK = (1 << 64) - 1


def crc64(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """Return the CRC-64 of ``data``, continuing from ``crc`` (the CRC of what came before).

    ``crc64(b, crc64(a)) == crc64(a + b)``; ``crc64(b"") == 0``.
    """
    if crc == 0:
        return int(_fastcrc64.xz(data))
    return int(_fastcrc64.xz(data, crc))


def _multmodp(a: int, b: int) -> int:
    """Multiply polynomials ``a * b`` modulo the CRC polynomial (reflected bit order)."""
    m = _TOP
    p = 0
    while True:
        if a & m:
            p ^= b
            if (a & (m - 1)) == 0:
                break
        m >>= 1
        b = (b >> 1) ^ _POLY_REFLECTED if b & 1 else b >> 1
    return p


def _build_x2n_table() -> tuple[int, ...]:
    table = [_TOP >> 1]  # x^1
    for _ in range(1, 64):
        table.append(_multmodp(table[-1], table[-1]))
    return tuple(table)


_X2N = _build_x2n_table()  # _X2N[k] == x^(2^k) mod p


def _x8nmodp(nbytes: int) -> int:
    """Return ``x^(8 * nbytes) mod p``: the operator that appends ``nbytes`` zero bytes."""
    p = _TOP
    k = 3
    while nbytes:
        if nbytes & 1:
            p = _multmodp(_X2N[k & 63], p)
        nbytes >>= 1
        k += 1
    return p


def crc64_combine(crc1: int, crc2: int, len2: int) -> int:
    """Return the CRC-64 of ``A + B`` given ``crc64(A)``, ``crc64(B)`` and ``len(B)``.

    Same contract as zlib's ``crc32_combine`` and the official SDKs' ``crc64_combine``.
    """
    if len2 < 0:
        raise ValueError(f"len2 must be >= 0, got {len2}")
    if len2 == 0:
        return crc1 & _MASK
    return (_multmodp(_x8nmodp(len2), crc1) ^ crc2) & _MASK


def crc64_combine_many(parts: Iterable[tuple[int, int]]) -> int:
    """Combine ``(crc, length)`` pairs, in order, into the CRC of their concatenation."""
    total = 0
    for crc, length in parts:
        total = crc64_combine(total, crc, length)
    return total


class CRC64:
    """An incremental CRC-64 (hashlib-like): ``h = CRC64(); h.update(b); h.value``."""

    __slots__ = ("length", "value")

    def __init__(self, data: bytes | bytearray | memoryview = b"") -> None:
        self.value = 0
        self.length = 0
        if data:
            self.update(data)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed more bytes."""
        self.value = crc64(data, self.value)
        self.length += len(data)

    def __repr__(self) -> str:
        return f"CRC64(value={self.value}, length={self.length})"
