"""The shadow MMU (runtime/vmm/shadow.py): shadow page tables cached per guest address space,
kept coherent by traces and a backmap, with accessed and dirty bits set as the hardware sets
them, INVLPG, global pages, 4 MB pages, CR0.WP, and U/S and R/W for user code.

Every guest here runs under `bare` (unicorn's own MMU, QEMU's), the interpreter, `bt` and
`trap` (the kernel translated, or run directly at CPL 1), and the runs are compared:
registers and every byte of guest memory, the page tables' accessed and dirty bits included.
Where the architecture leaves a choice (a TLB may keep a stale or a global translation, or
drop it), the guest is written so that every allowed behaviour gives the same answer, and
the VMM's own choice is checked on its own, by name. The cache's behaviour (warm switches,
entries dropped one by one, evictions) is checked through the VMM's statistics."""

from __future__ import annotations

import struct

import pytest

from ring1.runtime.isa.assembler import assemble
from ring1.runtime.tools import fresh_machine
from ring1.runtime.tools.snippet import SnippetResult
from ring1.runtime.vmm import Vmm
from ring1.runtime.vmm.shadow import UNSHADOW_AFTER

from .common import differences, new_vmm, run

CODE = fresh_machine.CODE
PT0 = 0x21000  # identity map of guest RAM (2 MB), shared by every address space
PD_A, PD_B, PD_C = 0x20000, 0x23000, 0x26000
PT_A, PT_B, PT_C = 0x22000, 0x24000, 0x27000  # each address space's own table for WINDOW
PT_G = 0x25000  # a table shared by A and B (global entries)
WINDOW = 0x400000  # PDE 1: the linear pages each address space maps its own way
PAGES = (0x40000, 0x41000, 0x42000, 0x43000, 0x44000, 0x45000)  # data pages, each with its number
P, RW, US, A, D, PS, G = 0x1, 0x2, 0x4, 0x20, 0x40, 0x80, 0x100
CR4_PSE, CR4_PGE, CR0_WP = 0x10, 0x80, 0x10000


def identity(flags: int = P | RW, overrides: dict[int, int] | None = None) -> bytes:
    """A page table mapping guest RAM at its own addresses; `overrides`: page -> whole entry."""
    pt = bytearray(4096)
    for i in range(fresh_machine.MEMORY_SIZE >> 12):
        struct.pack_into("<I", pt, i * 4, (i << 12) | flags)
    for page, entry in (overrides or {}).items():
        struct.pack_into("<I", pt, page * 4, entry)
    return bytes(pt)


def table(entries: dict[int, int]) -> bytes:
    """A page table or directory with the given entries (index -> entry), the rest not present."""
    t = bytearray(4096)
    for i, e in entries.items():
        struct.pack_into("<I", t, i * 4, e)
    return bytes(t)


def data_pages() -> dict[int, bytes]:
    """Each data page starts with its own number (1, 2, 3...)."""
    return {page: struct.pack("<I", n + 1) for n, page in enumerate(PAGES)}


def paging_on(pd: int, cr4: int = 0, cr0: int = 0x80000000) -> str:
    return f"""
        mov eax, {cr4:#x}
        mov cr4, eax
        mov eax, {pd:#x}
        mov cr3, eax
        mov eax, cr0
        or eax, {cr0:#x}
        mov cr0, eax
    """


def spec(text: str, memory: dict[int, bytes]) -> fresh_machine.FreshSpec:
    return fresh_machine.FreshSpec(code=assemble(text, origin=CODE).code, memory=memory)


def compare_all(s: fresh_machine.FreshSpec, vmm: Vmm | None = None) -> tuple[SnippetResult, Vmm]:
    """bare, the interpreter, bt and trap on one guest; every difference fails. Returns bare's
    run and the Vmm that ran bt (its statistics)."""
    vmm = vmm or new_vmm("bt")
    runs = {"bare": run(s, "bare"), "interp": run(s, "interp"), "bt": run(s, "bt", vmm), "trap": run(s, "trap")}
    for mode in ("interp", "bt", "trap"):
        diff = differences(runs["bare"], runs[mode])
        assert not diff, f"{mode} differs from bare:\n" + "\n".join(diff)
    return runs["bare"], vmm


def pte(memory: bytes, addr: int) -> int:
    return struct.unpack_from("<I", memory, addr)[0]


