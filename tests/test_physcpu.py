"""Unicorn as the physical CPU: the measured facts ring1's VMM and bare mode build on.

Each test pins down one behaviour of unicorn (../shared/notes/unicorn-as-cpu.md) that
runtime/physcpu.py, runtime/hostsync.py, runtime/bare.py or runtime/vmm.py depend on or work
around. They are written so that a unicorn release that changes the behaviour fails here,
in a test named after the fact, instead of somewhere deep inside a VMM run: then the
workaround (or the protection argument built on the fact) must be reconsidered.
"""

from __future__ import annotations

import struct

import pytest
from unicorn import x86_const as X

from ring1.runtime import descriptors, fresh
from ring1.runtime.hostsync import calibrate, read_into_machine
from ring1.runtime.machine import Machine
from ring1.runtime.memory import PhysicalMemory
from ring1.runtime.physcpu import PhysicalCpu, UcError
from ring1.runtime.snippet import interp_machine, unicorn_machine

GP = 13
DF = 8

# A small machine of our own (not the fresh one) with ring-0 and ring-1 descriptors.
SMALL_GDT = 0x100
SEL_R0_CODE, SEL_R0_DATA, SEL_R1_CODE, SEL_R1_DATA = 0x08, 0x10, 0x19, 0x21
ENTRY, RING1_CODE = 0x1000, 0x2000


def small_machine() -> PhysicalCpu:
    """Flat protected mode at CPL 0, put in place with reg_write as the VMM does."""
    mem = PhysicalMemory(0x10000)
    cpu = PhysicalCpu(mem)
    uc = cpu.uc
    gdt = (
        bytes(8)
        + descriptors.segment(0, 0xFFFFF, 0x9B, 0xC)  # 0x08 ring-0 code
        + descriptors.segment(0, 0xFFFFF, 0x93, 0xC)  # 0x10 ring-0 data
        + descriptors.segment(0, 0xFFFFF, 0xBB, 0xC)  # 0x18 ring-1 code
        + descriptors.segment(0, 0xFFFFF, 0xB3, 0xC)  # 0x20 ring-1 data
    )
    mem.write(SMALL_GDT, gdt)
    uc.reg_write(X.UC_X86_REG_GDTR, (0, SMALL_GDT, len(gdt) - 1, 0))
    uc.reg_write(X.UC_X86_REG_CR0, 0x11)
    uc.reg_write(X.UC_X86_REG_CS, SEL_R0_CODE)
    for rid in (X.UC_X86_REG_SS, X.UC_X86_REG_DS, X.UC_X86_REG_ES):
        uc.reg_write(rid, SEL_R0_DATA)
    uc.reg_write(X.UC_X86_REG_ESP, 0x8000)
    uc.reg_write(X.UC_X86_REG_EFLAGS, 0x2)
    return cpu


def iret_to(cs: int, ss: int, eip: int, esp: int = 0x7000, eflags: int = 0x2) -> bytes:
    """push ss; push esp; push eflags; push cs; push eip; iretd"""
    return (
        b"\x6a" + bytes([ss]) + b"\x68" + struct.pack("<I", esp) + b"\x68" + struct.pack("<I", eflags)
        + b"\x6a" + bytes([cs]) + b"\x68" + struct.pack("<I", eip) + b"\xcf"
    )  # fmt: skip


# ---------------------------------------------------------------- privilege levels


def test_reg_write_cannot_enter_ring_1() -> None:
    # QEMU derives the CPL from SS's DPL and loads SS through its protected-mode checks,
    # which refuse an SS whose DPL is not the current CPL: reg_write(SS) stops with an
    # exception. A CS written by reg_write reads back, but the CPU stays at CPL 0 (CLI runs).
    cpu = small_machine()
    uc = cpu.uc
    with pytest.raises(UcError):
        uc.reg_write(X.UC_X86_REG_SS, SEL_R1_DATA)
    assert uc.reg_read(X.UC_X86_REG_SS) == SEL_R0_DATA
    uc.reg_write(X.UC_X86_REG_CS, SEL_R1_CODE)
    assert uc.reg_read(X.UC_X86_REG_CS) == SEL_R1_CODE  # it looks like ring 1 ...
    cpu.memory.write(RING1_CODE, b"\xfa")  # cli
    uc.reg_write(X.UC_X86_REG_EFLAGS, 0x202)
    ev = cpu.run(RING1_CODE, RING1_CODE + 1)
    assert ev is None  # ... but CLI, privileged at CPL 1 with IOPL 0, ran: still CPL 0
    assert not uc.reg_read(X.UC_X86_REG_EFLAGS) & 0x200


