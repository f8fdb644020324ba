"""Hostile guest code under `bt`: the VMM's area, selectors, TC and GS; SYSENTER from user code.

The decision (spec/vmm.r1, header): the VMM lives in the top 4 MB of the linear address
space (VMM_BASE = 0xFFC00000), translated code reaches it through a reserved GS, and guest
instructions that use GS, or an absolute address in the VMM area, are emulated (callouts).
Unicorn checks no segment limits, so protection is by paging: the VMM's pages are
supervisor-only and read-only but for the vcpu page and the world switch's stack; "Guest
kernel code (CPL 1) can read the VMM's pages and write only those two, and they hold nothing
but the guest's own state [...]: corrupting them hurts only the guest." The VMM's control data
is on a read-only page (tests/vmm/test_escape.py tries to steer the VMM through it).

So for everything the translator can see (absolute addresses, GS, selectors, far transfers,
branch targets) the guest must get exactly what `bare` gives it. The one documented
exception is a load or store whose address is computed at run time (through a register):
it reaches the VMM's page, and that is asserted as documented below. In every case the run
ends cleanly (never a Python traceback; a VM stop would have to carry a diagnosis) and the
VMM's own read-only pages are unchanged.

SYSENTER (at the end): the hardware's SYSENTER MSRs are the VMM's, the guest's are virtual,
and a SYSENTER in user code run directly must never take the hardware to guest code at CPL 0.
"""

from __future__ import annotations

import struct

import pytest

from ring1.generated.rules import CONSTS as C
from ring1.runtime.cpu import descriptors
from ring1.runtime.tools import fresh_machine
from ring1.runtime.vmm import Vmm

from .common import (
    ENABLE_PAGING,
    PD,
    PTV,
    VMM_LINEAR,
    assert_clean,
    differences,
    new_vmm,
    paged,
    paging_memory,
    run,
    run_delivering,
)
from .programs import VMM_SELECTORS

F = fresh_machine.FreshSpec
GP, UD = 13, 6
VMM_OWN_SELECTORS = tuple(C[k] for k in ("SEL_VMM_CODE", "SEL_VMM_DATA", "SEL_TC_CODE", "SEL_VMM_GS", "SEL_VMM_TSS"))
TC_LINEAR = C["VMM_BASE"] + C["VMM_TC"]
STUBS_LINEAR = C["VMM_BASE"] + C["VMM_STUBS"]


def mov_eax(v: int) -> bytes:
    return b"\xb8" + struct.pack("<I", v & 0xFFFFFFFF)


def mov_ebx(v: int) -> bytes:
    return b"\xbb" + struct.pack("<I", v & 0xFFFFFFFF)


def vmm_read_only_pages(vmm: Vmm) -> bytes:
    """What the guest must never change: the VMM's own descriptors, its IDT, TSS and stubs."""
    gdt = C["VMM_GDT"]
    lo = gdt + (C["SEL_VMM_TSS"] & ~7)
    own = vmm.host.read(vmm.vmm_phys + lo, gdt + 0x10000 - lo)
    rest = vmm.host.read(vmm.vmm_phys + C["VMM_IDT"], C["VMM_STACK"] - C["VMM_IDT"])
    return own + rest


def vmm_read_only_pages_at(base: int) -> bytes:
    """The read-only pages as the VMM writes them for its place at `base` (it moves when the
    guest's tables claim its 4 MB: the bases in its descriptors change with it)."""
    vmm = new_vmm("bt")
    if base != vmm.base:
        vmm._place(base)
        vmm._setup_vmm_area()
    return vmm_read_only_pages(vmm)


def bare_and_bt(spec: fresh_machine.FreshSpec, ref: str = "bare"):
    vmm = new_vmm("bt")
    a, b = run(spec, ref), run(spec, "bt", vmm)
    assert_clean(b)
    assert vmm_read_only_pages(vmm) == vmm_read_only_pages_at(vmm.base), "the guest changed the VMM's read-only pages"
    return a, b, vmm


def same_as_bare(spec: fresh_machine.FreshSpec) -> fresh_machine.FreshSpec:
    a, b, _ = bare_and_bt(spec)
    assert a.stop in ("end", "exception"), (a.stop, a.diagnosis)
    assert differences(a, b) == []
    return a


# ---------------------------------------------------------------- the VMM's area as guest memory

