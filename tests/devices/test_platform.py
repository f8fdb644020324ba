"""The PC `ring1 run` assembles (devices/platform.py): every chip on its ports, the firmware in
guest memory, and what the guest's use of them ends a run with, in every mode."""

from __future__ import annotations

import io
import struct

import pytest

from ring1.runtime import engines
from ring1.runtime.cpu.memory import PhysicalMemory
from ring1.runtime.devices import acpi
from ring1.runtime.devices.platform import ConsoleSink, GuestPlatform
from ring1.runtime.isa.assembler import assemble
from ring1.runtime.tools import fresh_machine
from ring1.runtime.tools.bench import PIC_AT_0X20
from ring1.runtime.tools.fresh_machine import FreshSpec
from ring1.runtime.tools.snippet import interp_machine

MODES = ("interp", "bare", "bt", "trap")


def _platform() -> GuestPlatform:
    return GuestPlatform(ConsoleSink(io.BytesIO()), memory_size=fresh_machine.MEMORY_SIZE)


def test_every_chip_answers_on_its_ports() -> None:
    p = _platform()
    names = {r.name for r in p.ports.regions}
    for name in ("pic-master", "pic-slave", "elcr", "PIT", "port B", "i8042 data", "i8042 command", "port A",
                 "RTC", "ide0-data", "ide0-command", "ide0-control", "pci-config", "fw_cfg", "PM1a_EVT",
                 "PM1a_CNT", "PM_TMR", "COM1", "COM2", "exit", "POST"):
        assert name in names, name
    p.io_out(0x510, 2, 0)  # fw_cfg signature
    assert bytes(p.io_in(0x511, 1) for _ in range(4)) == b"QEMU"
    p.io_out(0xCF8, 4, 0x80000000)  # PCI 00:00.0: the 440FX host bridge
    assert p.io_in(0xCFC, 4) == 0x12378086


def test_unclaimed_ports_are_an_empty_bus_and_listed() -> None:
    p = _platform()
    assert p.io_in(0x2E8, 1) == 0xFF
    p.io_out(0x2E9, 1, 0x12)
    assert p.io_in(0x2E8, 1) == 0xFF
    assert p.unclaimed() == {"port 0x2e8": "in 1", "port 0x2e9": "out 1"}  # the first access each


def test_firmware_is_where_an_os_looks() -> None:
    p = _platform()
    mem = PhysicalMemory(fresh_machine.MEMORY_SIZE)
    tables = p.install_firmware(mem)
    rsdp = tables.rsdp
    assert mem.read(rsdp, 8) == b"RSD PTR " and sum(mem.read(rsdp, 20)) & 0xFF == 0
    assert mem.read(tables.mp_floating_pointer, 4) == b"_MP_"
    assert struct.unpack("<H", mem.read(0x400, 2))[0] == 0x3F8  # COM1 in the BIOS data area
    assert struct.unpack("<H", mem.read(0x413, 2))[0] == 639  # base memory below the EBDA


def _run(mode: str, code_text: str, platform: GuestPlatform):
    code = assemble(code_text, fresh_machine.CODE).code
    engine = engines.create(mode, fresh_machine.MEMORY_SIZE, platform)
    interp_machine(FreshSpec(code=code), engine.machine)
    engine.start()
    outcome = engine.run(1_000_000)
    return engine, engine.stop(outcome, 1_000_000)


@pytest.mark.parametrize("mode", MODES)
def test_acpi_s5_powers_off_with_status_0(mode: str) -> None:
    value = acpi.SLP_EN | acpi.SLP_TYP_S5 << acpi.SLP_TYP_SHIFT
    _, stop = _run(mode, f"mov dx, 0x604\nmov ax, {value:#x}\nout dx, ax\nhlt", _platform())
    assert (stop.kind, stop.exit_status) == ("poweroff", 0)
    assert stop.diagnosis(mode) is None


@pytest.mark.parametrize("mode", MODES)
def test_a_keyboard_controller_reset_ends_the_run(mode: str) -> None:
    _, stop = _run(mode, "mov al, 0xfe\nout 0x64, al\nhlt", _platform())
    assert (stop.kind, stop.exit_status) == ("reset", 0)
    assert "reset" in stop.diagnosis(mode)


@pytest.mark.parametrize("mode", MODES)
def test_the_pit_and_pic_interrupt_a_halted_guest(mode: str) -> None:
    # PIC at 0x20 (IRQ 0 -> vector 0x20, every other line masked), PIT channel 0 one-shot;
    # the fresh machine's IDT sends every vector to its HLT handler, so the run halts there
    # (IF clear in the handler) with the IRQ acknowledged and the virtual clock past the count.
    code = f"""
        {PIC_AT_0X20}
        mov al, 0x30          # channel 0, LSB then MSB, mode 0
        out 0x43, al
        mov al, 0x00
        out 0x40, al
        mov al, 0x10          # 4096 PIT ticks: about 3.4 ms
        out 0x40, al
        sti
        hlt
        hlt
    """
    platform = _platform()
    engine, stop = _run(mode, code, platform)
    assert stop.kind == "halt"
    assert platform.pic.acknowledged_total == 1
    assert engine.machine.state.eip == fresh_machine.HANDLER + 1
    assert 3_400_000 <= platform.clock.now() < 3_500_000


@pytest.mark.parametrize("mode", MODES)
def test_the_local_apic_answers_and_its_timer_wakes_a_halted_guest(mode: str) -> None:
    # The APIC's version through MMIO, its base MSR, CPUID's APIC bit; then a one-shot of
    # 1,000 bus clocks (10 us) on vector 0x40 ends a HLT in the fresh machine's handler.
    code = """
        mov esi, [0xfee00030]
        mov ecx, 0x1b
        rdmsr
        mov edi, eax
        mov eax, 1
        cpuid
        mov ebp, edx
        mov dword ptr [0xfee003e0], 0xb
        mov dword ptr [0xfee00320], 0x40
        mov dword ptr [0xfee00380], 1000
        sti
        hlt
        hlt
    """
    platform = _platform()
    engine, stop = _run(mode, code, platform)
    regs = engine.machine.regs
    assert regs[6] == 0x00050014  # ESI: the version register
    assert regs[7] == 0xFEE00900  # EDI: base 0xFEE00000, global enable, BSP (bare: emulated)
    assert regs[5] & (1 << 9)  # EBP: CPUID.1:EDX.APIC
    assert stop.kind == "halt" and engine.machine.state.eip == fresh_machine.HANDLER + 1
    assert platform.clock.now() >= 10_000