# ---------------------------------------------------------------- address spaces, warm and cold


def three_spaces() -> dict[int, bytes]:
    """A, B and C: the same identity-mapped kernel (PT0), and WINDOW mapping pages 1, 2, 3."""
    memory = {PT0: identity(), **data_pages()}
    for pd, pt, page in ((PD_A, PT_A, PAGES[0]), (PD_B, PT_B, PAGES[1]), (PD_C, PT_C, PAGES[2])):
        memory[pd] = table({0: PT0 | P | RW, 1: pt | P | RW})
        memory[pt] = table({0: page | P | RW})
    return memory


def round_robin(rounds: int) -> fresh_machine.FreshSpec:
    """Each round switches to A, B and C in turn, reads WINDOW and counts there (a write)."""
    text = paging_on(PD_A) + f"""
        mov ecx, {rounds}
    next_round:
    """
    for pd in (PD_A, PD_B, PD_C):
        text += f"""
        mov eax, {pd:#x}
        mov cr3, eax
        add esi, [{WINDOW:#x}]
        inc dword ptr [{WINDOW + 4:#x}]
        """
    text += "loop next_round\n"
    return spec(text, three_spaces())


def test_switching_back_to_an_address_space_finds_its_shadow_warm() -> None:
    one = compare_all(round_robin(1))[1].stats
    bare, vmm = compare_all(round_robin(4))
    assert bare.regs["esi"] == 4 * (1 + 2 + 3)
    stats = vmm.stats
    # A (paging turned on), B and C are new once; every later switch finds its shadow.
    assert stats["cr3_switches_cold"] == one["cr3_switches_cold"] == 3
    assert one["cr3_switches_warm"] == 0 and stats["cr3_switches_warm"] == 9
    # Nothing is filled again after the first round: no flush, no eviction.
    assert stats["hidden_page_faults"] == one["hidden_page_faults"]
    assert stats["shadow_flushes"] == stats["shadows_evicted"] == 0


def test_the_least_recently_used_shadow_is_evicted_when_the_cache_is_full() -> None:
    vmm = new_vmm("bt")
    vmm.shadow.max_shadows = 2
    bare, _ = compare_all(round_robin(3), vmm)
    assert bare.regs["esi"] == 3 * (1 + 2 + 3)
    stats = vmm.stats
    # Round robin over three spaces in two slots: LRU evicts the one needed next, every time.
    assert stats["shadows_evicted"] >= 8 and stats["cr3_switches_warm"] == 0
    assert len(vmm.shadow.shadows) == 2


@pytest.mark.parametrize("free", [2, 3, 5])
def test_a_small_pool_evicts_shadows_and_gives_the_same_results(free: int) -> None:
    """The pool's pages run out before the cache's count does: the least recently used shadows
    go (and with too few pages even for the current one, it is emptied)."""
    vmm = new_vmm("bt")
    vmm.shadow.free_pages = vmm.shadow.free_pages[-free:]
    compare_all(round_robin(3), vmm)
    stats = vmm.stats
    assert stats["shadows_evicted"] + stats["shadow_flushes"] > 0
    held = sum(1 + len(s.tables) for s in vmm.shadow.shadows.values())
    assert held + len(vmm.shadow.free_pages) == free + 1  # (+1: the first shadow's directory)


# ---------------------------------------------------------------- guest PTE writes


def window_space(pages: int = 4) -> dict[int, bytes]:
    """A: WINDOW's first `pages` pages map PAGES[0..]; its next entry is not present."""
    memory = {PT0: identity(), **data_pages()}
    memory[PD_A] = table({0: PT0 | P | RW, 1: PT_A | P | RW})
    memory[PT_A] = table({i: PAGES[i] | P | RW for i in range(pages)})
    return memory


def touch_all(pages: int = 4) -> str:
    return "\n".join(f"add edi, [{WINDOW + (i << 12):#x}]" for i in range(pages))


def pte_write(new_entry: int, invlpg: bool) -> fresh_machine.FreshSpec:
    """Touch the window's four pages, rewrite the PTE of the second, touch them again; then map
    the fifth (not present before: no TLB may hold it) and read it, without INVLPG."""
    text = paging_on(PD_A) + touch_all() + f"""
        mov dword ptr [{PT_A + 4:#x}], {new_entry:#x}
    """
    if invlpg:
        text += f"invlpg [{WINDOW + 0x1000:#x}]\n"
    text += f"""
        mov edi, 0
        {touch_all()}
        mov dword ptr [{PT_A + 16:#x}], {PAGES[5] | P | RW:#x}
        mov ebx, [{WINDOW + 0x4000:#x}]
    """
    return spec(text, window_space())


