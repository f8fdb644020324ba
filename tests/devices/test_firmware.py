"""The firmware tables, read back as an OS finds and checks them: Linux's scans for the RSDP and
the MP floating pointer, its checksum and length checks, and the fields it reads; and the e820
map for several memory sizes."""

from __future__ import annotations

import struct
from itertools import pairwise

import pytest

from ring1.runtime.boot import firmware
from ring1.runtime.boot.firmware import E820_RAM, E820_RESERVED, FirmwareLayout, e820_map, install_tables
from ring1.runtime.cpu.memory import PhysicalMemory
from ring1.runtime.devices import acpi

MEMORY = 32 << 20


@pytest.fixture
def installed() -> tuple[PhysicalMemory, firmware.FirmwareTables]:
    memory = PhysicalMemory(MEMORY)
    return memory, install_tables(memory, MEMORY)


def _sum_ok(data: bytes) -> bool:
    return sum(data) & 0xFF == 0


def _scan(memory: PhysicalMemory, signature: bytes, start: int, end: int) -> int | None:
    """The first 16-byte boundary in [start, end) holding `signature`, as the OS scans."""
    for at in range(start, end, 16):
        if memory.read(at, len(signature)) == signature:
            return at
    return None


# ---------------------------------------------------------------- ACPI


def _find_rsdp(memory: PhysicalMemory) -> int:
    at = _scan(memory, b"RSD PTR ", 0xE0000, 0x100000)
    assert at is not None, "no RSDP where an OS scans"
    assert _sum_ok(memory.read(at, 20)), "RSDP checksum"
    return at


def _table(memory: PhysicalMemory, address: int, signature: bytes) -> bytes:
    header = memory.read(address, 36)
    assert header[:4] == signature
    (length,) = struct.unpack_from("<I", header, 4)
    data = memory.read(address, length)
    assert _sum_ok(data), f"{signature!r} checksum"
    assert data[10:16] == firmware.OEM_ID and data[16:24] == firmware.OEM_TABLE_ID
    return data


def _rsdt_tables(memory: PhysicalMemory) -> dict[bytes, int]:
    rsdp = memory.read(_find_rsdp(memory), 20)
    assert rsdp[15] == 0, "an ACPI 1.0 RSDP (no XSDT)"
    (rsdt_address,) = struct.unpack_from("<I", rsdp, 16)
    rsdt = _table(memory, rsdt_address, b"RSDT")
    pointers = struct.unpack_from(f"<{(len(rsdt) - 36) // 4}I", rsdt, 36)
    return {memory.read(p, 4): p for p in pointers}


def test_rsdp_is_found_where_linux_scans_and_points_at_an_rsdt(installed) -> None:
    memory, tables = installed
    assert _find_rsdp(memory) == tables.rsdp
    assert sorted(_rsdt_tables(memory)) == [b"APIC", b"FACP"]


def test_a_corrupted_byte_breaks_the_checksum(installed) -> None:
    memory, tables = installed
    madt_at, length = tables.tables["MADT"]
    assert _sum_ok(memory.read(madt_at, length))
    memory.write(madt_at + 40, bytes([memory.read(madt_at + 40, 1)[0] ^ 1]))
    assert not _sum_ok(memory.read(madt_at, length))


