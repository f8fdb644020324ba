"""Device memory (MMIO) in every mode: the interpreter routes physical addresses past RAM to the
bus, unicorn maps the bus's MMIO regions (one call into Python per access), and the VMM's
shadow page tables map device pages like RAM so that an access is no trap."""

from __future__ import annotations

import pytest

from ring1.runtime import engines
from ring1.runtime.devices.bus import Bus
from ring1.runtime.isa.assembler import assemble
from ring1.runtime.tools import fresh_machine
from ring1.runtime.tools.fresh_machine import FreshSpec
from ring1.runtime.tools.snippet import interp_machine

BASE = 0xFEB00000
MODES = ("interp", "bare", "bt", "trap")


class Registers:
    """Four 32-bit registers, decoded from the low four address bits (mirrored through the
    page); reading register 3 counts the reads."""

    def __init__(self) -> None:
        self.regs = [0, 0, 0, 0]
        self.accesses: list[tuple[str, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        self.accesses.append(("read", offset, size))
        offset &= 0xF
        if offset == 12:
            self.regs[3] += 1
        return self.regs[offset // 4] >> (8 * (offset % 4))

    def write(self, offset: int, size: int, value: int) -> None:
        self.accesses.append(("write", offset, size))
        offset &= 0xF
        i, shift = offset // 4, 8 * (offset % 4)
        mask = ((1 << (8 * size)) - 1) << shift
        self.regs[i] = (self.regs[i] & ~mask) | (value << shift & mask)


@pytest.mark.parametrize("mode", MODES)
def test_loads_and_stores_reach_the_device(mode: str) -> None:
    bus = Bus()
    device = Registers()
    bus.map_mmio("registers", BASE, 0x1000, device)
    code = assemble(
        f"""
        mov dword ptr [{BASE + 4:#x}], 0x12345678
        mov byte ptr [{BASE + 8:#x}], 0xab
        mov eax, [{BASE + 4:#x}]
        mov ebx, [{BASE + 12:#x}]
        mov ebx, [{BASE + 12:#x}]
        mov ecx, [{BASE + 0x800:#x}]
        """,
        fresh_machine.CODE,
    ).code
    engine = engines.create(mode, fresh_machine.MEMORY_SIZE, bus)
    interp_machine(FreshSpec(code=code), engine.machine)
    engine.stop_addresses = {fresh_machine.CODE + len(code)}
    engine.start()
    outcome = engine.run(1000)
    assert outcome.reason == "stop-address", outcome
    m = engine.machine
    assert m.regs[0] == 0x12345678
    assert device.regs[2] == 0xAB
    assert m.regs[3] == 2 == device.regs[3]  # each load is one access: none repeated, none cached
    assert ("write", 8, 1) in device.accesses and ("write", 4, 4) in device.accesses
    assert m.regs[1] == 0  # offset 0x800 decodes as register 0, never written


def test_an_address_no_device_claims_reads_all_ones() -> None:
    bus = Bus()
    code = assemble(f"mov eax, [{BASE:#x}]\nmov dword ptr [{BASE:#x}], 1", fresh_machine.CODE).code
    engine = engines.create("interp", fresh_machine.MEMORY_SIZE, bus)
    interp_machine(FreshSpec(code=code), engine.machine)
    engine.stop_addresses = {fresh_machine.CODE + len(code)}
    engine.run(100)
    assert engine.machine.regs[0] == 0xFFFFFFFF
    assert bus.unclaimed() == {f"mmio {BASE:#x}": "read 4"}


def test_under_bt_a_polled_device_register_costs_no_trap() -> None:
    # 200 loads of one register: the shadow maps the device page once (a hidden fault), then
    # every load is a call into the device from unicorn, not a trap and an emulation.
    bus = Bus()
    device = Registers()
    bus.map_mmio("registers", BASE, 0x1000, device)
    code = assemble(f"mov ecx, 200\n1: mov eax, [{BASE + 12:#x}]\nloop 1b", fresh_machine.CODE).code
    engine = engines.create("bt", fresh_machine.MEMORY_SIZE, bus)
    interp_machine(FreshSpec(code=code), engine.machine)
    engine.stop_addresses = {fresh_machine.CODE + len(code)}
    engine.start()
    assert engine.run(10_000).reason == "stop-address"
    assert device.regs[3] == 200
    counts = engine.counters()
    assert counts["traps"] <= 2 and counts["callouts"] == 0, counts