def test_a_pte_write_drops_only_the_shadow_entry_made_from_it() -> None:
    # The same value again (the accessed bit the walk set included): nothing to drop. A new
    # frame: exactly that entry goes, and only its page is filled again.
    bare, vmm = compare_all(pte_write(PAGES[1] | P | RW | A, invlpg=False))
    assert bare.regs["edi"] == 1 + 2 + 3 + 4 and bare.regs["ebx"] == 6
    kept = vmm.stats
    assert kept["traced_writes"] == 2 and kept["shadow_entries_dropped"] == 0
    bare, vmm = compare_all(pte_write(PAGES[4] | P | RW, invlpg=True))
    assert bare.regs["edi"] == 1 + 5 + 3 + 4
    stats = vmm.stats
    assert stats["shadow_entries_dropped"] == 1 and stats["shadow_flushes"] == 0
    assert stats["hidden_page_faults"] == kept["hidden_page_faults"] + 1


def test_a_pte_write_without_invlpg_is_seen_at_once_under_bt() -> None:
    """Without INVLPG a CPU may go on using the old translation or walk again: bare (QEMU's TLB)
    and the interpreter keep it; the shadow MMU drops the entry at the write (so the new page)."""
    vmm = new_vmm("bt")
    r = run(pte_write(PAGES[4] | P | RW, invlpg=False), "bt", vmm)
    assert r.stop != "vmstop" and r.regs["edi"] == 1 + 5 + 3 + 4
    assert vmm.stats["shadow_entries_dropped"] == 1


def test_an_emulated_access_after_a_pte_write_without_invlpg_sees_what_the_hardware_sees() -> None:
    """The hardware maps a page (MOV), the interpreter reads it too (ADD, forced to a callout),
    the guest remaps it without INVLPG: the interpreter forgets its translations with the
    shadow entry, so an emulated access sees the page the hardware's next one would."""
    text = paging_on(PD_A) + f"""
        mov eax, [{WINDOW + 0x1000:#x}]
        add edi, [{WINDOW + 0x1000:#x}]
        mov dword ptr [{PT_A + 4:#x}], {PAGES[4] | P | RW:#x}
        add edi, [{WINDOW + 0x1000:#x}]
    """
    vmm = Vmm(fresh_machine.MEMORY_SIZE, mode="bt", rule_overrides={"ADD_Rv_RMv": "callout"})
    r = run(spec(text, window_space()), "bt", vmm)
    assert r.stop != "vmstop" and vmm.stats["callouts"] >= 2
    assert r.regs["edi"] == 2 + 5 and vmm.stats["shadow_entries_dropped"] == 1


def test_a_pde_write_drops_the_shadow_table_made_from_it_in_every_address_space() -> None:
    """B's directory points at A's table too; A's PDE is made not present: A faults at its
    next access through it, B keeps its mapping (its own PDE did not change)."""
    memory = window_space()
    memory[PD_B] = table({0: PT0 | P | RW, 1: PT_A | P | RW})
    text = paging_on(PD_A) + touch_all() + f"""
        mov eax, {PD_B:#x}
        mov cr3, eax
        mov edi, 0
        {touch_all()}
        mov eax, {PD_A:#x}
        mov cr3, eax
        mov dword ptr [{PD_A + 4:#x}], 0
        mov eax, {PD_B:#x}
        mov cr3, eax
        mov esi, [{WINDOW + 0x3000:#x}]
        mov eax, {PD_A:#x}
        mov cr3, eax
        mov ebx, [{WINDOW:#x}]
    """
    bare, vmm = compare_all(spec(text, memory))
    assert bare.exception == 14 and bare.cr2 == WINDOW and bare.regs["esi"] == 4
    stats = vmm.stats
    assert stats["shadow_entries_dropped"] == 1 + 4  # A's table: its PDE and four PTEs
    assert stats["cr3_switches_warm"] == 3 and stats["shadow_flushes"] == 0


