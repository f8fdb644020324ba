"""The shadow MMU: the hardware page tables the VMM builds from the guest's, one set per guest
address space, kept coherent with the guest's tables by page traces.

The hardware (unicorn) runs with paging always on and CR3 pointing at a *shadow* page
directory in the VMM's pool (host memory past the VMM area, never mapped linearly). Guest
linear pages are entered into the current shadow on demand (`fill`, from a hidden page fault),
as the guest's own tables map them, and the entry is kept until something the guest does
could change it:

- **Per address space.** A shadow is keyed by what selects the guest's walk: CR3's page
  directory and CR4.PSE (and CR0.PG: with paging off one identity shadow serves). A CR3
  write selects the shadow of the new key: one met before is *warm* (every page it had
  mapped stays mapped, no hidden fault to refill them); a new one is *cold*. CR0.WP and
  CR4.PGE are not in the key: the shadow never maps a page writable that the guest's tables
  make read-only (a kernel write to one with WP clear is emulated, `fill`), and global
  entries are a copy between shadows, below.
- **Bounded, LRU.** At most MAX_SHADOWS shadows are kept, in a pool of POOL_SIZE bytes of
  table pages. When either runs out, the least recently *selected* shadow goes whole (its
  directory and tables back to the pool): a process not scheduled for longest is the best
  guess for the one scheduled last, and dropping a shadow whole keeps no half-built address
  space around (the hardware gives no accessed bits for shadow entries that a finer LRU
  could use). The current shadow is never evicted; if the pool cannot hold even it, its
  tables are emptied (a flush).
- **Backmap.** Every shadow entry records the guest entry it was derived from (guest
  physical address and value): a shadow PTE its guest PTE (or the guest's 4 MB PDE), a
  shadow PDE the guest PDE. The guest pages holding those entries are traced
  (runtime/cpu/traces.py, reason "shadow page table"), so every guest write to them is
  emulated and reported with its byte range; the shadow entries derived from the entries
  written are dropped, in every cached shadow, unless the guest wrote the value they were
  derived from back (`_on_traced_write`). A guest page also knows every shadow PTE mapping
  it, so that tracing a page (or putting translated code on it) downgrades the existing
  hardware mappings to read-only (`write_protect`). A page holding no entry any shadow uses
  any more is untraced. A page written UNSHADOW_AFTER times with no fill through it in
  between is taken to be data now (a freed page table the kernel reuses and zeroes): every
  entry made from it is dropped at once and its trace removed, so its other stores run
  without a trap (the 1999 design's answer to the same cost).
- **Accessed and dirty bits** are set in the guest's tables when the hardware would set them:
  A in the PDE and PTE on the first access through them (the fill), D on the first write.
  A shadow entry of a page whose guest PTE is clean stays read-only; the first write faults
  (hidden) and sets D, and only then is the page mapped writable. A guest write that clears
  A or D changes the entry's value, so the shadow entry goes and the next access sets them
  again.
- **TLB semantics.** Shadows are coherent with the guest's tables at every instant, which
  is one of the behaviours the SDM allows a TLB (it may drop entries at any time), so a CR3
  write needs no flush. INVLPG drops that linear page's entry from the current shadow.
  Global pages (CR4.PGE): the entries made from global guest PTEs (or 4 MB PDEs) are copied
  into a cold shadow when it is created, as a TLB keeps global entries across CR3 writes;
  INVLPG of the page drops every copy, and a CR4.PGE toggle drops them all (the SDM flushes
  every TLB entry then; here every shadow goes).
- **U/S and R/W** are the guest's (both levels combined into the shadow PTE), enforced by the
  hardware for user code at CPL 3. The guest kernel runs at CPL 1, a supervisor level, with
  the hardware's CR0.WP set: it can never write a page the shadow maps read-only.

Every shadow directory carries the VMM's own entry (PDE 1023 at first: it moves with the VMM, move_vmm).
"""

from __future__ import annotations

import struct
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from ring1.generated.layouts import CR0, CR4, PTE
from ring1.runtime.cpu.machine import Machine
from ring1.runtime.cpu.memory import PhysicalMemory