def test_iret_enters_ring_1() -> None:
    # A real IRET from ring-0 code is the way in (the VMM's world_switch stub does this).
    cpu = small_machine()
    uc = cpu.uc
    stub = iret_to(SEL_R1_CODE, SEL_R1_DATA, RING1_CODE)
    cpu.memory.write(ENTRY, stub)
    cpu.memory.write(RING1_CODE, b"\x8c\xc8\x8c\xd3\xfa")  # mov eax, cs; mov ebx, ss; cli
    ev = cpu.run(ENTRY, RING1_CODE + 5)
    assert uc.reg_read(X.UC_X86_REG_EAX) & 0xFFFF == SEL_R1_CODE
    assert uc.reg_read(X.UC_X86_REG_EBX) & 0xFFFF == SEL_R1_DATA
    assert ev is not None and ev.vector == GP and ev.eip == RING1_CODE + 4  # CLI at CPL 1 > IOPL 0


def test_iret_enters_ring_3_fresh_machine() -> None:
    # snippet.unicorn_machine enters CPL 3 through its IRET stub; CLI then faults.
    cpu = unicorn_machine(fresh.FreshSpec(code=b"\x8c\xc8\xfa", cpl=3))
    ev = cpu.run(fresh.CODE, fresh.CODE + 3)
    assert cpu.uc.reg_read(X.UC_X86_REG_EAX) & 0xFFFF == fresh.SEL_CODE3
    assert ev is not None and (ev.vector, ev.eip) == (GP, fresh.CODE + 2)


# ---------------------------------------------------------------- unicorn#1883


def _cli_three_times(fix: str | None) -> list[int | None]:
    """Three CLIs at CPL 3, each run on its own after the previous one faulted."""
    cpu = unicorn_machine(fresh.FreshSpec(code=b"\xfa\xfa\xfa", cpl=3))
    clean = cpu.uc.context_save()
    vectors = []
    for i in range(3):
        if fix == "restore":
            cpu.uc.context_restore(clean)
            i = 0
        ev = cpu.run(fresh.CODE + i, fresh.CODE + 3)
        vectors.append(ev.vector if ev else None)
        if fix == "clear":
            cpu.clear_exception_latch()
    return vectors


def test_exception_latch_bug_unicorn_1883() -> None:
    # Upstream unicorn#1883: after a hooked exception the "exception in flight" latch stays
    # set, so the next #GP is reported as a double fault. If this test fails, unicorn has been
    # fixed and PhysicalCpu.clear_exception_latch (and the VMM's ring-0 context) can be reconsidered.
    vectors = _cli_three_times(None)
    assert vectors[:2] == [GP, DF]


def test_exception_latch_cleared_by_workaround() -> None:
    assert _cli_three_times("clear") == [GP, GP, GP]


def test_exception_latch_cleared_by_context_restore() -> None:
    # The VMM's world switch restores a context saved before any fault (Vmm.ring0).
    assert _cli_three_times("restore") == [GP, GP, GP]


# ---------------------------------------------------------------- memory