def test_tracing_a_page_downgrades_its_existing_mappings() -> None:
    """A page mapped writable (dirty) becomes a page table of another address space: the shadow
    entries that map it writable must become read-only before the walk through it is trusted."""
    memory = window_space()
    memory[PD_B] = table({0: PT0 | P | RW, 1: PAGES[3] | P | RW})  # B's window table: data page 4
    memory[PAGES[3]] = struct.pack("<I", PAGES[2] | P | RW)  # ... whose first entry maps page 3
    text = paging_on(PD_A) + f"""
        mov dword ptr [{WINDOW + 0x3000 + 8:#x}], 0
        mov eax, {PD_B:#x}
        mov cr3, eax
        mov esi, [{WINDOW:#x}]
        mov eax, {PD_A:#x}
        mov cr3, eax
        mov dword ptr [{WINDOW + 0x3000:#x}], {PAGES[0] | P | RW:#x}
        mov eax, {PD_B:#x}
        mov cr3, eax
        mov edi, [{WINDOW:#x}]
    """
    bare, vmm = compare_all(spec(text, memory))
    assert bare.regs["esi"] == 3 and bare.regs["edi"] == 1
    assert vmm.stats["shadow_entries_dropped"] == 1
    for pte_addr in vmm.shadow.mappings_of(PAGES[3] >> 12):
        assert not vmm.host.read32(pte_addr) & RW


# ---------------------------------------------------------------- accessed and dirty bits


def accessed_dirty(invlpg: bool) -> fresh_machine.FreshSpec:
    """Read page 1, write page 2, read page 3; snapshot the PTEs; clear A and D of pages 1 and 2;
    read both, snapshot; write page 1, snapshot. PTEs and PDE start with A and D clear."""
    snapshot = f"""
        mov esi, [{PT_A:#x}]
        mov edi, [{PT_A + 4:#x}]
        mov ebp, [{PT_A + 8:#x}]
        mov edx, [{PD_A + 4:#x}]
    """
    text = paging_on(PD_A) + f"""
        mov eax, [{WINDOW:#x}]
        mov dword ptr [{WINDOW + 0x1000:#x}], 5
        mov eax, [{WINDOW + 0x2000:#x}]
        {snapshot}
        push esi
        push edi
        push ebp
        and dword ptr [{PT_A:#x}], {~(A | D) & 0xFFFFFFFF:#x}
        and dword ptr [{PT_A + 4:#x}], {~(A | D) & 0xFFFFFFFF:#x}
        {f"invlpg [{WINDOW:#x}]" if invlpg else ""}
        {f"invlpg [{WINDOW + 0x1000:#x}]" if invlpg else ""}
        mov eax, [{WINDOW:#x}]
        mov eax, [{WINDOW + 0x1000:#x}]
        {snapshot}
        push esi
        push edi
        mov dword ptr [{WINDOW:#x}], 7
        {snapshot}
    """
    return spec(text, window_space(3))


def test_accessed_and_dirty_bits_are_set_as_the_hardware_sets_them() -> None:
    bare, vmm = compare_all(accessed_dirty(invlpg=True))
    mem, esp = bare.memory, bare.regs["esp"]
    first_ptes = [pte(mem, esp + 16 - 4 * i) & (A | D) for i in range(3)]  # pushed: esi, edi, ebp
    assert first_ptes == [A, A | D, A]
    after_clear = [pte(mem, esp + 4 - 4 * i) & (A | D) for i in range(2)]  # read again: A, no D
    assert after_clear == [A, A]
    assert bare.regs["esi"] & (A | D) == A | D and bare.regs["edi"] & (A | D) == A
    assert bare.regs["edx"] & A  # the PDE's accessed bit
    assert vmm.stats["shadow_entries_dropped"] == 2 and vmm.stats["shadow_flushes"] == 0


def test_a_cleared_accessed_bit_is_set_again_at_the_next_access_under_bt() -> None:
    """Without INVLPG a TLB may keep the entry and leave A clear (bare does); the shadow MMU
    drops the entry at the write, so the next access sets A (and the first write D) again."""
    vmm = new_vmm("bt")
    r = run(accessed_dirty(invlpg=False), "bt", vmm)
    assert r.stop != "vmstop"
    mem, esp = r.memory, r.regs["esp"]
    assert [pte(mem, esp + 4 - 4 * i) & (A | D) for i in range(2)] == [A, A]
    assert r.regs["esi"] & (A | D) == A | D
    assert vmm.stats["shadow_entries_dropped"] == 2