POOL_SIZE = 4 << 20  # hardware page directories and tables
MAX_SHADOWS = 16  # address spaces kept warm
VMM_TABLE_PAGE = 1  # the pool page holding the VMM area's page table (in every shadow directory)
VMM_PDE_INDEX = 1023  # where the VMM starts (ShadowMmu.vmm_index: where it is)
WHY_SHADOW = "shadow page table"  # the reason of the shadow's page traces
# Traced writes to one page, with no fill made from its entries in between, after which the page
# is taken for data, not a page table any more: every shadow entry made from it is dropped and
# its trace removed (a freed page table reused, zeroed, copied into, costs one emulated write
# per store while traced). A page the guest keeps using as a page table is traced again by
# the next fill through it.
UNSHADOW_AFTER = 4
# At a fill, the linear pages of its aligned group of this many (64 KB) that the guest maps with
# their accessed bit set are entered too (ShadowMmu._prefill_neighbours).
PREFILL_GROUP = 16
PTE_P, PTE_W, PTE_U, PTE_A, PTE_D, PTE_PS, PTE_G = PTE.P, PTE.RW, PTE.US, PTE.A, PTE.D, PTE.PS, PTE.G
FRAME = 0xFFFFF000

# The key of the identity shadow used while the guest's paging is off.
UNPAGED = ("unpaged",)


def paging_key(cr0: int, cr3: int, cr4: int) -> tuple:
    """What selects a guest's page walk: the shadow cache's key."""
    if not cr0 & CR0.PG:
        return UNPAGED
    return (cr3 & FRAME, bool(cr4 & CR4.PSE))


@dataclass(eq=False)
class Shadow:
    """One guest address space's hardware page directory and its tables."""

    key: tuple
    pd: int  # host physical address of the directory (a pool page)
    tables: dict[int, int] = field(default_factory=dict)  # PDE index -> host address of its table


@dataclass(slots=True)
class Derived:
    """What one shadow entry was made from: the guest entry's physical address and its value
    then; for a shadow PTE also the guest page it maps and its linear page (global copies)."""

    source: int
    value: int
    page: int = -1
    linear: int = -1
    global_: bool = False
    writable: bool = False  # the guest lets this page be written now, setting nothing (W and D)


