"""Task gates in the IDT (spec/tasks.r1, interrupts.r1's `deliver`), in every engine: an exception
or INT n through a task gate switches tasks, nested (NT, the back link, the old task busy), and an
exception's error code is pushed on the new task's stack. The old task is saved at the faulting
instruction, or after INT n. Under `bare` the spec delivers and unicorn is handed the new task's
TR, LDTR, CR3 and CR0; under `bt` the VMM delivers and re-enters from the new task's state.

(The far JMP, CALL and IRET forms and their checks: tests/diff/test_tasks.py; a whole guest:
tests/test_tasks_guest.py.)
"""

from __future__ import annotations

import struct

import pytest

from ring1.runtime import engines
from ring1.runtime.cpu import descriptors
from ring1.runtime.isa.assembler import assemble
from ring1.runtime.tools import fresh_machine as fm
from ring1.runtime.tools.snippet import ClockedPlatform, interp_machine, run_interp, run_vmm

from .diff.test_tasks import (
    GDTR_AT,
    NEW_GDT,
    SEL_LDT,
    SEL_TSS_B,
    TASK_CODE,
    TASK_STACK_TOP,
    TSS_16,
    TSS_B,
    case,
    gdt,
    tss16,
    tss32,
)

MODES = ["interp", "bare", "bt"]
NEW_IDT = 0x30800
TASK_GATE = 5


def machine_after(
    mode: str,
    code: str,
    idt: dict[int, bytes],
    tss_b: bytes,
    stop: int = TASK_CODE,
    task_code: bytes = b"\xf4",
    **gdt_args,
) -> tuple:
    """Run `code` (after an LGDT of the test GDT and an LIDT of the fresh IDT with `idt`'s gates)
    in `mode`, events delivered, until `stop`: task B's first instruction at TASK_CODE."""
    table = gdt(**gdt_args)
    gates = bytearray(fm.idt_bytes())
    for vector, gate in idt.items():
        gates[vector * 8 : vector * 8 + 8] = gate
    text = f".intel_syntax noprefix\nlgdt [{GDTR_AT:#x}]\nlidt [{GDTR_AT + 8:#x}]\n" + code
    assembled = assemble(text, fm.CODE)
    memory = {
        NEW_GDT: table,
        GDTR_AT: struct.pack("<HI", len(table) - 1, NEW_GDT),
        GDTR_AT + 8: struct.pack("<HI", len(gates) - 1, NEW_IDT),
        NEW_IDT: bytes(gates),
        TSS_B: tss_b,
        TASK_CODE: task_code,
    }
    spec = fm.FreshSpec(code=assembled.code, regs={"eax": 0xA}, memory=memory)
    engine = engines.create(mode, fm.MEMORY_SIZE, ClockedPlatform())
    m = engine.machine
    interp_machine(spec, m)
    engine.stop_on_event = False
    engine.stop_addresses = {stop}
    engine.start()
    outcome = engine.run(10_000)
    return outcome, m, assembled.labels


def dword(m, address: int) -> int:
    return int.from_bytes(m.mem.read(address, 4), "little")


@pytest.mark.parametrize("mode", MODES)
def test_a_fault_through_a_task_gate_pushes_its_error_code_on_the_new_tasks_stack(mode: str) -> None:
    outcome, m, labels = machine_after(
        mode,
        "mov ax, 0xfff8\nfaulting: mov ds, ax\nhlt\n",
        {13: descriptors.gate(0, SEL_TSS_B, TASK_GATE)},
        tss32(TASK_CODE),
    )
    S = m.state
    assert outcome.reason == "stop-address", outcome
    assert S.tr == SEL_TSS_B and S.eflags & 0x4000  # NT: nested in the old task
    assert m.regs[4] == TASK_STACK_TOP - 4 and dword(m, TASK_STACK_TOP - 4) == 0xFFF8  # #GP(0xfff8)
    assert m.regs[0] == 0x11  # the new task's EAX
    assert S.cr[0] & 8  # CR0.TS
    assert dword(m, TSS_B) == 0x28  # the back link
    assert dword(m, fm.TSS + 0x20) == labels["faulting"]  # the old task, at the faulting instruction
    assert m.mem.read(NEW_GDT + 0x28 + 5, 1) == b"\x8b" and m.mem.read(NEW_GDT + SEL_TSS_B + 5, 1) == b"\x8b"


