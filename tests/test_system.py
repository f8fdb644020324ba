"""Targeted tests of spec/system.r1: what random differential testing rarely reaches.

Descriptor-table round trips, LTR's busy bit, LAR/LSL/VERR/VERW on the fresh GDT at CPL 0
and 3, the stealth reads at CPL 3, control/debug register checks, MSRs, SYSENTER/SYSEXIT.
The fresh machine (ring1.runtime.tools.fresh_machine): GDT at 0x500 (selectors 0x08 code0, 0x10 data0,
0x1B code3, 0x23 data3, 0x28 busy TSS, 0x30/0x38 16-bit, 0x40/0x4B DATA window), IDT at 0x800.
"""

from __future__ import annotations

import struct

import pytest

from ring1.runtime.cpu import descriptors
from ring1.runtime.cpu.events import Fault
from ring1.runtime.tools import fresh_machine
from ring1.runtime.tools.snippet import interp_machine, run_interp

GP, UD, DB, NP = 13, 6, 1, 11
ZF = 1 << 6
SCRATCH = 0x20000  # flat DS at CPL 0 and 3: a linear (and physical) address


def run(code: bytes, *, cpl: int = 0, real: bool = False, regs=None, memory=None, setup=None, max_insns: int = 100):
    """Run `code` on the interpreter's fresh machine; return the machine and the event that stopped it."""
    spec = fresh_machine.FreshSpec(code=code, cpl=cpl, real=real, regs=regs or {}, memory=memory or {})
    m = interp_machine(spec)
    if setup is not None:
        setup(m)
    m.stop_on_event = True
    m.stop_addresses = {fresh_machine.CODE + len(code)}
    r = m.run(max_insns)
    return m, (r.event if isinstance(r.event, Fault) else None)


def mem(m, addr: int, n: int) -> bytes:
    return bytes(m.mem.view[addr : addr + n])


def gdt_entry(sel: int) -> int:
    return fresh_machine.GDT + (sel & ~7)


# ---------------------------------------------------------------- descriptor table registers


def test_lgdt_sgdt_round_trip_32() -> None:
    pseudo = struct.pack("<HI", 0x1234, 0x89ABCDEF)
    # lgdt [SCRATCH]; sgdt [SCRATCH+0x10]
    code = b"\x0f\x01\x15" + struct.pack("<I", SCRATCH) + b"\x0f\x01\x05" + struct.pack("<I", SCRATCH + 0x10)
    m, ev = run(code, memory={SCRATCH: pseudo})
    assert ev is None
    assert (m.state.gdtr_base, m.state.gdtr_limit) == (0x89ABCDEF, 0x1234)
    assert mem(m, SCRATCH + 0x10, 6) == pseudo


def test_lidt_sidt_16_bit_operand_size_uses_24_bits_of_base() -> None:
    pseudo = struct.pack("<HI", 0x07FF, 0x89ABCDEF)
    # o16 lidt [SCRATCH]; o16 sidt [SCRATCH+0x10]
    code = b"\x66\x0f\x01\x1d" + struct.pack("<I", SCRATCH) + b"\x66\x0f\x01\x0d" + struct.pack("<I", SCRATCH + 0x10)
    m, ev = run(code, memory={SCRATCH: pseudo, SCRATCH + 0x10: b"\xff" * 8})
    assert ev is None
    assert (m.state.idtr_base, m.state.idtr_limit) == (0xABCDEF, 0x07FF)
    assert mem(m, SCRATCH + 0x10, 8) == struct.pack("<HI", 0x07FF, 0xABCDEF) + b"\xff\xff"


def test_sgdt_o16_stores_high_base_byte_as_zero() -> None:
    code = b"\x66\x0f\x01\x05" + struct.pack("<I", SCRATCH)
    m, ev = run(code, setup=lambda m: setattr(m.state, "gdtr_base", 0xC0000500))
    assert ev is None
    assert mem(m, SCRATCH, 6) == struct.pack("<HI", 0x4F, 0x000500)


