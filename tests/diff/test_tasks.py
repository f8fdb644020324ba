"""Hardware task switches (spec/tasks.r1) against unicorn: a far JMP to a TSS, a far CALL through
a task gate and the IRET with NT back, a 16-bit TSS, and the checks that fault before the switch.

Each case loads a GDT of its own (the fresh machine's entries, then two 32-bit TSSes, a task
gate, a 16-bit TSS, an LDT), switches, and ends where the harness stops: the comparison then
covers the registers, the flags and all of memory, so the saved state in the old TSS, the back
link and the busy bits in the GDT are compared too.
"""

from __future__ import annotations

import struct

from ring1.runtime.cpu import descriptors
from ring1.runtime.isa.assembler import assemble
from ring1.runtime.tools import fresh_machine as fm

from .harness import Case, differences, run_both

NEW_GDT = 0x30000
GDTR_AT = 0x30F00
TSS_A, TSS_B, TSS_16 = 0x31000, 0x31100, 0x31200
TASK_CODE = 0x9000  # the new tasks' code (the harness stops at the end of the snippet)
TASK_STACK_TOP = 0x6000
SEL_TSS_B, SEL_GATE_B, SEL_TSS_16, SEL_LDT, SEL_TSS_A = 0x50, 0x58, 0x60, 0x68, 0x70
# The fresh machine's TSS is TR's (busy, at 0x28); the new tasks' TSSes are available.


def gdt(tss_b_access: int = 0x89, gate_dpl: int = 0, tss_b_limit: int = 0x67, gate_present: bool = True) -> bytes:
    entries = fm.gdt_bytes()
    entries += descriptors.segment(TSS_B, tss_b_limit, tss_b_access, 0)  # 0x50
    entries += descriptors.gate(0, SEL_TSS_B, 5, gate_dpl, gate_present)  # 0x58 task gate to B
    entries += descriptors.segment(TSS_16, 0x2B, 0x81, 0)  # 0x60 16-bit TSS, available
    entries += descriptors.segment(0x32000, 0xF, 0x82, 0)  # 0x68 an LDT
    entries += descriptors.segment(TSS_A, 0x67, 0x89, 0)  # 0x70 another 32-bit TSS
    return entries


def tss32(eip: int, esp: int = TASK_STACK_TOP, eflags: int = 0x2, cs: int = fm.SEL_CODE0, ss: int = fm.SEL_DATA0,
          ds: int = fm.SEL_DATA0, ldt: int = 0, regs: tuple[int, ...] = (0x11, 0x22, 0x33, 0x44)) -> bytes:
    t = bytearray(0x68)
    struct.pack_into("<II", t, 0x20, eip, eflags)
    struct.pack_into("<4I", t, 0x28, *regs)  # EAX ECX EDX EBX
    struct.pack_into("<4I", t, 0x38, esp, 0x55, 0x66, 0x77)  # ESP EBP ESI EDI
    for i, sel in enumerate((ds, cs, ss, ds, ds, ds)):
        struct.pack_into("<H", t, 0x48 + 4 * i, sel)
    struct.pack_into("<HH", t, 0x60, ldt, 0)
    struct.pack_into("<H", t, 0x66, 0x68)
    return bytes(t)


def tss16(ip: int, sp: int = TASK_STACK_TOP, flags: int = 0x2) -> bytes:
    t = bytearray(0x2C)
    struct.pack_into("<HH", t, 0x0E, ip, flags)
    struct.pack_into("<8H", t, 0x12, 0x1111, 0x2222, 0x3333, 0x4444, sp, 0x5555, 0x6666, 0x7777)
    struct.pack_into("<4H", t, 0x22, fm.SEL_DATA16, fm.SEL_CODE16, fm.SEL_DATA16, fm.SEL_DATA16)
    return bytes(t)


def case(text: str, forms: list[str], memory: dict[int, bytes] | None = None, task_code: str = "", **gdt_args) -> Case:
    """`text` runs from the fresh machine after loading the new GDT; `task_code` is at TASK_CODE."""
    table = gdt(**gdt_args)
    prologue = f"lgdt [{GDTR_AT:#x}]\n"
    code = assemble(".intel_syntax noprefix\n" + prologue + text, fm.CODE).code
    mem = {NEW_GDT: table, GDTR_AT: struct.pack("<HI", len(table) - 1, NEW_GDT)}
    end = fm.CODE + len(code)
    if task_code:
        mem[TASK_CODE] = assemble(".intel_syntax noprefix\n" + task_code, TASK_CODE).code
    mem.setdefault(TSS_B, tss32(end))
    mem.update(memory or {})
    return Case(fm.FreshSpec(code=code, regs={"eax": 0xA, "ebx": 0xB}, memory=mem), ["LGDT", *forms])


def agree(c: Case):
    o = run_both(c)
    assert not differences(o), "\n".join(differences(o))
    return o