# ---------------------------------------------------------------- 4 MB pages


def test_four_megabyte_pages_map_through_four_kilobyte_shadow_entries() -> None:
    big = WINDOW  # PDE 1: a 4 MB page over physical 0
    memory = {PT0: identity(), PD_A: table({0: PT0 | P | RW, 1: 0 | PS | P | RW}), **data_pages()}
    text = paging_on(PD_A, cr4=CR4_PSE) + f"""
        mov eax, [{big + PAGES[0]:#x}]
        mov esi, [{PD_A + 4:#x}]
        mov dword ptr [{big + PAGES[1] + 4:#x}], 9
        mov edi, [{PD_A + 4:#x}]
        mov ebx, [{PAGES[1] + 4:#x}]
        and dword ptr [{PD_A + 4:#x}], {~(A | D) & 0xFFFFFFFF:#x}
        invlpg [{big + PAGES[0]:#x}]
        add eax, [{big + PAGES[2]:#x}]
        mov ebp, [{PD_A + 4:#x}]
        mov dword ptr [{PD_A + 4:#x}], 0
        invlpg [{big + PAGES[2]:#x}]
        mov ecx, [{big + PAGES[2]:#x}]
    """
    bare, vmm = compare_all(spec(text, memory))
    assert bare.regs["eax"] == 1 + 3 and bare.regs["ebx"] == 9
    assert bare.regs["esi"] & (A | D) == A and bare.regs["edi"] & (A | D) == A | D
    assert bare.regs["ebp"] & (A | D) == A  # accessed again after the clear; no write since
    assert bare.exception == 14 and bare.cr2 == big + PAGES[2]
    # Two pages of the big one were mapped, each by a 4 KB entry of one shadow table, dropped
    # with the table when the guest rewrote the PDE (then the third page, dropped at the end).
    assert vmm.stats["shadow_entries_dropped"] >= 2 + 1
    assert vmm.stats["shadow_flushes"] == 0


# ---------------------------------------------------------------- global pages


def global_spaces(global_bit: int, b_own: bool) -> dict[int, bytes]:
    """A maps WINDOW through PT_G (page 1, `global_bit`); B through PT_G too, or (b_own) through
    its own table to page 2."""
    memory = {PT0: identity(), **data_pages()}
    memory[PT_G] = table({0: PAGES[0] | P | RW | global_bit})
    memory[PT_B] = table({0: PAGES[1] | P | RW})
    memory[PD_A] = table({0: PT0 | P | RW, 1: PT_G | P | RW})
    memory[PD_B] = table({0: PT0 | P | RW, 1: (PT_B if b_own else PT_G) | P | RW})
    return memory


def switch_and_read(pge: bool) -> str:
    return paging_on(PD_A, cr4=CR4_PGE if pge else 0) + f"""
        mov esi, [{WINDOW:#x}]
        mov eax, {PD_B:#x}
        mov cr3, eax
        mov edi, [{WINDOW:#x}]
        invlpg [{WINDOW:#x}]
        mov ebx, [{WINDOW:#x}]
    """


@pytest.mark.parametrize("global_bit", [0, G])
def test_global_entries_start_a_cold_shadow_warm(global_bit: int) -> None:
    bare, vmm = compare_all(spec(switch_and_read(pge=True), global_spaces(global_bit, b_own=False)))
    assert bare.regs["edi"] == bare.regs["ebx"] == 1
    stats = vmm.stats
    assert stats["cr3_switches_cold"] == 2
    plain = compare_all(spec(switch_and_read(pge=True), global_spaces(0, b_own=False)))[1].stats
    # B's first read of the global page needs no fill: the entry came with the new shadow.
    assert stats["hidden_page_faults"] == plain["hidden_page_faults"] - (1 if global_bit else 0)