@pytest.mark.parametrize(
    "code", [b"\x0f\x01\x15" + struct.pack("<I", SCRATCH), b"\x0f\x01\x1d" + struct.pack("<I", SCRATCH)]
)
def test_lgdt_lidt_at_cpl3_are_gp(code: bytes) -> None:
    m, ev = run(code, cpl=3)
    assert (ev.vector, ev.error_code) == (GP, 0)
    assert m.state.gdtr_base == fresh_machine.GDT and m.state.idtr_base == fresh_machine.IDT


def test_sgdt_sidt_reveal_the_tables_at_cpl3() -> None:
    # sgdt [SCRATCH]; sidt [SCRATCH+8]
    code = b"\x0f\x01\x05" + struct.pack("<I", SCRATCH) + b"\x0f\x01\x0d" + struct.pack("<I", SCRATCH + 8)
    m, ev = run(code, cpl=3)
    assert ev is None
    assert mem(m, SCRATCH, 6) == struct.pack("<HI", 0x4F, fresh_machine.GDT)
    assert mem(m, SCRATCH + 8, 6) == struct.pack("<HI", 0x7FF, fresh_machine.IDT)


def test_lgdt_register_operand_is_ud() -> None:
    _, ev = run(b"\x0f\x01\xd0"[:2] + b"\xd3")  # 0F 01 /2 with mod = 11
    assert ev.vector == UD


# ---------------------------------------------------------------- LDTR and TR


def test_ltr_marks_the_tss_busy() -> None:
    avail = descriptors.segment(fresh_machine.TSS, 0x67, 0x89, 0x0)  # 32-bit TSS, available
    m, ev = run(b"\x0f\x00\xd8", regs={"eax": 0x28}, memory={gdt_entry(0x28): avail})  # ltr ax
    assert ev is None
    assert mem(m, gdt_entry(0x28) + 5, 1) == b"\x8b"
    S = m.state
    assert (S.tr, S.tr_base, S.tr_limit, S.tr_attr & 0xFF) == (0x28, fresh_machine.TSS, 0x67, 0x8B)


def test_ltr_faults() -> None:
    _, ev = run(b"\x0f\x00\xd8", regs={"eax": 0x28})  # the fresh TSS is busy already
    assert (ev.vector, ev.error_code) == (GP, 0x28)
    _, ev = run(b"\x0f\x00\xd8", regs={"eax": 0x10})  # a data segment
    assert (ev.vector, ev.error_code) == (GP, 0x10)
    _, ev = run(b"\x0f\x00\xd8", regs={"eax": 0x3})  # null
    assert (ev.vector, ev.error_code) == (GP, 0)
    _, ev = run(b"\x0f\x00\xd8", regs={"eax": 0x2C})  # TI set: the error code keeps it
    assert (ev.vector, ev.error_code) == (GP, 0x2C)
    not_present = descriptors.segment(fresh_machine.TSS, 0x67, 0x09, 0x0)
    _, ev = run(b"\x0f\x00\xd8", regs={"eax": 0x28}, memory={gdt_entry(0x28): not_present})
    assert (ev.vector, ev.error_code) == (NP, 0x28)
    _, ev = run(b"\x0f\x00\xd8", regs={"eax": 0x28}, cpl=3)
    assert (ev.vector, ev.error_code) == (GP, 0)
    _, ev = run(b"\x0f\x00\xd8", regs={"eax": 0x28}, real=True)
    assert ev.vector == UD


def test_lldt_then_a_segment_from_the_ldt() -> None:
    ldt = bytes(8) + descriptors.segment(0x30000, 0xFFF, 0x93, 0x4)  # LDT entry 1: data, base 0x30000
    ldt_desc = descriptors.segment(SCRATCH, len(ldt) - 1, 0x82, 0x0)  # replaces GDT entry 0x38
    # lldt ax; sldt ecx; mov ds, bx
    code = b"\x0f\x00\xd0" + b"\x0f\x00\xc1" + b"\x8e\xdb"
    m, ev = run(
        code, regs={"eax": 0x38, "ebx": 0x0C, "ecx": 0xFFFFFFFF}, memory={gdt_entry(0x38): ldt_desc, SCRATCH: ldt}
    )
    assert ev is None
    S = m.state
    assert (S.ldtr, S.ldtr_base, S.ldtr_limit) == (0x38, SCRATCH, 15)
    assert m.regs[1] == 0x38  # SLDT to a 32-bit register zero-extends
    assert (S.sel[3], S.base[3], S.limit[3]) == (0x0C, 0x30000, 0xFFF)
    assert mem(m, SCRATCH + 8 + 5, 1) == b"\x93"