# A guest with paging maps the top 4 MB to its own RAM (common.paging_memory): on `bare` those
# addresses are ordinary guest memory. Absolute addresses and GS-relative accesses there are
# callouts under bt, so the guest sees its own memory, with the accessed and dirty bits set.
VMM_AREA_ACCESSES = {
    "read disp32 (flat DS)": mov_eax(0) + b"\x8b\x05" + struct.pack("<I", VMM_LINEAR + 0x24),
    "read moffs (flat DS)": b"\xa1" + struct.pack("<I", VMM_LINEAR + 0x24),
    "read moffs byte": b"\xa0" + struct.pack("<I", VMM_LINEAR + 0x1FFF),
    "write disp32 to the vcpu page": b"\xc7\x05" + struct.pack("<II", VMM_LINEAR + 0x24, 0x3200),
    "write moffs to the vcpu page": mov_eax(0x3200) + b"\xa3" + struct.pack("<I", VMM_LINEAR + 0x24),
    "write moffs to the stack page": mov_eax(0x1234) + b"\xa3" + struct.pack("<I", VMM_LINEAR + C["VMM_STACK"] + 8),
    "add to the VMM's GDT (disp32)": b"\x83\x05" + struct.pack("<I", VMM_LINEAR + C["VMM_GDT"] + 0xFFF0) + b"\x01",
    # mov ax, 0x10; mov gs, ax; then GS-relative accesses at VMM offsets
    "read via a GS override": b"\x66\xb8\x10\x00\x8e\xe8" + b"\x65\x8b\x05" + struct.pack("<I", VMM_LINEAR + 0x24),
    "write via a GS override": b"\x66\xb8\x10\x00\x8e\xe8"
    + b"\x65\xc7\x05"
    + struct.pack("<II", VMM_LINEAR + C["VMM_STUBS"], 0xDEADBEEF),
    # (flat GS: a GS with a base and a 64 KB limit would give #GP on the spec and under bt,
    # while unicorn, checking no limits, reads on: see tests/test_physcpu.py,
    # test_segment_limits_not_checked_on_data_accesses)
    "GS with a register offset": b"\x66\xb8\x10\x00\x8e\xe8"
    + mov_ebx(VMM_LINEAR + 0x40)
    + b"\x65\x8b\x03\x65\x89\x5b\x30",  # mov eax, [gs:ebx]; mov [gs:ebx+0x30], ebx
    "write through a register to the read-only GDT page": mov_ebx(VMM_LINEAR + C["VMM_GDT"] + 0xFFE8)
    + b"\xc7\x03\x00\x00\x00\x00",
    "write through a register to the TC": mov_ebx(TC_LINEAR) + b"\xc7\x03\xcc\xcc\xcc\xcc\xc7\x43\x40\xf4\xf4\xf4\xf4",
    "rep stosd over the stubs": mov_eax(0xCCCCCCCC)
    + b"\xbf"
    + struct.pack("<I", STUBS_LINEAR)
    + b"\xb9\x40\x00\x00\x00\xfc\xf3\xab",
}


@pytest.mark.parametrize("name", sorted(VMM_AREA_ACCESSES))
def test_vmm_area_with_the_guest_mapping_it_is_guest_memory(name: str) -> None:
    same_as_bare(paged(VMM_AREA_ACCESSES[name]))


def test_moffs_to_the_vcpu_page_does_not_reach_the_virtual_eflags() -> None:
    # The bug this suite found: MOV moffs was not recognised as an absolute address in the VMM
    # area (only ModRM disp32 was), so it ran on the hardware and a store to the vcpu page's
    # virtual IOPL (then V_VIRT, with IF) set the guest's IOPL. Without paging the address is
    # beyond guest RAM: open bus (the interpreter; `bare` has no memory there, see below), and EFLAGS must not change.
    spec = F(code=mov_eax(0x3000) + b"\xa3" + struct.pack("<I", VMM_LINEAR + C["V_VIRT_IOPL"]))
    ref, bt, _ = bare_and_bt(spec, "interp")
    assert differences(ref, bt) == []
    assert bt.regs["eflags"] & 0x3200 == 0


# Without paging, linear 0xFFC00000 is physical: beyond the 2 MB of guest RAM. The spec (the
# interpreter) makes it open bus: reads give all ones, writes go nowhere, code fetched there is
# 0xFF bytes (#UD). `bare` cannot say: unicorn has nothing mapped there and stops
# (UC_ERR_*_UNMAPPED), so for these the interpreter is the reference.
UNPAGED = {
    "read disp32": (b"\x8b\x05" + struct.pack("<I", VMM_LINEAR), "READ_UNMAPPED"),
    "read moffs": (b"\xa1" + struct.pack("<I", VMM_LINEAR + C["V_EAX"]), "READ_UNMAPPED"),
    "write disp32": (b"\xc7\x05" + struct.pack("<II", VMM_LINEAR + C["V_VIRT_IOPL"], 0x3000), "WRITE_UNMAPPED"),
    "read via GS": (b"\x65\xa1" + struct.pack("<I", VMM_LINEAR + C["V_EAX"]), "READ_UNMAPPED"),
    "jump into the TC": (mov_eax(TC_LINEAR) + b"\xff\xe0", "FETCH_UNMAPPED"),
    "call the world switch stub": (mov_eax(STUBS_LINEAR) + b"\xff\xd0", "FETCH_UNMAPPED"),
    "jump to vmm_exit": (
        b"\xe9" + struct.pack("<I", (STUBS_LINEAR + 0x200 - (fresh_machine.CODE + 5)) & 0xFFFFFFFF),
        "",
    ),
}


@pytest.mark.parametrize("name", sorted(UNPAGED))
def test_vmm_area_beyond_guest_ram_is_open_bus(name: str) -> None:
    code, unmapped = UNPAGED[name]
    spec = F(code=mov_ebx(0x5A5A5A5A) + code)
    bare = run(spec, "bare")
    assert bare.stop == "vmstop" and "UC_ERR_" + unmapped in bare.diagnosis
    ref, bt, _ = bare_and_bt(spec, "interp")
    assert differences(ref, bt) == []


# Stores whose address is computed at run time (the translator cannot see them) to the VMM's
# pages other than the vcpu page and the world switch's stack: those are read-only in the
# hardware's tables, so the store faults before it runs and the interpreter runs it through
# the guest's own page tables (its accessed and dirty bits included).
EXIT_PAD_LINEAR = C["VMM_BASE"] + C["VMM_EXIT_PAD"]
REGISTER_ADDRESSED_STORES = {
    "rep stosb down over the exit pad": mov_eax(0x5A)
    + b"\xbf"
    + struct.pack("<I", EXIT_PAD_LINEAR + 0x10)
    + b"\xb9\x40\x00\x00\x00\xfd\xf3\xaa\xfc",
    "a push with the stack in the TC": b"\x89\xe5"  # mov ebp, esp
    + b"\xbc"
    + struct.pack("<I", TC_LINEAR + 0x2000)
    + b"\x68\x44\x33\x22\x11"  # push 0x11223344
    + b"\x89\xec",  # mov esp, ebp
    "xchg with a TC word": mov_ebx(TC_LINEAR + 0x800) + mov_eax(0x77) + b"\x87\x03",
}


