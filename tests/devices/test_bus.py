"""The device bus: named regions, conflicts, region-relative offsets, split and whole accesses."""

from __future__ import annotations

import pytest

from ring1.runtime.devices.bus import Bus, BusConflict


class Recorder:
    """A device that answers with its offset and records every access it sees."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        self.seen.append(("r", offset, size, 0))
        return 0xA0 + offset

    def write(self, offset: int, size: int, value: int) -> None:
        self.seen.append(("w", offset, size, value))


def test_devices_see_offsets_in_their_region() -> None:
    bus, dev = Bus(), Recorder()
    bus.map_ports("chip", 0x40, 4, dev)
    assert bus.io_in(0x42, 1) == 0xA2
    bus.io_out(0x43, 1, 0x1FF)  # an 8-bit OUT carries only its low byte
    assert dev.seen == [("r", 2, 1, 0), ("w", 3, 1, 0xFF)]
    assert bus.region_of_port(0x43).name == "chip" and bus.region_of_port(0x44) is None


def test_wide_accesses_to_byte_chips_are_byte_accesses_across_regions() -> None:
    bus, a, b = Bus(), Recorder(), Recorder()
    bus.map_ports("a", 0x60, 2, a)
    bus.map_ports("b", 0x62, 2, b)
    assert bus.io_in(0x61, 2) == 0xA0 << 8 | 0xA1  # port 0x61 (a, offset 1) then 0x62 (b, offset 0)
    bus.io_out(0x63, 4, 0x44332211)  # 0x63 in b, 0x64-0x66 on no chip: dropped
    assert b.seen[-1] == ("w", 1, 1, 0x11) and len(b.seen) == 2
    assert bus.io_in(0x5F, 2) == 0xA0 << 8 | 0xFF  # a port nobody claims floats high


def test_whole_regions_take_the_access_with_its_size() -> None:
    bus, dev = Bus(), Recorder()
    bus.map_ports("status", 0xF4, 1, dev, split=False)
    bus.io_out(0xF4, 4, 0x12345678)
    assert bus.io_in(0xF4, 2) == 0xA0
    assert dev.seen == [("w", 0, 4, 0x12345678), ("r", 0, 2, 0)]
    assert bus.io_counts[(0xF4, "out")] == 1 and bus.io_by_port() == {"0xf4": {"in": 1, "out": 1}}


@pytest.mark.parametrize(
    ("base", "length", "message"),
    [(0x3FC, 8, r"overlaps COM1 \[0x3f8-0x3ff\]"), (0x3F0, 9, "overlaps COM1"), (0xFFFF, 2, "out of range")],
)
def test_conflicting_regions_are_reported_with_both_names(base: int, length: int, message: str) -> None:
    bus = Bus()
    bus.map_ports("COM1", 0x3F8, 8, Recorder())
    with pytest.raises(BusConflict, match=message):
        bus.map_ports("COM1b", base, length, Recorder())
    with pytest.raises(BusConflict, match="taken"):
        bus.map_ports("COM1", 0x2F8, 8, Recorder())
    bus.map_ports("below", 0x3F0, 8, Recorder())  # adjacent regions are fine
    assert [r.name for r in bus.ports.regions] == ["below", "COM1"]


def test_mmio_regions() -> None:
    bus, dev = Bus(), Recorder()
    bus.map_mmio("apic", 0xFEE00000, 0x1000, dev)
    assert bus.mmio_read(0xFEE00020, 4) == 0xA0 + 0x20
    bus.mmio_write(0xFEE000B0, 4, 0)
    assert dev.seen[-1] == ("w", 0xB0, 4, 0)
    assert bus.mmio_read(0xFEC00000, 4) == 0xFFFFFFFF  # unclaimed: all ones
    with pytest.raises(BusConflict):
        bus.map_mmio("apic2", 0xFEE00800, 0x1000, Recorder())