def test_mem_map_ptr_shares_memory_both_ways() -> None:
    mem = PhysicalMemory(0x10000)
    cpu = PhysicalCpu(mem)
    mem.write(0x3000, b"ring1")
    assert bytes(cpu.uc.mem_read(0x3000, 5)) == b"ring1"  # a Python write, seen by unicorn
    cpu.uc.mem_write(0x4000, b"\x12\x34")
    assert mem.read(0x4000, 2) == b"\x12\x34"  # unicorn's API write, seen in the buffer
    # A store made by emulated code lands in the same buffer.
    small = small_machine()
    small.memory.write(ENTRY, b"\xc7\x05\x00\x50\x00\x00\xef\xbe\xad\xde")  # mov dword [0x5000], 0xdeadbeef
    assert small.run(ENTRY, ENTRY + 10) is None
    assert small.memory.read32(0x5000) == 0xDEADBEEF


SUB = 0x6000  # a subroutine on a page of its own: mov eax, imm32; ret


def _call_sub() -> bytes:
    return b"\xe8" + struct.pack("<i", SUB - (ENTRY + 5)) + b"\x90"  # call SUB; nop


@pytest.mark.parametrize("how", ["python", "mem_write"])
def test_code_rewritten_from_outside_runs_stale_until_ctl_remove_cache(how: str) -> None:
    # Between two emu_start calls: a write through the shared buffer (or uc.mem_write) to code
    # unicorn already translated is not seen; ctl_remove_cache (PhysicalCpu.forget_code) fixes it.
    cpu = small_machine()
    uc = cpu.uc
    cpu.memory.write(ENTRY, _call_sub())
    cpu.memory.write(SUB, b"\xb8\x01\x00\x00\x00\xc3")  # mov eax, 1; ret
    cpu.run(ENTRY, ENTRY + 6)
    assert uc.reg_read(X.UC_X86_REG_EAX) == 1
    if how == "python":
        cpu.memory.write(SUB + 1, b"\x02")  # now mov eax, 2
    else:
        uc.mem_write(SUB + 1, b"\x02")
    uc.reg_write(X.UC_X86_REG_ESP, 0x8000)
    cpu.run(ENTRY, ENTRY + 6)
    assert uc.reg_read(X.UC_X86_REG_EAX) == 1  # the stale translation ran
    cpu.forget_code(SUB, SUB + 6)  # uc.ctl_remove_cache
    uc.reg_write(X.UC_X86_REG_ESP, 0x8000)
    cpu.run(ENTRY, ENTRY + 6)
    assert uc.reg_read(X.UC_X86_REG_EAX) == 2


@pytest.mark.parametrize("remove", [False, True])
def test_code_patched_inside_a_hook_runs_stale_until_ctl_remove_cache(remove: bool) -> None:
    # What the VMM does: it patches the TC (chaining, retranslation) from inside UC_HOOK_CODE,
    # in the middle of one emu_start. Without ctl_remove_cache the old code runs again.
    from unicorn import UC_HOOK_CODE

    cpu = small_machine()
    uc = cpu.uc
    # mov ecx, 2; L: call SUB; add ebx, eax; nop (hooked); loop L
    loop = ENTRY + 5
    code = b"\xb9\x02\x00\x00\x00" + b"\xe8" + struct.pack("<i", SUB - (loop + 5)) + b"\x01\xc3\x90\xe2\xf6"
    cpu.memory.write(ENTRY, code)
    cpu.memory.write(SUB, b"\xb8\x01\x00\x00\x00\xc3")

    def patch(uc, address, size, _user) -> None:
        cpu.memory.write(SUB + 1, b"\x10")  # mov eax, 0x10
        if remove:
            uc.ctl_remove_cache(SUB, SUB + 6)

    uc.hook_add(UC_HOOK_CODE, patch, None, loop + 7, loop + 7)
    assert cpu.run(ENTRY, ENTRY + len(code)) is None
    assert uc.reg_read(X.UC_X86_REG_EBX) == (0x11 if remove else 2)