class ShadowMmu:
    """The cached shadows, the pool they live in, and the backmap that keeps them coherent."""

    def __init__(
        self,
        host: PhysicalMemory,
        machine: Machine,
        pool_phys: int,
        guest_size: int,
        stats: Counter,
        *,
        flush_hw_tlb: Callable[[], None],
        load_hw_cr3: Callable[[int], None],
        protected: Callable[[int], bool],
        device_page: Callable[[int], bool],
        on_untrace: Callable[[int], None],
        on_unmap: Callable[[], None],
        max_shadows: int = MAX_SHADOWS,
        pool_size: int = POOL_SIZE,
    ) -> None:
        self.host, self.m, self.G, self.stats = host, machine, guest_size, stats
        self.pool_phys = pool_phys
        self.flush_hw_tlb, self.load_hw_cr3 = flush_hw_tlb, load_hw_cr3
        self.protected = protected  # pages the VMM keeps read-only for its own reasons (code)
        self.device_page = device_page
        self.on_untrace = on_untrace
        self.on_unmap = on_unmap  # entries of the current shadow were dropped (not by a CR3 write)
        self.max_shadows = max_shadows
        self.vmm_pde = (pool_phys + (VMM_TABLE_PAGE << 12)) | PTE_P | PTE_W
        self.vmm_index = VMM_PDE_INDEX  # where the VMM is: it moves (Vmm._relocate, move_vmm)
        self.free_pages = [pool_phys + (i << 12) for i in reversed(range(pool_size >> 12)) if i != VMM_TABLE_PAGE]
        self.shadows: OrderedDict[tuple, Shadow] = OrderedDict()  # least recently selected first
        self.by_pd: dict[int, Shadow] = {}
        self.pte_derived: dict[int, Derived] = {}  # shadow PTE address -> what it came from
        self.pde_derived: dict[int, Derived] = {}  # shadow PDE address -> the guest PDE
        self.ptes_from: dict[int, set[int]] = {}  # guest entry address -> shadow PTEs made from it
        self.pdes_from: dict[int, set[int]] = {}  # guest PDE address -> shadow PDEs made from it
        self.tables_of: dict[int, set[int]] = {}  # guest page table (page) -> shadow PDEs of its tables
        self.mapping: dict[int, set[int]] = {}  # guest physical page -> shadow PTEs mapping it
        self.globals: dict[int, set[int]] = {}  # linear page -> shadow PTEs from global guest entries
        self.table_entries: dict[int, set[int]] = {}  # shadow table -> its filled PTE addresses
        self.table_owner: dict[int, Shadow] = {}  # shadow table -> the shadow it belongs to
        self.trace_refs: Counter[int] = Counter()  # guest page -> shadow entries made from its bytes
        self.traced_pages: set[int] = set()
        self.writes_since_fill: Counter[int] = Counter()  # traced page -> its writes since a fill
        self.pge = False
        self.current = self._new_shadow(UNPAGED)
        self.load_hw_cr3(self.current.pd)

    # ------------------------------------------------------------ the cache

    def select(self, cr0: int, cr3: int, cr4: int) -> None:
        """The guest's paging state changed (CR3, CR0, CR4 written): make the shadow of its key
        current, and the hardware's CR3 point at it."""
        pge = bool(cr4 & CR4.PGE) and bool(cr0 & CR0.PG)
        if pge != self.pge:
            # The SDM: toggling CR4.PGE flushes every TLB entry, global ones too.
            self.pge = pge
            self.flush_all()
        key = paging_key(cr0, cr3, cr4)
        if key == self.current.key:
            return  # coherent already: nothing a TLB would have to drop
        shadow = self.shadows.get(key)
        if shadow is not None:
            self.stats["cr3_switches_warm"] += 1
            self.shadows.move_to_end(key)
            self.current = shadow
        else:
            self.stats["cr3_switches_cold"] += 1
            previous = self.current
            self.current = shadow = self._new_shadow(key)
            if self.pge and key != UNPAGED and previous.key != UNPAGED:
                self._copy_globals(previous, shadow)
        self.load_hw_cr3(shadow.pd)

    def _new_shadow(self, key: tuple) -> Shadow:
        while len(self.shadows) >= self.max_shadows and self._evict_oldest():
            pass
        pd = self._take_page()
        self.host.write32(pd + self.vmm_index * 4, self.vmm_pde)
        shadow = Shadow(key, pd)
        self.shadows[key] = shadow
        self.by_pd[pd] = shadow
        return shadow

    def _evict_oldest(self) -> bool:
        """Drop the least recently selected shadow other than the current one."""
        for shadow in self.shadows.values():
            if shadow is not self.current:
                self._drop_shadow(shadow)
                self.stats["shadows_evicted"] += 1
                return True
        return False

    def _drop_shadow(self, shadow: Shadow) -> None:
        self._empty(shadow)
        del self.shadows[shadow.key]
        del self.by_pd[shadow.pd]
        self.free_pages.append(shadow.pd)

    def _empty(self, shadow: Shadow) -> None:
        for index in list(shadow.tables):
            self._drop_table(shadow, index)

    def flush_all(self) -> None:
        """Drop every shadow but the current one, and empty that (a full TLB flush)."""
        for shadow in list(self.shadows.values()):
            if shadow is not self.current:
                self._drop_shadow(shadow)
        self._empty(self.current)
        self.flush_hw_tlb()
        self.stats["shadow_flushes"] += 1
        self.on_unmap()

    def move_vmm(self, index: int) -> None:
        """The VMM moved to the 4 MB of directory entry `index` (which the guest leaves empty):
        every shadow directory's VMM entry moves with it; what a shadow had there goes (the
        guest's entry there was not present, so nothing), and the old entry fills on demand."""
        for shadow in self.shadows.values():
            if index in shadow.tables:
                self._drop_table(shadow, index)
            self.host.write32(shadow.pd + self.vmm_index * 4, 0)
            self.host.write32(shadow.pd + index * 4, self.vmm_pde)
        self.vmm_index = index
        self.flush_hw_tlb()
        self.on_unmap()

    def _take_page(self) -> int:
        if not self.free_pages and not self._evict_oldest():
            # Only the current shadow is left and it fills the pool: start it again.
            self._empty(self.current)
            self.flush_hw_tlb()
            self.stats["shadow_flushes"] += 1
            self.on_unmap()
        page = self.free_pages.pop()
        self.host.write(page, bytes(4096))
        return page

    # ------------------------------------------------------------ filling

    def hardware_pte(self, la: int) -> int:
        """The current shadow's entry for `la` (0: none)."""
        table = self.current.tables.get(la >> 22)
        return 0 if table is None else self.host.read32(table + ((la >> 12) & 0x3FF) * 4)

    def fill(self, la: int, write: bool, supervisor: bool) -> bool:
        """Map `la` in the current shadow as the guest maps it, if the guest allows this access
        without a fault, setting the accessed (and for a write the dirty) bits the CPU would.
        False: the access must be emulated (the interpreter raises the guest's fault, or does
        what the hardware cannot: a kernel write to a read-only page with CR0.WP clear)."""
        if la >> 22 == self.vmm_index:
            return False  # the VMM's own 4 MB: never the guest's mapping (issue 10, item 4)
        m = self.m
        walk = m.walk(la)
        if walk is None:
            return False
        gpa, user, writable, dirty, entries = walk
        if not supervisor and not user:
            return False
        if write and not writable:
            return False  # a fault, or (a supervisor's, WP clear) a write the interpreter makes
        if gpa + 0x1000 > self.G and not self.device_page(gpa):
            return False  # neither RAM nor a device's: every access is emulated (an empty bus)
        # The accessed bit in every entry of the walk, dirty in the last one for a write.
        last = len(entries) - 1
        for i, (addr, value) in enumerate(entries):
            new = value | PTE_A | (PTE_D if write and i == last else 0)
            if new != value:
                m.mem.write32(addr, new)
                entries[i] = (addr, new)
            self.trace(addr >> 12)  # before the mapping below: it may map a traced page
            if self.writes_since_fill:
                self.writes_since_fill.pop(addr >> 12, None)  # in use as a page table
        shadow = self.current
        index = la >> 22
        table = shadow.tables.get(index)
        if table is None:
            table = self._new_table(shadow, index)  # (an eviction never takes the current shadow)
        if entries:
            pde_addr, pde = entries[0]
            shadow_pde = shadow.pd + index * 4
            record = self.pde_derived.get(shadow_pde)
            if record is None:  # a new table, or one made for copies of global entries
                self.pde_derived[shadow_pde] = Derived(pde_addr, pde)
                self.pdes_from.setdefault(pde_addr, set()).add(shadow_pde)
                if len(entries) == 2:
                    self.tables_of.setdefault(pde >> 12, set()).add(shadow_pde)
                self.trace_refs[pde_addr >> 12] += 1
            else:
                record.value = pde  # as written above: only A (and D of a 4 MB page) can differ
        pte_addr = table + ((la >> 12) & 0x3FF) * 4
        old = self.host.read32(pte_addr)
        self._forget_pte(pte_addr)
        source, value = entries[-1] if entries else (-1, 0)  # (paging off: made from nothing)
        global_ = self.pge and bool(value & PTE_G) and (len(entries) == 2 or bool(value & PTE_PS))
        self._map(pte_addr, la >> 12, gpa, source, value, user, writable and (dirty or write), global_)
        if old & PTE_P and (old ^ gpa) & FRAME:
            # The hardware's TLB may hold the old frame. (An entry that was not present is in no
            # TLB, and one that was read-only for the same frame gets a write walked again.)
            self.flush_hw_tlb()
        self.stats["hidden_page_faults"] += 1
        if entries:
            self._prefill_neighbours(table, la, entries)
        return True

    def _prefill_neighbours(self, table: int, la: int, entries: list[tuple[int, int]]) -> None:
        """After a fill, also enter the linear pages around `la` (its aligned group of
        PREFILL_GROUP) that the same guest table maps with the accessed bit set already: a
        TLB may cache any translation whose walk would set no bit (nothing the guest can see
        changes), and a process touches its pages in runs, each otherwise a hidden fault.
        Each is entered as `fill` would enter it, read-only while its dirty bit is clear."""
        group = PREFILL_GROUP
        first = (la >> 12) & ~(group - 1)
        mem, pte_derived = self.m.mem, self.pte_derived
        pde_addr, pde = entries[0]
        big = len(entries) == 1  # a 4 MB page: every neighbour in it is mapped by that PDE
        guest_ptes = (pde & FRAME) | ((first & 0x3FF) << 2)
        values = (pde,) * group if big else struct.unpack_from(f"<{group}I", mem.read(guest_ptes, 4 * group))
        shadow_ptes = table + (first & 0x3FF) * 4
        for i, value in enumerate(values):
            linear = first + i
            pte_addr = shadow_ptes + 4 * i
            if linear == la >> 12 or pte_addr in pte_derived:
                continue
            if big:
                source = pde_addr
                gpa = (pde & 0xFFC00000) | ((linear & 0x3FF) << 12)
            elif value & (PTE_P | PTE_A) != PTE_P | PTE_A:
                continue
            else:
                source, gpa = guest_ptes + 4 * i, value & FRAME
            if self._enter(pte_addr, linear, source, value, pde, gpa, big):
                self.stats["shadow_entries_prefilled"] += 1

    def _enter(self, pte_addr: int, linear: int, source: int, value: int, pde: int, gpa: int, big: bool) -> bool:
        """Enter the guest entry `value` (at `source`; its PDE `pde`, or the 4 MB PDE itself)
        mapping `linear` to `gpa` into the empty shadow PTE at `pte_addr`, as `fill` would
        for an access that sets no bit: accessed already, read-only while not dirty. RAM only."""
        if gpa + 0x1000 > self.G:
            return False  # (device memory: entered by its own fill)
        user = bool(pde & PTE_U) if big else bool(pde & value & PTE_U)
        writable = (bool(pde & PTE_W) if big else bool(pde & value & PTE_W)) and bool(value & PTE_D)
        self._map(pte_addr, linear, gpa, source, value, user, writable, self.pge and bool(value & PTE_G))
        return True

    def _map(
        self, pte_addr: int, linear: int, gpa: int, source: int, value: int, user: bool, writable: bool, global_: bool
    ) -> None:
        """Write the shadow PTE at `pte_addr` mapping `linear` to `gpa`, recorded as made from the
        guest entry `value` at `source`: user-accessible if `user`, writable in the hardware
        when the guest lets it be written now (`writable`: W, and D set) and nothing protects
        the page (a traced page table, translated code...)."""
        page = gpa >> 12
        hw_write = writable and page not in self.traced_pages and not self.protected(page)
        self._record_pte(pte_addr, Derived(source, value, page, linear, global_, writable))
        flags = PTE_P | PTE_A | PTE_D | (PTE_U if user else 0) | (PTE_W if hw_write else 0)
        self.host.write32(pte_addr, gpa | flags)

    def _enter_installed(self, page: int, start: int, end: int, derived: set[int]) -> bool:
        """After a traced write to guest page table `page`: the entries it wrote that are now
        present with the accessed bit set go into the current shadow's table made from `page`
        (a kernel installing a PTE in its page-fault handler, and its fault-around), sparing
        the hidden fault of the access that follows; a changed entry (write-protected for
        copy-on-write) comes back with its new rights. Returns whether an entry nothing had
        been made from (an install, not a change) was entered."""
        installed = False
        for shadow_pde in list(self.tables_of.get(page, ())):
            shadow = self.by_pd.get(shadow_pde & FRAME)
            if shadow is not self.current:
                continue
            index = (shadow_pde & 0xFFF) >> 2
            table = shadow.tables.get(index)
            record = self.pde_derived.get(shadow_pde)
            if table is None or record is None or index == self.vmm_index:
                continue
            mem, base = self.m.mem, page << 12
            for offset in range(start & ~3, end, 4):
                pte_addr = table + offset
                if pte_addr in self.pte_derived:
                    continue
                value = mem.read32(base + offset)
                if value & (PTE_P | PTE_A) != PTE_P | PTE_A:
                    continue
                linear = index << 10 | offset >> 2
                if self._enter(pte_addr, linear, base + offset, value, record.value, value & FRAME, False):
                    self.stats["shadow_entries_installed"] += 1
                    installed |= base + offset not in derived
        return installed

    def _record_pte(self, pte_addr: int, d: Derived) -> None:
        self.pte_derived[pte_addr] = d
        self.table_entries[pte_addr & FRAME].add(pte_addr)
        self.mapping.setdefault(d.page, set()).add(pte_addr)
        if d.source >= 0:
            self.ptes_from.setdefault(d.source, set()).add(pte_addr)
            self.trace_refs[d.source >> 12] += 1
        if d.global_:
            self.globals.setdefault(d.linear, set()).add(pte_addr)

    def _copy_globals(self, source: Shadow, target: Shadow) -> None:
        """A cold shadow starts with the global entries the current one has, as a TLB keeps
        them across a CR3 write: copies, each still derived from its own guest entry."""
        for linear, ptes in list(self.globals.items()):
            for pte_addr in list(ptes):
                d = self.pte_derived.get(pte_addr)
                if d is None or self.table_owner.get(pte_addr & FRAME) is not source:
                    continue  # (another shadow's, or dropped by the pool's eviction meanwhile)
                index = linear >> 10
                table = target.tables.get(index)
                if table is None:
                    table = self._new_table(target, index)
                copy = table + (linear & 0x3FF) * 4
                self._record_pte(copy, Derived(d.source, d.value, d.page, d.linear, True, d.writable))
                self.host.write32(copy, self.host.read32(pte_addr))
                break  # one copy per linear page is enough

    def _new_table(self, shadow: Shadow, index: int) -> int:
        table = self._take_page()
        shadow.tables[index] = table
        self.table_entries[table] = set()
        self.table_owner[table] = shadow
        self.host.write32(shadow.pd + index * 4, table | PTE_P | PTE_W | PTE_U)
        return table

    # ------------------------------------------------------------ dropping

    def _forget_pte(self, pte_addr: int) -> bool:
        """Clear one shadow PTE and its backmap records. False if it was empty."""
        d = self.pte_derived.pop(pte_addr, None)
        if d is None:
            return False
        self.table_entries[pte_addr & FRAME].discard(pte_addr)
        _discard(self.mapping, d.page, pte_addr)
        if d.source >= 0:
            _discard(self.ptes_from, d.source, pte_addr)
            self._release(d.source >> 12)
        if d.global_:
            _discard(self.globals, d.linear, pte_addr)
        self.host.write32(pte_addr, 0)
        return True

    def _drop_table(self, shadow: Shadow, index: int) -> int:
        """Clear a shadow PDE and give its table back to the pool. Returns the PTEs it held."""
        table = shadow.tables.pop(index)
        pde_addr = shadow.pd + index * 4
        count = 0
        for pte_addr in list(self.table_entries[table]):
            count += self._forget_pte(pte_addr)
        del self.table_entries[table]
        del self.table_owner[table]
        d = self.pde_derived.pop(pde_addr, None)
        if d is not None:
            _discard(self.pdes_from, d.source, pde_addr)
            _discard(self.tables_of, d.value >> 12, pde_addr)
            self._release(d.source >> 12)
        self.host.write32(pde_addr, 0)
        self.free_pages.append(table)
        return count + 1

    def invalidate_page(self, linear_page: int) -> None:
        """INVLPG: the current shadow forgets the page, and no shadow keeps a global copy of it."""
        dropped = False
        for pte_addr in list(self.globals.get(linear_page, ())):
            dropped |= self._forget_pte(pte_addr)
        table = self.current.tables.get(linear_page >> 10)
        if table is not None:
            dropped |= self._forget_pte(table + (linear_page & 0x3FF) * 4)
        if dropped:
            self.flush_hw_tlb()
            self.on_unmap()

    def _on_traced_write(self, page: int, start: int, end: int) -> None:
        """The guest wrote bytes [start, end) of a page holding entries a shadow was made from:
        drop, in every shadow, the entries made from a guest entry whose value changed."""
        self.stats["traced_writes"] += 1
        base = page << 12
        writes = self.writes_since_fill[page] + 1
        unshadow = writes >= UNSHADOW_AFTER
        if unshadow:
            del self.writes_since_fill[page]
            start, end = 0, 0x1000
            self.stats["pages_unshadowed"] += 1
        else:
            self.writes_since_fill[page] = writes
        dropped = 0
        mem = self.m.mem
        derived: set[int] = set()  # the entries written that something was made from
        for addr in range(base + (start & ~3), base + end, 4):
            ptes = self.ptes_from.get(addr)
            pdes = self.pdes_from.get(addr)
            if ptes is None and pdes is None:
                continue
            derived.add(addr)
            now = mem.read32(addr)
            for pte_addr in list(ptes or ()):
                if unshadow or self.pte_derived[pte_addr].value != now:
                    dropped += self._forget_pte(pte_addr)
            for pde_addr in list(pdes or ()):
                d = self.pde_derived.get(pde_addr)
                if d is not None and (unshadow or d.value != now):
                    shadow = self.by_pd[pde_addr & FRAME]
                    dropped += self._drop_table(shadow, (pde_addr & 0xFFF) >> 2)
        if dropped:
            self.stats["shadow_entries_dropped"] += dropped
            self.flush_hw_tlb()
            self.on_unmap()
        if not unshadow and page in self.traced_pages and self._enter_installed(page, start, end, derived):
            # A new entry made present, as a page-fault handler does: a page table in use, like
            # a fill through it (a table written only as data, or only write-protected for
            # copy-on-write, still goes after UNSHADOW_AFTER writes).
            self.writes_since_fill.pop(page, None)

    # ------------------------------------------------------------ traces

    def trace(self, page: int) -> None:
        if page in self.traced_pages:
            return
        self.traced_pages.add(page)
        self.write_protect(page)
        self.m.traces.watch(page, WHY_SHADOW, self._on_traced_write)

    def _release(self, page: int) -> None:
        """One shadow entry fewer made from `page`'s bytes; none left: stop tracing it (its
        hardware mappings stay read-only until a write, which maps it writable)."""
        left = self.trace_refs[page] - 1
        if left > 0:
            self.trace_refs[page] = left
            return
        del self.trace_refs[page]
        self.writes_since_fill.pop(page, None)
        if page in self.traced_pages:
            self.traced_pages.discard(page)
            self.m.traces.unwatch(page, WHY_SHADOW)
            self.on_untrace(page)
            self.allow_writes(page)

    def allow_writes(self, page: int) -> None:
        """`page` is no longer protected for the shadow's sake: its hardware mappings whose guest
        entries let it be written now (W and D set) become writable again, so that the writes
        after a page table's last traced one (a table given back and written as data) do not
        each fault to be mapped writable. Not while the VMM protects it for another reason."""
        if page in self.traced_pages or self.protected(page):
            return
        for pte_addr in self.mapping.get(page, ()):
            d = self.pte_derived.get(pte_addr)
            if d is not None and d.writable:
                v = self.host.read32(pte_addr)
                if v & PTE_P and not v & PTE_W:
                    self.host.write32(pte_addr, v | PTE_W)  # (more rights: no TLB entry to drop)
                    self.stats["shadow_entries_made_writable"] += 1

    def write_protect(self, page: int) -> None:
        """Downgrade every hardware mapping of guest page `page`, in every shadow, to read-only."""
        changed = False
        for pte_addr in self.mapping.get(page, ()):
            v = self.host.read32(pte_addr)
            if v & PTE_W:
                self.host.write32(pte_addr, v & ~PTE_W)
                changed = True
        if changed:
            self.flush_hw_tlb()

    def mappings_of(self, page: int) -> list[int]:
        """The hardware PTEs (host addresses) that map guest page `page`, in every shadow."""
        return sorted(self.mapping.get(page, ()))


def _discard(index: dict[int, set[int]], key: int, value: int) -> None:
    values = index.get(key)
    if values is not None:
        values.discard(value)
        if not values:
            del index[key]
