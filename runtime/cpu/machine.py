"""The generated interpreter's machine: CPU state, memory, paging, and the run loop.

A Machine gives the generated code (generated/*.py) the names it uses, in one namespace
per machine: the state (R, S), the memory accesses (ring1.runtime.cpu.memfast), the spec's
builtins (the `b_*` methods below), its procs and its lazy flags. Everything about
particular instructions is generated; this module is the machine they run on:

- segmentation: every access is checked against the segment's limit and type, which
  unicorn does not do (see ../shared/notes/unicorn-as-cpu.md);
- paging: two-level tables with 4 KB and 4 MB (CR4.PSE) pages, U/S and R/W with CR0.WP,
  accessed and dirty bits, #PF with the error code and CR2; translations are cached per
  privilege in dicts (TLBR/TLBW) and dropped on CR3, CR0, CR4 writes and INVLPG;
- code: blocks are compiled once (ring1.runtime.cpu.blocks) and subscribe, in the page-trace
  registry (ring1.runtime.cpu.traces), to the physical pages their bytes came from; a watched
  page is kept out of the write TLB, so every store to it takes the slow path and tells the
  subscribers which bytes it wrote; the blocks made from those bytes are dropped
  (self-modifying code), the rest of the page's blocks stay. A block is valid only for the
  linear->physical mapping it was fetched through: CR3 writes and INVLPG re-walk the linear
  pages of the cached code and drop the blocks whose mapping changed (and tell
  `mapping_listeners`, the VMM's translation cache, the same);
- events: faults and software interrupts are delivered through the guest's IVT or IDT by
  the spec's `deliver` proc, or, with `stop_on_event`, stop the run and are reported.
"""

from __future__ import annotations

import struct
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ring1.generated import flags as gen_flags
from ring1.generated import procs as gen_procs
from ring1.generated.forms import FORMS
from ring1.generated.rules import CONSTS
from ring1.runtime.cpu import memfast, ssefloat, x87
from ring1.runtime.cpu.blocks import MAX_INSNS, Block, compile_block
from ring1.runtime.cpu.events import EXCEPTION_NAMES, ExternalInterrupt, Fault, GuestEvent, Trap, VMStop
from ring1.runtime.cpu.memory import PhysicalMemory
from ring1.runtime.cpu.state import CS, MODE_NAMES, MODE_PROT, MODE_REAL, MODE_V86, NOCC, SS, CpuState
from ring1.runtime.cpu.traces import CodeRanges, PageTraces, instruction_ranges
from ring1.runtime.isa.decoder import MAX_LENGTH, Decoded, Truncated, decode

if TYPE_CHECKING:
    from ring1.runtime.devices.clock import VirtualClock

M32 = 0xFFFFFFFF
M64 = (1 << 64) - 1
M80 = (1 << 80) - 1
M128 = (1 << 128) - 1
PARITY = tuple(1 - bin(i).count("1") % 2 for i in range(256))
EFLAGS_FIXED_ONE = 0x2
EFLAGS_AC, CR0_AM = 1 << 18, 1 << 18
# Alignment checking (CPL 3, CR0.AM and EFLAGS.AC: #AC(0)): the address bits that must be clear
# for a data access of each size (SDM vol. 1, "Alignment of words, doublewords, quadwords and
# double quadwords"; a 48-bit far pointer: 4; an x87 extended real: 8). 16-byte accesses are
# SSE's, whose aligned forms raise #GP themselves: none here.
ALIGNMENT_MASK = {2: 1, 4: 3, 6: 3, 8: 7, 10: 7}
VEC_AC = CONSTS["VEC_AC"]
EFLAGS_DEFINED = 0x3F7FD5  # every bit a Pentium-class CPU implements
WHY_BLOCKS = "interpreter blocks"  # the block cache's reason in the page-trace registry

# Event kinds, as the spec's `deliver` proc takes them.
# The event kinds the spec's `deliver` proc takes (spec/interrupts.r1).
EVENT_EXTERNAL, EVENT_EXCEPTION, EVENT_SOFT, EVENT_INT3, EVENT_INTO, EVENT_ICEBP = (
    CONSTS[f"EVENT_{kind}"] for kind in ("EXTERNAL", "EXCEPTION", "SOFT", "INT3", "INTO", "ICEBP")
)
CONTRIBUTORY = {0, 10, 11, 12, 13}

# The model-specific registers a Pentium-class CPU with SYSENTER has, and their reset values.
MSR_TSC = 0x10
MSR_SYSENTER_CS, MSR_SYSENTER_ESP, MSR_SYSENTER_EIP = (CONSTS[f"MSR_SYSENTER_{r}"] for r in ("CS", "ESP", "EIP"))
KNOWN_MSRS = {0x10: 0, 0x17: 0, 0x1B: 0, 0x174: 0, 0x175: 0, 0x176: 0, 0x8B: 0, 0xC1: 0, 0xC2: 0, 0x186: 0, 0x187: 0}

CPUID_APIC = 1 << 9  # leaf 1 EDX: an on-chip APIC

# Forms that read virtual time (I/O ports, the TSC): the interpreter starts a block at each.
TIMED_FORMS = frozenset(name for name, f in FORMS.items() if {"io", "tsc"} & {*f.reads, *f.writes})

_U32 = struct.Struct("<I")
_U64X2 = struct.Struct("<2Q")
_F64X2 = struct.Struct("<2d")
_U32X2 = struct.Struct("<2I")
_F32X2 = struct.Struct("<2f")