def test_lldt_faults_and_null() -> None:
    _, ev = run(b"\x0f\x00\xd0", regs={"eax": 0x10})  # not an LDT descriptor
    assert (ev.vector, ev.error_code) == (GP, 0x10)
    _, ev = run(b"\x0f\x00\xd0", regs={"eax": 0x50})  # past the GDT limit
    assert (ev.vector, ev.error_code) == (GP, 0x50)
    _, ev = run(b"\x0f\x00\xd0", regs={"eax": 0x10}, cpl=3)
    assert (ev.vector, ev.error_code) == (GP, 0)
    m, ev = run(b"\x0f\x00\xd0", regs={"eax": 0x0})
    assert ev is None and m.state.ldtr == 0


def test_sldt_str_at_cpl3_reveal_the_selectors() -> None:
    # str eax; sldt ecx; str [SCRATCH]
    code = b"\x0f\x00\xc8" + b"\x0f\x00\xc1" + b"\x0f\x00\x0d" + struct.pack("<I", SCRATCH)
    m, ev = run(code, cpl=3, regs={"eax": 0xFFFFFFFF, "ecx": 0xFFFFFFFF}, memory={SCRATCH: b"\xee" * 4})
    assert ev is None
    assert (m.regs[0], m.regs[1]) == (0x28, 0)
    assert mem(m, SCRATCH, 4) == b"\x28\x00\xee\xee"  # always 16 bits to memory


def test_o16_str_writes_the_low_word_only() -> None:
    m, _ = run(b"\x66\x0f\x00\xc8", regs={"eax": 0xAAAAAAAA})
    assert m.regs[0] == 0xAAAA0028


# ---------------------------------------------------------------- LAR LSL VERR VERW ARPL


def _zf(r) -> int:
    return int(bool(r.regs["eflags"] & ZF))


@pytest.mark.parametrize(
    ("cpl", "sel", "zf", "value"),
    [
        (0, 0x08, 1, 0x00C09B00),
        (0, 0x10, 1, 0x00C09300),
        (0, 0x28, 1, 0x00008B00),  # a busy TSS: LAR accepts it
        (0, 0x30, 1, 0x00009B00),
        (0, 0x0B, 0, None),  # RPL 3 > DPL 0
        (0, 0x00, 0, None),  # null
        (0, 0x50, 0, None),  # past the GDT limit
        (0, 0x0C, 0, None),  # LDT selector, no LDT
        (3, 0x08, 0, None),  # DPL 0 < CPL 3
        (3, 0x28, 0, None),
        (3, 0x1B, 1, 0x00C0FB00),
        (3, 0x4B, 1, 0x0040F300),
    ],
)
def test_lar_on_the_fresh_gdt(cpl: int, sel: int, zf: int, value: int | None) -> None:
    r = run_interp(fresh_machine.FreshSpec(code=b"\x0f\x02\xc3", cpl=cpl, regs={"ebx": sel, "eax": 0x5A5A5A5A}))
    assert r.exception is None
    assert _zf(r) == zf
    assert r.regs["eax"] == (value if zf else 0x5A5A5A5A)


def test_lar_16_bit_keeps_the_high_word_and_conforming_code_skips_the_privilege_check() -> None:
    conforming = descriptors.segment(0, 0xFFFF, 0x9F, 0x0)  # DPL 0 conforming code, as GDT entry 0x30
    r = run_interp(
        fresh_machine.FreshSpec(
            code=b"\x66\x0f\x02\xc3", cpl=3, regs={"ebx": 0x33, "eax": 0x5A5A5A5A}, memory={gdt_entry(0x30): conforming}
        )
    )
    assert _zf(r) == 1 and r.regs["eax"] == 0x5A5A9F00