@pytest.mark.parametrize("name", sorted(REGISTER_ADDRESSED_STORES))
def test_register_addressed_store_to_a_read_only_vmm_page_is_guest_memory(name: str) -> None:
    same_as_bare(paged(REGISTER_ADDRESSED_STORES[name]))


REGISTER_ADDRESSED = {
    "read of the VMM's GDT": mov_ebx(VMM_LINEAR + C["VMM_GDT"] + C["SEL_VMM_CODE"]) + b"\x8b\x03",
    "read of the vcpu page": mov_ebx(VMM_LINEAR + C["V_EAX"]) + b"\x8b\x03",
    "read of the TC": mov_ebx(TC_LINEAR + 0x40) + b"\x8b\x03",
    "write to the virtual IOPL": mov_ebx(VMM_LINEAR + C["V_VIRT_IOPL"]) + b"\xc7\x03\x00\x30\x00\x00\x9c\x59",
    "rep stosd over the vcpu page": mov_eax(0x11111111)
    + b"\xbf"
    + struct.pack("<I", VMM_LINEAR)
    + b"\xb9\x40\x00\x00\x00\xfc\xf3\xab",
    "the stack in the vcpu page": b"\x89\xe5\xbc"
    + struct.pack("<I", VMM_LINEAR + 0x100)
    + b"\x68\x44\x33\x22\x11\x58\x89\xec",  # push 0x11223344; pop eax
}


@pytest.mark.parametrize("name", sorted(REGISTER_ADDRESSED))
def test_the_vmm_moves_away_from_what_the_guests_tables_map(name: str) -> None:
    # spec/vmm.r1, "the VMM's place in the linear space": this guest maps the top 4 MB (where
    # the VMM starts) to its own RAM, so when it turns paging on the VMM moves to 4 MB its
    # tables leave empty, and every access there, whatever computes the address, is the
    # guest's own memory as on bare metal, the stack, string instructions and the vcpu page's
    # old address included.
    bare, bt, vmm = bare_and_bt(paged(REGISTER_ADDRESSED[name]))
    assert differences(bare, bt) == []
    assert vmm.stats["vmm_relocations"] == 1 and vmm.base != VMM_LINEAR


def _pd_without_the_top() -> dict[int, bytes]:
    """common.paging_memory's tables with PDE 1023 cleared: the top 4 MB not mapped yet."""
    memory = paging_memory()
    pd = bytearray(memory[PD])
    pd[1023 * 4 : 1024 * 4] = bytes(4)
    memory[PD] = bytes(pd)
    return memory


SECOND_PD = 0x23000


def test_the_vmm_moves_when_the_guest_writes_the_entry_of_its_4mb() -> None:
    # Paging on with the top 4 MB empty (the VMM stays there); then the translated kernel
    # writes PDE 1023 (the VMM's entry: its page directory page is traced) and reads and writes
    # there through registers: its own memory, as on bare.
    code = (
        b"\xc7\x05" + struct.pack("<II", PD + 1023 * 4, PTV | 7)  # mov dword [PD + 4092], PTV | 7
        + mov_ebx(VMM_LINEAR + 0x24)
        + b"\x8b\x03"  # mov eax, [ebx]
        + b"\xc7\x43\x04\x55\x55\x55\x55"  # mov dword [ebx + 4], 0x55555555
    )
    spec = F(code=ENABLE_PAGING + code, memory=_pd_without_the_top())
    bare, bt, vmm = bare_and_bt(spec)
    assert differences(bare, bt) == []
    assert vmm.stats["vmm_relocations"] == 1 and vmm.base < VMM_LINEAR


def test_the_vmm_moves_when_a_cr3_switch_claims_its_4mb() -> None:
    # Two address spaces: the first leaves the top 4 MB empty, the second maps it; the switch
    # to the second moves the VMM, and the guest reads its own pattern there.
    memory = _pd_without_the_top()
    memory[SECOND_PD] = paging_memory()[PD]
    code = b"\xb8" + struct.pack("<I", SECOND_PD) + b"\x0f\x22\xd8"  # mov eax, SECOND_PD; mov cr3, eax
    code += mov_ebx(VMM_LINEAR + C["VMM_STUBS"]) + b"\x8b\x03"  # mov eax, [ebx]
    bare, bt, vmm = bare_and_bt(F(code=ENABLE_PAGING + code, memory=memory))
    assert differences(bare, bt) == []
    assert vmm.stats["vmm_relocations"] == 1


def test_an_address_the_guest_leaves_unmapped_in_the_vmms_4mb_sees_the_vmm() -> None:
    # The documented limitation that remains: the VMM's 4 MB are always mapped in the hardware
    # (unicorn checks no segment limit, and paging cannot tell CPL 1 from 0), so an address the
    # guest does not map there, computed at run time, reads the VMM where bare metal would
    # fault. Here without paging (linear is physical, nothing is there: the interpreter's open
    # bus is the reference): the guest reads the VMM's descriptor for SEL_VMM_CODE.
    offset = C["VMM_GDT"] + C["SEL_VMM_CODE"]
    spec = F(code=mov_ebx(VMM_LINEAR + offset) + b"\x8b\x03")  # mov eax, [ebx]
    ref, bt, vmm = bare_and_bt(spec, "interp")
    assert ref.regs["eax"] == 0xFFFFFFFF  # open bus
    assert bt.regs["eax"] == vmm.vmm_read32(offset) == 0x0000FFFF  # the VMM's flat code descriptor
    assert differences(ref, bt) == [f"eax: {ref.regs['eax']:#x} vs {bt.regs['eax']:#x}"]


