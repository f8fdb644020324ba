"""Segment descriptors and gates (ring1.runtime.cpu.descriptors), against the SDM's layouts."""

from __future__ import annotations

from ring1.runtime.cpu import descriptors


def test_flat_code_segment() -> None:
    raw = descriptors.segment(0, 0xFFFFF, 0x9B, 0xC)
    assert raw == bytes.fromhex("ffff0000009bcf00")
    assert descriptors.to_cache(raw) == (0, 0xFFFFFFFF, 0xCF9B)


def test_cache_round_trip_with_and_without_granularity() -> None:
    for base, limit, attr in ((0x12345678, 0x67, 0x008B), (0xC0000000, 0x3FFFFFFF, 0xC093), (0x10, 0xFFFF, 0x00F3)):
        raw = descriptors.from_cache(base, limit, attr)
        got = descriptors.to_cache(raw)
        assert (got[0], got[1], got[2] & 0xF0FF) == (base, limit, attr)


def test_gates() -> None:
    interrupt = descriptors.gate(0x12345678, 0x08, descriptors.GATE_INTERRUPT32)
    assert interrupt == bytes.fromhex("7856 0800 00 8e 3412")
    call = descriptors.gate(0x1000, 0x08, descriptors.GATE_CALL32, dpl=3)
    assert call[5] == 0xEC and descriptors.gate(0, 0x10, descriptors.GATE_TRAP32, present=False)[5] == 0x0F