class Platform:
    """I/O ports, time and interrupts of the virtual platform. The base class has no devices:
    reads float high, there is no clock and no interrupt ever arrives."""

    clock: VirtualClock | None = None  # devices' virtual time (devices/clock.py); without one, no interrupts

    def interrupt_pending(self) -> bool:
        """The CPU's INTR pin: a maskable interrupt waits (the guest's IF decides)."""
        return False

    def acknowledge_interrupt(self) -> int:
        """The interrupt acknowledge cycle: the vector to deliver."""
        raise VMStop("no-interrupt", "interrupt acknowledged on a platform without interrupt controller")

    def mmio_read(self, address: int, size: int) -> int:
        """A physical address outside RAM: nothing there reads as all ones."""
        return (1 << (8 * size)) - 1

    def mmio_write(self, address: int, size: int, value: int) -> None:
        return None

    def mmio_ranges(self) -> list[tuple[int, int]]:
        """(base, length) of the physical ranges devices claim, for the CPUs that map them."""
        return []

    def read_msr(self, index: int) -> int | None:
        """An MSR a device owns (the local APIC's base), or None."""
        return None

    def write_msr(self, index: int, value: int) -> bool:
        """True if a device took the write (it may raise a Fault for reserved bits)."""
        return False

    def apic_present(self) -> bool:
        """CPUID's APIC bit: a local APIC that is globally enabled."""
        return False

    def io_in(self, port: int, size: int) -> int:
        return (1 << (size * 8)) - 1

    def io_out(self, port: int, size: int, value: int) -> None:
        return None


@dataclass
class RunResult:
    reason: str  # "stop-address", "limit", "event", "halt", "vmstop"
    event: GuestEvent | None = None
    vmstop: VMStop | None = None