@pytest.mark.parametrize(
    ("cpl", "sel", "zf", "value"),
    [
        (0, 0x10, 1, 0xFFFFFFFF),  # G: the limit in bytes
        (0, 0x28, 1, 0x67),
        (0, 0x40, 1, 0xFFFF),
        (0, 0x00, 0, None),
        (3, 0x10, 0, None),
        (3, 0x23, 1, 0xFFFFFFFF),
    ],
)
def test_lsl_on_the_fresh_gdt(cpl: int, sel: int, zf: int, value: int | None) -> None:
    r = run_interp(fresh_machine.FreshSpec(code=b"\x0f\x03\xc3", cpl=cpl, regs={"ebx": sel, "eax": 0x5A5A5A5A}))
    assert _zf(r) == zf
    assert r.regs["eax"] == (value if zf else 0x5A5A5A5A)


def test_lsl_rejects_gates_that_lar_accepts() -> None:
    gate = descriptors.gate(0x1000, 0x08, descriptors.GATE_CALL32, dpl=3)
    for op, zf in ((b"\x0f\x02\xc3", 1), (b"\x0f\x03\xc3", 0)):
        r = run_interp(fresh_machine.FreshSpec(code=op, regs={"ebx": 0x30}, memory={gdt_entry(0x30): gate}))
        assert _zf(r) == zf


@pytest.mark.parametrize(
    ("cpl", "op", "sel", "zf"),
    [
        (0, "verr", 0x08, 1),  # readable code
        (0, "verw", 0x08, 0),  # code is never writable
        (0, "verr", 0x10, 1),
        (0, "verw", 0x10, 1),
        (0, "verw", 0x13, 0),  # RPL 3 > DPL 0
        (0, "verr", 0x28, 0),  # system segment
        (0, "verr", 0x00, 0),
        (3, "verr", 0x10, 0),
        (3, "verw", 0x23, 1),
        (3, "verr", 0x1B, 1),
    ],
)
def test_verr_verw(cpl: int, op: str, sel: int, zf: int) -> None:
    code = b"\x0f\x00\xe3" if op == "verr" else b"\x0f\x00\xeb"
    r = run_interp(
        fresh_machine.FreshSpec(code=code, cpl=cpl, regs={"ebx": sel, "eflags": 0x2 | (ZF if not zf else 0)})
    )
    assert r.exception is None
    assert _zf(r) == zf


def test_arpl() -> None:
    r = run_interp(
        fresh_machine.FreshSpec(code=b"\x63\xd8", cpl=3, regs={"eax": 0xFFFF0010, "ebx": 0x13})
    )  # arpl ax, bx
    assert (r.regs["eax"], _zf(r)) == (0xFFFF0013, 1)
    r = run_interp(fresh_machine.FreshSpec(code=b"\x63\xd8", regs={"eax": 0x13, "ebx": 0x10, "eflags": 0x2 | ZF}))
    assert (r.regs["eax"], _zf(r)) == (0x13, 0)
    r = run_interp(fresh_machine.FreshSpec(code=b"\x63\xd8", real=True))
    assert r.exception == UD


# ---------------------------------------------------------------- CR0 and the MSW


def test_smsw_at_cpl3_reveals_cr0() -> None:
    # smsw eax; o16 smsw cx; smsw [SCRATCH]
    code = b"\x0f\x01\xe0" + b"\x66\x0f\x01\xe1" + b"\x0f\x01\x25" + struct.pack("<I", SCRATCH)
    m, ev = run(code, cpl=3, regs={"eax": 0xFFFFFFFF, "ecx": 0xFFFFFFFF}, memory={SCRATCH: b"\xee" * 4})
    assert ev is None
    assert (m.regs[0], m.regs[1]) == (0x11, 0xFFFF0011)
    assert mem(m, SCRATCH, 4) == b"\x11\x00\xee\xee"


def test_smsw_r32_stores_all_of_cr0() -> None:
    m, ev = run(b"\x0f\x01\xe0", setup=lambda m: m.b_write_cr(0, 0x40050031))  # CD AM WP NE ET PE
    assert ev is None and m.regs[0] == 0x40050031