def test_code_rewritten_by_guest_store_is_noticed() -> None:
    # Stores made by emulated code go through QEMU's self-modifying-code detection.
    cpu = small_machine()
    uc = cpu.uc
    code = b"\xb8\x01\x00\x00\x00"  # at ENTRY+10: mov eax, 1
    patch = b"\xc6\x05" + struct.pack("<I", ENTRY + 11) + b"\x02"  # mov byte [ENTRY+11], 2
    cpu.memory.write(ENTRY + 10, code)
    cpu.run(ENTRY + 10, ENTRY + 15)
    assert uc.reg_read(X.UC_X86_REG_EAX) == 1
    cpu.memory.write(ENTRY, patch + b"\x90" * (10 - len(patch)))
    cpu.run(ENTRY, ENTRY + 15)
    assert uc.reg_read(X.UC_X86_REG_EAX) == 2


def test_segment_limits_not_checked_on_data_accesses() -> None:
    # DS = the fresh machine's 64 KB window (base DATA, limit 0xFFFF). mov eax, [0x10000] is
    # past the limit: the CPU raises #GP(0) (the interpreter does); unicorn reads DATA + 0x10000.
    # The VMM's protection therefore rests on paging, not on truncated segments (spec/vmm.r1).
    code = b"\xa1\x00\x00\x01\x00"  # mov eax, [0x10000]
    beyond = fresh.DATA + 0x10000
    spec = fresh.FreshSpec(code=code, segs={"ds": fresh.SEL_WINDOW0}, memory={beyond: b"\x78\x56\x34\x12"})
    cpu = unicorn_machine(spec)
    ev = cpu.run(fresh.CODE, fresh.CODE + len(code))
    assert ev is None and cpu.uc.reg_read(X.UC_X86_REG_EAX) == 0x12345678
    from ring1.runtime.snippet import run_interp

    assert run_interp(spec).exception == GP


def test_null_segment_data_access_not_checked() -> None:
    # GS = 0 (a null selector, loadable into a data segment register). mov eax, [gs:0] uses it:
    # the CPU raises #GP(0) (the interpreter does); unicorn reads linear 0 (QEMU keeps no
    # "unusable" state for a null data segment). Found by tests/vmm/test_hostile.py, which
    # therefore compares that case with the interpreter.
    code = b"\x65\xa1\x00\x00\x00\x00"  # mov eax, gs:[0]
    spec = fresh.FreshSpec(code=code, segs={"gs": 0}, memory={0: b"\x78\x56\x34\x12"})
    cpu = unicorn_machine(spec)
    ev = cpu.run(fresh.CODE, fresh.CODE + len(code))
    assert ev is None and cpu.uc.reg_read(X.UC_X86_REG_EAX) == 0x12345678
    from ring1.runtime.snippet import run_interp

    r = run_interp(spec)
    assert (r.exception, r.error_code) == (GP, 0)


def test_segment_limits_checked_on_descriptor_loads() -> None:
    # ... while loading a selector past the GDT limit is checked (#GP), as the VMM relies on.
    code = b"\x8e\xd8"  # mov ds, ax
    cpu = unicorn_machine(fresh.FreshSpec(code=code, regs={"eax": 0xFFF8}))
    ev = cpu.run(fresh.CODE, fresh.CODE + 2)
    assert ev is not None and ev.vector == GP


def test_io_at_cpl3_above_iopl_does_not_fault() -> None:
    # IN at CPL 3 with IOPL 0 and the fresh TSS (I/O map base past its limit): the CPU raises
    # #GP(0); unicorn runs it. Recorded as the deviation "io-permission" in tests/diff/deviations.py
    # (proven there by tests/diff/test_deviations.py::test_io_permission_not_checked_by_unicorn).
    # For the VMM this means guest user code runs IN/OUT directly without a trap: the platform
    # hooks in PhysicalCpu see them, but the guest's TSS bitmap is not enforced by the hardware.
    from tests.diff.deviations import DEVIATIONS

    assert "io-permission" in {d.name for d in DEVIATIONS}
    code = b"\xe4\x80\xe6\x80"  # in al, 0x80; out 0x80, al
    cpu = unicorn_machine(fresh.FreshSpec(code=code, cpl=3))
    ev = cpu.run(fresh.CODE, fresh.CODE + len(code))
    assert ev is None and cpu.uc.reg_read(X.UC_X86_REG_EIP) == fresh.CODE + len(code)


