"""Segment descriptors and gates: the 8-byte formats of the GDT, LDT and IDT (SDM vol. 3, 3.4.5
and 6.11), packed and unpacked in one place for the VMM, the fresh machine, the boot loader
and the benchmarks.

A descriptor cache is (base, limit in bytes, attr), where attr is descriptor bits 40..55: the
access byte (type, S, DPL, P) in bits 0..7, limit bits 16..19 in bits 8..11 (ignored when
packing) and the flags nibble (AVL, L, D/B, G) in bits 12..15.
"""

from __future__ import annotations

import struct

_DESCRIPTOR = struct.Struct("<HHBBBB")
_GATE = struct.Struct("<HHBBH")
ATTR_G = 0x8000  # granularity: the limit counts 4 KB pages
GATE_INTERRUPT32, GATE_TRAP32, GATE_CALL32 = 0xE, 0xF, 0xC
PRESENT = 0x80


def segment(base: int, raw_limit: int, access: int, flags: int) -> bytes:
    """A descriptor from its fields as written in a table: the 20-bit limit as stored, the
    access byte, and the flags nibble (G, D/B, L, AVL)."""
    return _DESCRIPTOR.pack(
        raw_limit & 0xFFFF,
        base & 0xFFFF,
        (base >> 16) & 0xFF,
        access & 0xFF,
        ((raw_limit >> 16) & 0xF) | (flags & 0xF) << 4,
        (base >> 24) & 0xFF,
    )


def from_cache(base: int, limit: int, attr: int) -> bytes:
    """The descriptor that loads as this cache (limit in bytes; with G, in whole pages)."""
    raw_limit = limit >> 12 if attr & ATTR_G else limit
    return segment(base, raw_limit, attr & 0xFF, attr >> 12)


def to_cache(raw: bytes) -> tuple[int, int, int]:
    """A descriptor's (base, limit in bytes, attr)."""
    lo = int.from_bytes(raw[:4], "little")
    hi = int.from_bytes(raw[4:8], "little")
    base = (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF000000)
    limit = (lo & 0xFFFF) | (hi & 0xF0000)
    attr = (hi >> 8) & 0xFFFF
    if attr & ATTR_G:
        limit = (limit << 12) | 0xFFF
    return base, limit, attr


def gate(offset: int, selector: int, kind: int, dpl: int = 0, present: bool = True) -> bytes:
    """An IDT (or call) gate: a 32-bit interrupt, trap or call gate to selector:offset."""
    access = (PRESENT if present else 0) | (dpl & 3) << 5 | kind
    return _GATE.pack(offset & 0xFFFF, selector & 0xFFFF, 0, access, (offset >> 16) & 0xFFFF)