def test_lmsw_sets_pe_and_ts_but_never_clears_pe() -> None:
    m, ev = run(b"\x0f\x01\xf0", regs={"eax": 0xFFF8})  # lmsw ax: TS, PE clear requested
    assert ev is None and m.state.cr[0] & 0xF == 0x9  # PE stays, TS set, MP and EM clear
    m, ev = run(b"\x0f\x01\xf0", real=True, regs={"eax": 1})
    assert ev is None and m.state.cr[0] & 1 and m.state.mode == 1  # into protected mode
    _, ev = run(b"\x0f\x01\xf0", cpl=3)
    assert ev.vector == GP


def test_clts() -> None:
    m, ev = run(b"\x0f\x06", setup=lambda m: m.b_write_cr(0, 0x19))
    assert ev is None and m.state.cr[0] == 0x11
    _, ev = run(b"\x0f\x06", cpl=3)
    assert ev.vector == GP


# ---------------------------------------------------------------- control and debug registers


def test_mov_cr0_at_cpl3_is_gp() -> None:
    _, ev = run(b"\x0f\x22\xc0", cpl=3, regs={"eax": 0x11})  # mov cr0, eax
    assert (ev.vector, ev.error_code) == (GP, 0)
    _, ev = run(b"\x0f\x20\xc0", cpl=3)  # mov eax, cr0
    assert (ev.vector, ev.error_code) == (GP, 0)


@pytest.mark.parametrize("code", [b"\x0f\x20\xc8", b"\x0f\x20\xe8", b"\x0f\x22\xf8", b"\x0f\x22\xc8"])
def test_cr1_and_cr5_to_cr7_are_ud(code: bytes) -> None:
    _, ev = run(code)
    assert ev.vector == UD


@pytest.mark.parametrize(
    "value",
    [0x80000010, 0x20000011],  # PG without PE; NW without CD
)
def test_mov_cr0_invalid_combinations_are_gp(value: int) -> None:
    m, ev = run(b"\x0f\x22\xc0", regs={"eax": value})
    assert (ev.vector, ev.error_code) == (GP, 0)
    assert m.state.cr[0] == 0x11


def test_mov_cr0_ignores_reserved_bits_and_keeps_et() -> None:
    m, ev = run(b"\x0f\x22\xc0\x0f\x20\xc1", regs={"eax": 0x60000001 | 0x0000FF00})  # mov cr0, eax; mov ecx, cr0
    assert ev is None
    assert m.regs[1] == 0x60000011


def test_mov_cr4_reserved_bits_are_gp() -> None:
    for bad in (0x20, 0x1, 0x40, 0x800, 0x80000000):  # PAE, VME, MCE: features the virtual CPU lacks
        _, ev = run(b"\x0f\x22\xe0", regs={"eax": bad})
        assert (ev.vector, ev.error_code) == (GP, 0), hex(bad)
    m, ev = run(b"\x0f\x22\xe0\x0f\x20\xe1", regs={"eax": 0x79C})  # TSD DE PSE PGE PCE OSFXSR OSXMMEXCPT
    assert ev is None and m.regs[1] == 0x79C


def test_mov_cr3_and_cr2_round_trip() -> None:
    code = b"\x0f\x22\xd8\x0f\x22\xd0\x0f\x20\xd9\x0f\x20\xd2"  # mov cr3, eax; mov cr2, eax; mov ecx, cr3; mov edx, cr2
    m, ev = run(code, regs={"eax": 0x12345678})
    assert ev is None and (m.regs[1], m.regs[2]) == (0x12345678, 0x12345678)


def test_dr4_dr5_alias_dr6_dr7_unless_cr4_de() -> None:
    m, ev = run(b"\x0f\x21\xe0\x0f\x21\xe9")  # mov eax, dr4; mov ecx, dr5
    assert ev is None and (m.regs[0], m.regs[1]) == (0xFFFF0FF0, 0x400)
    _, ev = run(b"\x0f\x21\xe0", setup=lambda m: m.b_write_cr(4, 0x8))
    assert ev.vector == UD
    _, ev = run(b"\x0f\x23\xe8", setup=lambda m: m.b_write_cr(4, 0x8))
    assert ev.vector == UD