def test_paging_protects_supervisor_and_read_only_pages() -> None:
    # The VMM's protection decision (spec/vmm.r1): supervisor-only pages are out of reach of
    # CPL 3; with CR0.WP, read-only pages cannot be written at CPL 1 either. #PF with CR2.
    cpu = small_machine()
    mem, uc = cpu.memory, cpu.uc
    pd, pt = 0x9000, 0xA000
    mem.write32(pd, pt | 0x7)
    for page in range(16):
        flags = 0x7  # present, writable, user
        if page == 0xC:
            flags = 0x1  # present, read-only, supervisor
        mem.write32(pt + page * 4, page << 12 | flags)
    mem.write(0xC000, b"\x11\x22\x33\x44")
    uc.reg_write(X.UC_X86_REG_CR3, pd)
    uc.reg_write(X.UC_X86_REG_CR0, 0x80010011)  # PG WP PE
    read = b"\x8b\x0d\x00\xc0\x00\x00"  # mov ecx, [0xc000]
    write = b"\x89\x0d\x00\xc0\x00\x00"  # mov [0xc000], ecx
    cpu.memory.write(ENTRY, iret_to(SEL_R1_CODE, SEL_R1_DATA, RING1_CODE))
    cpu.memory.write(RING1_CODE, read + write)
    clean = uc.context_save()
    ev = cpu.run(ENTRY, RING1_CODE + 12)
    assert uc.reg_read(X.UC_X86_REG_ECX) == 0x44332211  # CPL 1 reads a supervisor page
    assert ev is not None and (ev.vector, ev.eip, ev.cr2) == (14, RING1_CODE + 6, 0xC000)
    assert mem.read(0xC000, 4) == b"\x11\x22\x33\x44"
    uc.context_restore(clean)
    uc.reg_write(X.UC_X86_REG_CR0, 0x80000011)  # without WP, supervisor code may write it
    ev = cpu.run(ENTRY, RING1_CODE + 12)
    assert ev is None and mem.read(0xC000, 4) == b"\x11\x22\x33\x44"  # wrote back what it read


def test_exceptions_never_go_through_the_idt() -> None:
    # Faults arrive at the hook with EIP at the instruction, INT n with EIP after it.
    cpu = unicorn_machine(fresh.FreshSpec(code=b"\xcd\x21"))
    ev = cpu.run(fresh.CODE, fresh.CODE + 2)
    assert ev is not None and (ev.vector, ev.eip) == (0x21, fresh.CODE + 2)
    assert cpu.uc.reg_read(X.UC_X86_REG_ESP) == fresh.STACK_TOP  # no frame pushed
    cpu = unicorn_machine(fresh.FreshSpec(code=b"\xf7\xf1", regs={"ecx": 0}))  # div ecx
    ev = cpu.run(fresh.CODE, fresh.CODE + 2)
    assert ev is not None and (ev.vector, ev.eip) == (0, fresh.CODE)


@pytest.mark.parametrize("opcode", [0xE1, 0xE0], ids=["loope", "loopne"])
def test_loope_loopne_corrupt_lazy_flags(opcode: int) -> None:
    # mov al, 0x38; cmp al, 0x41; mov ecx, 1; loopne/loope +0; pushfd; pop ebx.
    # LOOPE/LOOPNE do not change the flags, so EBX holds CMP's: CF SF (0x83). Unicorn, when
    # ECX runs out, leaves them as if the last flag-setting instruction had produced ECX's
    # new value 0 (ZF PF, with CMP's CF: 0x43). Found by the VMM's equivalence tests (the
    # result depends on where unicorn's blocks begin, so `bare` and `bt` disagree with each
    # other and with the architecture); not in tests/diff/deviations.py because the
    # differential harness starts every case from flags written with reg_write, never lazy.
    # LOOP and JECXZ are fine. tests/vmm/programs.py uses LOOP only because of this.
    cpu = small_machine()
    code = b"\xb0\x38\x3c\x41\xb9\x01\x00\x00\x00" + bytes([opcode, 0]) + b"\x9c\x5b"
    cpu.memory.write(ENTRY, code)
    assert cpu.run(ENTRY, ENTRY + len(code)) is None
    assert cpu.uc.reg_read(X.UC_X86_REG_EBX) & 0x8D5 == 0x41  # architected: 0x81 (CF SF)
    loop = b"\xb0\x38\x3c\x41\xb9\x01\x00\x00\x00\xe2\x00\x9c\x5b"
    cpu = small_machine()
    cpu.memory.write(ENTRY, loop)
    assert cpu.run(ENTRY, ENTRY + len(loop)) is None
    assert cpu.uc.reg_read(X.UC_X86_REG_EBX) & 0x8D5 == 0x81  # LOOP: right
    from ring1.runtime.snippet import run_interp

    interp = run_interp(fresh.FreshSpec(code=code))
    assert interp.regs["ebx"] & 0x8D5 == 0x81  # the architected result, from the spec