def test_a_write_to_the_vcpu_page_where_the_guest_maps_nothing_hurts_only_the_guest() -> None:
    # The same limitation for a store: CPL-1 code can write the vcpu page, "whose contents are
    # the guest's own virtual state: corrupting it hurts only the guest". A store to
    # V_VIRT_IOPL sets the guest's virtual IOPL (not the real one); the VMM goes on.
    la = VMM_LINEAR + C["V_VIRT_IOPL"]
    spec = F(code=mov_ebx(la) + b"\xc7\x03\x00\x30\x00\x00" + b"\x9c\x59")  # mov [ebx], 0x3000; pushfd; pop ecx
    ref, bt, vmm = bare_and_bt(spec, "interp")
    assert ref.stop == bt.stop == "end"
    assert ref.regs["eflags"] & 0x3000 == 0 and bt.regs["eflags"] & 0x3000 == 0x3000
    assert bt.regs["ecx"] & 0x3000 == 0x3000  # PUSHF shows the (corrupted) virtual IOPL
    # The guest's (corrupted) IOPL 3 never reaches the hardware: translated code runs with the
    # VMM's own IOPL 1 (IN and OUT are IDENT: spec/io.r1), whatever the vcpu page says.
    assert vmm.hardware_eflags(False) & 0x3000 == 0x1000
    assert {d.split(":")[0] for d in differences(ref, bt, memory=False)} == {"eflags", "ecx"}


def test_storing_over_the_scratch_stack_pointer_cannot_move_the_scratch_stack() -> None:
    # Try to point V_SCRATCH_SP at the VMM's read-only GDT page, then run a PUSHFD (its
    # template keeps flags on the scratch stack) and a callout. V_SCRATCH_SP is on the control
    # page, read-only at CPL 1: the store faults and is emulated as the guest's own (open bus
    # here), the scratch stack stays where the VMM put it, and its pages are unchanged.
    bad = C["VMM_BASE"] + C["VMM_GDT"] + 0x100
    code = mov_ebx(VMM_LINEAR + C["V_SCRATCH_SP"]) + b"\xc7\x03" + struct.pack("<I", bad)
    code += b"\xfa" + b"\x9c\x58" + b"\x0f\x01\x05\x00\x00\x01\x00"  # cli; pushfd; pop eax; sgdt [0x10000]
    spec = F(code=code, regs={"eflags": 0x202})
    ref, bt, vmm = bare_and_bt(spec, "interp")
    assert bt.stop == "end" and differences(ref, bt) == []
    assert not bt.regs["eflags"] & 0x200 and not bt.regs["eax"] & 0x200  # the CLI happened
    assert vmm.vmm_read32(C["V_SCRATCH_SP"]) == C["VMM_BASE"] + C["VMM_SCRATCH_STACK"]  # (SS base 0)


# ---------------------------------------------------------------- the VMM's selectors

SREG_LOADS = {"ds": b"\x8e\xd8", "es": b"\x8e\xc0", "fs": b"\x8e\xe0", "gs": b"\x8e\xe8", "ss": b"\x8e\xd0"}


@pytest.mark.parametrize("sel", VMM_SELECTORS, ids=lambda s: f"{s:#06x}")
@pytest.mark.parametrize("sreg", sorted(SREG_LOADS))
def test_loading_a_vmm_selector_faults_as_on_bare(sreg: str, sel: int) -> None:
    # The guest's GDT ends at 0x4F: every VMM selector is past its limit, #GP(selector).
    a = same_as_bare(F(code=b"\x66\xb8" + struct.pack("<H", sel) + SREG_LOADS[sreg]))
    assert a.exception == GP


POP_AND_FAR = {
    "pop ds": b"\x68" + struct.pack("<I", C["SEL_VMM_DATA"]) + b"\x1f",
    "pop ss": b"\x68" + struct.pack("<I", C["SEL_VMM_DATA"]) + b"\x17",
    "pop gs": b"\x68" + struct.pack("<I", C["SEL_VMM_GS"]) + b"\x0f\xa9",
    "lds": b"\xc5\x05\x00\x00\x01\x00",
    "lgs": b"\x0f\xb5\x05\x00\x00\x01\x00",
    "lss": b"\x0f\xb2\x05\x00\x00\x01\x00",
    "jmp far to SEL_VMM_CODE": b"\xea" + struct.pack("<IH", fresh_machine.CODE, C["SEL_VMM_CODE"]),
    "call far to SEL_VMM_CODE": b"\x9a" + struct.pack("<IH", fresh_machine.CODE, C["SEL_VMM_CODE"]),
    "jmp far to SEL_TC_CODE": b"\xea" + struct.pack("<IH", fresh_machine.CODE, C["SEL_TC_CODE"]),
    "jmp far [mem] to SEL_TC_CODE": b"\xff\x2d\x06\x00\x01\x00",
    "call far [mem] to SEL_VMM_CODE": b"\xff\x1d\x0c\x00\x01\x00",
    "retf to SEL_TC_CODE": b"\x68" + struct.pack("<I", C["SEL_TC_CODE"]) + b"\x68\x00\x80\x00\x00\xcb",
    "iretd to SEL_TC_CODE": b"\x9c\x68" + struct.pack("<I", C["SEL_TC_CODE"]) + b"\x68\x00\x80\x00\x00\xcf",
    "jmp far to the VMM's TSS": b"\xea" + struct.pack("<IH", 0, C["SEL_VMM_TSS"]),
    "ltr the VMM's TSS": b"\x66\xb8" + struct.pack("<H", C["SEL_VMM_TSS"]) + b"\x0f\x00\xd8",
    "lldt a VMM selector": b"\x66\xb8" + struct.pack("<H", C["SEL_VMM_DATA"]) + b"\x0f\x00\xd0",
}
FAR_POINTERS = struct.pack(
    "<IHIHIH", 0, C["SEL_VMM_DATA"], fresh_machine.CODE, C["SEL_TC_CODE"], fresh_machine.CODE, C["SEL_VMM_CODE"]
)


