"""User code run directly with the guest's own descriptor tables (runtime/vmm/descriptor_tables.py).

Under `bt` user code at CPL 3 runs on unicorn with the guest's GDT, LDT, IDTR and TR: its
segment loads, LAR/LSL/VERR and the stealth instructions see the guest's tables, at no exit.
Tables that would let CPL 3 code reach more privilege in the hardware (a call gate, a task gate
or a TSS with DPL 3) are refused, and so are segment registers whose table entry changed since
they were loaded (nonreversible): user code then runs with the VMM's slot descriptors, and
every result stays bare metal's.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest
from unicorn import UC_HOOK_CODE

from ring1.runtime.cpu import descriptors
from ring1.runtime.isa.assembler import assemble
from ring1.runtime.tools import fresh_machine as fm
from ring1.runtime.tools.fresh_machine import FreshSpec
from ring1.runtime.tools.snippet import run_interp, run_unicorn, run_vmm
from ring1.runtime.vmm import Vmm
from tests.test_interrupts import HANDLER, VECTOR
from tests.test_procs_ring1_defects import run_fresh
from tests.vmm.common import iret_to_user


def _three_ways(spec: FreshSpec):
    """The snippet under interp, bare and bt; the bt run's Vmm for its stats."""
    vmm = Vmm(fm.MEMORY_SIZE, mode="bt")
    results = {
        "interp": run_interp(spec, keep_memory=True),
        "bare": run_unicorn(spec, keep_memory=True),
        "bt": run_vmm(spec, "bt", keep_memory=True, vmm=vmm),
    }
    return results, vmm


def _same(results) -> None:
    for mode in ("bare", "bt"):
        assert results[mode].stop == results["interp"].stop == "end", (mode, results[mode])
        assert results[mode].regs == results["interp"].regs, mode


def test_user_segment_loads_and_descriptor_queries_run_directly() -> None:
    code = assemble(
        f"""
        mov ax, {fm.SEL_WINDOW3}
        mov ds, ax
        mov ebx, [4]
        lar ecx, eax
        lsl edx, eax
        mov ax, {fm.SEL_CODE0}
        lar esi, eax
        setz al
        movzx edi, al
        mov ax, {fm.SEL_DATA3}
        mov es, ax
        mov ebp, cs
        """,
        fm.CODE,
    ).code
    spec = FreshSpec(code=code, cpl=3, memory={fm.DATA + 4: (0x5EED1E55).to_bytes(4, "little")})
    results, vmm = _three_ways(spec)
    _same(results)
    assert results["bt"].regs["ebx"] == 0x5EED1E55  # DS's base was the window's
    assert results["bt"].regs["edi"] == 0  # LAR of a DPL-0 selector at CPL 3: ZF clear
    assert vmm.stats["direct_own_tables"] >= 1
    assert vmm.stats["emulated_after_trap"] == 0  # the loads and LAR/LSL ran in the hardware
    assert vmm.stats["user_segment_loads"] >= 1  # and the virtual CPU took what they loaded


# The ring-0 code the hostile user programs below try to reach (CS shows where it ran).
KERNEL_SIDE = """
    kernel_side:
        mov ebx, cs
        mov ecx, 0x1234
    done:
        nop
"""


def _gate_program() -> tuple[bytes, dict[int, bytes], int, int]:
    """User code far-calls through a DPL-3 call gate (in the fresh GDT's slot of the 16-bit code
    segment, selector 0x33) to ring-0 code."""
    gate_index = fm.SEL_CODE16 // 8
    text = f"""
        call 0x{gate_index * 8 | 3:x}:0
        jmp done
    {KERNEL_SIDE}"""
    code = assemble(text, fm.CODE)
    target = code.labels["kernel_side"]
    gate = descriptors.gate(target, fm.SEL_CODE0, descriptors.GATE_CALL32, dpl=3)
    memory = {fm.GDT + gate_index * 8: gate}
    end = code.labels["done"]
    return code.code, memory, target, end


TASK_TSS = fm.DATA + 0x8000


def _task_program() -> tuple[bytes, dict[int, bytes], int, int]:
    """User code far-jumps to a TSS descriptor with DPL 3 (in the fresh GDT's slot of the 16-bit
    data segment, selector 0x3B) whose task starts in ring-0 code: a hardware task switch."""
    tss_index = fm.SEL_DATA16 // 8
    text = f"""
        jmp 0x{tss_index * 8 | 3:x}:0
    {KERNEL_SIDE}"""
    code = assemble(text, fm.CODE)
    target = code.labels["kernel_side"]
    tss = bytearray(0x68)
    struct.pack_into("<II", tss, 0x20, target, 0x2)  # EIP, EFLAGS
    struct.pack_into("<I", tss, 0x38, fm.STACK0_TOP)  # ESP
    for offset, sel in zip(
        range(0x48, 0x60, 4), (fm.SEL_DATA0, fm.SEL_CODE0, fm.SEL_DATA0, fm.SEL_DATA0, 0, 0), strict=True
    ):
        struct.pack_into("<I", tss, offset, sel)  # ES CS SS DS FS GS
    memory = {fm.GDT + tss_index * 8: descriptors.segment(TASK_TSS, 0x67, 0xE9, 0), TASK_TSS: bytes(tss)}
    return code.code, memory, target, code.labels["done"]


