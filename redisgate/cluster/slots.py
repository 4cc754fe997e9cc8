"""The hash slot of a key, exactly as Redis Cluster computes it (cluster.c `keyHashSlot`).

Imports only the standard library. CRC16 is the XMODEM variant of Redis's crc16.c (polynomial
0x1021, initial value 0, no reflection, no final xor), which is what `binascii.crc_hqx(data, 0)`
computes in C; `crc16_table` is the same function through Redis's 256-entry table, kept as the
readable reference and checked against it in the tests.

Hash tags: if the key contains `{`, and a `}` follows the first `{` with at least one byte
between them, only the bytes between that first `{` and the first `}` after it are hashed;
otherwise (no `{`, no `}` after it, or an empty tag `{}`) the whole key is.
"""
from __future__ import annotations

from binascii import crc_hqx

__all__ = ["SLOTS", "key_slot", "hash_tag", "crc16", "crc16_table"]

SLOTS = 16384
_MASK = SLOTS - 1


def _table() -> tuple[int, ...]:
    t = []
    for i in range(256):
        c = i << 8
        for _ in range(8):
            c = ((c << 1) ^ 0x1021) if c & 0x8000 else (c << 1)
        t.append(c & 0xFFFF)
    return tuple(t)


_TABLE = _table()


def crc16_table(data: bytes) -> int:
    """Redis crc16.c, byte by byte through the table (the reference twin of `crc16`)."""
    crc = 0
    t = _TABLE
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ t[(crc >> 8) ^ b]
    return crc


def crc16(data: bytes) -> int:
    """CRC16/XMODEM of `data` (C speed)."""
    return crc_hqx(data, 0)


def hash_tag(key: bytes) -> bytes:
    """The part of `key` Redis hashes: the non-empty `{tag}` if there is one, else the key."""
    s = key.find(b"{")
    if s >= 0:
        e = key.find(b"}", s + 1)
        if e > s + 1:
            return key[s + 1:e]
    return key


def key_slot(key: bytes) -> int:
    """The cluster slot (0..16383) of `key`."""
    s = key.find(b"{")
    if s >= 0:
        e = key.find(b"}", s + 1)
        if e > s + 1:
            return crc_hqx(key[s + 1:e], 0) & _MASK
    return crc_hqx(key, 0) & _MASK