@pytest.mark.parametrize("name", sorted(POP_AND_FAR))
def test_vmm_selectors_in_pops_far_pointers_and_far_transfers_fault_as_on_bare(name: str) -> None:
    a = same_as_bare(F(code=POP_AND_FAR[name], memory={fresh_machine.DATA: FAR_POINTERS}))
    assert a.exception == GP


# The guest's own GDT may be large enough to hold descriptors at the VMM's selectors: then
# they are the guest's. LGDT makes the guest's table authoritative; the VMM's GDT is only where
# the hardware loads its copies from (fixed slots), never looked up by a guest selector.
BIG_GDT, GDT_PTR, IDT_PTR, NEW_IDT, NEW_HANDLER = 0x40000, 0x3F000, 0x3F008, 0x50000, 0x9000


def big_gdt_memory() -> dict[int, bytes]:
    g = bytearray(0x10000)
    g[: len(fresh_machine.gdt_bytes())] = fresh_machine.gdt_bytes()
    d = descriptors.segment
    g[0xFFF0:0xFFF8] = d(0, 0xFFFFF, 0x9B, 0xC)  # SEL_VMM_CODE: the guest's flat ring-0 code
    g[0xFFE8:0xFFF0] = d(fresh_machine.DATA, 0xFFFF, 0x93, 0x4)  # SEL_VMM_DATA: data over the DATA window
    g[0xFFE0:0xFFE8] = d(0, 0xFFFFF, 0xBB, 0xC)  # SEL_TC_CODE's slot: DPL-1 code
    g[0xFFD8:0xFFE0] = d(fresh_machine.DATA + 0x100, 0xFFFF, 0xB3, 0x4)  # SEL_VMM_GS's slot: DPL-1 data
    g[0xFF18:0xFF20] = d(fresh_machine.DATA + 0x200, 0xFF, 0x93, 0x4)  # a slot the VMM loads DS from
    idt = b"".join(descriptors.gate(NEW_HANDLER, 0x08, descriptors.GATE_INTERRUPT32) for _ in range(256))
    return {
        BIG_GDT: bytes(g),
        GDT_PTR: struct.pack("<HI", 0xFFFF, BIG_GDT),
        IDT_PTR: struct.pack("<HI", 0x7FF, NEW_IDT),
        NEW_IDT: idt,
        NEW_HANDLER: mov_eax(0x77) + b"\xf4",
        fresh_machine.DATA: bytes(range(256)) * 4,
    }


LGDT = b"\x0f\x01\x15" + struct.pack("<I", GDT_PTR)
LIDT = b"\x0f\x01\x1d" + struct.pack("<I", IDT_PTR)
SGDT_SIDT = b"\x0f\x01\x05\x00\x08\x01\x00\x0f\x01\x0d\x08\x08\x01\x00"  # sgdt [0x10800]; sidt [0x10808]


def _far_jmp_next(sel: int, prefix: bytes) -> bytes:
    return b"\xea" + struct.pack("<IH", fresh_machine.CODE + len(prefix) + 7, sel)


OWN_TABLES = {
    "ds = SEL_VMM_DATA": LGDT + b"\x66\xb8\xe8\xff\x8e\xd8\xa1\x10\x00\x00\x00\x89\x05\x00\x01\x00\x00",
    "ss = SEL_VMM_DATA": LGDT + b"\x66\xb8\xe8\xff\x8e\xd0\x50\x58\x8c\xd0",
    "gs = SEL_VMM_GS": LGDT + b"\x66\xb8\xd9\xff\x8e\xe8\x65\xa1\x00\x00\x00\x00\x8c\xe9",
    "ds = a slot selector": LGDT + b"\x66\xb8\x18\xff\x8e\xd8\xa1\x04\x00\x00\x00",
    "jmp far SEL_VMM_CODE": LGDT + _far_jmp_next(C["SEL_VMM_CODE"], LGDT) + b"\x8c\xc8\x0e\x5b",
    "lar and lsl of the VMM's selectors": LGDT
    + b"".join(
        mov_eax(s) + b"\x0f\x02\xc8\x0f\x03\xd0\x51\x52\x9c"  # lar ecx, eax; lsl edx, eax; push ecx, edx, flags
        for s in (*VMM_OWN_SELECTORS, 0xFF19, 0xFF09)
    ),
    "sgdt and sidt after lgdt and lidt": LGDT + LIDT + SGDT_SIDT,
    "exception after lidt": LGDT + LIDT + b"\x31\xc9\xf7\xf1",  # div ecx, ecx = 0
}


@pytest.mark.parametrize("name", sorted(OWN_TABLES))
def test_guest_tables_loaded_by_lgdt_and_lidt_are_the_guests(name: str) -> None:
    spec = F(code=OWN_TABLES[name], memory=big_gdt_memory())
    if name == "exception after lidt":
        # Delivered through the guest's new IDT to its handler, which loads 0x77 and halts.
        a, b = run_delivering(spec, "bare"), run_delivering(spec, "bt")
        assert a.stop == "halt" and a.regs["eax"] == 0x77
        assert differences(a, b) == []
        return
    a = same_as_bare(spec)
    assert a.stop == "end"


# ---------------------------------------------------------------- code in the TC's range