def _paged_run_with_fault(code: bytes, fault: bool, code_hook: bool = False) -> tuple[int, int, int]:
    """Run `code` at CPL 0 with paging on; page 0xC000 is not present when `fault`, and is
    mapped (as the VMM's hidden page faults do) before the faulting instruction restarts.
    With `code_hook`, a (do-nothing) UC_HOOK_CODE covers everything.
    Returns (faults, EBX, the dword at 0xC000)."""
    from unicorn import UC_HOOK_CODE
    from unicorn.unicorn_const import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH

    cpu = small_machine()
    if code_hook:
        cpu.uc.hook_add(UC_HOOK_CODE, lambda *_: None)
    mem, uc = cpu.memory, cpu.uc
    pd, pt = 0x9000, 0xA000
    mem.write32(pd, pt | 0x7)
    for page in range(16):
        mem.write32(pt + page * 4, 0 if (page == 0xC and fault) else page << 12 | 0x7)
    uc.reg_write(X.UC_X86_REG_CR3, pd)
    uc.reg_write(X.UC_X86_REG_CR0, 0x80010011)
    mem.write(ENTRY, code)
    faults = 0
    ev = cpu.run(ENTRY, ENTRY + len(code))
    while ev is not None:
        assert ev.vector == 14 and ev.cr2 == 0xC000
        faults += 1
        mem.write32(pt + 0xC * 4, 0xC000 | 0x7)
        uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)
        cpu.clear_exception_latch()
        ev = cpu.run(uc.reg_read(X.UC_X86_REG_EIP), ENTRY + len(code))
    return faults, uc.reg_read(X.UC_X86_REG_EBX), mem.read32(0xC000)


SUB_SETS_CF = b"\xb8\x01\x00\x00\x00\xb9\x02\x00\x00\x00\x29\xc8"  # mov eax, 1; mov ecx, 2; sub eax, ecx


@pytest.mark.parametrize("modrm", [0x1D, 0x15], ids=["rcr", "rcl"])
def test_rcl_rcr_memory_restarted_after_a_page_fault_lose_cf(modrm: int) -> None:
    # sub (CF = 1, kept lazily); rcr/rcl byte [0xc000], 1; pushfd; pop ebx. QEMU materialises the
    # flags for RCL/RCR before the memory access; when the access faults, the CPU state is
    # restored to the instruction's start with the lazy-flags operation of before, but over
    # operands already overwritten, so the restarted RCR/RCL sees CF = 0 and the flags after it
    # are garbage. Found by the VMM's equivalence tests: under `bt` every first touch of a page
    # is a hidden page fault and a restart. ADC on memory, SETcc and PUSHF are not affected.
    # tests/vmm/programs.py draws RCL/RCR with register operands only because of this; the
    # remedy belongs in the spec (`translate callout` for RCL/RCR with a memory operand).
    code = SUB_SETS_CF + bytes([0xD0, modrm]) + struct.pack("<I", 0xC000) + b"\x9c\x5b"
    faults, flags, value = _paged_run_with_fault(code, fault=False)
    assert faults == 0 and flags & 1 == 0 and value == (0x80 if modrm == 0x1D else 1)  # CF 1 rotated in
    faults, flags, value = _paged_run_with_fault(code, fault=True)
    assert faults == 1 and value == 0 and flags & 0xC5 == 0x44  # CF lost: the old byte 0 rotated with CF 0
    adc = SUB_SETS_CF + b"\x80\x15" + struct.pack("<I", 0xC000) + b"\x00\x9c\x5b"  # adc byte [0xc000], 0
    assert _paged_run_with_fault(adc, fault=True)[1:] == _paged_run_with_fault(adc, fault=False)[1:]