@pytest.mark.parametrize("pge", [False, True])
def test_a_global_entry_may_outlive_a_cr3_write_until_invlpg(pge: bool) -> None:
    """B maps WINDOW elsewhere: a TLB may keep A's global entry across the CR3 write (the SDM);
    bare (QEMU) flushes it, the shadow MMU keeps it with CR4.PGE, and INVLPG ends it in both."""
    s = spec(switch_and_read(pge), global_spaces(G, b_own=True))
    bare = run(s, "bare")
    vmm = new_vmm("bt")
    bt = run(s, "bt", vmm)
    assert bare.regs["edi"] == 2 and bare.regs["ebx"] == 2
    assert bt.regs["esi"] == 1 and bt.regs["edi"] == (1 if pge else 2) and bt.regs["ebx"] == 2


def test_toggling_pge_drops_every_global_entry() -> None:
    text = switch_and_read(pge=True).replace(
        f"mov edi, [{WINDOW:#x}]",
        f"""mov eax, cr4
        and eax, {~CR4_PGE & 0xFFFFFFFF:#x}
        mov cr4, eax
        mov edi, [{WINDOW:#x}]""",
    )
    s = spec(text, global_spaces(G, b_own=True))
    bare, vmm = compare_all(s)
    assert bare.regs["edi"] == 2  # not A's page: the toggle flushed the global entry
    assert vmm.stats["shadow_flushes"] >= 1 and not vmm.shadow.globals


# ---------------------------------------------------------------- CR0.WP, U/S and R/W


READ_ONLY = PAGES[0]
SUPERVISOR = PAGES[1]


def protected_space() -> dict[int, bytes]:
    """User pages everywhere (U, RW) but a read-only user page and a supervisor page."""
    overrides = {READ_ONLY >> 12: READ_ONLY | P | US, SUPERVISOR >> 12: SUPERVISOR | P | RW}
    memory = {PT0: identity(P | RW | US, overrides), **data_pages()}
    memory[PD_A] = table({0: PT0 | P | RW | US})
    return memory


def test_a_kernel_write_to_a_read_only_page_succeeds_with_wp_clear_and_faults_with_it_set() -> None:
    text = paging_on(PD_A) + f"""
        mov dword ptr [{READ_ONLY:#x}], 0x1234
        mov dword ptr [{READ_ONLY + 4:#x}], 0x5678
        mov esi, [{READ_ONLY:#x}]
        mov eax, cr0
        or eax, {CR0_WP:#x}
        mov cr0, eax
        mov dword ptr [{READ_ONLY + 8:#x}], 1
    """
    bare, _ = compare_all(spec(text, protected_space()))
    assert bare.regs["esi"] == 0x1234 and bare.exception == 14 and bare.cr2 == READ_ONLY + 8
    assert pte(bare.memory, PT0 + (READ_ONLY >> 12) * 4) & (A | D) == A | D


def to_user(user_code: str, wp: bool) -> fresh_machine.FreshSpec:
    """The kernel turns paging on (CR0.WP as asked) and IRETs to `user_code` at CPL 3, which
    loads its own DS first (IRET leaves the kernel's DS null at CPL 3)."""
    text = paging_on(PD_A, cr0=0x80000000 | (CR0_WP if wp else 0)) + f"""
        push {fresh_machine.SEL_DATA3:#x}
        push {fresh_machine.STACK_TOP - 0x100:#x}
        push 0x2
        push {fresh_machine.SEL_CODE3:#x}
        push offset user
        iretd
    user:
        mov ax, {fresh_machine.SEL_DATA3:#x}
        mov ds, ax
        {user_code}
    """
    return spec(text, protected_space())


@pytest.mark.parametrize("wp", [False, True])
@pytest.mark.parametrize(
    "user_code, cr2",
    [
        (f"mov eax, [{READ_ONLY:#x}]\nmov dword ptr [{READ_ONLY:#x}], 1", READ_ONLY),
        (f"mov eax, [{SUPERVISOR:#x}]", SUPERVISOR),
        (f"mov ecx, [{PAGES[2]:#x}]\nmov dword ptr [{SUPERVISOR + 4:#x}], 1", SUPERVISOR + 4),
    ],
)
def test_user_code_never_writes_a_read_only_page_nor_touches_a_supervisor_one(
    user_code: str, cr2: int, wp: bool
) -> None:
    bare, _ = compare_all(to_user(user_code, wp))
    assert bare.exception == 14 and bare.cr2 == cr2
    assert pte(bare.memory, PT0 + (READ_ONLY >> 12) * 4) & D == 0
    assert struct.unpack_from("<I", bare.memory, READ_ONLY)[0] == 1  # never written