class Machine:
    def __init__(self, memory: int | PhysicalMemory = 16 << 20, platform: Platform | None = None) -> None:
        self.mem = memory if isinstance(memory, PhysicalMemory) else PhysicalMemory(memory)
        self.platform = platform or Platform()
        self.state = S = CpuState()
        self.regs = [0] * 8
        self.lo = [0] * 6
        self.rhi = [0xFFFF] * 6
        self.whi = [0xFFFF] * 6
        self.tlb = {(False, False): {}, (False, True): {}, (True, False): {}, (True, True): {}}  # (user, write)
        self.user = False
        self.alignment_check = False  # CPL 3, CR0.AM and EFLAGS.AC (_select_tlbs)
        self.blocks: dict[tuple[int, int, int], Block] = {}
        self.single_blocks: dict[tuple[int, int, int], Block] = {}  # one-instruction blocks
        # physical page -> (one-instruction block?, key) of the blocks made from its bytes
        self.code_pages: dict[int, set[tuple[bool, tuple[int, int, int]]]] = {}
        # linear page -> the same, for the blocks fetched through it (CR3 and INVLPG re-walk them)
        self.code_linear: dict[int, set[tuple[bool, tuple[int, int, int]]]] = {}
        self.running_block: Block | None = None
        # Whether run() takes external interrupts itself (the VMM's one-instruction emulations
        # do not: the VMM takes them where its translated code allows).
        self.takes_interrupts = True
        # Who hears about emulated writes to which physical page: this machine's block cache,
        # and the VMM's translation cache and shadow page tables (ring1.runtime.cpu.traces).
        self.traces = PageTraces()
        self.traces.on_first_watch.append(self._drop_write_translations)
        # Called after CR3, CR0.PG/PE/WP, CR4 paging bits (None: every linear page) or INVLPG
        # (that page) may have changed where linear pages map.
        self.mapping_listeners: list[Callable[[int | None], None]] = []
        # For a machine whose memory is also written where it cannot see (the VMM's hardware
        # writes guest memory): whether every write to a physical page reaches `_write_phys`.
        # A block from a page where some do not is checked against memory before it runs.
        self.write_visible: Callable[[int], bool] | None = None
        self.stop_on_event = False
        self.stop_addresses: set[int] = set()
        self.max_block = MAX_INSNS
        self.event_hook: Callable[[GuestEvent], bool] | None = None
        self.ns = self._namespace()
        for s in range(6):
            self.recompute_segment(s)
        S.msr.update(KNOWN_MSRS)

    # ------------------------------------------------------------ namespace

    def _namespace(self) -> dict:
        S = self.state
        ns: dict = {
            "R": self.regs,
            "S": S,
            "M": self,
            "MEM": self.mem.view,
            "BASE": S.base,
            "LO": self.lo,
            "RHI": self.rhi,
            "WHI": self.whi,
            "TLBR": self.tlb[(False, False)],
            "TLBW": self.tlb[(False, True)],
            "Fault": Fault,
            "Trap": Trap,
            "VMStop": VMStop,
            "PARITY": PARITY,
            "NOCC": NOCC,
            "set_eflags": self.set_eflags,
        }
        for module in (memfast, gen_flags, gen_procs):
            for name, obj in vars(module).items():
                if isinstance(obj, types.FunctionType) and obj.__module__ == module.__name__:
                    ns[name] = types.FunctionType(obj.__code__, ns, name, obj.__defaults__, obj.__closure__)
                elif name.isupper() and not name.startswith("_"):
                    ns[name] = obj
        for name in ("unpack16", "unpack32", "pack16", "pack32"):
            ns[name] = getattr(memfast, name)
        for attr in dir(self):
            if attr.startswith("b_") and attr not in ns:
                ns[attr] = getattr(self, attr)
        ns["_init_tables"]()
        return ns

    # ------------------------------------------------------------ registers and modes

    def set_eflags(self, value: int) -> None:
        S = self.state
        S.cc = NOCC
        old = S.eflags
        S.eflags = (value & EFLAGS_DEFINED) | EFLAGS_FIXED_ONE
        if (S.eflags ^ old) >> 17 & 1:
            self.update_mode()
        elif (S.eflags ^ old) & EFLAGS_AC:
            self._select_tlbs()

    def eflags(self) -> int:
        return self.ns["flush_cc"]()

    def _select_tlbs(self) -> None:
        """The TLB the fast paths (memfast) use: the CPL's, or while alignment checking is on
        (CPL 3, CR0.AM, EFLAGS.AC) an empty one nothing fills, so that every data access takes
        read_linear or write_linear, which check the alignment."""
        S = self.state
        self.alignment_check = self.user and bool(S.cr[0] & CR0_AM) and bool(S.eflags & EFLAGS_AC)
        if self.alignment_check:
            self.ns["TLBR"], self.ns["TLBW"] = {}, {}
        else:
            self.ns["TLBR"] = self.tlb[(self.user, False)]
            self.ns["TLBW"] = self.tlb[(self.user, True)]

    def _check_alignment(self, la: int, n: int) -> None:
        if la & ALIGNMENT_MASK.get(n, 0):
            raise Fault(VEC_AC, 0)

    def update_mode(self) -> None:
        """Recompute the mode, the CPL and the TLB set after CR0.PE, EFLAGS.VM or CS change."""
        S = self.state
        if not S.cr[0] & 1:
            mode, cpl = MODE_REAL, 0
        elif S.eflags >> 17 & 1:
            mode, cpl = MODE_V86, 3
        else:
            mode, cpl = MODE_PROT, S.sel[CS] & 3
        changed_mode = mode != S.mode
        S.mode, S.cpl = mode, cpl
        self.user = cpl == 3
        self._select_tlbs()
        if changed_mode:
            for s in range(6):
                self.recompute_segment(s)

    def recompute_segment(self, s: int) -> None:
        """The valid offset range of segment s for reads and writes, from its hidden part."""
        S = self.state
        limit, attr = S.limit[s], S.attr[s]
        if S.mode != MODE_PROT:
            # Real and v86 mode: no type checks; the limit still applies (#GP / #SS past it).
            self.lo[s], self.rhi[s], self.whi[s] = 0, limit, limit
            return
        if s not in (CS, SS) and S.sel[s] & ~3 == 0:
            self.lo[s], self.rhi[s], self.whi[s] = 0, -1, -1  # null selector: any access is #GP(0)
            return
        if not attr & 0x80:
            self.lo[s], self.rhi[s], self.whi[s] = 0, -1, -1
            return
        is_code = attr & 0x8
        if is_code:
            readable = bool(attr & 0x2)
            self.lo[s], self.rhi[s], self.whi[s] = 0, (limit if readable else -1), -1
            return
        writable = bool(attr & 0x2)
        if attr & 0x4:  # expand-down: valid offsets are limit+1 .. 0xFFFF or 0xFFFFFFFF (B bit)
            top = M32 if attr & 0x4000 else 0xFFFF
            self.lo[s], self.rhi[s], self.whi[s] = limit + 1, top, (top if writable else -1)
        else:
            self.lo[s], self.rhi[s], self.whi[s] = 0, limit, (limit if writable else -1)

    def segment_fault(self, s: int, off: int) -> None:
        raise Fault(12 if s == SS else 13, 0)

    # ------------------------------------------------------------ paging

    def flush_tlb(self) -> None:
        for t in self.tlb.values():
            t.clear()

    def translate(self, la: int, write: bool, user: bool) -> int:
        """Linear to physical address for one access, with the checks and A/D updates the CPU makes."""
        S = self.state
        page = la >> 12
        cached = self.tlb[(user, write)].get(page)
        if cached is not None:
            return cached | (la & 0xFFF)
        cr0 = S.cr[0]
        if not cr0 & 0x80000000:
            pa = la & 0xFFFFF000
            self._fill(page, pa, user, write, True)
            return pa | (la & 0xFFF)
        mem = self.mem
        err_u = 4 if user else 0
        err_w = 2 if write else 0
        pde_addr = (S.cr[3] & 0xFFFFF000) | ((la >> 22) << 2)
        pde = mem.read32(pde_addr)
        if not pde & 1:
            self._page_fault(la, err_u | err_w)
        if pde & 0x80 and S.cr[4] & 0x10:
            allowed_user = bool(pde & 4)
            allowed_write = bool(pde & 2)
            self._check_access(la, user, write, allowed_user, allowed_write, err_u | err_w)
            new = pde | 0x20 | (0x40 if write else 0)
            if new != pde:
                mem.write32(pde_addr, new)
            base = (pde & 0xFFC00000) | (la & 0x3FF000)
            self._fill(page, base, user, write, bool(new & 0x40))
            return base | (la & 0xFFF)
        pte_addr = (pde & 0xFFFFF000) | (((la >> 12) & 0x3FF) << 2)
        pte = mem.read32(pte_addr)
        if not pte & 1:
            self._page_fault(la, err_u | err_w)
        allowed_user = bool(pde & 4) and bool(pte & 4)
        allowed_write = bool(pde & 2) and bool(pte & 2)
        self._check_access(la, user, write, allowed_user, allowed_write, err_u | err_w)
        if not pde & 0x20:
            mem.write32(pde_addr, pde | 0x20)
        new = pte | 0x20 | (0x40 if write else 0)
        if new != pte:
            mem.write32(pte_addr, new)
        base = pte & 0xFFFFF000
        self._fill(page, base, user, write, bool(new & 0x40))
        return base | (la & 0xFFF)

    def _check_access(
        self, la: int, user: bool, write: bool, allowed_user: bool, allowed_write: bool, err: int
    ) -> None:
        if user and not allowed_user:
            self._page_fault(la, err | 1)
        if write and not allowed_write and (user or self.state.cr[0] & 0x10000):
            self._page_fault(la, err | 1)

    def _page_fault(self, la: int, err: int) -> None:
        self.state.cr[2] = la
        raise Fault(14, err)

    def _fill(self, page: int, base: int, user: bool, write: bool, dirty: bool) -> None:
        if base + 0x1000 > self.mem.size:
            return  # outside RAM: always the slow path
        if write and dirty and (base >> 12) not in self.traces.watched:
            self.tlb[(user, True)][page] = base
        self.tlb[(user, False)][page] = base

    def read_linear(self, la: int, n: int, user: bool) -> int:
        if user and self.alignment_check:
            self._check_alignment(la, n)
        first = self.translate(la, False, user)
        if (la & 0xFFF) + n <= 0x1000:
            if first + n > self.mem.size:
                return self._read_outside_ram(first, n)
            return int.from_bytes(self.mem.read(first, n), "little")
        split = 0x1000 - (la & 0xFFF)
        second = self.translate((la + split) & M32, False, user)
        low = self._read_outside_ram(first, split) if first + split > self.mem.size else None
        high = self._read_outside_ram(second, n - split) if second + n - split > self.mem.size else None
        if low is None:
            low = int.from_bytes(self.mem.read(first, split), "little")
        if high is None:
            high = int.from_bytes(self.mem.read(second, n - split), "little")
        return low | high << (8 * split)

    def _fetch_phys(self, pa: int, n: int) -> bytes:
        """Instruction bytes: RAM, or past it a device's (a ROM at the top of 4 GB)."""
        if pa + n <= self.mem.size:
            return self.mem.read(pa, n)
        return bytes(self._read_outside_ram(pa + i, 1) for i in range(n))

    def _read_outside_ram(self, pa: int, n: int) -> int:
        """Past the end of RAM: the platform's MMIO (devices), or an empty bus."""
        if pa >= self.mem.size:
            return self.platform.mmio_read(pa, n)
        inside = self.mem.size - pa  # (an access straddling the end of RAM: its two parts)
        low = int.from_bytes(self.mem.read(pa, inside), "little")
        return low | self.platform.mmio_read(pa + inside, n - inside) << (8 * inside)

    def write_linear(self, la: int, n: int, value: int, user: bool) -> None:
        if user and self.alignment_check:
            self._check_alignment(la, n)
        # Translate every page first, so that a fault on the second leaves memory untouched.
        first = self.translate(la, True, user)
        data = (value & ((1 << (8 * n)) - 1)).to_bytes(n, "little")
        if (la & 0xFFF) + n <= 0x1000:
            self._write_phys(first, data)
            return
        split = 0x1000 - (la & 0xFFF)
        second = self.translate((la + split) & M32, True, user)
        self._write_phys(first, data[:split])
        self._write_phys(second, data[split:])

    def probe_write(self, la: int, n: int, user: bool) -> None:
        if user and self.alignment_check:
            self._check_alignment(la, n)
        self.translate(la, True, user)
        if (la & 0xFFF) + n > 0x1000:
            self.translate((la + 0x1000 - (la & 0xFFF)) & M32, True, user)

    def _write_phys(self, pa: int, data: bytes) -> None:
        if pa + len(data) > self.mem.size:
            self._write_outside_ram(pa, data)
            return
        self.mem.write(pa, data)
        page = pa >> 12
        if page in self.traces.watched:
            start = pa & 0xFFF
            self.traces.notify(page, start, start + len(data))

    def _write_outside_ram(self, pa: int, data: bytes) -> None:
        """Past the end of RAM: the platform's MMIO (devices), or an empty bus."""
        inside = max(0, self.mem.size - pa)  # (a write straddling the end of RAM: its two parts)
        if inside:
            self.mem.write(pa, data[:inside])
        rest = data[inside:]
        self.platform.mmio_write(pa + inside, len(rest), int.from_bytes(rest, "little"))

    def _drop_write_translations(self, page: int) -> None:
        for (_, write), t in self.tlb.items():
            if write:
                for vpage in [v for v, b in t.items() if b >> 12 == page]:
                    del t[vpage]

    # ------------------------------------------------------------ code cache

    def _on_code_page_write(self, page: int, start: int, end: int) -> None:
        """Bytes [start, end) of `page` were written: drop the blocks made from them."""
        entries = self.code_pages.get(page)
        if entries is None:
            return
        for entry in list(entries):
            single, key = entry
            cache = self.single_blocks if single else self.blocks
            block = cache.get(key)
            if block is None or page not in block.code.spans:
                entries.discard(entry)  # replaced or dropped already
            elif block.code.overlaps(page, start, end):
                entries.discard(entry)
                del cache[key]
                if block is self.running_block:
                    self.state.smc = True  # the running block leaves before its stale part
        if not entries:
            del self.code_pages[page]
            self.traces.unwatch(page, WHY_BLOCKS)

    def forget_code_page(self, page: int) -> None:
        """Drop the blocks made from `page`: its writes stop reaching this machine."""
        self._on_code_page_write(page, 0, 0x1000)

    def code_mapping_changed(self, linear_page: int | None) -> None:
        """Where `linear_page` (None: any page) maps may have changed (CR3, CR0, CR4, INVLPG):
        drop the blocks fetched through a linear page that now maps elsewhere or nowhere."""
        if linear_page is None:
            pages = list(self.code_linear)
        else:
            pages = [linear_page] if linear_page in self.code_linear else []
        for lpage in pages:
            now = self._mapping(lpage)
            entries = self.code_linear[lpage]
            for entry in list(entries):
                single, key = entry
                cache = self.single_blocks if single else self.blocks
                block = cache.get(key)
                if block is None or block.maps.get(lpage, now) != now:
                    entries.discard(entry)
                    if block is not None:
                        del cache[key]
            if not entries:
                del self.code_linear[lpage]
        for listener in self.mapping_listeners:
            listener(linear_page)

    def flush_blocks(self) -> None:
        self.blocks.clear()
        self.single_blocks.clear()
        self.code_pages.clear()
        self.code_linear.clear()
        self.traces.unwatch_all(WHY_BLOCKS)

    def _mapping(self, lpage: int) -> tuple[int, bool] | None:
        """Where a linear page maps now, and whether user code may fetch from it."""
        walk = self.walk(lpage << 12)
        return None if walk is None else (walk[0] >> 12, walk[1])

    def walk(self, la: int) -> tuple[int, bool, bool, bool, list[tuple[int, int]]] | None:
        """The guest's translation of `la` without side effects: (physical page base, user,
        writable, dirty, [(address, value) of the PDE and PTE]); None when not present."""
        S = self.state
        if not S.cr[0] & 0x80000000:
            return la & ~0xFFF, True, True, True, []
        mem = self.mem
        pde_addr = (S.cr[3] & 0xFFFFF000) | ((la >> 22) << 2)
        pde = mem.read32(pde_addr)
        if not pde & 1:
            return None
        if pde & 0x80 and S.cr[4] & 0x10:
            big = (pde & 0xFFC00000) | (la & 0x3FF000)
            return big, bool(pde & 4), bool(pde & 2), bool(pde & 0x40), [(pde_addr, pde)]
        pte_addr = (pde & 0xFFFFF000) | (((la >> 12) & 0x3FF) << 2)
        pte = mem.read32(pte_addr)
        if not pte & 1:
            return None
        user = bool(pde & 4) and bool(pte & 4)
        writable = bool(pde & 2) and bool(pte & 2)
        return pte & 0xFFFFF000, user, writable, bool(pte & 0x40), [(pde_addr, pde), (pte_addr, pte)]

    def fetch(self, eip: int) -> tuple[bytes, tuple[int, ...]]:
        """Up to 15 instruction bytes at CS:eip, as far as they can be fetched without a fault."""
        S = self.state
        limit_left = S.limit[CS] - eip + 1
        if limit_left <= 0:
            raise Fault(13, 0)
        la = (S.base[CS] + eip) & M32
        want = min(MAX_LENGTH, limit_left)
        first_len = min(want, 0x1000 - (la & 0xFFF))
        pa = self.translate(la, False, self.user)
        data = self._fetch_phys(pa, first_len)
        pages = (pa >> 12,)
        if first_len < want:
            try:
                pa2 = self.translate((la + first_len) & M32, False, self.user)
            except Fault:
                return data, pages
            data += self._fetch_phys(pa2, want - first_len)
            pages += (pa2 >> 12,)
        return data, pages

    def decode_at(self, eip: int) -> tuple[Decoded, tuple[int, ...]]:
        """Decode at CS:eip, raising the fault an instruction fetch would raise."""
        S = self.state
        data, pages = self.fetch(eip)
        try:
            return decode(data, eip, bool(S.code32)), pages
        except Truncated:
            # The instruction runs into an unfetchable page or past the CS limit.
            la = (S.base[CS] + eip + len(data)) & M32
            if len(data) < MAX_LENGTH and eip + len(data) > S.limit[CS]:
                raise Fault(13, 0) from None
            self.translate(la, False, self.user)
            raise Fault(13, 0) from None

    def compile_at(self, eip: int, single: bool = False) -> Block:
        S = self.state
        insns: list[Decoded] = []
        code = CodeRanges()
        maps: dict[int, tuple[int, bool]] = {}  # linear page -> (physical page, user) as fetched
        cur = eip
        limit = 1 if single else self.max_block
        while len(insns) < limit:
            try:
                d, ipages = self.decode_at(cur)
            except Fault:
                if not insns:
                    raise
                break  # the fetch faults when execution reaches it, not before
            if insns and d.form in TIMED_FORMS:
                # I/O and the TSC read the clock: such an instruction begins its own block, so
                # the clock has been advanced to it (blocks count their instructions at the end).
                break
            insns.append(d)
            la = (S.base[CS] + d.eip) & M32
            code.add(instruction_ranges(la, len(d.raw), ipages))
            for lpage in {la >> 12, ((la + len(d.raw) - 1) & M32) >> 12} - maps.keys():
                maps[lpage] = self._mapping(lpage)
            cur = d.next
            info = FORMS.get(d.form) if d.form else None
            if info is None or info.ends_block or d.lock_invalid or cur in self.stop_addresses:
                break
            if ((S.base[CS] + cur) & 0xFFF) == 0:
                break
        block = compile_block(self.ns, insns, code, maps, self.describe)
        visible = self.write_visible
        if visible is not None and not all(visible(p) for p in code.spans):
            block.snapshot = code.read(self.mem.view)
        key = (eip, S.base[CS], S.code32)
        (self.single_blocks if single else self.blocks)[key] = block
        entry = (single, key)
        for p in code.spans:
            self.code_pages.setdefault(p, set()).add(entry)
            self.traces.watch(p, WHY_BLOCKS, self._on_code_page_write)
        for lp in maps:
            self.code_linear.setdefault(lp, set()).add(entry)
        return block

    def _cached_block(self, cache: dict[tuple[int, int, int], Block], key: tuple[int, int, int]) -> Block | None:
        block = cache.get(key)
        if block is not None and block.snapshot and not block.unchanged(self.mem.view):
            return None  # written where this machine could not see it: compiled again
        return block

    def cached_instruction(self, eip: int) -> Decoded | None:
        """The instruction at CS:eip as the one-instruction block cache decoded it, while that
        block is valid; None when there is none. Fetches and decodes nothing (no fault, no
        accessed bit): for a caller that would decode what `run(1)` is about to run."""
        S = self.state
        block = self._cached_block(self.single_blocks, (eip, S.base[CS], S.code32))
        return None if block is None else block.insns[0]

    def instruction_at(self, eip: int) -> Decoded:
        """The instruction at CS:eip, decoded into the one-instruction block `run(1)` runs there
        (compiled now unless cached, so that running it decodes nothing again); raises the
        fault its fetch raises."""
        S = self.state
        key = (eip, S.base[CS], S.code32)
        return (self._cached_block(self.single_blocks, key) or self.compile_at(eip, single=True)).insns[0]

    def describe(self, d: Decoded) -> str:
        return f"{d.form or '(undefined)'} {d.raw.hex(' ')}"

    # ------------------------------------------------------------ running

    def run(self, max_insns: int | None = None) -> RunResult:
        """Run until a stop address, the instruction budget, HLT that nothing can wake, or (with
        stop_on_event) the first fault or software interrupt. External interrupts are taken at
        block boundaries (every instruction that can change IF or raise a line ends a block) when
        IF allows and no interrupt shadow is open; the platform's clock advances by the
        instructions run, and blocks end at its next deadline."""
        S = self.state
        blocks = self.blocks
        budget_end = None if max_insns is None else S.icount + max_insns
        stops = self.stop_addresses
        platform = self.platform
        clock = platform.clock  # (no clock: a platform without time has no interrupts either)
        pending = platform.interrupt_pending
        end = budget_end
        shadow = False
        while True:
            if S.eip in stops:
                return RunResult("stop-address")
            if budget_end is not None and S.icount >= budget_end:
                return RunResult("limit")
            if clock is not None:  # (one test per block for a platform without time)
                if S.eflags & 0x200 and not S.irq_shadow and self.takes_interrupts and pending():
                    try:
                        self.take_interrupt()
                    except VMStop as stop:
                        return RunResult("vmstop", vmstop=stop)
                    continue
                if S.halted:
                    try:
                        if S.eflags & 0x200 and clock.skip_to_deadline():
                            continue  # time passed to the next timer; its interrupt is taken above
                    except VMStop as stop:  # a device's timer stopped the machine (Ctrl-A x, a reset)
                        return RunResult("vmstop", vmstop=stop)
                    return RunResult("halt")
                end = budget_end
                left = clock.insns_until_deadline()
                if left is not None:
                    end = S.icount + left if end is None else min(end, S.icount + left)
                shadow = S.irq_shadow  # the instruction after STI / MOV SS runs alone, then interrupts
                if shadow:
                    S.irq_shadow = False
                started = S.icount
            elif S.halted:
                return RunResult("halt")
            key = (S.eip, S.base[CS], S.code32)
            single_step = S.eflags & 0x100  # TF as the instruction starts: #DB after it completes
            try:
                if single_step or shadow or (end is not None and end - S.icount < self.max_block):
                    # Near the end of the budget or a timer's deadline, one instruction at a
                    # time, so it ends exactly.
                    block = self.single_blocks.get(key)  # (_cached_block, inline: every trap and callout)
                    if block is None or (block.snapshot and not block.unchanged(self.mem.view)):
                        block = self.compile_at(S.eip, single=True)
                else:
                    block = blocks.get(key)
                    if block is None or (block.snapshot and not block.unchanged(self.mem.view)):
                        block = self.compile_at(S.eip)
                self.running_block = block
                block.fn()
                if single_step:
                    S.dr[6] |= 0x4000  # BS: the #DB comes from single-stepping
                    raise Trap(1, EVENT_EXCEPTION)
            except GuestEvent as ev:
                if self.stop_on_event or (self.event_hook is not None and self.event_hook(ev)):
                    return RunResult("event", event=ev)
                try:
                    self.deliver_event(ev)
                except VMStop as stop:
                    return RunResult("vmstop", vmstop=stop)
            except VMStop as stop:
                return RunResult("vmstop", vmstop=stop)
            finally:
                self.running_block = None
                if clock is not None:
                    try:
                        clock.advance(S.icount - started)
                    except VMStop as stop:  # a device's timer stopped the machine (a reset, say)
                        return RunResult("vmstop", vmstop=stop)

    def step(self) -> RunResult:
        """Run one instruction, reporting a fault or software interrupt it raises ("event")
        instead of delivering it: the engines' emulation of one guest instruction (callouts,
        traps, what unicorn cannot run or cannot say)."""
        self.stop_on_event = True
        try:
            return self.run(1)
        finally:
            self.stop_on_event = False

    def take_interrupt(self) -> int:
        """INTR is up and IF allows: acknowledge the controller and deliver its vector through
        the guest's IVT or IDT as an external interrupt (which also ends a HLT)."""
        vector = self.platform.acknowledge_interrupt()
        self.state.halted = False
        self.deliver_event(ExternalInterrupt(vector))
        return vector

    def deliver_event(self, ev: GuestEvent) -> None:
        """Deliver a fault or software interrupt through the guest's IVT or IDT, as the CPU does:
        a fault while delivering a contributory fault or a page fault becomes #DF; a fault while
        delivering #DF shuts the machine down (triple fault)."""
        if isinstance(ev, Trap):
            vector, kind, err = ev.vector, ev.kind, None
        else:
            vector, kind, err = ev.vector, EVENT_EXCEPTION, ev.error_code
        deliver = self.ns.get("p_deliver")
        if deliver is None:
            raise VMStop("no-delivery", "the spec has no `deliver` proc to deliver exceptions through the IDT")
        first = vector
        start = ev.start if isinstance(ev, Trap) and kind != EVENT_EXCEPTION else None
        while True:
            try:
                deliver(vector, kind, int(err is not None), err or 0)
                return
            except Trap as t:
                # A task gate's switch found the new task's T bit (spec/tasks.r1): its #DB, now.
                vector, kind, err, start = t.vector, t.kind, None, None
                first = vector
                continue
            except Fault as f2:
                if self.state.new_task:
                    # A fault while loading the new task of a task gate: the new task's, at its
                    # own EIP (spec/tasks.r1), never reported at the software interrupt.
                    self.state.new_task, start = False, None
                if start is not None:
                    # The software interrupt did not happen: its fault is reported at it.
                    self.state.eip, start = start, None
                    self.state.icount -= 1
                if vector == 8:
                    raise VMStop("triple-fault", f"triple fault: {f2} while delivering #DF") from None
                if (first in CONTRIBUTORY or first == 14) and (
                    f2.vector in CONTRIBUTORY or (first == 14 and f2.vector == 14)
                ):
                    vector, kind, err = 8, EVENT_EXCEPTION, 0
                else:
                    vector, kind, err = f2.vector, EVENT_EXCEPTION, f2.error_code
                first = vector

    # ------------------------------------------------------------ builtins (spec/prelude.r1)

    def b_seg_selector(self, s: int) -> int:
        return self.state.sel[s]

    def b_seg_base(self, s: int) -> int:
        return self.state.base[s]

    def b_seg_limit(self, s: int) -> int:
        return self.state.limit[s]

    def b_seg_attr(self, s: int) -> int:
        return self.state.attr[s]

    def b_set_seg(self, s: int, sel: int, base: int, limit: int, attr: int) -> None:
        S = self.state
        S.sel[s], S.base[s], S.limit[s], S.attr[s] = sel & 0xFFFF, base & M32, limit & M32, attr & 0xFFFF
        if s == CS:
            S.code32 = attr >> 14 & 1
            self.update_mode()
        elif s == SS:
            S.stack32 = attr >> 14 & 1
        self.recompute_segment(s)

    def b_set_gdtr(self, base: int, limit: int) -> None:
        self.state.gdtr_base, self.state.gdtr_limit = base & M32, limit & 0xFFFF

    def b_set_idtr(self, base: int, limit: int) -> None:
        self.state.idtr_base, self.state.idtr_limit = base & M32, limit & 0xFFFF

    def b_set_ldtr(self, sel: int, base: int, limit: int, attr: int) -> None:
        S = self.state
        S.ldtr, S.ldtr_base, S.ldtr_limit, S.ldtr_attr = sel & 0xFFFF, base & M32, limit & M32, attr & 0xFFFF

    def b_set_tr(self, sel: int, base: int, limit: int, attr: int) -> None:
        S = self.state
        S.tr, S.tr_base, S.tr_limit, S.tr_attr = sel & 0xFFFF, base & M32, limit & M32, attr & 0xFFFF

    def b_write_cr(self, n: int, value: int) -> None:
        S = self.state
        value &= M32
        if n == 0:
            old = S.cr[0]
            S.cr[0] = value | 0x10  # ET is hard-wired to 1
            if (old ^ S.cr[0]) & 0x80010001:  # PG, WP, PE
                self.flush_tlb()
                self.flush_blocks()
                self.code_mapping_changed(None)
            if (old ^ S.cr[0]) & 1:
                self.update_mode()
            elif (old ^ S.cr[0]) & CR0_AM:
                self._select_tlbs()
        elif n == 2:
            S.cr[2] = value
        elif n == 3:
            S.cr[3] = value
            self.flush_tlb()
            self.code_mapping_changed(None)
        elif n == 4:
            old = S.cr[4]
            S.cr[4] = value
            if (old ^ value) & 0xB0:  # PSE, PGE, PAE
                self.flush_tlb()
                self.flush_blocks()
                self.code_mapping_changed(None)
        else:
            raise Fault(6, None)

    def b_write_dr(self, n: int, value: int) -> None:
        self.state.dr[n] = value & M32

    def b_read_msr(self, index: int) -> int:
        S = self.state
        if index == MSR_TSC:
            return self.b_read_tsc()
        owned = self.platform.read_msr(index)
        if owned is not None:
            return owned
        if index not in S.msr:
            raise Fault(13, 0)
        return S.msr[index]

    def b_write_msr(self, index: int, value: int) -> None:
        S = self.state
        if index == MSR_TSC:
            clock = self.platform.clock
            S.tsc = (value - (clock.tsc() if clock is not None else S.icount)) & ((1 << 64) - 1)
            return
        if self.platform.write_msr(index, value):
            return
        if index not in S.msr:
            raise Fault(13, 0)
        S.msr[index] = value & ((1 << 64) - 1)

    def b_read_tsc(self) -> int:
        """The time-stamp counter: the platform's virtual clock (devices/clock.py: TSC_HZ), or
        without one the instructions retired; plus the offset WRMSR set."""
        S = self.state
        clock = self.platform.clock
        now = clock.tsc() if clock is not None else S.icount
        return (now + S.tsc) & ((1 << 64) - 1)

    def b_read_pmc(self, index: int) -> int:
        if index > 1:
            raise Fault(13, 0)
        return 0

    def b_io_in(self, port: int, bits: int) -> int:
        return self.platform.io_in(port & 0xFFFF, bits // 8) & ((1 << bits) - 1)

    def b_io_out(self, port: int, bits: int, value: int) -> None:
        self.platform.io_out(port & 0xFFFF, bits // 8, value & ((1 << bits) - 1))

    # ------------------------------------------------------------ REP STOS and REP MOVS in bulk

    def _bulk_run(self, s: int, off: int, n: int, count: int, write: bool) -> tuple[int, int]:
        """For `count` elements of n bytes at s:off going up: how many fit in the segment's
        limits and the rest of the page, and the physical address they start at (0 elements:
        leave them to the loop, which faults or goes to a device precisely)."""
        hi = self.whi[s] if write else self.rhi[s]
        if off < self.lo[s] or off > hi:
            return 0, 0
        la = (self.state.base[s] + off) & M32
        count = min(count, (0x1000 - (la & 0xFFF)) // n, (hi - off + 1) // n)
        if count <= 0:
            return 0, 0
        pa = self.translate(la, write, self.user)  # (a fault here is the loop's first one too)
        if pa + count * n > self.mem.size:
            return 0, 0
        return count, pa

    def b_rep_stos(self, bits: int) -> None:
        """spec/string.r1 `bulk rep_stos`: REP STOS (32-bit addresses, DF clear), page by page."""
        if self.alignment_check:
            return  # (every access checked, by the loop)
        R, n = self.regs, bits >> 3
        pattern = (R[0] & ((1 << bits) - 1)).to_bytes(n, "little")
        while R[1]:
            count, pa = self._bulk_run(0, R[7], n, R[1], True)
            if not count:
                return
            self._write_phys(pa, pattern * count)
            R[7] = (R[7] + count * n) & M32
            R[1] -= count

    def b_rep_movs(self, seg: int, bits: int) -> None:
        """spec/string.r1 `bulk rep_movs`: REP MOVS (32-bit addresses, DF clear), as long as
        the source and destination runs do not overlap (a forward copy into its own source
        repeats a pattern, which the loop makes element by element)."""
        if self.alignment_check:
            return
        R, n = self.regs, bits >> 3
        while R[1]:
            count, src = self._bulk_run(seg, R[6], n, R[1], False)
            if not count:
                return
            count, dst = self._bulk_run(0, R[7], n, count, True)
            if not count or (src < dst + count * n and dst < src + count * n):
                return
            self._write_phys(dst, self.mem.read(src, count * n))
            R[6] = (R[6] + count * n) & M32
            R[7] = (R[7] + count * n) & M32
            R[1] -= count

    def b_io_bitmap_allows(self, port: int, bits: int) -> int:
        """The TSS I/O permission bitmap check (a 32-bit TSS; its bitmap offset at byte 102)."""
        S = self.state
        if S.mode == MODE_REAL:
            return 1
        if (S.tr_attr & 0xF) not in (0x9, 0xB) or S.tr_limit < 103:
            return 0
        base = S.tr_base
        io_base = self.read_linear((base + 102) & M32, 2, False)
        first = io_base + (port >> 3)
        if first + 1 > S.tr_limit:
            return 0
        word = self.read_linear((base + first) & M32, 2, False)
        mask = ((1 << (bits // 8)) - 1) << (port & 7)
        return int(word & mask == 0)

    def b_invlpg(self, la: int) -> None:
        page = (la & M32) >> 12
        for t in self.tlb.values():
            t.pop(page, None)
        if page in self.code_linear:
            self.code_mapping_changed(page)
        else:
            for listener in self.mapping_listeners:
                listener(page)

    def b_task_commit(self, on: int) -> None:
        self.state.new_task = bool(on)

    def b_task_debug_trap(self) -> None:
        """The new task's T bit (spec/tasks.r1): a #DB trap, taken before its first instruction."""
        self.state.dr[6] |= 0x8000  # BT
        raise Trap(1, EVENT_EXCEPTION)

    def b_halt(self) -> None:
        self.state.halted = True

    def b_inhibit_interrupts(self) -> None:
        self.state.irq_shadow = True

    def b_soft_interrupt(self, vector: int, kind: int) -> None:
        raise Trap(vector & 0xFF, kind)

    def b_cpuid_leaf(self, leaf: int, subleaf: int, which: int) -> int:
        from ring1.runtime.cpu.cpuid import cpuid

        value = cpuid(leaf & M32, subleaf & M32)[which]
        if which == 3 and leaf & M32 == 1 and self.platform.apic_present():
            value |= CPUID_APIC  # the platform's local APIC, while it is globally enabled (SDM)
        return value

    def b_sdiv(self, a: int, b: int) -> int:
        q = abs(a) // abs(b)
        return q if (a < 0) == (b < 0) else -q

    def b_srem(self, a: int, b: int) -> int:
        return a - b * self.b_sdiv(a, b)

    def b_f64_relation(self, a: int, b: int) -> int:
        x, y = _F64X2.unpack(_U64X2.pack(a & M64, b & M64))
        if x != x or y != y:
            return 3  # unordered: a NaN
        return 0 if x < y else (1 if x == y else 2)

    def b_fpr(self, p: int) -> int:
        return self.state.fpr[p & 7]

    def b_set_fpr(self, p: int, v: int) -> None:
        self.state.fpr[p & 7] = v & M80

    def b_xmm(self, i: int) -> int:
        return self.state.xmm[i & 7]

    def b_set_xmm(self, i: int, v: int) -> None:
        self.state.xmm[i & 7] = v & M128

    def b_unsupported(self, what: str) -> None:
        raise VMStop("unsupported", f"{what} (at guest EIP {self.state.eip:#x})")

    def b_unimplemented(self, form: str, source: str) -> None:
        raise VMStop("no-semantics", f"{form} has no semantics in the spec yet ({source})")

    def b_set_reg8(self, i: int, v: int) -> None:
        r, s = i & 3, (i & 4) << 1
        self.regs[r] = self.regs[r] & (M32 ^ (0xFF << s)) | (v & 0xFF) << s

    def b_f32_relation(self, a: int, b: int) -> int:
        x, y = _F32X2.unpack(_U32X2.pack(a & M32, b & M32))
        if x != x or y != y:
            return 3  # unordered: a NaN
        return 0 if x < y else (1 if x == y else 2)

    def b_check_read(self, s: int, off: int, bits: int) -> None:
        n = bits >> 3
        if off < self.lo[s] or off + n - 1 > self.rhi[s]:
            self.segment_fault(s, off)
        la = (self.state.base[s] + off) & M32
        self.translate(la, False, self.user)
        if (la & 0xFFF) + n > 0x1000:
            self.translate((la + 0x1000 - (la & 0xFFF)) & M32, False, self.user)

    def b_sse_arith(self, op: int, width: int, a: int, b: int, mxcsr: int) -> int:
        return ssefloat.arith(op, width, a, b, mxcsr)

    def b_sse_convert(self, kind: int, a: int, mxcsr: int) -> int:
        return ssefloat.convert(kind, a, mxcsr)

    def b_sse_reciprocal(self, op: int, a: int) -> int:
        return ssefloat.reciprocal(op, a)

    # ------------------------------------------------------------ x87 arithmetic (runtime/cpu/x87.py)

    def b_f80_load(self, bits: int, x: int) -> int:
        return x87.load_real(bits, x)

    def b_f80_arith(self, op: int, a: int, b: int, bits: int, fcw: int) -> int:
        return x87.arith(op, a, b, bits, fcw)

    def b_f80_sqrt(self, a: int, fcw: int) -> int:
        return x87.sqrt(a, fcw)

    def b_f80_store(self, bits: int, x: int, fcw: int) -> int:
        return x87.store_real(bits, x, fcw)

    def b_f80_from_int(self, v: int, bits: int) -> int:
        return x87.from_int(v, bits)

    def b_f80_to_int(self, x: int, bits: int, fcw: int) -> int:
        return x87.to_int(x, bits, fcw)

    def b_f80_compare(self, a: int, b: int, bits: int, quiet: int) -> int:
        return x87.compare(a, b, bits, quiet)

    def b_f80_class(self, x: int) -> int:
        return x87.classify(x)

    def b_f80_round_int(self, x: int, fcw: int) -> int:
        return x87.round_int(x, fcw)

    def b_f80_from_bcd(self, x: int) -> int:
        return x87.from_bcd(x)

    def b_f80_to_bcd(self, x: int, fcw: int) -> int:
        return x87.to_bcd(x, fcw)

    def b_f80_scale(self, a: int, b: int, fcw: int) -> int:
        return x87.scale(a, b, fcw)

    def b_f80_extract(self, a: int) -> int:
        return x87.extract(a)

    def b_f80_prem(self, a: int, b: int, ieee: int, fcw: int) -> int:
        return x87.partial_remainder(a, b, ieee, fcw)

    def b_f80_transcendental(self, op: int, a: int, b: int, fcw: int) -> int:
        return x87.transcendental_op(op, a, b, fcw)

    # ------------------------------------------------------------ reports

    def describe_state(self) -> str:
        S = self.state
        return f"eip={S.eip:#010x} mode={MODE_NAMES[S.mode]} cpl={S.cpl}"

    @staticmethod
    def event_name(ev: GuestEvent) -> str:
        if isinstance(ev, Fault):
            return EXCEPTION_NAMES.get(ev.vector, str(ev.vector))
        return str(ev)