def test_dr6_dr7_keep_their_fixed_bits() -> None:
    code = b"\x0f\x23\xf0\x0f\x23\xf8\x0f\x21\xf1\x0f\x21\xfa"  # mov dr6, eax; mov dr7, eax; mov ecx, dr6; mov edx, dr7
    m, ev = run(code, regs={"eax": 0})
    assert ev is None and (m.regs[1], m.regs[2]) == (0xFFFF0FF0, 0x400)
    m, ev = run(b"\x0f\x23\xc0\x0f\x21\xc1", regs={"eax": 0xDEADBEEF})  # DR0 holds any value
    assert m.regs[1] == 0xDEADBEEF


def test_dr7_gd_makes_any_debug_register_access_db() -> None:
    m, ev = run(b"\x0f\x21\xc0", setup=lambda m: m.b_write_dr(7, 0x2400))
    assert ev.vector == DB
    assert m.state.dr[6] & 0x2000 and not m.state.dr[7] & 0x2000
    _, ev = run(b"\x0f\x23\xc0", cpl=3, setup=lambda m: m.b_write_dr(7, 0x2400))
    assert ev.vector == GP  # the privilege check comes first


# ---------------------------------------------------------------- MSRs, counters, CPUID


def test_wrmsr_rdmsr_round_trip_and_unknown_msr() -> None:
    code = b"\x0f\x30\x0f\x32"  # wrmsr; rdmsr (the registers come back as written)
    m, ev = run(code, regs={"ecx": 0x175, "eax": 0x6000, "edx": 0})
    assert ev is None and m.state.msr[0x175] == 0x6000 and (m.regs[0], m.regs[2]) == (0x6000, 0)
    _, ev = run(b"\x0f\x32", regs={"ecx": 0x12345})
    assert (ev.vector, ev.error_code) == (GP, 0)
    _, ev = run(b"\x0f\x30", regs={"ecx": 0x12345})
    assert (ev.vector, ev.error_code) == (GP, 0)
    _, ev = run(b"\x0f\x32", cpl=3, regs={"ecx": 0x10})
    assert (ev.vector, ev.error_code) == (GP, 0)


def test_rdtsc_cr4_tsd() -> None:
    r = run_interp(fresh_machine.FreshSpec(code=b"\x90" * 0 + b"\x0f\x31", cpl=3))
    assert r.exception is None
    _, ev = run(b"\x0f\x31", cpl=3, setup=lambda m: m.b_write_cr(4, 0x4))
    assert (ev.vector, ev.error_code) == (GP, 0)
    _, ev = run(b"\x0f\x31", setup=lambda m: m.b_write_cr(4, 0x4))
    assert ev is None


def test_rdtsc_counts_and_wrmsr_sets_the_tsc() -> None:
    m, ev = run(b"\x0f\x30\x0f\x31", regs={"ecx": 0x10, "eax": 1000, "edx": 1})  # wrmsr TSC; rdtsc
    assert ev is None
    assert (m.regs[2], m.regs[0]) == (1, 1001)  # one instruction retired since the write


def test_rdpmc() -> None:
    _, ev = run(b"\x0f\x33", cpl=3)
    assert (ev.vector, ev.error_code) == (GP, 0)
    m, ev = run(b"\x0f\x33", cpl=3, regs={"ecx": 1, "eax": 7, "edx": 7}, setup=lambda m: m.b_write_cr(4, 0x100))
    assert ev is None and (m.regs[0], m.regs[2]) == (0, 0)
    _, ev = run(b"\x0f\x33", regs={"ecx": 2})
    assert (ev.vector, ev.error_code) == (GP, 0)


def test_cpuid_reports_the_virtual_cpu() -> None:
    from ring1.runtime.cpu.cpuid import cpuid

    r = run_interp(fresh_machine.FreshSpec(code=b"\x0f\xa2", cpl=3, regs={"eax": 0}))
    vendor = struct.pack("<III", r.regs["ebx"], r.regs["edx"], r.regs["ecx"])
    assert vendor == b"GenuineIntel"
    r = run_interp(fresh_machine.FreshSpec(code=b"\x0f\xa2", regs={"eax": 1}))
    assert (r.regs["eax"], r.regs["ebx"], r.regs["ecx"], r.regs["edx"]) == cpuid(1)


