"""Minimal reproductions of the ring1 defects the procs kernel (guests/procs.c) ran into, each
a few instructions on the fresh machine, in every mode. Where a mode has the defect its test
is a strict expected failure naming it; test_procs.py's RING1_DEFECTS points here.

1. (fixed: Vmm._flags_as_first_seen restores them) bt, with a clock (every `ring1 run`):
   translated kernel code lost CF set by a CMP when the next instruction, a MOV load (which
   sets no flags), took a hidden page fault; the JAE after it then read the wrong CF. procs's
   sbrk loop (`add ebp, 0x1000; or eax, 7; mov [ebx], eax; cmp ebp, edi; mov eax, ds:current;
   jae out`) stopped after one page, and init died of a #PF on the heap page sbrk mapped.
2. (fixed: the kernel run directly loads the guest's own selectors from a shadow GDT,
   Vmm._kernel_shadow_gdt) trap: an interrupt taken in user mode entered the guest kernel's
   handler (run directly at CPL 1) with DS and ES holding the VMM's slot selectors (procs saw
   ff19 and ff01), not the user's 0x23; the kernel saved them (PUSH DS), restored them before
   IRET, and the user returned with null DS and ES: its next access raised #GP(0).
3. (fixed: user code runs with the guest's own GDT, LDT, IDTR, TR and CR0 FPU bits,
   runtime/vmm/descriptor_tables.py) bt and trap: user code run directly saw the VMM's state
   through the red pill's unprivileged instructions: SIDT the VMM's IDT, MOV from CS the VMM's
   shadow selector, SMSW the VMM's CR0, STR the VMM's TR.
4. (fixed with a clock: BareMachine._io_allowed and Vmm._io_allowed check what unicorn does
   not) IN at CPL 3 with IOPL 0 did not fault (unicorn's recorded io-permission deviation,
   tests/test_physcpu.py::test_io_at_cpl3_above_iopl_does_not_fault).
5. (fixed: BareMachine.run puts the guest's CR2 back) bare, under a timer every ~1,000
   instructions: procs's fork children died of a #PF "writing fffffffe". Unicorn's emu_stop
   with paging on writes `until - 1` into CR2 (tests/test_physcpu.py), and a clock stop between
   a copy-on-write fault's delivery and the kernel's MOV from CR2 gave the kernel 0xfffffffe.
"""

from __future__ import annotations

import struct

import pytest

from ring1.runtime import engines
from ring1.runtime.cpu import descriptors
from ring1.runtime.isa.assembler import assemble
from ring1.runtime.tools import fresh_machine as fm
from ring1.runtime.tools.fresh_machine import FreshSpec
from ring1.runtime.tools.snippet import interp_machine, run_interp, run_unicorn, run_vmm
from tests.test_interrupts import COUNT, HANDLER, VECTOR, TickPlatform
from tests.vmm.common import iret_to_user

MODES = ["interp", "bare", "bt", "trap"]



def run_fresh(
    mode: str,
    code: bytes,
    memory: dict[int, bytes] | None = None,
    handler: bytes | None = None,
    period_ns: int = 10**12,
    max_insns: int = 100_000,
    user_gate: bool = False,
    before=None,
):
    """`code` on the fresh machine under a platform with a clock, as `ring1 run` has one, so
    that the engines count instructions; stops at its end. Returns the engine (its `machine`
    holds the state). `user_gate`: VECTOR's gate has DPL 3 (a system call from user code);
    `before(machine)` runs just before the engine starts."""
    platform = TickPlatform(period_ns=period_ns)
    engine = engines.create(mode, fm.MEMORY_SIZE, platform)
    m = engine.machine
    interp_machine(FreshSpec(code=code, memory=memory or {}, regs={"esp": fm.STACK_TOP - 0x100}), m)
    if handler is not None:
        m.mem.write(HANDLER, handler)
        gate = descriptors.gate(HANDLER, fm.SEL_CODE0, descriptors.GATE_INTERRUPT32, dpl=3 if user_gate else 0)
        m.mem.write(fm.IDT + VECTOR * 8, gate)
    if before is not None:
        before(m)  # (the test's last touches to memory, after the handler's gate)
    engine.stop_addresses = {fm.CODE + len(code)}
    engine.start()
    outcome = engine.run(max_insns)
    assert outcome.reason == "stop-address", outcome
    return engine


@pytest.mark.parametrize("mode", MODES)
def test_cmp_flags_survive_a_hidden_fault_in_the_next_load(mode: str) -> None:
    # The load is the first touch of its page: a hidden fault under bt, nothing on bare metal.
    code = assemble(
        f"""
        mov ebp, 0x40003000
        mov edi, 0x40005000
        cmp ebp, edi                    # CF = 1: below
        mov eax, [{fm.DATA + 0x2000:#x}]
        jae 1f
        mov esi, 1
        jmp 2f
    1:  mov esi, 2
    2:  nop
        """,
        fm.CODE,
    ).code
    m = run_fresh(mode, code).machine
    assert m.regs[6] == 1  # JAE not taken