def test_fadt_gives_the_pm_blocks_the_sci_and_always_acpi_mode(installed) -> None:
    memory, _ = installed
    fadt = _table(memory, _rsdt_tables(memory)[b"FACP"], b"FACP")
    assert len(fadt) == 116 and fadt[8] == 1  # the ACPI 1.0 FADT, revision 1
    facs_at, dsdt_at = struct.unpack_from("<II", fadt, 36)
    sci, smi_cmd = struct.unpack_from("<HI", fadt, 46)
    pm1a_evt, pm1b_evt, pm1a_cnt, pm1b_cnt, pm2, pm_tmr = struct.unpack_from("<6I", fadt, 56)
    evt_len, cnt_len, pm2_len, tmr_len = fadt[88:92]
    (flags,) = struct.unpack_from("<I", fadt, 112)
    assert sci == 9 and smi_cmd == 0
    assert (pm1a_evt, pm1a_cnt, pm_tmr) == (firmware.PM1A_EVT_PORT, firmware.PM1A_CNT_PORT, firmware.PM_TMR_PORT)
    assert (pm1b_evt, pm1b_cnt, pm2) == (0, 0, 0)
    # Linux's ACPICA insists on these lengths for the blocks it uses.
    assert evt_len >= 4 and cnt_len >= 2 and tmr_len == 4 and pm2_len == 0
    assert not flags & firmware.FADT_TMR_VAL_EXT  # the default timer is 24 bits wide
    facs = memory.read(facs_at, 64)
    assert facs_at % 64 == 0 and facs[:4] == b"FACS" and struct.unpack_from("<I", facs, 4)[0] == 64
    _table(memory, dsdt_at, b"DSDT")


def test_a_32_bit_pm_timer_is_announced_in_the_fadt() -> None:
    memory = PhysicalMemory(MEMORY)
    install_tables(memory, MEMORY, FirmwareLayout(timer_32bit=True))
    fadt = _table(memory, _rsdt_tables(memory)[b"FACP"], b"FACP")
    assert struct.unpack_from("<I", fadt, 112)[0] & firmware.FADT_TMR_VAL_EXT


def _aml_s5(aml: bytes) -> list[int]:
    """Decode `Name(\\_S5, Package(){...})` from AML, the way an interpreter reads it."""
    at = aml.index(b"\x08\\_S5_")  # NameOp, RootChar, NameSeg
    at += 6
    assert aml[at] == 0x12, "PackageOp"
    lead = aml[at + 1]
    assert lead >> 6 == 0, "a one-byte PkgLength"
    end = at + 1 + (lead & 0x3F)
    count = aml[at + 2]
    at += 3
    values = []
    while at < end:
        op = aml[at]
        if op in (0x00, 0x01):  # ZeroOp, OneOp
            values.append(op)
            at += 1
        elif op == 0x0A:  # BytePrefix
            values.append(aml[at + 1])
            at += 2
        else:
            raise AssertionError(f"unexpected AML opcode {op:#x}")
    assert at == end and len(values) == count
    return values


def test_dsdt_defines_s5_with_the_slp_typ_the_pm_control_block_powers_off_on(installed) -> None:
    memory, _ = installed
    fadt = _table(memory, _rsdt_tables(memory)[b"FACP"], b"FACP")
    dsdt = _table(memory, struct.unpack_from("<I", fadt, 40)[0], b"DSDT")
    s5 = _aml_s5(dsdt[36:])
    assert s5[0] == acpi.SLP_TYP_S5 and len(s5) == 4
    assert len(dsdt) == 36 + len(firmware.dsdt_aml())  # the AML is the whole body


def _madt_entries(madt: bytes) -> list[tuple[int, bytes]]:
    entries, at = [], 44
    while at < len(madt):
        kind, length = madt[at], madt[at + 1]
        assert length >= 2 and at + length <= len(madt), "MADT entry overruns the table"
        entries.append((kind, madt[at : at + length]))
        at += length
    assert at == len(madt)
    return entries