@pytest.mark.parametrize("mode", MODES)
def test_int_n_through_a_task_gate_saves_the_old_task_after_it(mode: str) -> None:
    outcome, m, labels = machine_after(
        mode,
        "int 0x40\nafter: hlt\n",
        {0x40: descriptors.gate(0, SEL_TSS_B, TASK_GATE)},
        tss32(TASK_CODE),
    )
    assert outcome.reason == "stop-address", outcome
    assert m.state.tr == SEL_TSS_B and m.regs[4] == TASK_STACK_TOP  # no error code
    assert dword(m, fm.TSS + 0x20) == labels["after"]


@pytest.mark.parametrize("mode", MODES)
def test_a_task_gate_to_a_busy_tss_is_gp_with_ext(mode: str) -> None:
    # #UD through a task gate whose TSS is busy: #GP(TSS selector + EXT), a benign and a
    # contributory exception, so delivered on its own, through the fresh IDT's #GP gate (to
    # HANDLER) in the old task.
    outcome, m, labels = machine_after(
        mode,
        "undefined: ud2\n",
        {6: descriptors.gate(0, SEL_TSS_B, TASK_GATE)},
        tss32(TASK_CODE),
        stop=fm.HANDLER,
        tss_b_access=0x8B,
    )
    assert outcome.reason == "stop-address", outcome
    assert m.state.tr == 0x28 and m.regs[4] == fm.STACK_TOP - 16
    assert dword(m, fm.STACK_TOP - 16) == SEL_TSS_B + 1  # the error code, EXT set
    assert dword(m, fm.STACK_TOP - 12) == labels["undefined"]


@pytest.mark.parametrize("mode", ["interp", "bt"])
def test_the_t_bit_of_a_task_gates_tss_raises_db_in_the_new_task(mode: str) -> None:
    # Not under bare: unicorn ignores the T bit (deviation tss-trap-bit). The #DB goes through
    # the fresh IDT's trap gate to HANDLER, from the new task (its EIP, TASK_CODE, on the frame).
    t = bytearray(tss32(TASK_CODE))
    t[0x64] = 1
    outcome, m, _ = machine_after(
        mode, "mov eax, 0xf\nmov dr7, eax\nint 0x40\nhlt\n", {0x40: descriptors.gate(0, SEL_TSS_B, TASK_GATE)}, bytes(t)
    )
    assert outcome.reason == "halt", outcome
    assert m.state.tr == SEL_TSS_B and m.state.dr[6] & 0x8000  # DR6.BT
    assert m.state.dr[7] & 0xFF == 0x0A  # L0 and L1 cleared by the switch, G0 and G1 kept
    assert m.state.eip == fm.HANDLER + 1  # the handler's HLT ran
    assert dword(m, TASK_STACK_TOP - 12) == TASK_CODE  # the #DB frame: the new task's first instruction


USER_TASK = assemble(
    ".intel_syntax noprefix\nallowed: in al, 0x80\nmov ecx, 0x5678\nmov edx, cs\nnext: in al, 0x81\nend: nop\n",
    TASK_CODE,
)


def user_task(bitmap_byte: int) -> bytes:
    """Task B at CPL 3 (IOPL 0) with a ring-0 stack and an I/O bitmap of its own: ports 0x80-0x87
    as `bitmap_byte` says (a set bit denies), every port below allowed."""
    t = bytearray(tss32(TASK_CODE, cs=fm.SEL_CODE3, ss=fm.SEL_DATA3, ds=fm.SEL_DATA3))
    struct.pack_into("<II", t, 4, fm.STACK0_TOP, fm.SEL_DATA0)  # ESP0, SS0
    return bytes(t) + bytes(0x10) + bytes([bitmap_byte, 0xFF])


