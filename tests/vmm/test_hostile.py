"""Hostile guest kernel code under `bt`: the VMM's area, selectors, TC and GS.

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
"""

from __future__ import annotations

import struct

import pytest

from ring1.generated.rules import CONSTS as C
from ring1.runtime.cpu import descriptors
from ring1.runtime.tools import fresh_machine
from ring1.runtime.vmm import Vmm

from .common import (
    PD,
    PTV,
    VMM_LINEAR,
    VPAGE,
    assert_clean,
    differences,
    new_vmm,
    paged,
    run,
    run_delivering,
    vpage_pattern,
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


def bare_and_bt(spec: fresh_machine.FreshSpec, ref: str = "bare"):
    vmm = new_vmm("bt")
    before = vmm_read_only_pages(vmm)
    a, b = run(spec, ref), run(spec, "bt", vmm)
    assert_clean(b)
    assert vmm_read_only_pages(vmm) == before, "the guest changed the VMM's read-only pages"
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


def test_register_addressed_read_of_the_vmm_area_sees_the_vmm() -> None:
    # The documented limitation (spec/vmm.r1: "Guest kernel code (CPL 1) can read the VMM's
    # pages"): an address computed at run time is not seen by the translator, the instruction
    # runs as is, and the hardware maps the VMM there, not the guest's page. The guest reads
    # the VMM's descriptor for SEL_VMM_CODE instead of its own memory, and the accessed bits in
    # its page tables stay clear (the access never went through them). Nothing else differs.
    offset = C["VMM_GDT"] + C["SEL_VMM_CODE"]
    la = VMM_LINEAR + offset
    spec = paged(mov_ebx(la) + b"\x8b\x03")  # mov eax, [ebx]
    bare, bt, vmm = bare_and_bt(spec)
    page = (la >> 12) & 0x3FF
    assert bare.regs["eax"] == int.from_bytes(vpage_pattern()[(page % 4) << 12 | (la & 0xFFF) :][:4], "little")
    assert bt.regs["eax"] == vmm.vmm_read32(offset) == 0x0000FFFF  # the VMM's flat code descriptor
    pte = PTV + page * 4
    accessed = {PD + 1023 * 4: 0x20, pte: 0x20}
    fixed = bytearray(bt.memory)
    for addr, bit in accessed.items():
        assert not bt.memory[addr] & bit and bare.memory[addr] & bit
        fixed[addr] |= bit
    bt.memory = bytes(fixed)
    assert differences(bare, bt) == [f"eax: {bare.regs['eax']:#x} vs {bt.regs['eax']:#x}"]


def test_register_addressed_write_to_the_vcpu_page_hurts_only_the_guest() -> None:
    # The documented decision: CPL-1 code can write the vcpu page, "whose contents are the
    # guest's own virtual state: corrupting it hurts only the guest". A store to V_VIRT_IOPL sets
    # the guest's virtual IOPL (not the real one), and the guest's page keeps its bytes.
    # The VMM goes on: the run ends normally, its read-only pages unchanged (bare_and_bt).
    la = VMM_LINEAR + C["V_VIRT_IOPL"]
    spec = paged(mov_ebx(la) + b"\xc7\x03\x00\x30\x00\x00" + b"\x9c\x59")  # mov [ebx], 0x3000; pushfd; pop ecx
    bare, bt, vmm = bare_and_bt(spec)
    assert bare.stop == bt.stop == "end"
    v = C["V_VIRT_IOPL"]
    assert bare.memory[VPAGE + v : VPAGE + v + 4] == b"\x00\x30\x00\x00"
    assert bt.memory[VPAGE + v : VPAGE + v + 4] == vpage_pattern()[v:][:4]
    assert bt.regs["eflags"] & 0x3000 == 0x3000 and bare.regs["eflags"] & 0x3000 == 0
    assert bt.regs["ecx"] & 0x3000 == 0x3000  # PUSHF shows the (corrupted) virtual IOPL
    # The guest's (corrupted) IOPL 3 never reaches the hardware: translated code runs with the
    # VMM's own IOPL 1 (IN and OUT are IDENT: spec/io.r1), whatever the vcpu page says.
    assert vmm.hardware_eflags(False) & 0x3000 == 0x1000
    assert {d.split(":")[0] for d in differences(bare, bt, memory=False)} == {"eflags", "ecx"}
    # In memory: the guest's page did not get the store, and the accessed and dirty bits of
    # the PDE and PTE that map it stay clear.
    pte = PTV + ((la >> 12) & 0x3FF) * 4
    allowed = {*range(VPAGE + v, VPAGE + v + 4), PD + 1023 * 4, pte, *range(0x6FFC, 0x7000)}
    assert {i for i in range(len(bare.memory)) if bare.memory[i] != bt.memory[i]} <= allowed


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