# ---------------------------------------------------------------- a page table reused as data


def test_a_page_table_written_as_data_is_unshadowed_after_a_few_writes() -> None:
    """B's table is zeroed by A (a kernel reusing a freed page table): after UNSHADOW_AFTER
    traced writes with no walk through it, every shadow entry made from it goes, its trace
    too, and the rest of the stores run without a trap. B then faults at its next access."""
    memory = window_space()
    memory[PD_B] = table({0: PT0 | P | RW, 1: PT_B | P | RW})
    memory[PT_B] = table({i: PAGES[i] | P | RW for i in range(4)})
    memory[PT0] = identity(overrides={PT_B >> 12: PT_B | P | RW | A | D})  # (written before: dirty)
    text = paging_on(PD_B) + touch_all() + f"""
        mov eax, {PD_A:#x}
        mov cr3, eax
        mov edi, {PT_B:#x}
        mov ecx, 64
    zero:
        mov dword ptr [edi], 0
        add edi, 4
        loop zero
        mov eax, {PD_B:#x}
        mov cr3, eax
        mov ebx, [{WINDOW + 0x2000:#x}]
    """
    bare, vmm = compare_all(spec(text, memory))
    assert bare.exception == 14 and bare.cr2 == WINDOW + 0x2000
    assert vmm.stats["pages_unshadowed"] == 1 and vmm.stats["traced_writes"] == UNSHADOW_AFTER
    assert vmm.stats["shadow_entries_dropped"] == 4 and PT_B >> 12 not in vmm.shadow.traced_pages
    # The table's own mapping (A's; its guest entry has W and D set) is writable again at once:
    # the stores after the last traced one take no hidden fault to be mapped writable.
    assert vmm.stats["shadow_entries_made_writable"] == 1


# ---------------------------------------------------------------- hidden faults in the hook


def _fresh_page_walker() -> fresh_machine.FreshSpec:
    from .common import paged

    code = assemble(
        """
        mov esi, 0x40000
        mov ecx, 6
    1:  add eax, [esi]
        mov [esi + 4], eax
        sub eax, 1
        setz byte ptr [esi + 8]
        add esi, 0x1000
        dec ecx
        jnz 1b
        """
    ).code
    return paged(code, regs={"eax": 1})


def test_hidden_faults_are_filled_inside_the_exception_hook() -> None:
    # Each page's first load maps it read-only, the store after it makes it writable (D): two
    # hidden faults per page, each dealt with in unicorn's hook without leaving the run.
    _bare, vmm = compare_all(_fresh_page_walker())
    assert vmm.stats["hidden_faults_in_place"] >= 2 * 6
    assert vmm.stats["hidden_faults_in_place"] == vmm.stats["traps"]


def test_an_instruction_restarted_in_the_hook_counts_once() -> None:
    # The budget (`ring1 exec --max-insns`, the debugger's steps) and the clock count it when it
    # completes: cut at every count, bt stops where the interpreter does. (From the sixth on: cut
    # right after the MOV CR0 that turns paging on, bt has already fetched the code after it
    # through the guest's tables, with their accessed bits set, and the interpreter not yet.)
    spec = _fresh_page_walker()
    in_place = 0
    for budget in range(6, 60):
        vmm = new_vmm("bt")
        got, want = run(spec, "bt", vmm, max_insns=budget), run(spec, "interp", max_insns=budget)
        assert differences(got, want) == [], f"budget {budget}"
        in_place += vmm.stats["hidden_faults_in_place"]
    assert in_place > 0


def test_the_clock_counts_an_instruction_restarted_in_the_hook_once() -> None:
    # With a platform clock every instruction unicorn runs is counted in C (host/counter.py):
    # the faulting one is counted again when it runs after the fill. The clock reads the same
    # whether the fault was dealt with in the hook or by stopping the CPU and restarting it.
    from ring1.runtime import engines
    from ring1.runtime.devices.bus import Bus
    from ring1.runtime.devices.clock import VirtualClock
    from ring1.runtime.tools.snippet import interp_machine

    class ClockOnly(Bus):
        def __init__(self) -> None:
            super().__init__()
            self.clock = VirtualClock()

        def interrupt_pending(self) -> bool:
            return False

    def clock_after(in_place: bool) -> tuple[int, int]:
        spec = _fresh_page_walker()
        platform = ClockOnly()
        engine = engines.create("bt", fresh_machine.MEMORY_SIZE, platform)
        interp_machine(spec, engine.machine)
        engine.stop_addresses = {CODE + len(spec.code)}
        engine.start()
        if not in_place:
            engine.vmm.cpu.handle_in_place = None
        assert engine.run(None).reason == "stop-address"
        return platform.clock.now(), engine.vmm.stats["hidden_faults_in_place"]

    (stopped, none), (in_hook, filled) = clock_after(False), clock_after(True)
    assert none == 0 and filled >= 2 * 6
    assert in_hook == stopped