def _escaped_to_cpl0(vmm: Vmm, target: int, end: int) -> list[int]:
    """Every address of the ring-0 target the hardware executed where the guest put it (not
    translated): guest kernel code run at the real CPL 0."""
    seen: list[int] = []
    vmm.uc.hook_add(UC_HOOK_CODE, lambda uc, address, size, _d: seen.append(address), None, target, end - 1)
    return seen


def test_a_dpl3_call_gate_keeps_the_guests_tables_out_of_the_hardware() -> None:
    # (Compared with interp only: unicorn itself aborts the process on this far CALL through a
    # call gate to CPL 0, test_the_gate_check_is_what_stops_the_escape.)
    code, memory, target, end = _gate_program()
    spec = FreshSpec(code=code, cpl=3, memory=memory)
    vmm = Vmm(fm.MEMORY_SIZE, mode="bt")
    escaped = _escaped_to_cpl0(vmm, target, end)
    bt = run_vmm(spec, "bt", vmm=vmm)
    interp = run_interp(spec)
    assert interp.stop == bt.stop == "end"
    assert bt.regs == interp.regs
    assert bt.regs["ebx"] == fm.SEL_CODE0 and bt.regs["ecx"] == 0x1234  # the gate was taken
    assert vmm.stats["direct_tables_refused"] >= 1
    assert escaped == []  # the ring-0 side ran translated, never as the guest's own bytes


ESCAPE_CHILD = """
import sys
from tests.vmm.test_direct_tables import _escaped_to_cpl0, _gate_program, _task_program
from ring1.runtime.tools import fresh_machine as fm
from ring1.runtime.tools.fresh_machine import FreshSpec
from ring1.runtime.tools.snippet import run_vmm
from ring1.runtime.vmm import Vmm, descriptor_tables
descriptor_tables.reachable_from_cpl3 = lambda raw: False
code, memory, target, end = {"gate": _gate_program, "task": _task_program}[sys.argv[1]]()
vmm = Vmm(fm.MEMORY_SIZE, mode="bt")
escaped = _escaped_to_cpl0(vmm, target, end)
run_vmm(FreshSpec(code=code, cpl=3, memory=memory), "bt", vmm=vmm)
print("escaped" if escaped else "contained", flush=True)
print("trapped" if vmm.stats["direct_own_tables"] and vmm.stats["traps"] else "not run directly", flush=True)
"""


def test_a_dpl3_tss_is_no_way_out_either() -> None:
    # A far JMP to a TSS descriptor with DPL 3: the tables are refused, the interpreter runs
    # the JMP (a task switch, spec/tasks.r1) into the new task's ring-0 code, which the VMM
    # translates: the hardware never runs it at the real CPL 0.
    code, memory, target, end = _task_program()
    spec = FreshSpec(code=code, cpl=3, memory=memory)
    vmm = Vmm(fm.MEMORY_SIZE, mode="bt")
    escaped = _escaped_to_cpl0(vmm, target, end)
    bt = run_vmm(spec, "bt", vmm=vmm)
    interp = run_interp(spec)
    assert interp.stop == bt.stop == "end"
    assert bt.regs == interp.regs
    assert bt.regs["ebx"] == fm.SEL_CODE0 and bt.regs["ecx"] == 0x1234  # the new task ran
    assert vmm.stats["direct_tables_refused"] >= 1
    assert escaped == []