# The guest maps its own code at the linear addresses of the VMM's TC and stubs: translation
# fetches the guest's bytes through the guest's page tables, so it runs the guest's code.
CODE_THERE = 0x40000
ROUTINE = mov_eax(0x1234) + b"\xc3"  # mov eax, 0x1234; ret


@pytest.mark.parametrize(
    "target",
    [TC_LINEAR, TC_LINEAR + 0x3000, STUBS_LINEAR, C["VMM_BASE"] + C["VMM_STACK"], C["VMM_BASE"]],
    ids=["TC", "TC+3", "stubs", "stack", "vcpu"],
)
@pytest.mark.parametrize("how", ["call reg", "call rel32", "jmp reg"])
def test_code_at_the_vmms_addresses_is_the_guests(target: int, how: str) -> None:
    page = target & ~0xFFF
    if how == "call reg":
        code = mov_eax(target) + b"\xff\xd0"
    elif how == "call rel32":
        start = fresh_machine.CODE + len(paged(b"").code)
        code = b"\xe8" + struct.pack("<I", (target - (start + 5)) & 0xFFFFFFFF)
    else:
        start = fresh_machine.CODE + len(paged(b"").code)
        back = start + 5 + 2
        code = mov_eax(target) + b"\xff\xe0"  # jmp eax; the routine jumps back through ECX
        routine = mov_eax(0x1234) + b"\xb9" + struct.pack("<I", back) + b"\xff\xe1"
    memory = {CODE_THERE + (target & 0xFFF): ROUTINE if how != "jmp reg" else routine}
    a = same_as_bare(paged(code, extra={page: CODE_THERE}, memory=memory))
    assert a.stop == "end" and a.regs["eax"] == 0x1234


# ---------------------------------------------------------------- GS as the guest's own

GS_WINDOW = b"\x66\xb8\x40\x00\x8e\xe8"  # mov ax, SEL_WINDOW0; mov gs, ax
GS_USES = {
    "read and write": GS_WINDOW + b"\x65\xa1\x00\x00\x00\x00\x65\x8b\x0b\x65\x89\x43\x10\x65\xc7\x03\x01\x02\x03\x04",
    "mov from gs, push gs, pop gs": GS_WINDOW + b"\x8c\xe9\x0f\xa8\x0f\xa9\x5a\x0f\xa8\x8c\xeb",
    "rep movsd from gs": GS_WINDOW + b"\xbe\x00\x00\x00\x00\xbf\x00\x00\x02\x00\xb9\x04\x00\x00\x00\xfc\xf3\x65\xa5",
    "lgs": b"\x0f\xb5\x05\x00\x00\x01\x00\x65\x8b\x0d\x04\x00\x00\x00",
    "jmp [gs:]": GS_WINDOW + b"\x65\xff\x25\x40\x00\x00\x00\xf4" + mov_eax(1),
    "call [gs:] and ret": GS_WINDOW + b"\x65\xff\x15\x44\x00\x00\x00\xeb\x06" + mov_eax(1) + b"\xc3",
    "arithmetic on gs: memory": GS_WINDOW + b"\x65\x01\x03\x65\x0f\xb1\x0b\x65\xff\x33\x58\x65\x0f\xc1\x03",
    "gs and a loop": GS_WINDOW + b"\xb9\x05\x00\x00\x00\x65\x01\x0b\xe2\xfb",
}


@pytest.mark.parametrize("name", sorted(GS_USES))
def test_guest_use_of_gs_is_rewritten_and_behaves_as_on_bare(name: str) -> None:
    memory = bytearray(range(256)) * 2
    memory[0x40:0x44] = struct.pack("<I", fresh_machine.CODE + len(GS_USES["jmp [gs:]"]) - 5)  # past the HLT
    memory[0x44:0x48] = struct.pack("<I", fresh_machine.CODE + len(GS_USES["call [gs:] and ret"]) - 6)  # the routine
    memory[0:6] = struct.pack("<IH", 0, fresh_machine.SEL_WINDOW0)  # (for LGS)
    spec = F(code=GS_USES[name], regs={"eax": 5, "ebx": 8, "ecx": 9}, memory={fresh_machine.DATA: bytes(memory)})
    vmm = new_vmm("bt")
    a, b = run(spec, "bare"), run(spec, "bt", vmm)
    assert differences(a, b) == []
    assert a.stop == "end"
    assert vmm.stats["rule_callout"] >= 1  # the GS uses were emulated, GS stayed the VMM's


def test_guest_gs_null_faults_as_the_spec_says() -> None:
    # xor eax, eax; mov gs, ax; mov ecx, gs; mov eax, [gs:ebx]: using a null segment is #GP(0).
    # Unicorn does not check it (tests/test_physcpu.py::test_null_segment_data_access_not_checked),
    # so `bare` runs on; under bt the GS use is emulated and faults as the spec says.
    spec = F(code=b"\x31\xc0\x8e\xe8\x8c\xe9\x65\x8b\x03", regs={"ebx": 8})
    bare = run(spec, "bare")
    assert bare.stop == "end"
    ref, bt, _ = bare_and_bt(spec, "interp")
    assert (bt.exception, bt.error_code) == (GP, 0)
    assert differences(ref, bt) == []


# ---------------------------------------------------------------- SYSENTER from user code

# The hardware's SYSENTER MSRs belong to the VMM (issue 10): guest user code runs directly at
# CPL 3, and a SYSENTER there must never take the hardware to guest kernel code at CPL 0. The
# guest kernel below points its (virtual) SYSENTER MSRs at its handler, drops to CPL 3, and its
# user code makes a fast system call: the handler changes a register and memory, records what
# it sees, and SYSEXITs back. The reference is the interpreter: under `bare` unicorn's SYSENTER
# is a no-op (deviation sysenter-noop, tests/diff/deviations.py).
SYSENTER_STACK, SYSENTER_LOG = 0x2F00, 0x2400
USER_SEGS = dict.fromkeys(("ds", "es", "fs", "gs"), fresh_machine.SEL_DATA3)
MSR_SYSENTER_CS, MSR_SYSENTER_ESP, MSR_SYSENTER_EIP = 0x174, 0x175, 0x176


