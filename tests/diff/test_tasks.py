"""Hardware task switches (spec/tasks.r1) against unicorn: a far JMP to a TSS, a far CALL through
a task gate and the IRET with NT back, a 16-bit TSS, and the checks that fault before the switch.

Each case loads a GDT of its own (the fresh machine's entries, then two 32-bit TSSes, a task
gate, a 16-bit TSS, an LDT), switches, and ends where the harness stops: the comparison then
covers the registers, the flags and all of memory, so the saved state in the old TSS, the back
link and the busy bits in the GDT are compared too.
"""

from __future__ import annotations

import struct

import pytest

from ring1.runtime.cpu import descriptors
from ring1.runtime.isa.assembler import assemble
from ring1.runtime.tools import fresh_machine as fm

from . import deviations
from .harness import Case, Outcome, differences, run_both

NEW_GDT = 0x30000
GDTR_AT = 0x30F00
TSS_A, TSS_B, TSS_16 = 0x31000, 0x31100, 0x31200
TASK_CODE = 0x9000  # the new tasks' code (the harness stops at the end of the snippet)
TASK_STACK_TOP = 0x6000
SEL_TSS_B, SEL_GATE_B, SEL_TSS_16, SEL_LDT, SEL_TSS_A, SEL_FRESH_DATA = 0x50, 0x58, 0x60, 0x68, 0x70, 0x78
# The fresh machine's TSS is TR's (busy, at 0x28); the new tasks' TSSes are available.


def gdt(tss_b_access: int = 0x89, gate_dpl: int = 0, tss_b_limit: int = 0x67, gate_present: bool = True) -> bytes:
    entries = fm.gdt_bytes()
    entries += descriptors.segment(TSS_B, tss_b_limit, tss_b_access, 0)  # 0x50
    entries += descriptors.gate(0, SEL_TSS_B, 5, gate_dpl, gate_present)  # 0x58 task gate to B
    entries += descriptors.segment(TSS_16, 0x2B, 0x81, 0)  # 0x60 16-bit TSS, available
    entries += descriptors.segment(0x32000, 0xF, 0x82, 0)  # 0x68 an LDT
    entries += descriptors.segment(TSS_A, 0x67, 0x89, 0)  # 0x70 another 32-bit TSS
    entries += descriptors.segment(0, 0xFFFFF, 0x92, 0xC)  # 0x78 ring-0 data, not accessed yet
    return entries


def tss32(
    eip: int,
    esp: int = TASK_STACK_TOP,
    eflags: int = 0x2,
    cs: int = fm.SEL_CODE0,
    ss: int = fm.SEL_DATA0,
    ds: int = fm.SEL_DATA0,
    ldt: int = 0,
    regs: tuple[int, ...] = (0x11, 0x22, 0x33, 0x44),
) -> bytes:
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


def case(
    text: str,
    forms: list[str],
    memory: dict[int, bytes] | None = None,
    task_code: str = "",
    tss_b: dict | None = None,
    **gdt_args,
) -> Case:
    """`text` runs from the fresh machine after loading the new GDT; `task_code` is assembled at
    TASK_CODE. Task B's TSS (`tss_b`: tss32's arguments) enters at TASK_CODE if there is task
    code, else at the end of the snippet, where the harness stops."""
    table = gdt(**gdt_args)
    code = assemble(f".intel_syntax noprefix\nlgdt [{GDTR_AT:#x}]\n" + text, fm.CODE).code
    mem = {NEW_GDT: table, GDTR_AT: struct.pack("<HI", len(table) - 1, NEW_GDT)}
    if task_code:
        mem[TASK_CODE] = assemble(".intel_syntax noprefix\n" + task_code, TASK_CODE).code
    args = {"eip": TASK_CODE if task_code else fm.CODE + len(code)} | (tss_b or {})
    mem[TSS_B] = tss32(**args)
    mem.update(memory or {})
    return Case(fm.FreshSpec(code=code, regs={"eax": 0xA, "ebx": 0xB}, memory=mem), ["LGDT", *forms])


def agree(c: Case) -> Outcome:
    o = run_both(c)
    assert not differences(o), "\n".join(differences(o))
    return o


def word(o: Outcome, address: int) -> int:
    return int.from_bytes(o.our_memory[address : address + 2], "little")


def dword(o: Outcome, address: int) -> int:
    return int.from_bytes(o.our_memory[address : address + 4], "little")


def access_byte(o: Outcome, sel: int) -> int:
    return o.our_memory[NEW_GDT + sel + 5]


# ------------------------------------------------------------ switches both machines make alike

JMP = ["JMP_FAR_PTR"]
CALL = ["CALL_FAR_PTR"]


