"""A name whose CRC32 (after a given prefix) is a chosen value: CRC32 is affine over GF(2),
so four free bytes solve it. For tests that a listing check is not a CRC."""

from __future__ import annotations

import zlib


def _solve(rows: list[int], target: int) -> int | None:
    """x (32 bits) with the XOR of rows[i] over the set bits i of x equal to target."""
    basis: list[tuple[int, int]] = []  # (vector, combination of rows)
    for i, row in enumerate(rows):
        v, c = row, 1 << i
        for bv, bc in basis:
            if v ^ bv < v:
                v, c = v ^ bv, c ^ bc
        if v:
            basis.append((v, c))
            basis.sort(reverse=True)
    v, c = target, 0
    for bv, bc in basis:
        if v ^ bv < v:
            v, c = v ^ bv, c ^ bc
    return c if v == 0 else None


def forge(prefix: bytes, stem: bytes, target: int) -> bytes:
    """stem (+ a number) + 4 alphanumeric bytes with crc32(prefix + name) == target."""
    for extra in range(100_000):
        head = prefix + stem + (b"%d" % extra if extra else b"")
        base = zlib.crc32(head + b"\0\0\0\0")
        rows = [zlib.crc32(head + (1 << i).to_bytes(4, "little")) ^ base for i in range(32)]
        x = _solve(rows, target ^ base)
        if x is None:
            continue
        tail = x.to_bytes(4, "little")
        if all(chr(c).isascii() and chr(c).isalnum() for c in tail):
            name = head[len(prefix):] + tail
            assert zlib.crc32(prefix + name) == target
            return name
    raise AssertionError("no name found")