def test_madt_lists_the_apics_the_overrides_and_the_nmi(installed) -> None:
    memory, _ = installed
    madt = _table(memory, _rsdt_tables(memory)[b"APIC"], b"APIC")
    lapic_address, flags = struct.unpack_from("<II", madt, 36)
    assert lapic_address == 0xFEE00000 and flags & 1  # PCAT_COMPAT: the 8259s are there
    entries = _madt_entries(madt)
    lapics = [struct.unpack("<BBBBI", e) for k, e in entries if k == 0]
    assert lapics == [(0, 8, 0, firmware.LAPIC_ID, 1)]
    ioapics = [struct.unpack("<BBBBII", e) for k, e in entries if k == 1]
    assert ioapics == [(1, 12, firmware.IOAPIC_ID, 0, 0xFEC00000, 0)]
    overrides = {e[3]: struct.unpack_from("<IH", e, 4) for k, e in entries if k == 2}
    assert overrides[0] == (2, 0)  # IRQ 0 -> GSI 2, conforming to the ISA bus
    assert overrides[9] == (9, 0x000D)  # the SCI: active high, level-triggered
    nmis = [struct.unpack("<BBBHB", e) for k, e in entries if k == 4]
    assert [(uid, lint) for _, _, uid, _, lint in nmis] == [(0xFF, 1)]


# ---------------------------------------------------------------- MP


def _find_mp(memory: PhysicalMemory) -> bytes:
    # Linux: the first KB, the last KB of base memory (639 KB), then the BIOS ROM area.
    for start, length in ((0, 0x400), (639 * 0x400, 0x400), (0xF0000, 0x10000)):
        at = _scan(memory, b"_MP_", start, start + length)
        if at is not None:
            floating = memory.read(at, 16)
            assert floating[8] == 1 and _sum_ok(memory.read(at, 16 * floating[8]))
            assert floating[9] in (1, 4)
            return floating
    raise AssertionError("no MP floating pointer where an OS scans")


MP_ENTRY_SIZES = {0: 20, 1: 8, 2: 8, 3: 8, 4: 8}


def _mp_entries(memory: PhysicalMemory) -> list[tuple[int, bytes]]:
    floating = _find_mp(memory)
    (config_at,) = struct.unpack_from("<I", floating, 4)
    assert floating[11] == 0, "feature byte 1: a configuration table, no default configuration"
    assert not floating[12] & 0x80, "no IMCR: virtual wire mode"
    header = memory.read(config_at, 44)
    assert header[:4] == b"PCMP"
    base_length, spec_rev = struct.unpack_from("<HB", header, 4)
    table = memory.read(config_at, base_length)
    assert _sum_ok(table) and spec_rev == 4
    count, lapic_address = struct.unpack_from("<HI", header, 34)
    assert lapic_address == 0xFEE00000
    entries, at = [], 44
    for _ in range(count):
        kind = table[at]
        entries.append((kind, table[at : at + MP_ENTRY_SIZES[kind]]))
        at += MP_ENTRY_SIZES[kind]
    assert at == base_length
    assert [k for k, _ in entries] == sorted(k for k, _ in entries), "entries ordered by type"
    return entries


def test_mp_table_has_one_bootstrap_processor_the_buses_and_the_io_apic(installed) -> None:
    memory, _ = installed
    entries = _mp_entries(memory)
    cpus = [struct.unpack("<BBBBII8s", e) for k, e in entries if k == 0]
    assert len(cpus) == 1
    _, apic_id, apic_version, cpu_flags, signature, _features, _ = cpus[0]
    assert apic_id == firmware.LAPIC_ID and apic_version == firmware.LAPIC_VERSION and cpu_flags == 3  # EN | BP
    assert signature >> 8 & 0xF == 6  # family 6, as CPUID says
    buses = {e[1]: e[2:8] for k, e in entries if k == 1}
    assert buses == {0: b"ISA   ", 1: b"PCI   "}
    ioapics = [struct.unpack("<BBBBI", e) for k, e in entries if k == 2]
    assert ioapics == [(2, firmware.IOAPIC_ID, firmware.IOAPIC_VERSION, 1, 0xFEC00000)]