# ---------------------------------------------------------------- prefilled neighbours


def test_a_fill_enters_the_neighbours_the_guest_has_accessed_already(monkeypatch) -> None:
    # WINDOW's pages 1-3 have A set (page 2 also D), page 4 has not, page 0 is the first touch.
    # The fill of page 0 enters 1-3 too (1 and 3 read-only: D clear); page 4 and the write to
    # page 1 (its D) fault on their own. bare, the interpreter and trap agree with bt on every
    # register and every accessed and dirty bit of the tables.
    from ring1.runtime.vmm import shadow

    memory = window_space(5)
    entries = {0: PAGES[0] | P | RW, 1: PAGES[1] | P | RW | A, 2: PAGES[2] | P | RW | A | D}
    entries |= {3: PAGES[3] | P | RW | A, 4: PAGES[4] | P | RW}
    memory[PT_A] = table(entries)
    text = paging_on(PD_A) + touch_all(5) + f"""
        mov dword ptr [{WINDOW + 0x1000:#x}], 9
        mov dword ptr [{WINDOW + 0x2000:#x}], 8
        mov esi, [{PT_A + 4:#x}]
        mov ebx, [{PT_A + 16:#x}]
    """
    bare, vmm = compare_all(spec(text, memory))
    assert bare.regs["esi"] & (A | D) == A | D and bare.regs["ebx"] & A
    assert vmm.stats["shadow_entries_prefilled"] >= 3
    assert vmm.shadow.hardware_pte(WINDOW + 0x2000) & RW  # entered writable: D was set
    monkeypatch.setattr(shadow, "PREFILL_GROUP", 1)  # a fill enters its own page only
    _bare, alone = compare_all(spec(text, memory))
    assert alone.stats["shadow_entries_prefilled"] == 0
    assert alone.stats["hidden_page_faults"] - vmm.stats["hidden_page_faults"] == 3  # pages 1, 2, 3


# ---------------------------------------------------------------- entries the kernel installs


def test_a_pte_the_kernel_writes_present_and_accessed_is_entered_at_its_write(monkeypatch) -> None:
    # After the first access through PT_A (traced from then on), the kernel installs page 1
    # (accessed) and page 2 (not accessed), then makes page 0 read-only (copy-on-write): the
    # traced writes enter page 1 and page 0's new entry at once, page 2 waits for its first
    # access (which sets A). The write to page 0 is the guest's #PF (CR0.WP), as on bare metal.
    from ring1.runtime.vmm import shadow

    memory = window_space(1)
    text = paging_on(PD_A, cr0=0x80000000 | CR0_WP) + f"""
        mov eax, [{WINDOW:#x}]
        mov dword ptr [{PT_A + 4:#x}], {PAGES[1] | P | RW | A:#x}
        mov dword ptr [{PT_A + 8:#x}], {PAGES[2] | P | RW:#x}
        mov ebx, [{WINDOW + 0x1000:#x}]
        mov ecx, [{WINDOW + 0x2000:#x}]
        mov dword ptr [{PT_A:#x}], {PAGES[0] | P | A:#x}
        mov edx, [{WINDOW:#x}]
        mov dword ptr [{WINDOW:#x}], 5
    """
    bare, vmm = compare_all(spec(text, memory))
    assert bare.exception == 14 and bare.cr2 == WINDOW and bare.regs["ebx"] == 2
    assert vmm.stats["shadow_entries_installed"] == 2
    monkeypatch.setattr(shadow.ShadowMmu, "_enter_installed", lambda self, page, start, end, derived: False)
    _bare, without = compare_all(spec(text, memory))
    assert without.stats["hidden_page_faults"] - vmm.stats["hidden_page_faults"] == 2  # pages 1 and 0
