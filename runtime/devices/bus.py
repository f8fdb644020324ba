"""The device bus: port and MMIO regions registered by name, accesses routed to them.

A device registers a region (a name, a base, a length) and sees offsets relative to its base,
as a chip sees its address lines; it never learns where the platform put it. Two regions that
overlap are a mistake of whoever builds the platform, reported with both names when the second
one is registered.

Ports: the x86 I/O space is 64 K byte ports. A region declares how it is accessed:
- `split=True` (8-bit chips on an ISA bus, such as the 16550): a 16- or 32-bit IN or OUT is that
  many byte accesses at consecutive ports, each routed on its own (so a word access that spans
  two regions reaches both);
- `split=False`: the region takes the access whole, with its size (the exit port's status).
A port no region claims floats high on reads and ignores writes, as an empty ISA bus does.
Every IN and OUT is counted per port (the port the instruction named) and direction, for
`ring1 run --stats`.

MMIO: regions of physical addresses, accessed whole with their size; an address no region
claims reads as all ones and ignores writes. The memory system routes physical addresses that
are not RAM here.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from ring1.runtime.cpu.machine import Platform
from ring1.runtime.ledger import NO_LEDGER, NoLedger

PORT_SPACE = 0x10000


class BusDevice(Protocol):
    """What a device on the bus implements: reads and writes at offsets within its region."""

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


class BusConflict(ValueError):
    """Two regions claim the same port or address."""


@dataclass(frozen=True)
class Region:
    name: str
    base: int
    length: int
    device: BusDevice
    split: bool = True  # ports: a wide access is byte accesses at consecutive ports

    @property
    def end(self) -> int:
        return self.base + self.length

    def __str__(self) -> str:
        return f"{self.name} [{self.base:#x}-{self.end - 1:#x}]"


class _RegionMap:
    """Non-overlapping regions sorted by base, found by bisection."""

    def __init__(self, space: str, limit: int) -> None:
        self.space = space
        self.limit = limit
        self.regions: list[Region] = []
        self._bases: list[int] = []

    def add(self, region: Region) -> None:
        if region.length <= 0 or region.base < 0 or region.end > self.limit:
            raise BusConflict(f"{self.space} region {region.name}: {region.base:#x}+{region.length:#x} is out of range")
        for other in self.regions:
            if other.name == region.name:
                raise BusConflict(f"{self.space} region name {region.name!r} is taken by {other}")
            if region.base < other.end and other.base < region.end:
                raise BusConflict(f"{self.space} region {region} overlaps {other}")
        i = bisect.bisect_left(self._bases, region.base)
        self.regions.insert(i, region)
        self._bases.insert(i, region.base)

    def find(self, address: int) -> Region | None:
        i = bisect.bisect_right(self._bases, address) - 1
        if i >= 0 and address < self.regions[i].end:
            return self.regions[i]
        return None


class Bus(Platform):
    """The I/O and MMIO bus every engine calls (the interpreter from IN/OUT, the VMM from its
    callouts and unicorn's I/O hooks): one routing for all modes."""

    def __init__(self) -> None:
        self.ports = _RegionMap("port", PORT_SPACE)
        self.mmio = _RegionMap("MMIO", 1 << 32)
        self.io_counts: Counter[tuple[int, str]] = Counter()  # (port, "in" | "out") -> operations
        # Ports and MMIO addresses no device claims, by first access (a missing device shows
        # in `ring1 run --stats` instead of failing silently): address -> "in 1" / "out 2"...
        self.unclaimed_ports: dict[int, str] = {}
        self.unclaimed_mmio: dict[int, str] = {}
        self.ledger: NoLedger = NO_LEDGER  # time by device (`ring1 run --stats`, `ring1 bench boot`)

    def map_ports(self, name: str, base: int, length: int, device: BusDevice, *, split: bool = True) -> Region:
        region = Region(name, base, length, device, split)
        self.ports.add(region)
        return region

    def map_mmio(self, name: str, base: int, length: int, device: BusDevice) -> Region:
        region = Region(name, base, length, device, split=False)
        self.mmio.add(region)
        return region

    def region_of_port(self, port: int) -> Region | None:
        return self.ports.find(port & 0xFFFF)

    # ------------------------------------------------------------ ports (the Platform interface)

    def io_in(self, port: int, size: int) -> int:
        return self._timed(self.ports, port, self._io_in, port, size)

    def _io_in(self, port: int, size: int) -> int:
        self.io_counts[(port, "in")] += 1
        region = self.ports.find(port)
        if region is not None and not region.split:
            return region.device.read(port - region.base, size) & ((1 << (8 * size)) - 1)
        value = 0
        for i in range(size):
            at = (port + i) & 0xFFFF
            byte_region = region if i == 0 else self.ports.find(at)
            if byte_region is None:
                self.unclaimed_ports.setdefault(at, f"in {size}")
                byte = 0xFF
            else:
                byte = byte_region.device.read(at - byte_region.base, 1) & 0xFF
            value |= byte << (8 * i)
        return value

    def io_out(self, port: int, size: int, value: int) -> None:
        return self._timed(self.ports, port, self._io_out, port, size, value)

    def _io_out(self, port: int, size: int, value: int) -> None:
        self.io_counts[(port, "out")] += 1
        value &= (1 << (8 * size)) - 1
        region = self.ports.find(port)
        if region is not None and not region.split:
            region.device.write(port - region.base, size, value)
            return
        for i in range(size):
            at = (port + i) & 0xFFFF
            byte_region = region if i == 0 else self.ports.find(at)
            if byte_region is not None:
                byte_region.device.write(at - byte_region.base, 1, value >> (8 * i) & 0xFF)
            else:
                self.unclaimed_ports.setdefault(at, f"out {size}")

    def _timed(self, space: _RegionMap, address: int, access, *args):
        """An access, its time charged to its device in the run's ledger when there is one."""
        if not self.ledger.enabled:
            return access(*args)
        region = space.find(address)
        self.ledger.enter(f"I/O {region.name}" if region is not None else "I/O unclaimed")
        try:
            return access(*args)
        finally:
            self.ledger.leave()

    def unclaimed(self) -> dict[str, str]:
        """{"port 0x2e8": "in 1", "mmio 0xfed00000": "read 4"}: the first access to each."""
        out = {f"port {p:#x}": how for p, how in sorted(self.unclaimed_ports.items())}
        out.update({f"mmio {a:#x}": how for a, how in sorted(self.unclaimed_mmio.items())})
        return out

    def io_total(self) -> int:
        return sum(self.io_counts.values())

    def io_by_port(self) -> dict[str, dict[str, int]]:
        """{"0x3f8": {"out": 812}, ...}, ports in order."""
        out: dict[str, dict[str, int]] = {}
        for (port, direction), n in sorted(self.io_counts.items()):
            out.setdefault(f"{port:#x}", {})[direction] = n
        return out

    # ------------------------------------------------------------ MMIO

    def mmio_ranges(self) -> list[tuple[int, int]]:
        return [(r.base, r.length) for r in self.mmio.regions]

    def mmio_read(self, address: int, size: int) -> int:
        return self._timed(self.mmio, address, self._mmio_read, address, size)

    def _mmio_read(self, address: int, size: int) -> int:
        region = self.mmio.find(address)
        if region is None:
            self.unclaimed_mmio.setdefault(address, f"read {size}")
            return (1 << (8 * size)) - 1
        return region.device.read(address - region.base, size) & ((1 << (8 * size)) - 1)

    def mmio_write(self, address: int, size: int, value: int) -> None:
        return self._timed(self.mmio, address, self._mmio_write, address, size, value)

    def _mmio_write(self, address: int, size: int, value: int) -> None:
        region = self.mmio.find(address)
        if region is not None:
            region.device.write(address - region.base, size, value & ((1 << (8 * size)) - 1))
        else:
            self.unclaimed_mmio.setdefault(address, f"write {size}")