@pytest.mark.parametrize("way", ["gate", "task"])
def test_without_the_table_check_the_vmms_tss_still_contains_the_hardware(way: str) -> None:
    """Defence in depth: with the table check switched off, user code runs with a DPL-3 call
    gate or TSS in the hardware's GDT, and the hardware does try the far transfer, but TR's
    cache is the VMM's TSS (Vmm._hardware_context): it gives no ring-0 stack for the gate
    (#TS) and is read-only for the task switch's save (#PF), so the VMM emulates the
    instruction and guest ring-0 code never runs at the real CPL 0. Run in a child process:
    were the hardware to take the way out, unicorn 2.1 may abort the whole process (it does,
    on the gate, with a TSS that has a ring-0 stack)."""
    root = Path(__file__).resolve().parents[2]
    child = subprocess.run(
        [sys.executable, "-c", ESCAPE_CHILD, way], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert child.returncode == 0 and child.stdout.split() == ["contained", "trapped"], (
        child.returncode,
        child.stdout,
        child.stderr,
    )


def test_a_segment_whose_descriptor_changed_keeps_its_cached_base() -> None:
    """The kernel loads ES with the user data selector, then moves that descriptor's base and
    drops to CPL 3: ES keeps the base it was loaded with (the CPU's descriptor cache), a fresh
    load of DS gets the new one."""
    code = assemble(
        f"""
        mov ax, {fm.SEL_DATA3}
        mov es, ax
        mov byte ptr [{fm.GDT + fm.SEL_DATA3 - 3 + 4:#x}], 0x01
        {iret_to_user(eflags=0x2)}
    user:
        mov eax, es:[{fm.DATA:#x}]
        mov bx, {fm.SEL_DATA3}
        mov ds, bx
        mov ebx, ds:[0]
        mov ecx, es
        """,
        fm.CODE,
    ).code
    memory = {fm.DATA: (0x11111111).to_bytes(4, "little"), 2 * fm.DATA: (0x22222222).to_bytes(4, "little")}
    results, vmm = _three_ways(FreshSpec(code=code, memory=memory))
    _same(results)
    assert results["bt"].regs["eax"] == 0x11111111  # ES: base 0, as loaded
    assert results["bt"].regs["ebx"] == 0x11111111  # DS: base DATA, loaded after the change
    assert vmm.stats["direct_nonreversible"] >= 1


WINDOW_WORDS = {fm.DATA: (0x11111111).to_bytes(4, "little"), 2 * fm.DATA: (0x22222222).to_bytes(4, "little")}


def _window_load_around_a_system_call(kernel: str, handler: str, memory: dict[int, bytes], before=None):
    """The kernel runs `kernel` and IRETs to user code, which loads DS with the window selector,
    reads [0] into EAX, makes a system call (whose handler is `handler`, then IRET), loads DS
    again and reads [0] into EBX. Under interp, bare and bt, which must agree: the registers
    (the same for all) and bt's statistics."""
    code = assemble(
        f"""
        {kernel}
        {iret_to_user(eflags=0x2)}
    user:
        mov bx, {fm.SEL_WINDOW3}
        mov ds, bx
        mov eax, ds:[0]
        int 0x{VECTOR:x}
        mov ds, bx
        mov ebx, ds:[0]
        """,
        fm.CODE,
    ).code
    handler_code = assemble(handler + "\niretd", HANDLER).code
    regs, stats = {}, None
    for mode in ("interp", "bare", "bt"):
        engine = run_fresh(mode, code, memory, handler_code, user_gate=True, before=before)
        regs[mode] = list(engine.machine.regs)
        if mode == "bt":
            stats = engine.vmm.stats
    assert regs["interp"] == regs["bare"] == regs["bt"]
    return regs, stats


def test_a_kernel_write_to_the_gdt_is_seen_by_the_next_user_load() -> None:
    """The tables are traced: the kernel's write to a descriptor after user code ran with its
    tables drops the verdict, and user code's next load gets the new descriptor."""
    # The handler moves the window selector's base from DATA to 2 * DATA and returns.
    handler = f"mov byte ptr ss:[{fm.GDT + fm.SEL_WINDOW3 - 3 + 4:#x}], 0x02"
    regs, stats = _window_load_around_a_system_call("", handler, WINDOW_WORDS)
    assert regs["bt"][0] == 0x11111111 and regs["bt"][3] == 0x22222222  # EAX, EBX
    assert stats["descriptor_table_writes"] >= 1
    # Back in user code DS still holds the old descriptor: nonreversible until it is loaded again
    # (the interpreter runs the user's instructions until then).
    assert stats["direct_nonreversible"] >= 1


# ---------------------------------------------------------------- the guest's CR0 FPU bits

FPU_CASES = {
    # name: (code, CPL, CR0 bits besides PE and ET)
    "x87 with TS at CPL 3": ("fld1", 3, fm.CR0_TS),
    "x87 with TS at CPL 0": ("fld1", 0, fm.CR0_TS),
    "x87 with EM at CPL 3": ("fld1", 3, fm.CR0_EM),
    "WAIT with MP and TS": ("fwait", 3, fm.CR0_TS | fm.CR0_MP),
    "FXSAVE with TS at CPL 0": (f"fxsave [{fm.DATA:#x}]", 0, fm.CR0_TS),
    "FNSAVE with TS at CPL 0": (f"fnsave [{fm.DATA:#x}]", 0, fm.CR0_TS),
}


@pytest.mark.parametrize("name", sorted(FPU_CASES))
def test_fpu_instructions_fault_with_nm_where_the_guests_cr0_says(name: str) -> None:
    """The hardware holds the guest's CR0 MP, EM and TS in guest context, translated or direct:
    the #NM of lazy FPU switching reaches the guest kernel as on bare metal (FXSAVE and FNSAVE,
    callouts under bt, raise it from the spec's semantics)."""
    text, cpl, bits = FPU_CASES[name]
    spec = FreshSpec(code=assemble(text, fm.CODE).code, cpl=cpl, cr0_bits=bits)
    bare = run_unicorn(spec)
    vmm = Vmm(fm.MEMORY_SIZE, mode="bt")
    bt = run_vmm(spec, "bt", vmm=vmm)
    assert (bare.stop, bare.exception) == ("exception", 7)
    assert (bt.stop, bt.exception, bt.regs) == (bare.stop, bare.exception, bare.regs)


@pytest.mark.parametrize("cpl", [0, 3])
def test_wait_with_ts_alone_runs(cpl: int) -> None:
    spec = FreshSpec(code=assemble("fwait", fm.CODE).code, cpl=cpl, cr0_bits=fm.CR0_TS)
    assert run_unicorn(spec).stop == run_vmm(spec, "bt").stop == "end"


def test_clts_in_translated_code_reaches_the_hardware() -> None:
    """CLTS is a callout; the next x87 instruction, translated, must not fault with the stale TS."""
    spec = FreshSpec(code=assemble("clts\nfld1\nfstp st(0)", fm.CODE).code, cr0_bits=fm.CR0_TS)
    bare, bt = run_unicorn(spec), run_vmm(spec, "bt")
    assert bare.stop == bt.stop == "end"
    assert bt.regs == bare.regs


@pytest.mark.parametrize("leaf", [0, 1, 0x80000000])
def test_cpuid_answers_user_code_as_it_answers_the_kernel(leaf: int) -> None:
    """User code runs CPUID on the hardware: the VMM's hook answers with ring1's CPU model, the
    same the kernel's callout (and the interpreter, and bare) give, not unicorn's own."""
    code = assemble("cpuid", fm.CODE).code
    answers = {}
    for cpl in (0, 3):
        spec = FreshSpec(code=code, cpl=cpl, regs={"eax": leaf})
        vmm = Vmm(fm.MEMORY_SIZE, mode="bt")
        bt, interp = run_vmm(spec, "bt", vmm=vmm), run_interp(spec)
        assert bt.stop == interp.stop == "end"
        answers[cpl] = [bt.regs[r] for r in ("eax", "ebx", "ecx", "edx")]
        assert answers[cpl] == [interp.regs[r] for r in ("eax", "ebx", "ecx", "edx")]
        if cpl == 3:
            assert vmm.stats["cpuid_direct"] == 1  # it ran on the hardware, and the hook answered
    assert answers[0] == answers[3]


# ---------------------------------------------------------------- the tables' mappings


REMAP_PD, REMAP_PT, GDT_COPY = 0x60000, 0x61000, 0x70000


@pytest.mark.parametrize("remap", ["the tables' page", "another page"])
def test_a_mapping_change_drops_the_verdict_only_if_the_tables_moved(remap: str) -> None:
    """With paging on, the kernel's system-call handler rewrites a PTE and INVLPGs it: the
    tables' own page (now mapping a copy of it whose window descriptor has another base: user
    code's next load gets that one, as on bare metal), or another page (the verdict on the
    tables stands: they are not read again)."""
    page = 0 if remap == "the tables' page" else 0x40
    paging_on = f"mov eax, {REMAP_PD:#x}\nmov cr3, eax\nmov eax, cr0\nor eax, 0x80000000\nmov cr0, eax"
    handler = f"""
        mov dword ptr ss:[{REMAP_PT + page * 4:#x}], {(GDT_COPY if page == 0 else page << 12) | 7:#x}
        invlpg ss:[{page << 12:#x}]
    """
    pt = b"".join(struct.pack("<I", (i << 12) | 7) for i in range(fm.MEMORY_SIZE >> 12))
    pd = struct.pack("<I", REMAP_PT | 7) + bytes(4092)
    memory = {REMAP_PD: pd, REMAP_PT: pt, **WINDOW_WORDS}
    regs, stats = _window_load_around_a_system_call(paging_on, handler, memory, before=_copy_page_zero)
    moved = page == 0
    assert regs["bt"][0] == 0x11111111 and regs["bt"][3] == (0x22222222 if moved else 0x11111111)
    assert stats["descriptor_table_checks"] == (2 if moved else 1)


def _copy_page_zero(m) -> None:
    """GDT_COPY: page 0 (IVT, GDT, IDT) as the fresh machine has it, the window descriptor's
    base moved from DATA to 2 * DATA."""
    copy = bytearray(m.mem.read(0, 0x1000))
    copy[fm.GDT + (fm.SEL_WINDOW3 & ~7) + 4] = 0x02
    m.mem.write(GDT_COPY, bytes(copy))