@pytest.mark.parametrize("mode", MODES)
def test_the_io_bitmap_is_the_new_tasks(mode: str) -> None:
    # The fresh machine's TSS denies every port at CPL 3; task B's bitmap allows port 0x80 and
    # denies 0x81: the IN instructions of task B are checked against B's TSS, the current one.
    labels = USER_TASK.labels
    outcome, m, _ = machine_after(
        mode, "ljmp 0x50, 0\n", {}, user_task(0x02), stop=fm.HANDLER, task_code=USER_TASK.code, tss_b_limit=0x79
    )
    assert outcome.reason == "stop-address", outcome
    assert m.regs[1] == 0x5678 and m.regs[2] == fm.SEL_CODE3  # the first IN ran, at CPL 3
    frame = [dword(m, fm.STACK0_TOP - 24 + 4 * i) for i in range(6)]  # error, EIP, CS, EFLAGS, ESP, SS
    assert frame[:3] == [0, labels["next"], fm.SEL_CODE3]  # #GP(0) at the second
    assert m.state.tr == SEL_TSS_B


@pytest.mark.parametrize("mode", MODES)
def test_the_io_bitmap_of_the_new_task_allows(mode: str) -> None:
    outcome, m, _ = machine_after(
        mode,
        "ljmp 0x50, 0\n",
        {},
        user_task(0x00),
        stop=USER_TASK.labels["end"],
        task_code=USER_TASK.code,
        tss_b_limit=0x79,
    )
    assert outcome.reason == "stop-address", outcome
    assert m.regs[1] == 0x5678 and m.state.cpl == 3


# The differential cases (tests/diff/test_tasks.py) under `bt`: the far JMP, CALL and IRET are
# callouts, and the VMM goes on in the new task from the interpreter's state; each must end as
# the spec says, unicorn's deviations included (the T bit, a fault in the new task).
BT_CASES = {
    "jmp": ("ljmp 0x50, 0\n", ["JMP_FAR_PTR"], {}),
    "call through a gate, iret back": ("lcall 0x58, 0\n", ["CALL_FAR_PTR", "IRET"], {"task_code": "iretd\n"}),
    "a cpl-3 task": (
        "ljmp 0x50, 0\n",
        ["JMP_FAR_PTR"],
        {"tss_b": {"cs": fm.SEL_CODE3, "ss": fm.SEL_DATA3, "ds": fm.SEL_DATA3}},
    ),
    "the new task's ldt": ("ljmp 0x50, 0\n", ["JMP_FAR_PTR"], {"tss_b": {"ldt": SEL_LDT}}),
    "a busy tss": ("ljmp 0x50, 0\n", ["JMP_FAR_PTR"], {"tss_b_access": 0x8B}),
    "a fault in the new task": ("ljmp 0x50, 0\n", ["JMP_FAR_PTR"], {"tss_b": {"cs": 0}}),
    "a 16-bit tss": ("ljmp 0x60, 0\nhlt\n", ["JMP_FAR_PTR"], {"memory": {TSS_16: tss16(fm.CODE + 14)}}),
}


@pytest.mark.parametrize("name", BT_CASES)
def test_task_switches_under_bt_end_as_the_spec_says(name: str) -> None:
    text, forms, args = BT_CASES[name]
    spec = case(text, forms, **args).spec
    bt = run_vmm(spec, "bt", keep_memory=True)
    interp = run_interp(spec, keep_memory=True)
    assert (bt.stop, bt.exception, bt.error_code) == (interp.stop, interp.exception, interp.error_code)
    assert bt.regs == interp.regs
    assert bt.memory == interp.memory