def test_jmp_to_a_tss_saves_the_old_task_and_loads_the_new_one() -> None:
    o = agree(case("ljmp 0x50, 0\n", JMP))
    assert o.ours.regs["eax"] == 0x11 and o.ours.regs["esp"] == TASK_STACK_TOP and o.ours.exception is None
    assert dword(o, fm.TSS + 0x20) == fm.CODE + 14  # the old task resumes after its JMP
    assert dword(o, fm.TSS + 0x28) == 0xA  # its EAX
    assert access_byte(o, 0x28) == 0x89 and access_byte(o, SEL_TSS_B) == 0x8B  # JMP frees the old task
    assert word(o, TSS_B) == 0  # no back link


def test_jmp_through_a_far_pointer_in_memory() -> None:
    agree(case("ljmp [0x9800]\n", ["JMP_FAR_M"], memory={0x9800: struct.pack("<IH", 0, SEL_TSS_B)}))


def test_call_to_a_tss_nests_the_new_task() -> None:
    o = agree(case("lcall 0x50, 0\n", CALL))
    assert o.ours.regs["eflags"] & 0x4000  # NT
    assert word(o, TSS_B) == 0x28  # the back link
    assert access_byte(o, 0x28) == 0x8B and access_byte(o, SEL_TSS_B) == 0x8B  # both busy


def test_call_through_a_task_gate_and_iret_back() -> None:
    o = agree(case("lcall 0x58, 0\n", ["CALL_FAR_PTR", "IRET"], task_code="mov eax, 5\niretd\n"))
    assert o.ours.regs["eax"] == 0xA and o.ours.regs["eip"] == fm.CODE + 14  # the caller's, after the CALL
    assert not o.ours.regs["eflags"] & 0x4000
    assert access_byte(o, 0x28) == 0x8B and access_byte(o, SEL_TSS_B) == 0x89  # IRET frees the task it leaves
    assert dword(o, TSS_B + 0x28) == 5 and dword(o, TSS_B + 0x20) == TASK_CODE + 6  # B saved after its IRET


def test_jmp_through_a_task_gate() -> None:
    agree(case("ljmp 0x58, 0\n", JMP))


def test_the_new_task_gets_its_ldt_and_an_outer_privilege_level() -> None:
    agree(case("ljmp 0x50, 0\n", JMP, tss_b={"ldt": SEL_LDT}))
    o = agree(case("ljmp 0x50, 0\n", JMP, tss_b={"cs": fm.SEL_CODE3, "ss": fm.SEL_DATA3, "ds": fm.SEL_DATA3}))
    assert o.ours.regs["cs"] == fm.SEL_CODE3


def test_iret_with_nt_returns_to_the_back_link() -> None:
    # The fresh machine's task made to look nested in a busy task B: its back link names B.
    text = "pushfd\nor dword ptr [esp], 0x4000\npopfd\nmov word ptr [0x1000], 0x50\niretd\n"
    forms = ["PUSHFD", "OR_RMv_Iv", "POPFD", "MOV_RMv_Iv", "IRET"]
    o = agree(case(text, forms, tss_b_access=0x8B))
    assert o.ours.regs["eax"] == 0x11 and access_byte(o, 0x28) == 0x89
    assert not dword(o, fm.TSS + 0x24) & 0x4000  # the old task saved with NT clear


# ------------------------------------------------------------ the checks before the switch (#GP, #TS, #NP)
# Both machines raise the same vector; the error codes come from the interpreter (unicorn does
# not show them), as the SDM's JMP, CALL and IRET pages give them.

CHECKS = [
    # (what, snippet, forms, case arguments, vector, error code)
    ("a busy TSS", "ljmp 0x50, 0\n", JMP, {"tss_b_access": 0x8B}, 13, SEL_TSS_B),
    ("a CALL to a busy TSS", "lcall 0x50, 0\n", CALL, {"tss_b_access": 0x8B}, 13, SEL_TSS_B),
    ("the current task", "ljmp 0x28, 0\n", JMP, {}, 13, 0x28),
    ("a TSS limit below 0x67", "ljmp 0x50, 0\n", JMP, {"tss_b_limit": 0x60}, 10, SEL_TSS_B),
    ("a TSS not present", "ljmp 0x50, 0\n", JMP, {"tss_b_access": 0x09}, 11, SEL_TSS_B),
    ("a task gate not present", "ljmp 0x58, 0\n", JMP, {"gate_present": False}, 11, SEL_GATE_B),
    ("a task gate whose DPL is below the RPL", "lcall 0x5b, 0\n", CALL, {}, 13, SEL_GATE_B),
    ("a TSS whose DPL is below the RPL", "ljmp 0x53, 0\n", JMP, {}, 13, SEL_TSS_B),
    ("a task gate to a busy TSS", "lcall 0x58, 0\n", CALL, {"tss_b_access": 0x8B}, 13, SEL_TSS_B),
]