def wrmsr(msr: int, value: str) -> str:
    return f"mov ecx, {msr:#x}\nxor edx, edx\nmov eax, {value}\nwrmsr\n"


def to_user(eflags: int = 0x202) -> str:
    """IRET to `user` at CPL 3 with the fresh machine's ring-3 selectors and ESP STACK_TOP."""
    return (
        f"push {fresh_machine.SEL_DATA3:#x}\npush {fresh_machine.STACK_TOP:#x}\npush {eflags:#x}\n"
        f"push {fresh_machine.SEL_CODE3:#x}\npush offset user\niretd\n"
    )


SYSENTER_HANDLER = f"""
handler:
    add eax, 0x1000
    mov ss:[{SYSENTER_LOG:#x}], esp
    mov ss:[{SYSENTER_LOG + 4:#x}], ebx
    pushfd
    pop dword ptr ss:[{SYSENTER_LOG + 8:#x}]
    mov ss:[{SYSENTER_LOG + 12:#x}], cs
    mov ss:[{SYSENTER_LOG + 16:#x}], ss
    inc dword ptr ss:[{SYSENTER_LOG + 20:#x}]
    sysexit
"""
SYSENTER_USER = """
user:
    mov eax, 5
    mov ebx, 0x1234
    mov ecx, esp
    mov edx, offset back
    sysenter
    ud2
back:
    mov esi, esp
    pushfd
    pop edi
"""


def sysenter_guest(sysenter_cs: int = fresh_machine.SEL_CODE0, user: str = SYSENTER_USER) -> tuple[F, int]:
    """The guest kernel that sets the SYSENTER MSRs (and reads SYSENTER_CS back into memory),
    drops to `user` at CPL 3; and the address of its SYSENTER handler."""
    from ring1.runtime.isa.assembler import assemble

    source = (
        wrmsr(MSR_SYSENTER_CS, f"{sysenter_cs:#x}")
        + wrmsr(MSR_SYSENTER_ESP, f"{SYSENTER_STACK:#x}")
        + wrmsr(MSR_SYSENTER_EIP, "offset handler")
        + f"mov ecx, {MSR_SYSENTER_CS:#x}\nrdmsr\nmov ss:[{SYSENTER_LOG + 24:#x}], eax\n"
        + to_user()
        + SYSENTER_HANDLER
        + user
    )
    out = assemble(source, fresh_machine.CODE)
    return F(code=out.code, segs=USER_SEGS), out.labels["handler"]


def hardware_cpl_by_address(vmm: Vmm) -> list[tuple[int, int]]:
    """Installs a code hook over everything unicorn runs: (address, the hardware's CPL, from
    CS's RPL) per instruction, filled as the VMM runs."""
    from unicorn import UC_HOOK_CODE
    from unicorn import x86_const as X

    seen: list[tuple[int, int]] = []
    vmm.uc.hook_add(
        UC_HOOK_CODE, lambda uc, address, _size, _u: seen.append((address, uc.reg_read(X.UC_X86_REG_CS) & 3))
    )
    return seen


def assert_no_guest_code_at_hardware_cpl0(seen: list[tuple[int, int]]) -> None:
    """Guest code runs at CPL 3 where it runs directly (its own linear addresses, below the
    VMM's area) and at CPL 1 in the TC; only the VMM's own stubs run at the real CPL 0."""
    assert seen, "the hook saw nothing"
    tc = C["VMM_BASE"] + C["VMM_TC"]
    direct = {cpl for address, cpl in seen if address < C["VMM_BASE"]}
    translated = {cpl for address, cpl in seen if address >= tc}
    ring0 = sorted({address for address, cpl in seen if cpl == 0})
    assert direct <= {3}, f"guest code run directly at CPL {direct}"
    assert translated <= {1}, f"translated code at CPL {translated}"
    assert all(C["VMM_BASE"] <= a < tc for a in ring0), [hex(a) for a in ring0 if not C["VMM_BASE"] <= a < tc]


def hardware_sysenter_msrs(vmm: Vmm) -> tuple[int, int, int]:
    from unicorn import x86_const as X

    return tuple(
        vmm.uc.reg_read(X.UC_X86_REG_MSR, msr) for msr in (MSR_SYSENTER_CS, MSR_SYSENTER_ESP, MSR_SYSENTER_EIP)
    )


def test_guest_sysenter_msrs_are_virtual_and_the_hardwares_stay_the_vmms() -> None:
    # The kernel's WRMSRs (callouts) set the virtual CPU's MSRs, which its RDMSR reads back;
    # the hardware's SYSENTER MSRs are what the VMM left there, before and after.
    spec, handler = sysenter_guest(user="user:\nnop\n")
    vmm = new_vmm("bt")
    before = hardware_sysenter_msrs(vmm)
    interp, bt = run_delivering(spec, "interp"), run_delivering(spec, "bt", vmm)
    assert interp.stop == "end" and differences(interp, bt) == []
    assert bt.memory[SYSENTER_LOG + 24 : SYSENTER_LOG + 28] == struct.pack("<I", fresh_machine.SEL_CODE0)
    assert [vmm.m.b_read_msr(m) for m in (MSR_SYSENTER_CS, MSR_SYSENTER_ESP, MSR_SYSENTER_EIP)] == [
        fresh_machine.SEL_CODE0,
        SYSENTER_STACK,
        handler,
    ]
    assert hardware_sysenter_msrs(vmm) == before != (fresh_machine.SEL_CODE0, SYSENTER_STACK, handler)


