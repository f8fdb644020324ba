"""The guest's own descriptor tables in the hardware while its user code runs directly.

Decision (issue 10, items 1 and 3; spec/vmm.r1 "direct execution"): user code at CPL 3 runs on
unicorn with the guest's own GDTR, LDTR, IDTR and TR, and its own selectors, so that what user
code can see without privilege (SGDT, SIDT, SLDT, STR, MOV from a segment register, LAR, LSL,
VERR, VERW, the descriptors its own segment loads read) is what bare metal shows, and segment
loads in user code cost nothing. That is safe only when nothing in those tables lets CPL 3 code
reach more privilege without an exception the VMM sees: unicorn delivers no exception through an
IDT (every one reaches the VMM's hook), so the IDT cannot; a call gate, a task gate or a TSS
descriptor with DPL 3 could (a far CALL or JMP through it would run guest code at the real
CPL 0, or switch tasks in the hardware). Two layers stop that: TR's cache is the VMM's own TSS
(no ring-0 stack for a gate, read-only for a task switch's save, no back link for an IRET
with NT: each faults, and the VMM emulates the instruction), and tables with one of those
descriptors are "hostile for direct execution":
user code then runs with the VMM's slot descriptors instead, the cached descriptors of the
virtual CPU (Vmm.hardware_selectors), as it does while a loaded segment is nonreversible (its
table entry no longer says what the segment register holds).

The VMM checks a table once and keeps the verdict until a write to one of its pages (the pages
are traced, so the hardware cannot write them behind the VMM's back), a CR3 write, INVLPG or a
traced page-table write (which may map the table's linear pages elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ring1.runtime.cpu import descriptors

# System descriptor types CPL 3 code can use through a far CALL or JMP when their DPL is 3:
# 16-bit TSS (available, busy), 16-bit call gate, task gate, 32-bit TSS (available, busy),
# 32-bit call gate. (Interrupt and trap gates in a GDT or LDT fault when called; LDT
# descriptors load only with LLDT, at CPL 0.)
REACHABLE_SYSTEM_TYPES = frozenset({0x1, 0x3, 0x4, 0x5, 0x9, 0xB, 0xC})
ATTR_COMPARED = 0xF0FF  # access byte and flags nibble; bits 8..11 repeat the limit
ACCESSED = 0x1


def reachable_from_cpl3(raw: int) -> bool:
    """A present system descriptor of a kind CPL 3 can far CALL or JMP through, with DPL 3."""
    access = raw >> 40 & 0xFF
    return bool(access & 0x80) and not access & 0x10 and access >> 5 & 3 == 3 and access & 0xF in REACHABLE_SYSTEM_TYPES


@dataclass
class TablesVerdict:
    """One reading of the guest's GDT and LDT (their linear ranges through its page tables)."""

    usable: bool  # the hardware may hold these tables while user code runs
    reason: str  # why not, for the stats and `ring1 run --stats`
    entries: dict[int, int]  # selector with RPL 0 (TI set for the LDT) -> the 8-byte descriptor
    linear_pages: tuple[int, ...]  # the tables' linear pages (to map before entering)
    ranges: dict[int, list[tuple[int, int]]]  # guest physical page -> the table bytes on it (traced)
    frames: tuple[int, ...] = ()  # the guest physical page (address) of each linear page, as read

    def reversible(self, sels: list[int], bases: list[int], limits: list[int], attrs: list[int]) -> bool:
        """Every loaded segment register holds what its table entry says now, accessed bit set
        (so the hardware's reload writes nothing), and no entry is missing."""
        return all(sels[s] & ~3 == 0 or self.holds(sels[s], bases[s], limits[s], attrs[s]) for s in range(6))

    def holds(self, sel: int, base: int, limit: int, attr: int) -> bool:
        """The table entry of non-null `sel` is the descriptor cached as (base, limit, attr),
        its accessed bit set."""
        raw = self.entries.get(sel & ~3)
        if raw is None:
            return False
        d_base, d_limit, d_attr = descriptors.to_cache(raw.to_bytes(8, "little"))
        if not d_attr & ACCESSED:
            return False
        return (d_base, d_limit, d_attr & ATTR_COMPARED) == (base, limit, (attr | ACCESSED) & ATTR_COMPARED)


def shadow_descriptor(raw: int) -> int:
    """A guest GDT entry as the shadow GDT of a kernel run directly at CPL 1 holds it (trap mode):
    code and data with DPL 0 get DPL 1 (the deprivileged kernel can load them; its selectors'
    values stay the guest's), and are accessed already (a load writes nothing); DPL-3 code is
    absent (an IRET or far return to user code faults, and the VMM, which must see the switch
    to CPL 3, emulates it); system descriptors (TSS, LDT, gates) are absent (no task switch or
    gate in the hardware: the instruction faults and is emulated)."""
    access = raw >> 40 & 0xFF
    if not access & 0x80:
        return raw
    if not access & 0x10 or (access & 0x08 and access >> 5 & 3 == 3):
        return raw & ~(0x80 << 40)
    if access >> 5 & 3 == 0:
        access |= 0x20
    return raw & ~(0xFF << 40) | (access | ACCESSED) << 40


def read_tables(
    gdt: tuple[int, int],
    ldt: tuple[int, int] | None,
    translate: Callable[[int], int | None],
    read: Callable[[int, int], bytes],
) -> TablesVerdict:
    """Read and judge the GDT (base, limit) and the LDT (base, limit; None when LDTR is null).
    `translate(linear page address)` gives the guest physical page address the guest's tables
    map it to (None: not mapped, or not RAM); `read(physical address, length)` reads RAM."""
    entries: dict[int, int] = {}
    hostile = ""
    linear: list[int] = []
    frames: list[int] = []
    ranges: dict[int, list[tuple[int, int]]] = {}
    for ti, table in ((0, gdt), (4, ldt)):
        if table is None:
            continue
        base, limit = table
        count = (limit + 1) // 8
        if count == 0:
            continue
        end = base + count * 8
        if end > 1 << 32:
            return TablesVerdict(False, "a descriptor table wraps at 4 GB", {}, (), {})
        raw = bytearray()
        page = base & ~0xFFF
        while page < end:
            gpa = translate(page)
            if gpa is None:
                return TablesVerdict(False, "a descriptor table page is not mapped to RAM", {}, (), {})
            start, stop = max(base, page), min(end, page + 0x1000)
            raw += read(gpa + (start - page), stop - start)
            linear.append(page)
            frames.append(gpa)
            ranges.setdefault(gpa >> 12, []).append((start - page, stop - page))
            page += 0x1000
        for i in range(count):
            value = int.from_bytes(raw[i * 8 : i * 8 + 8], "little")
            if reachable_from_cpl3(value) and not hostile:
                hostile = f"a gate or TSS with DPL 3 in the {'LDT' if ti else 'GDT'}"
            if i or ti:  # GDT entry 0 is never loaded: selector 0 is null
                entries[i * 8 | ti] = value
    # (Hostile tables are read all the same: a shadow of them, with their gates absent, serves
    # a kernel run directly.)
    return TablesVerdict(not hostile, hostile, entries, tuple(linear), ranges, tuple(frames))