@pytest.mark.parametrize("mode", MODES)
def test_an_interrupt_from_user_mode_shows_the_kernel_the_users_data_selectors(mode: str) -> None:
    # User code with DS = ES = 0x23 spins; the timer's handler records DS and ES as it finds them
    # (as a kernel's entry stub pushes them) and returns.
    handler = assemble(
        f"""
        push eax
        mov eax, ds
        mov ss:[{COUNT + 12:#x}], eax
        mov eax, es
        mov ss:[{COUNT + 16:#x}], eax
        inc dword ptr ss:[{COUNT:#x}]
        pop eax
        iretd
        """,
        HANDLER,
    ).code
    code = assemble(
        f"""
        {iret_to_user(eflags=0x202)}
    user:
        mov ax, {fm.SEL_DATA3}
        mov ds, ax
        mov es, ax
    1:  cmp dword ptr [{COUNT:#x}], 1
        jb 1b
        """,
        fm.CODE,
    ).code
    m = run_fresh(mode, code, handler=handler, period_ns=20_000).machine
    assert (m.mem.read32(COUNT + 12) & 0xFFFF, m.mem.read32(COUNT + 16) & 0xFFFF) == (fm.SEL_DATA3, fm.SEL_DATA3)


@pytest.mark.parametrize("mode", MODES)
def test_stealth_instructions_at_cpl_3_show_the_guests_state(mode: str) -> None:
    code = assemble(
        f"""
        sidt [{fm.DATA:#x}]
        mov eax, cs
        smsw ebx
        str ecx
        """,
        fm.CODE,
    ).code
    spec = FreshSpec(code=code, cpl=3)
    runs = {"interp": run_interp, "bare": run_unicorn}
    result = runs[mode](spec, keep_memory=True) if mode in runs else run_vmm(spec, mode, keep_memory=True)
    assert result.stop == "end", result
    idtr = result.memory[fm.DATA : fm.DATA + 6]
    limit, base = struct.unpack("<HI", idtr)
    assert (base, limit) == (fm.IDT, 256 * 8 - 1)
    assert result.regs["eax"] & 0xFFFF == fm.SEL_CODE3
    assert result.regs["ebx"] & 0xFFFF == 0x0011  # PE and ET: the fresh machine's CR0
    assert result.regs["ecx"] & 0xFFFF == fm.SEL_TSS


@pytest.mark.parametrize("mode", MODES)
def test_in_at_cpl_3_with_iopl_0_takes_gp(mode: str) -> None:
    # As procs's gp program does it: under a clock (the VMM checks IOPL for code it runs
    # directly where it counts instructions).
    code = assemble(
        f"""
        {iret_to_user(eflags=0x2)}
    user:
        in al, 0x80
        nop
        """,
        fm.CODE,
    )
    platform = TickPlatform(period_ns=10**12)
    engine = engines.create(mode, fm.MEMORY_SIZE, platform)
    interp_machine(FreshSpec(code=code.code, regs={"esp": fm.STACK_TOP - 0x100}), engine.machine)
    engine.stop_on_event = True
    engine.stop_addresses = {fm.CODE + len(code.code)}
    engine.start()
    outcome = engine.run(1000)
    assert outcome.reason == "event" and outcome.event.vector == 13 and outcome.event.error_code == 0, outcome
    assert engine.machine.state.eip == code.labels["user"]


PF_HANDLER = 0x9800
RESULT = fm.DATA + 0x100


@pytest.mark.parametrize("mode", MODES)
def test_cr2_survives_a_clock_stop_in_the_page_fault_handler(mode: str) -> None:
    # A #PF whose handler spins (the clock stops the run every 200 instructions) before it
    # reads CR2: the fault's address, as on bare metal, in every mode.
    from tests.vmm.common import ENABLE_PAGING, PD, paging_memory

    handler = assemble(
        f"""
        mov ecx, 3000
    1:  loop 1b
        mov eax, cr2
        mov ss:[{RESULT:#x}], eax
        add dword ptr [esp + 4], 6      # past the faulting MOV (6 bytes)
        add esp, 4                      # the error code
        iretd
        """,
        PF_HANDLER,
    ).code
    code = ENABLE_PAGING + assemble("mov ebx, [0x300000]\nhlt", 0).code
    memory = {**paging_memory(), PF_HANDLER: handler}
    pd = bytearray(memory[PD])
    pd[1023 * 4 : 1024 * 4] = bytes(4)  # the top 4 MB unmapped, as procs has it (unicorn's probe faults there)
    memory[PD] = bytes(pd)
    memory[fm.IDT + 14 * 8] = descriptors.gate(PF_HANDLER, fm.SEL_CODE0, descriptors.GATE_INTERRUPT32)
    # No stop address: the run ends at the HLT (IF clear), and `bare` runs to no address of the
    # guest's, as in `ring1 run` (unicorn's probe at that `until - 1` faults on the unmapped top).
    engine = engines.create(mode, fm.MEMORY_SIZE, TickPlatform(period_ns=2_000))
    m = engine.machine
    interp_machine(FreshSpec(code=code, memory=memory, regs={"esp": fm.STACK_TOP - 0x100}), m)
    engine.start()
    outcome = engine.run(100_000)
    assert outcome.reason == "halt", outcome
    assert m.mem.read32(RESULT) == 0x300000