def test_user_sysenter_never_runs_guest_code_at_hardware_cpl0() -> None:
    # Every instruction unicorn runs, with its CPL: the user code's SYSENTER must not take the
    # hardware to the guest's handler (or anywhere in guest memory) at CPL 0.
    spec, handler = sysenter_guest()
    vmm = new_vmm("bt")
    seen = hardware_cpl_by_address(vmm)
    run_delivering(spec, "bt", vmm, max_insns=10_000)
    assert_no_guest_code_at_hardware_cpl0(seen)
    assert (handler, 0) not in seen


# Unicorn's own SYSENTER, without a hook, is a no-op that, run uncounted as direct execution
# runs, continues at its translation block's start + 2 (tests/test_physcpu.py::
# test_sysenter_without_a_hook_is_a_no_op_that_may_continue_at_a_stale_eip): before the VMM
# stopped the hardware at SYSENTER, user code went on 2 bytes into `mov eax, 5` here.


def test_user_sysenter_enters_the_guest_handler_translated_and_sysexit_returns_to_cpl3() -> None:
    spec, handler = sysenter_guest()
    vmm = new_vmm("bt")
    interp, bt = run_delivering(spec, "interp"), run_delivering(spec, "bt", vmm)
    assert interp.stop == "end" and interp.regs["eax"] == 0x1005  # the handler ran
    esp, ebx, eflags, cs, ss, calls = struct.unpack_from("<6I", interp.memory, SYSENTER_LOG)
    assert (esp, ebx, cs, ss, calls) == (SYSENTER_STACK, 0x1234, fresh_machine.SEL_CODE0, fresh_machine.SEL_DATA0, 1)
    assert not eflags & 0x200  # SYSENTER cleared IF
    assert (interp.regs["cs"], interp.regs["ss"]) == (fresh_machine.SEL_CODE3, fresh_machine.SEL_DATA3)
    assert differences(interp, bt) == []
    assert handler in vmm.units  # the handler ran translated
    assert vmm.m.state.cpl == 3  # SYSEXIT went back to user mode


def test_user_sysenter_with_sysenter_cs_zero_is_gp() -> None:
    # SDM SYSENTER: "#GP(0) If IA32_SYSENTER_CS[15:2] = 0." At CPL 3 on the fresh machine
    # (SYSENTER_CS 0): the fault, not the instruction after it.
    spec = F(code=b"\xb8\x05\x00\x00\x00\x0f\x34\xb9\x07\x00\x00\x00", cpl=3)  # mov eax, 5; sysenter; mov ecx, 7
    interp, bt = run(spec, "interp"), run(spec, "bt")
    assert (interp.exception, interp.error_code, interp.regs["eip"]) == (GP, 0, fresh_machine.CODE + 5)
    assert differences(interp, bt) == []


@pytest.mark.parametrize("name, code", [("wrmsr", b"\x0f\x30"), ("rdmsr", b"\x0f\x32")])
@pytest.mark.parametrize("msr", [MSR_SYSENTER_CS, MSR_SYSENTER_EIP, 0x10])
def test_user_wrmsr_and_rdmsr_are_gp(name: str, code: bytes, msr: int) -> None:
    # At CPL 3 both are #GP(0) before anything is read or written; the hardware's MSRs stay the VMM's.
    spec = F(code=b"\xb9" + struct.pack("<I", msr) + b"\xb8\x00\x10\x00\x00\x31\xd2" + code, cpl=3)
    vmm = new_vmm("bt")
    before = hardware_sysenter_msrs(vmm)
    bare, interp, bt = run(spec, "bare"), run(spec, "interp"), run(spec, "bt", vmm)
    assert (interp.exception, interp.error_code) == (GP, 0)
    # (bare's memory differs below ESP0: its snippet reached CPL 3 by an IRET from ring 0)
    assert differences(bare, bt, memory=False) == [] and differences(interp, bt) == []
    assert hardware_sysenter_msrs(vmm) == before


def test_kernel_sysexit_to_user_code_returns_to_cpl3() -> None:
    # The kernel leaves for user mode by SYSEXIT (no SYSENTER first): a callout under bt, and
    # user code then runs directly at CPL 3 with the selectors SYSENTER_CS + 16 and + 24.
    from ring1.runtime.isa.assembler import assemble

    source = (
        wrmsr(MSR_SYSENTER_CS, f"{fresh_machine.SEL_CODE0:#x}")
        + f"mov ecx, {fresh_machine.STACK_TOP - 0x20:#x}\nmov edx, offset user\nsysexit\n"
        + "user:\nmov eax, esp\npush 0x77\npop ebx\nmov esi, 9\n"
    )
    spec = F(code=assemble(source, fresh_machine.CODE).code, segs=USER_SEGS)
    vmm = new_vmm("bt")
    seen = hardware_cpl_by_address(vmm)
    bare, interp, bt = run_delivering(spec, "bare"), run_delivering(spec, "interp"), run_delivering(spec, "bt", vmm)
    assert interp.stop == "end" and (interp.regs["cs"], interp.regs["ss"]) == (0x1B, 0x23)
    assert interp.regs["eax"] == fresh_machine.STACK_TOP - 0x20 and interp.regs["ebx"] == 0x77
    assert differences(bare, bt) == [] and differences(interp, bt) == []
    assert vmm.m.state.cpl == 3
    assert_no_guest_code_at_hardware_cpl0(seen)
    assert any(address < C["VMM_BASE"] and cpl == 3 for address, cpl in seen)  # the user code ran directly