# ---------------------------------------------------------------- hostsync


def test_calibrate_finds_the_context_layout() -> None:
    L = calibrate()
    assert L.seg_stride == 24
    assert L.segs < L.ldt < L.tr < L.gdt < L.idt
    assert L.regs + 8 * 8 <= L.eip or L.eip < L.regs


@pytest.mark.parametrize(
    "spec",
    [
        fresh.FreshSpec(code=b"\x90", regs={"eax": 0x11223344, "edi": 0xCAFEBABE, "eflags": 0x3ED7}),
        fresh.FreshSpec(code=b"\x90", segs={"ds": fresh.SEL_WINDOW0, "fs": 0}),
        fresh.FreshSpec(code=b"\x90", cpl=3, regs={"ebx": 7, "eflags": 0x8C5}),
        fresh.FreshSpec(code=b"\x90", real=True, regs={"ecx": 0x1234}),
    ],
    ids=["cpl0", "cpl0-window", "cpl3", "real"],
)
def test_read_into_machine_reproduces_the_fresh_machine(spec: fresh.FreshSpec) -> None:
    cpu = unicorn_machine(spec)
    cpu.uc.reg_write(X.UC_X86_REG_EIP, fresh.CODE)  # where a run of the snippet begins
    m = Machine(cpu.memory)
    read_into_machine(cpu.uc, m)
    want = interp_machine(spec)
    S, W = m.state, want.state
    assert m.regs == want.regs
    assert m.eflags() == want.eflags()
    assert S.eip == W.eip and (S.mode, S.cpl, S.code32, S.stack32) == (W.mode, W.cpl, W.code32, W.stack32)
    for s in range(6):
        assert (S.sel[s], S.base[s], S.limit[s]) == (W.sel[s], W.base[s], W.limit[s]), s
        if not spec.real and S.sel[s] & ~3:  # a null selector's hidden part is unusable either way
            assert S.attr[s] == W.attr[s], s
    assert (S.gdtr_base, S.gdtr_limit, S.idtr_base, S.idtr_limit) == (
        W.gdtr_base,
        W.gdtr_limit,
        W.idtr_base,
        W.idtr_limit,
    )
    assert S.cr[0] == W.cr[0] and S.cr[4] == W.cr[4]
    if not spec.real:
        assert (S.tr, S.tr_base, S.tr_limit, S.tr_attr) == (W.tr, W.tr_base, W.tr_limit, W.tr_attr)


def test_a_code_hook_makes_a_restarted_instruction_lose_af() -> None:
    # mov al, 1; add al, 0Fh (AF = 1, kept lazily); mov [0xc000], esp; pushfd; pop ebx. When the
    # store page-faults and restarts, AF survives, unless a UC_HOOK_CODE covers the code: then
    # the restarted instruction sees AF = 0. The VMM's instruction budget therefore counts with
    # a block hook (runtime/vmm.py, Vmm._count_block), never with a code hook over the TC.
    code = bytes.fromhex("b0 01 04 0f 89 25 00 c0 00 00 9c 5b")
    assert _paged_run_with_fault(code, fault=True)[:2] == (1, 0x12)
    assert _paged_run_with_fault(code, fault=False, code_hook=True)[:2] == (0, 0x12)
    assert _paged_run_with_fault(code, fault=True, code_hook=True)[:2] == (1, 0x2)  # AF lost