def test_mp_table_routes_isa_irqs_with_irq0_on_pin_2(installed) -> None:
    memory, _ = installed
    routes = {}
    for kind, e in _mp_entries(memory):
        if kind == 3:
            _, int_type, flags, bus, irq, apic, pin = struct.unpack("<BBHBBBB", e)
            assert int_type == 0 and bus == 0 and apic == firmware.IOAPIC_ID
            routes[irq] = (pin, flags)
    assert {irq: pin for irq, (pin, _) in routes.items()} == {0: 2, **{n: n for n in range(1, 16) if n != 2}}
    assert routes[9][1] == 0x000D and routes[4][1] == 0  # the SCI level/high; COM1 conforms to ISA
    assert routes == {irq: (pin, routes[irq][1]) for irq, pin in firmware.isa_irq_pins().items()}


def test_mp_table_local_interrupts_extint_on_lint0_and_nmi_on_lint1(installed) -> None:
    memory, _ = installed
    local = [struct.unpack("<BBHBBBB", e) for k, e in _mp_entries(memory) if k == 4]
    assert [(int_type, apic, lint) for _, int_type, _, _, _, apic, lint in local] == [(3, 0xFF, 0), (1, 0xFF, 1)]


def test_mp_table_without_a_pci_bus() -> None:
    memory = PhysicalMemory(MEMORY)
    install_tables(memory, MEMORY, FirmwareLayout(pci_bus=False))
    assert [e[2:8] for k, e in _mp_entries(memory) if k == 1] == [b"ISA   "]


def test_the_mp_pointer_can_live_in_the_ebda() -> None:
    memory = PhysicalMemory(MEMORY)
    tables = install_tables(memory, MEMORY, FirmwareLayout(mp_area=firmware.EBDA_BASE, mp_area_size=0x400))
    assert tables.mp_floating_pointer == firmware.EBDA_BASE
    assert _mp_entries(memory)  # found by the scan of base memory's last KB


@pytest.mark.parametrize(
    "layout",
    [FirmwareLayout(acpi_area=0xD0000), FirmwareLayout(acpi_area=0xE0008), FirmwareLayout(mp_area=0x80000),
     FirmwareLayout(acpi_area_size=0x100)],
)
def test_a_layout_an_os_would_not_find_or_too_small_is_refused(layout: FirmwareLayout) -> None:
    with pytest.raises(ValueError):
        install_tables(PhysicalMemory(MEMORY), MEMORY, layout)


def test_tables_are_in_reserved_memory_and_do_not_overlap(installed) -> None:
    _, tables = installed
    spans = sorted(tables.tables.values())
    for (a, n), (b, _) in pairwise(spans):
        assert a + n <= b
    low, high = tables.extent()
    reserved = [(e.base, e.base + e.length) for e in e820_map(MEMORY) if e.type == E820_RESERVED]
    assert any(start <= low and high <= end for start, end in reserved)


# ---------------------------------------------------------------- e820


@pytest.mark.parametrize("size", [1 << 20, 2 << 20, 16 << 20, 128 << 20, 1 << 30, 3 << 30])
def test_e820_map_for_several_sizes(size: int) -> None:
    entries = e820_map(size)
    assert entries == sorted(entries)
    for a, b in pairwise(entries):
        assert a.base + a.length <= b.base, "entries overlap"
    ram = [(e.base, e.length) for e in entries if e.type == E820_RAM]
    assert ram[0] == (0, 0x9FC00)
    if size > 1 << 20:
        assert ram[1] == (0x100000, size - 0x100000)
    assert sum(n for _, n in ram) == 0x9FC00 + size - 0x100000
    reserved = {(e.base, e.length) for e in entries if e.type == E820_RESERVED}
    assert (0x9FC00, 0x100000 - 0x9FC00) in reserved
    assert (0xFEC00000, 0x1000) in reserved and (0xFEE00000, 0x1000) in reserved
    assert (0xFFFC0000, 0x40000) in reserved


@pytest.mark.parametrize("size", [0x80000, 0xFF000000])
def test_e820_refuses_sizes_a_pc_cannot_have(size: int) -> None:
    with pytest.raises(ValueError):
        e820_map(size)