def test_invlpg() -> None:
    _, ev = run(b"\x0f\x01\x38", regs={"eax": SCRATCH})  # invlpg [eax]
    assert ev is None
    _, ev = run(b"\x0f\x01\x38", cpl=3)
    assert (ev.vector, ev.error_code) == (GP, 0)
    _, ev = run(b"\x0f\x01\xf8")  # register operand
    assert ev.vector == UD


@pytest.mark.parametrize("code", [b"\x0f\x08", b"\x0f\x09", b"\x0f\x06"])
def test_invd_wbinvd_clts_privileged(code: bytes) -> None:
    _, ev = run(code)
    assert ev is None
    _, ev = run(code, cpl=3)
    assert (ev.vector, ev.error_code) == (GP, 0)


# ---------------------------------------------------------------- SYSENTER and SYSEXIT


def _sysenter_msrs(m, cs: int = fresh_machine.SEL_CODE0) -> None:
    m.state.msr[0x174] = cs
    m.state.msr[0x175] = 0x5000
    m.state.msr[0x176] = fresh_machine.CODE + 4


def test_sysexit_then_sysenter() -> None:
    code = b"\x0f\x35" + b"\x0f\x34"  # sysexit to CODE+2 (CPL 3), which does sysenter to CODE+4
    spec = fresh_machine.FreshSpec(code=code, regs={"ecx": 0x6000, "edx": fresh_machine.CODE + 2, "eflags": 0x202})
    m = interp_machine(spec)
    _sysenter_msrs(m)
    m.stop_on_event = True
    m.run(1)
    S = m.state
    assert (S.cpl, S.sel[1], S.sel[2], m.regs[4], S.eip) == (3, 0x1B, 0x23, 0x6000, fresh_machine.CODE + 2)
    assert (S.base[1], S.limit[1], S.attr[1] & 0xFF) == (0, 0xFFFFFFFF, 0xFB)
    m.stop_addresses = {fresh_machine.CODE + 4}
    r = m.run(10)
    assert r.reason == "stop-address"
    assert (S.cpl, S.sel[1], S.sel[2], m.regs[4], S.eip) == (0, 0x08, 0x10, 0x5000, fresh_machine.CODE + 4)
    assert not m.eflags() & 0x200  # IF cleared


def test_sysenter_sysexit_faults() -> None:
    _, ev = run(b"\x0f\x34", cpl=3)  # SYSENTER_CS is 0
    assert (ev.vector, ev.error_code) == (GP, 0)
    _, ev = run(b"\x0f\x34", real=True, setup=_sysenter_msrs)
    assert (ev.vector, ev.error_code) == (GP, 0)
    _, ev = run(b"\x0f\x35", cpl=3, setup=_sysenter_msrs)
    assert (ev.vector, ev.error_code) == (GP, 0)
    _, ev = run(b"\x0f\x35", real=True, setup=_sysenter_msrs)
    assert (ev.vector, ev.error_code) == (GP, 0)
    _, ev = run(b"\x0f\x35")
    assert (ev.vector, ev.error_code) == (GP, 0)


@pytest.mark.parametrize("code", ["f3 6e", "f3 6f", "f3 6c", "f3 6d", "f3 67 6e"])
def test_rep_string_io_with_a_zero_count_raises_nothing(code: str) -> None:
    # SDM, REP: the count is tested before the string instruction executes; with ECX (CX under
    # 0x67) zero it never does, so CPL 3 with IOPL 0 and a denying I/O bitmap raises no #GP.
    r = run_interp(fresh_machine.FreshSpec(code=bytes.fromhex(code), cpl=3, regs={"ecx": 0}))
    assert r.exception is None and r.stop == "end"
    denied = run_interp(fresh_machine.FreshSpec(code=bytes.fromhex(code), cpl=3, regs={"ecx": 1}))
    assert (denied.exception, denied.error_code) == (13, 0)