@pytest.mark.parametrize(("what", "text", "forms", "args", "vector", "error"), CHECKS, ids=[c[0] for c in CHECKS])
def test_a_failed_check_leaves_the_old_task(
    what: str, text: str, forms: list[str], args: dict, vector: int, error: int
) -> None:
    o = agree(case(text, forms, **args))
    assert (o.ours.exception, o.ours.error_code) == (vector, error)
    assert o.ours.regs["eip"] == fm.CODE + 7 and o.ours.regs["eax"] == 0xA  # at the JMP or CALL
    assert dword(o, fm.TSS + 0x20) == 0  # nothing saved


def test_iret_to_a_back_link_that_is_not_busy_is_ts() -> None:
    text = "pushfd\nor dword ptr [esp], 0x4000\npopfd\nmov word ptr [0x1000], 0x50\niretd\n"
    o = agree(case(text, ["PUSHFD", "OR_RMv_Iv", "POPFD", "MOV_RMv_Iv", "IRET"]))
    assert (o.ours.exception, o.ours.error_code) == (10, SEL_TSS_B)


# ------------------------------------------------------------ unicorn's deviations, each proven


def explained_by(c: Case, o: Outcome, name: str) -> None:
    assert differences(o), "no difference left to explain"
    d = deviations.explain(c, o)
    assert d is not None and d.name == name, d


def test_the_t_bit_raises_db_in_the_new_task() -> None:
    # SDM 7.2.1: T set in the new TSS: #DB when the task switch completes. QEMU ignores it.
    t = bytearray(tss32(fm.CODE + 14))  # the end of the snippet
    t[0x64] = 1
    c = case("ljmp 0x50, 0\n", JMP, memory={TSS_B: bytes(t)})
    o = run_both(c)
    assert o.ours.exception == 1 and o.ours.regs["eax"] == 0x11  # in the new task, before its first instruction
    assert o.theirs.exception is None
    explained_by(c, o, "tss-trap-bit")


NEW_TASK_FAULTS = [
    ("a null CS", {"cs": 0}, 10, 0),
    ("an LDT selector that is not an LDT", {"ldt": SEL_TSS_B}, 10, SEL_TSS_B),
    ("an SS of another privilege level", {"ss": fm.SEL_DATA3}, 10, fm.SEL_DATA3 & ~3),
    (
        "an EIP past the new CS limit",
        {"eip": 0x20000, "cs": fm.SEL_CODE16, "ss": fm.SEL_DATA16, "ds": fm.SEL_DATA16},
        13,
        0,
    ),
]


@pytest.mark.parametrize(("what", "tss", "vector", "error"), NEW_TASK_FAULTS, ids=[f[0] for f in NEW_TASK_FAULTS])
def test_a_fault_loading_the_new_task_is_the_new_tasks(what: str, tss: dict, vector: int, error: int) -> None:
    # SDM 7.3, step 14 and Table 7-1: after the commit point, a fault is raised in the new task.
    c = case("ljmp 0x50, 0\n", JMP, tss_b=tss)
    o = run_both(c)
    assert (o.ours.exception, o.ours.error_code) == (vector, error)
    assert o.ours.regs["eip"] == tss.get("eip", fm.CODE + len(c.spec.code)) and o.ours.regs["eax"] == 0x11
    assert dword(o, fm.TSS + 0x20) == fm.CODE + 14  # the old task was saved
    assert o.theirs.exception == vector and o.theirs.regs["eip"] == fm.CODE + 7
    explained_by(c, o, "task-fault-eip")


def test_the_segments_a_task_switch_loads_are_marked_accessed() -> None:
    c = case("ljmp 0x50, 0\n", JMP, tss_b={"ds": SEL_FRESH_DATA})
    o = run_both(c)
    assert access_byte(o, SEL_FRESH_DATA) == 0x93 and o.their_memory[NEW_GDT + SEL_FRESH_DATA + 5] == 0x92
    explained_by(c, o, "task-switch-accessed")


def test_a_16_bit_tss() -> None:
    # The 16-bit TSS's layout (SDM 7.6): IP at 0x0E, FLAGS 0x10, AX-DI 0x12-0x20, ES CS SS DS
    # 0x22-0x28; the old 32-bit task is saved in its own, 32-bit format.
    c = case("ljmp 0x60, 0\nhlt\n", JMP, memory={TSS_16: tss16(fm.CODE + 14)})
    o = run_both(c)
    assert o.ours.exception is None and o.ours.regs["cs"] == fm.SEL_CODE16 and o.ours.regs["ss"] == fm.SEL_DATA16
    assert o.ours.regs["eax"] == 0xFFFF1111 and o.ours.regs["esp"] == 0xFFFF0000 | TASK_STACK_TOP
    assert dword(o, fm.TSS + 0x20) == fm.CODE + 14 and dword(o, fm.TSS + 0x28) == 0xA
    assert o.theirs.exception == 10
    explained_by(c, o, "tss16-layout")
