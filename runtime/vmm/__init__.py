"""The VMM: the guest kernel binary-translated at CPL 1, guest user code run directly at CPL 3,
on unicorn as the physical CPU. Modes `bt` (the 1999 design) and `trap` (naive
trap-and-emulate, for contrast).

The pieces, and where the spec comes in:

- **Virtual CPU.** The guest-visible state that is not in hardware registers (segment
  caches, CPL, IF and IOPL, control registers, descriptor-table registers) lives in an
  interpreter `Machine` (ring1.runtime.cpu.machine) that shares guest memory with unicorn. It is
  authoritative; the vcpu page in the VMM area holds copies that in-TC templates read.
- **Address space** (spec/vmm.r1 has the layout and the protection decision). Host physical
  memory is guest RAM, then the 4 MB VMM area (mapped at VMM_BASE), then a pool for the
  hardware page tables, which are never mapped linearly. Hardware paging is always on:
  guest pages are filled in on demand from the guest's own page tables (hidden page
  faults) into shadow page tables kept per guest address space (shadow.py, the shadow
  MMU); the guest's page-table pages are traced (mapped read-only) so writes to them are
  emulated and the shadow entries made from the bytes written dropped; pages holding
  translated code are read-only too. Both
  subscribe in the machine's page-trace registry (ring1.runtime.cpu.traces), each under its own
  reason, so a page that is both a page table and code is heard by both.
- **TC coherency.** A unit records the guest bytes it was made from (`Unit.code`, every page
  it spans) and the linear->physical mapping it was fetched through (`Unit.maps`). An
  emulated write drops only the units made from the bytes written (`invalidate_unit`:
  `live` becomes False, the hash table forgets it, chained jumps into it go back to their
  exit pad slots, which translate the target again, and its own slots are given back); the
  unit running when its own code is written leaves at the write (a trap or callout
  re-enters at a fresh translation of the next instruction). CR3 writes and INVLPG re-check
  the mapping (`_on_mapping_change`).
- **Segments.** Each guest segment register is loaded in hardware from a fixed slot of the
  VMM's GDT holding a copy of its (virtual) descriptor cache, with DPL raised to 1 for
  kernel code, so guest selectors never name VMM descriptors and the guest's GDT layout
  does not matter.
- **Translation.** A unit of at most 12 guest instructions, or up to a control transfer,
  becomes a CCF in the TC. Every decision comes from the generated rule table: `ident`
  copies, `direct` continuations (chained by patching the jump once the target exists),
  `indirect` lookups in the TC hash table, `inline` templates, `callout` to the
  interpreter, `trap`. Instructions using GS (the VMM's) or an absolute address in the VMM
  area become callouts.
- **Exits.** Each continuation and each callout jumps to its own slot of an exit pad; a code
  hook over the pad knows the exit by the slot's address, and the VMM's record for it (Exit,
  Site) says what to translate, patch or emulate. Nothing guest context can write decides
  where the VMM jumps or what it patches: its control data is on a page read-only at CPL 1.
- **Events.** Every exception unicorn raises comes to one dispatcher (`_on_event`): hidden
  page faults are filled and the instruction restarted; traced and protected writes are
  emulated; guest faults are re-run by the interpreter for their error code and delivered
  through the guest's IDT by the spec's `deliver` proc.
- **Adaptive translation.** Traps are counted per guest instruction; one that traps
  TRAP_THRESHOLD times is retranslated as a callout and the old CCF forwards to the new one.
  Self-modifying code is the same case: a store into a code page traps (the page is
  read-only) until it is retranslated as a callout, after which it costs a callout, not a
  world switch, and drops only the unit it rewrites (`ring1 bench nano --only smc`).
"""

from __future__ import annotations

import bisect
import struct
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import ClassVar

from unicorn import UC_HOOK_BLOCK, UC_HOOK_CODE, UC_HOOK_INSN
from unicorn import x86_const as X
from unicorn.unicorn_const import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH

from ring1.generated.decode import OPCODES
from ring1.generated.forms import FORMS
from ring1.generated.layouts import CR0, CR4, EFLAGS, PTE
from ring1.generated.rules import CONSTS, RULES, TEMPLATES, choose_rule
from ring1.runtime.cpu import descriptors
from ring1.runtime.cpu.events import Fault, GuestEvent, VMStop
from ring1.runtime.cpu.machine import Machine, Platform
from ring1.runtime.cpu.memory import PhysicalMemory
from ring1.runtime.cpu.state import CS, GS, MODE_PROT, MODE_REAL, MODE_V86, SS
from ring1.runtime.cpu.traces import CodeRanges, instruction_ranges
from ring1.runtime.engines import EVENT_COUNTERS, delegate
from ring1.runtime.host.context import (
    gprs_and_eip,
    read_fpu,
    segment_caches,
    soft_interrupt_before,
    soft_interrupt_in,
    write_fpu,
)
from ring1.runtime.host.physcpu import SEG_IDS, CpuEvent, PhysicalCpu, UcError, changes_flags_before_store
from ring1.runtime.isa.decoder import SEGMENT_PREFIX_OF, Decoded, Truncated, decode
from ring1.runtime.ledger import DIRECT_EXECUTION, NO_LEDGER, TRANSLATED_CODE, NoLedger, timed
from ring1.runtime.vmm.descriptor_tables import (
    ACCESSED,
    ATTR_COMPARED,
    TablesVerdict,
    read_tables,
    shadow_descriptor,
)
from ring1.runtime.vmm.shadow import POOL_SIZE, VMM_TABLE_PAGE, WHY_SHADOW, ShadowMmu

C = CONSTS
VMM_BASE, VMM_SIZE = C["VMM_BASE"], C["VMM_SIZE"]
STUBS = TEMPLATES["vmm_stubs"]
# The few bytes before every CCF where a hit of the in-TC lookup enters (spec/vmm.r1).
INDIRECT_ENTRY = b"".join(TEMPLATES["indirect_entry"]["variants"][()])
# Put before every copied instruction that reads the arithmetic flags and accesses memory, so
# that a fault in it cannot lose them (template settle_flags in spec/vmm.r1).
SETTLE_FLAGS = b"".join(TEMPLATES["settle_flags"]["variants"][()])
ARITH_FLAG_NAMES = ("cf", "pf", "af", "zf", "sf", "of")
L = STUBS["labels"]  # where the stubs are while the VMM is at VMM_BASE (a Vmm's own: Vmm.L)
# The exit pads (spec/vmm.r1): one slot per continuation exit and per callout, each a jump to
# the common stub; the slot's address is the exit's identity, seen by a code hook over the pad.
# Their addresses while the VMM is at VMM_BASE, where it starts (a Vmm's own: Vmm.exit_pad...).
EXIT_PAD = VMM_BASE + C["VMM_EXIT_PAD"]
CALLOUT_PAD = VMM_BASE + C["VMM_CALLOUT_PAD"]
PAD_SLOT = C["PAD_SLOT"]
EXIT_SLOTS = (C["VMM_CALLOUT_PAD"] - C["VMM_EXIT_PAD"]) // PAD_SLOT
CALLOUT_SLOTS = (C["VMM_TC"] - C["VMM_CALLOUT_PAD"]) // PAD_SLOT
MAX_UNIT = 12
WHY_TC = "translated code"  # the VMM's reason for its code-page traces (WHY_SHADOW: shadow.py's)
WHY_TABLES = "descriptor table run directly"
WHY_WINDOW = "the guest's page directory, where the VMM is"
# The hardware's CR0: paging, protection, and CR0.WP so that a store of translated code (CPL 1,
# a supervisor) to a page the VMM keeps read-only traps. The guest's MP, EM, TS, ET, NE and AM
# hold in the hardware too: its FPU instructions fault with #NM where the guest's would, and
# SMSW run directly shows the guest's machine status word.
HW_CR0 = CR0.PG | CR0.WP | CR0.PE
GUEST_CR0_IN_HARDWARE = CR0.MP | CR0.EM | CR0.TS | CR0.ET | CR0.NE | CR0.AM
# The guest's CR4 bits the hardware runs its code with: whether the OS enabled SSE and its
# exceptions (SSE instructions raise #UD without them, as the guest's own CPU would).
GUEST_CR4_IN_HARDWARE = CR4.OSFXSR | CR4.OSXMMEXCPT
NM_VECTOR = 7  # #NM, device not available
SYSENTER_EVENT = -1  # CpuEvent.vector of a SYSENTER the hardware stopped at (Vmm._on_sysenter)
CONTEXTS_KEPT = 64  # hardware contexts kept for world switches (bounded: the guest chooses the keys)
TRAP_THRESHOLD = 8
# "Innocent until proven guilty", both ways: an instruction retranslated as a callout because it
# kept trapping is judged on its record as a callout. After every ACQUIT_WINDOW callouts, if
# fewer than one in GUILTY_SHARE of them wrote a page the VMM watches (what made it trap), it
# gets its own rule back: a trap for each guilty run then costs less than a callout for every
# run (a store into page tables inside a memcpy or a PTE helper that mostly writes data, or
# tables not shadowed any more). Each acquittal doubles the traps that convict it again (up
# to 16 times TRAP_THRESHOLD), so an instruction on the edge settles as its own rule.
ACQUIT_WINDOW = 32
GUILTY_SHARE = 4
SLOT_BASE = 8160  # GDT slots for the six guest segment registers (selectors 0xFF00..0xFF28)
CALLOUT_FORM = "(callout)"
M32 = 0xFFFFFFFF
# V_SEG_MATCH: the segment registers whose unchanged reload translated code makes itself (ES, DS,
# FS: GS is the VMM's, SS's load also blocks interrupts, CS has no MOV), and the value of a
# register whose reload would change something (no 16-bit selector added to it makes zero).
RELOADED_IN_TC = (0, 3, 4)
SEGMENT_STALE = 0x80000000
# The vcpu page from V_MSW to the end of V_CR: CR0 (SMSW), LDTR, TR, the six selectors, CR0-CR4.
_VCPU_STATE = struct.Struct(
    f"<IHH{C['V_SEL'] - C['V_TR'] - 2}x6I{C['V_CR'] - C['V_SEL'] - 24}x5I"
)
assert C["V_LDTR"] == C["V_MSW"] + 4 and C["V_TR"] == C["V_LDTR"] + 2  # (the layout _VCPU_STATE packs)
# Units are keyed by where their code is and how it decodes (Vmm.unit_key): 32-bit code (CS base 0)
# by its EIP, 16-bit code by KEY16 | CS base << 16 | IP, so that a 16-bit unit and a 32-bit one
# at the same linear address never mix, nor two 16-bit ones reached through different CS bases
# (the IPs they push and wrap differ).
KEY16 = 1 << 48
# The prefixes that give an instruction of 16-bit code its sizes in 32-bit code (spec/vmm.r1).
DATA16 = b"".join(TEMPLATES["operand_size_prefix"]["variants"][()])
ADDR16 = b"".join(TEMPLATES["address_size_prefix"]["variants"][()])
MODE_NAMES = {MODE_REAL: "real", MODE_PROT: "prot", MODE_V86: "v86"}  # as FormInfo.modes names them
EFLAGS_VM = EFLAGS.VM
GS_PREFIX = SEGMENT_PREFIX_OF[GS]
PTE_P, PTE_W, PTE_U, PTE_A, PTE_D = PTE.P, PTE.RW, PTE.US, PTE.A, PTE.D

_U32 = struct.Struct("<I")


def _placeholder_value(d: Decoded | None, name: str) -> int | None:
    """The variant key of a template placeholder: the condition, or a register number."""
    if d is None:
        return None
    if name == "cc":
        return d.condition
    reg = d.fields.get(name)
    return reg & 7 if reg is not None else None


def guest_operand(d: Decoded, head: bytes, reg: int, tail: bytes) -> bytes:
    """A template's `{ea}` instruction on the guest instruction's own r/m operand: the
    assembled bytes before the ModRM (`head`) and after the operand (`tail`), the template's
    reg field, and the guest's ModRM, SIB, displacement and address size (in the TC's 32-bit code)."""
    return tc_address_prefix(d) + head + d.rm_operand(reg) + tail


def tc_address_prefix(d: Decoded) -> bytes:
    """The prefix that gives the guest instruction's address size in the TC's 32-bit code."""
    return ADDR16 if d.variant[1] == 16 else b""


_SAME_IN_32BIT: dict[bytes, bytes | None] = {}  # 16-bit code's bytes -> their 32-bit equal (a cache)
# Forms chosen by a mandatory prefix (none, 66, F2, F3: SSE, MMX): a 66 there picks the form,
# not an operand size, and stays as the guest wrote it.
MANDATORY_PREFIX_FORMS = frozenset(c[0] for cands in OPCODES.values() for c in cands if c[6] is not None)


def same_in_32bit_code(d: Decoded) -> bytes | None:
    """The bytes that mean in 32-bit code what `d` means in 16-bit code: its prefixes with the
    operand- and address-size prefixes toggled (66 where its operand size is 16, 67 where its
    address size is; a form chosen by a mandatory prefix keeps its own 66 and has no operand
    size), or None when that does not decode, in 32-bit code, to the same form, sizes and
    operands."""
    if d.raw in _SAME_IN_32BIT:
        return _SAME_IN_32BIT[d.raw]
    if len(_SAME_IN_32BIT) >= 65536:
        _SAME_IN_32BIT.clear()
    found = None
    if d.form is not None:
        osize, asize = d.variant[0], d.variant[1]
        others = bytes(p for p in d.prefixes if p not in (DATA16[0], ADDR16[0]))
        body = d.raw[len(d.prefixes) :]
        address = ADDR16 if asize == 16 else b""
        mandatory = d.form in MANDATORY_PREFIX_FORMS
        with_66 = DATA16[0] in d.prefixes if mandatory else osize == 16
        raw = (DATA16 if with_66 else b"") + address + others + body
        want = {k: v for k, v in d.fields.items() if k not in ("next", "here")}
        try:
            e = decode(raw, 0, True)
        except Truncated:
            e = None  # (a longer instruction in 32-bit code: not the same one)
        if (
            e is not None
            and e.form == d.form
            and len(e.raw) == len(raw)
            and e.variant[1:] == d.variant[1:]
            and (e.variant[0] == osize or mandatory)
            and {k: v for k, v in e.fields.items() if k not in ("next", "here")} == want
        ):
            found = raw
    _SAME_IN_32BIT[d.raw] = found
    return found


@dataclass(eq=False)
class Unit:
    """A CCF: the translation of one unit of guest code."""

    guest: int  # guest EIP (IP in 16-bit code) of its first instruction
    host: int  # its address in the TC
    key: int = -1  # its key in Vmm.units (Vmm.unit_key): the EIP, or KEY16 | CS base << 16 | IP
    size: int = 0
    insns: list[tuple[int, int, int, str, int]] = field(default_factory=list)  # guest, host, end, rule, eax saved at
    pages: set[int] = field(default_factory=set)  # every guest physical page its code came from
    forwarded_to: Unit | None = None
    code: CodeRanges = field(default_factory=CodeRanges)  # the guest bytes, per physical page
    maps: dict[int, int] = field(default_factory=dict)  # linear page -> physical page, as translated
    incoming: list[int] = field(default_factory=list)  # chained jump sites patched to enter it
    # False once dropped (its code written, its mapping changed, a TC flush): its exits and
    # callout sites are dead
    live: bool = True
    exit_slots: list[int] = field(default_factory=list)  # its slots in the exit pad
    callout_slots: list[int] = field(default_factory=list)  # and in the callout pad

    @property
    def code16(self) -> bool:
        return self.key >= KEY16

    @property
    def cs_base(self) -> int:
        return (self.key >> 16) & M32 if self.code16 else 0

    def key_of(self, eip: int) -> int:
        """The key of a unit at `eip` in the same code segment as this one."""
        return self.key & ~0xFFFF | eip & 0xFFFF if self.code16 else eip


@dataclass
class Exit:
    """A continuation: a jump in a CCF (the patch site) to its own slot of the exit pad,
    until the VMM chains it to the CCF of its guest target."""

    site: int  # TC address of the jump's rel32 field
    target: int  # the key (Vmm.unit_key) of the guest EIP it continues at
    slot: int  # its slot in the exit pad
    unit: Unit


@dataclass
class Site:
    """A callout site: the guest instruction it emulates and where translated code resumes."""

    guest: int
    next_guest: int
    resume: int  # TC address after the callout sequence
    unit: Unit
    simd_state: bool = False  # the instruction reads or writes x87, MMX or SSE state (FormInfo)
    cause: str = "callout"  # what the time ledger charges its time to: "callout FORM"


class Stats(Counter):
    pass


class SlotPool:
    """The slots of one exit pad: handed out to exits as units are translated, given back when
    their unit is dropped."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.next = 0  # slots from here on were never handed out since the last reset
        self.free: list[int] = []

    def available(self) -> int:
        return self.count - self.next + len(self.free)

    def take(self) -> int:
        if self.free:
            return self.free.pop()
        self.next += 1
        return self.next - 1

    def give_back(self, slot: int) -> None:
        self.free.append(slot)

    def reset(self) -> None:
        self.next = 0
        self.free.clear()


@cache
def _pad_code(template: str, slots: int) -> bytes:
    """A pad: `slots` copies of the template (position-independent, PAD_SLOT bytes each)."""
    slot = b"".join(TEMPLATES[template]["variants"][()])
    if len(slot) != PAD_SLOT:
        raise ValueError(f"template {template} is {len(slot)} bytes, not PAD_SLOT ({PAD_SLOT})")
    return slot * slots


class Vmm:
    def __init__(
        self,
        guest_size: int,
        platform: Platform | None = None,
        mode: str = "bt",
        rule_overrides: dict[str, str] | None = None,
    ) -> None:
        self.mode = mode
        self.ledger: NoLedger = NO_LEDGER  # where the run's wall time goes (`ring1 run --stats`)
        # For benchmarks (`ring1 bench nano`'s ladder): force forms, by name, to the callout rule
        # in bt mode, e.g. {"CLI": "callout"}, to compare callout-and-emulate with the spec's rule.
        self.rule_overrides = dict(rule_overrides or {})
        for form, forced in self.rule_overrides.items():
            if form not in RULES or forced != "callout":
                raise ValueError(f"rule_overrides: {form}={forced}: only known forms, and only 'callout'")
        self.platform = platform or Platform()
        self.G = guest_size
        self.host = PhysicalMemory(guest_size + VMM_SIZE + POOL_SIZE)
        self.vmm_phys = guest_size
        self.pool_phys = guest_size + VMM_SIZE
        self.guest_mem = PhysicalMemory(guest_size, share=self.host)
        self.m = Machine(self.guest_mem, self.platform)  # the virtual CPU, authoritative
        # The interpreter's blocks are made from guest memory the hardware also writes without
        # it seeing, except on the pages the VMM keeps read-only: it checks the others' bytes
        # before running a block made from them.
        self.m.write_visible = self._write_protected
        self.m.mapping_listeners.append(self._on_mapping_change)
        self.m.takes_interrupts = False  # the VMM takes them (Vmm._take_interrupt)
        self.clock = self.platform.clock
        self.cpu = PhysicalCpu(self.host, platform=self.platform, count_instructions=self.clock is not None)
        self.uc = self.cpu.uc
        self.counter = self.cpu.counter
        if self.clock is not None:
            self.cpu.after_device_access = self._after_device_access
            self.cpu.io_allowed = self._io_allowed
        self.cpu.handle_in_place = self._hidden_fault_in_place
        self._boundaries_to_pass = 0  # guest instructions to let run before taking an interrupt
        self._stop_next = False  # the next hardware run stops after one instruction
        self.stats = Stats()
        self.units: dict[int, Unit] = {}
        self.unit_starts: list[int] = []  # sorted TC addresses, for mapping a host EIP back
        # What each exit is, by its pad slot: the VMM acts on these records only, never on
        # anything guest context can write (spec/vmm.r1, the protection decision).
        self.exits: dict[int, Exit] = {}  # exit pad slot -> continuation
        self.patch_sites: dict[int, Exit] = {}  # TC address of a rel32 field -> its continuation
        self.sites: dict[int, Site] = {}  # callout pad slot -> callout
        self.exit_pool = SlotPool(EXIT_SLOTS)
        self.callout_pool = SlotPool(CALLOUT_SLOTS)
        self.by_host: dict[int, Unit] = {}  # TC address -> every live unit in the TC, forwarded ones too
        # The TC's indexes for dropping units one by one (TC coherency).
        self.units_on_page: dict[int, set[Unit]] = {}  # guest physical page -> units from its bytes
        self.units_on_linear: dict[int, set[Unit]] = {}  # guest linear page -> units fetched through it
        # For each 4 MB region holding translated code, the guest PDE its units were last checked
        # under, and the CR3 and paging bits of that check (Vmm._on_mapping_change).
        self._code_pdes: dict[int, int | None] = {}
        self._checked_space: tuple[int, int] = (0, 0)
        self.callout_override: set[int] = set()  # guest EIPs retranslated as callouts
        self.trap_counts: Counter[int] = Counter()
        # Of each convicted instruction: [callouts, guilty ones] in the current window (ACQUIT_WINDOW)
        self.callout_record: defaultdict[int, list[int]] = defaultdict(lambda: [0, 0])
        self.convictions: Counter[int] = Counter()  # how often each was retranslated as a callout
        self._place(VMM_BASE)
        self.tc_next = self.tc_start
        self.pending: tuple[str, object] | None = None  # what vmm_exit was taken for
        self.stop_addresses: set[int] = set()
        self.stop_on_event = False
        self.code_pages: set[int] = set()  # watched for "translated code"
        self.debugger_pages: set[int] = set()  # a debugger's write watchpoints (protect_for_debugger)
        # The shadow page tables, one set per guest address space (shadow.py). The hardware's
        # CR3 is the current shadow's: loaded when the guest's changes, and part of the key of
        # the hardware contexts a world switch restores (`_hardware_context`).
        self.shadow = ShadowMmu(
            self.host,
            self.m,
            self.pool_phys,
            guest_size,
            self.stats,
            flush_hw_tlb=self._flush_hw_tlb,
            load_hw_cr3=self._load_hw_cr3,
            protected=self._protected_by_vmm,
            device_page=self._device_page,
            on_untrace=self._on_shadow_untrace,
            on_unmap=self._on_shadow_unmap,
        )
        self.traced_pages = self.shadow.traced_pages  # watched for "shadow page table" (the same set)
        self.last_event: GuestEvent | None = None
        self.direct = False
        self._restarted: tuple[int, tuple[int, ...], int] | None = None  # see _flags_as_first_seen
        self._eflags_at_resume: int | None = None  # the hardware EFLAGS an event read, for resume
        self.until = 0xFFFFFFFF
        # A guest-instruction budget (`--max-insns`), counted only when one is asked for, by a
        # block hook: the guest instructions that begin in each block the CPU is about to run
        # (a code hook over the TC would be exact too, but unicorn then loses AF across the
        # restart of a faulting instruction: tests/test_physcpu.py). Where the budget ends
        # inside a block, the block is run again up to that instruction (`until`).
        self.budget: int | None = None
        self.guest_starts: dict[int, int] = {}  # TC address -> guest EIP it begins
        self._start_hosts: list[int] = []  # the same TC addresses, sorted
        self._budget_hook: int | None = None
        self._last_block: list[tuple[int, int]] = []  # the starts counted in the last block
        self._split: tuple[int, int, int] | None = None  # (block, TC address to stop at, its guest EIP)
        # User code run directly with the guest's own descriptor tables (descriptor_tables.py):
        # the verdict on them while it holds, the byte ranges of their pages (traced), and the
        # selector state last found reversible.
        self._tables: TablesVerdict | None = None
        self._tables_key: tuple | None = None
        self._segment_match_key: tuple | None = None  # what V_SEG_MATCH was published for
        self._published_control: tuple | None = None  # what publish_virtual's control-page part holds
        self._tables_unchecked = False  # mappings changed since the verdict: _known_tables checks
        self._table_ranges: dict[int, list[tuple[int, int]]] = {}  # guest physical page -> table bytes
        self._reversible: tuple | None = None
        # Trap mode: the shadow GDT of the kernel run directly (the VMM's GDT at the guest's
        # indices), the reading it was written from, and the indices it holds.
        self._shadow_gdt_of: TablesVerdict | None = None
        self._tables_mapped = False  # the hardware tables map the guest's tables' pages
        self._shadow_gdt_indices: set[int] = set()
        self._hw_sels: list[int] = [0] * 6  # the selectors the last world switch loaded
        self.own_tables = False  # the hardware runs the guest's own tables now
        self._contexts: dict[tuple, object] = {}  # hardware state for a world switch, by its key
        self._hw_cr0 = 0  # the CR0 the hardware runs guest context with now
        self._hw_cr4_guest = 0  # the guest's CR4 bits in the hardware's CR4 now
        # The VMM moves when the guest claims its 4 MB (Vmm._relocate): the guest page directory
        # page watched for a write to the VMM's entry, and whether a move waits for a safe point.
        self._window_pd: int | None = None
        self.relocation_pending = False
        self._setup_vmm_area()
        self._setup_hardware()
        self._setup_hooks()

    # ------------------------------------------------------------ host memory helpers

    def vmm_write(self, offset: int, data: bytes) -> None:
        self.host.write(self.vmm_phys + offset, data)

    def vmm_read32(self, offset: int) -> int:
        return self.host.read32(self.vmm_phys + offset)

    def vmm_write32(self, offset: int, value: int) -> None:
        self.host.write32(self.vmm_phys + offset, value)

    def tc_phys(self, addr: int) -> int:
        return self.vmm_phys + (addr - self.base)

    def _place(self, base: int) -> None:
        """Where the VMM's 4 MB are in the linear space (spec/vmm.r1: its place moves away from
        what the guest's page tables map): every address of the VMM follows from it."""
        self.base = base
        self.slot = base >> 22  # its page directory entry
        self.exit_pad = base + C["VMM_EXIT_PAD"]
        self.callout_pad = base + C["VMM_CALLOUT_PAD"]
        self.tc_start = base + C["VMM_TC"]
        if self.counter is not None:
            # RDTSC copied into the TC (spec/system.r1) reads the virtual clock in the counter's hook.
            tc_size = base + VMM_SIZE - self.tc_start
            self.counter.answer_rdtsc_in(self.host.address + self.tc_phys(self.tc_start), self.tc_start, tc_size)
        self.L = {name: address - VMM_BASE + base for name, address in L.items()}  # the stubs' labels

    def in_vmm(self, la: int) -> bool:
        """The linear address is one of the VMM's own (the hardware maps the VMM there)."""
        return self.base <= la < self.base + VMM_SIZE

    # ------------------------------------------------------------ setup

    def _setup_vmm_area(self) -> None:
        self._published_control = None  # (publish_virtual writes the control page's part again)
        gdt = C["VMM_GDT"]

        def put(sel: int, base: int, limit: int, attr: int) -> None:
            self.vmm_write(gdt + (sel & ~7), descriptors.from_cache(base, limit, attr))

        put(C["SEL_VMM_CODE"], 0, M32, 0xC09B)
        put(C["SEL_VMM_DATA"], 0, M32, 0xC093)
        put(C["SEL_TC_CODE"], 0, M32, 0xC0BB)  # DPL 1
        put(C["SEL_VMM_GS"], self.base, VMM_SIZE - 1, 0xC0B3)  # DPL 1, byte granular limit would not fit
        put(C["SEL_VMM_TSS"], self.base + C["VMM_TSS"], 0x67, 0x89)
        put(C["SEL_VMM_STACK"], 0, M32, 0xC0B3)  # DPL 1: the stubs' scratch stack, whatever the guest's SS
        # The VMM's TSS, which TR's cache points at while guest code runs: no back link (an IRET
        # with NT set is #TS(0), emulated: the guest's task return, never the hardware's) and no
        # I/O bitmap (I/O above IOPL is #GP, emulated with the guest's own bitmap).
        tss = bytearray(0x68)
        struct.pack_into("<H", tss, 102, 0x68)
        self.vmm_write(C["VMM_TSS"], bytes(tss))
        stub = STUBS["variants"][()][0]
        self.vmm_write(C["VMM_STUBS"], stub)
        self.vmm_write(C["VMM_EXIT_PAD"], _pad_code("exit_slot", EXIT_SLOTS))
        self.vmm_write(C["VMM_CALLOUT_PAD"], _pad_code("callout_slot", CALLOUT_SLOTS))
        self.vmm_write32(C["V_RESTORE"], self.L["restore_regs"])
        self.vmm_write32(C["V_JUMP"], self.L["vmm_exit"])
        self.vmm_write32(C["V_SCRATCH_FLAT"], self.base + C["VMM_SCRATCH_STACK"])
        self.vmm_write(C["V_VMM_SS"], struct.pack("<H", C["SEL_VMM_STACK"]))
        self._clear_hash()

    def _setup_hardware(self) -> None:
        uc = self.uc
        vmm_pt = self.pool_phys + (VMM_TABLE_PAGE << 12)  # the VMM's entry in every shadow directory
        writable = {C["VMM_VCPU"] >> 12, C["VMM_STACK"] >> 12}
        for i in range(VMM_SIZE >> 12):
            flags = PTE_P | PTE_A | PTE_D | (PTE_W if i in writable else 0)
            self.host.write32(vmm_pt + i * 4, (self.vmm_phys + (i << 12)) | flags)
        uc.reg_write(X.UC_X86_REG_CR3, self.shadow.current.pd)
        # CR4.TSD: RDTSC that the hardware would run (user code run directly, the kernel under
        # `trap`, translated code when the counter's hook does not answer it: no guest clock)
        # faults and is emulated, reading the virtual TSC. Unicorn's own TSC follows the host's.
        uc.reg_write(X.UC_X86_REG_CR4, CR4.TSD)
        uc.reg_write(X.UC_X86_REG_CR0, 0x80010031)  # PG WP NE ET PE
        uc.reg_write(X.UC_X86_REG_GDTR, (0, self.base + C["VMM_GDT"], 8192 * 8 - 1, 0))
        uc.reg_write(X.UC_X86_REG_IDTR, (0, self.base + C["VMM_IDT"], 0x7FF, 0))
        uc.reg_write(X.UC_X86_REG_CS, C["SEL_VMM_CODE"])
        for rid in (X.UC_X86_REG_SS, X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_FS):
            uc.reg_write(rid, C["SEL_VMM_DATA"])
        uc.reg_write(X.UC_X86_REG_GS, C["SEL_VMM_GS"])
        uc.reg_write(X.UC_X86_REG_ESP, self.base + C["VMM_STACK_TOP"] - 20)
        uc.reg_write(X.UC_X86_REG_EFLAGS, 0x2)
        self.ring0 = uc.context_save()  # the world switch starts from here (exception latch clear)
        self._hw_cr0 = uc.reg_read(X.UC_X86_REG_CR0)

    def _setup_hooks(self) -> None:
        self._hook_vmm_code()
        # CPUID run by the hardware (user code run directly, the kernel under `trap`) answers with
        # ring1's CPU model, as the interpreter does for translated code's callout: kernel and
        # user code see the same CPU.
        self.cpu.answer_cpuid(self.m.b_cpuid_leaf, counted=lambda: self.stats.update(("cpuid_direct",)))
        # SYSENTER run by the hardware (user code run directly): the hardware's SYSENTER MSRs are
        # the VMM's, and unicorn without a hook skips the instruction. It stops, and the
        # interpreter runs it with the guest's MSRs: the guest kernel's handler runs translated.
        self.uc.hook_add(UC_HOOK_INSN, self._on_sysenter, None, 1, 0, X.UC_X86_INS_SYSENTER)

    def _on_sysenter(self, uc, _user) -> None:
        # Unicorn calls this with EIP at the SYSENTER, then moves EIP past it and ends the
        # block, doing nothing else: the event keeps the instruction's address.
        self.cpu.event = CpuEvent(SYSENTER_EVENT, uc.reg_read(X.UC_X86_REG_EIP))
        uc.emu_stop()

    def _hook_vmm_code(self) -> None:
        """The code hooks on the VMM's own code, where it is now (they move with it)."""
        uc, at = self.uc, self.L
        for handle in getattr(self, "_vmm_code_hooks", ()):
            uc.hook_del(handle)
        exit_end = self.exit_pad + EXIT_SLOTS * PAD_SLOT - 1
        callout_end = self.callout_pad + CALLOUT_SLOTS * PAD_SLOT - 1
        # A hook over each pad runs only when an exit is taken: nothing else executes there.
        hooks = [
            (self.exit_pad, exit_end, self._on_exit_slot),
            (self.callout_pad, callout_end, self._on_callout),
            (at["lookup_miss"], at["lookup_miss"], self._on_lookup_miss),
            (at["lookup16_miss"], at["lookup16_miss"], self._on_lookup16_miss),
            (at["vmm_exit"], at["vmm_exit"], self._on_vmm_exit),
        ]
        if self.counter is not None:
            # On the counter's hook: unicorn's own code hooks would each cost every instruction
            # the hardware runs (host/counter.c), translated or direct.
            self.counter.hook_ranges(hooks)
            self._vmm_code_hooks = []
            return
        self._vmm_code_hooks = [uc.hook_add(UC_HOOK_CODE, fn, None, begin, end) for begin, end, fn in hooks]

    # ------------------------------------------------------------ the virtual CPU, seen by translated code

    def can_translate(self) -> bool:
        """Translated execution: real-mode code with a 16-bit CS, and the kernel (CPL 0) in
        protected mode with a 16-bit CS or a flat 32-bit one, on a stack of either size
        (spec/vmm.r1: 16-bit code; templates that keep flags on the scratch stack through the
        guest's SS say `stack=32`); no TF."""
        S = self.m.state
        if self.mode != "bt" or S.eflags & EFLAGS.TF:
            return False
        if S.mode == MODE_REAL:
            return not S.code32
        return S.mode == MODE_PROT and S.cpl == 0 and (not S.code32 or S.base[CS] == 0)

    def _paragraph_cs(self) -> bool:
        """16-bit code whose CS base is a paragraph below 1 MB (real mode's, selector << 4):
        lookup16's key, CS base << 12 | IP, is unique then (spec/vmm.r1)."""
        S = self.m.state
        return not S.code32 and S.base[CS] & 0xF == 0 and S.base[CS] <= 0xFFFF0

    def unit_key(self, eip: int) -> int:
        """The key of the unit at `eip` in the current code segment (KEY16)."""
        S = self.m.state
        if S.code32:
            return eip
        return KEY16 | S.base[CS] << 16 | eip & 0xFFFF

    def can_run_direct(self) -> bool:
        """Direct execution: guest user code at CPL 3, or (trap mode) the kernel itself at CPL 1."""
        S = self.m.state
        if S.eflags & EFLAGS.TF or S.mode == MODE_REAL:
            return False
        if self.m.alignment_check:
            # CPL 3 with CR0.AM and EFLAGS.AC: unicorn never raises #AC (deviation
            # no-alignment-check), the interpreter does. (Direct execution cannot see a POPF that
            # sets AC: the user code run directly until its next exit goes unchecked.)
            self.stats["direct_alignment_check"] += 1
            return False
        if S.mode == MODE_V86:
            return True  # the 1999 design's "v8086 -> DE"
        if S.cpl == 3:
            # With the guest's own tables, or not at all: the VMM's slot descriptors would show
            # through MOV from a segment register. A nonreversible segment or tables hostile to
            # direct execution: the interpreter runs user code, with the cached descriptors
            # (the 1999 design's "unshadowed segments -> BT").
            return self._own_tables_usable()
        return self.mode == "trap" and S.cpl == 0

    def publish_virtual(self) -> None:
        """Copy the guest-visible state that in-TC templates read into the vcpu page, and the ESP
        that reaches the VMM's scratch stack through the guest's SS (unicorn ignores SS's limit).
        The control page's part is written when it changes (guest context cannot write it);
        the vcpu page's, which it can, every time, in two stores and one."""
        S = self.m.state
        control = (self.base, S.base[SS], S.base[CS])
        if control != self._published_control:
            self._published_control = control
            scratch = self.base + C["VMM_SCRATCH_STACK"]
            self.vmm_write32(C["V_SCRATCH_SP"], (scratch - S.base[SS]) & M32)
            # (lookup16: real mode's CS only)
            self.vmm_write(C["V_CS16"], struct.pack("<II", S.base[CS] << 12 & M32, S.base[CS]))
        eflags = self.m.eflags()
        view, at = self.host.view, self.vmm_phys
        _U32.pack_into(view, at + C["V_VIRT_IF"], eflags & EFLAGS.IF)
        _U32.pack_into(view, at + C["V_VIRT_IOPL"], eflags & EFLAGS.IOPL)
        _VCPU_STATE.pack_into(view, at + C["V_MSW"], S.cr[0], S.ldtr, S.tr, *S.sel, *S.cr)
        self._publish_segment_match()

    def _publish_segment_match(self) -> None:
        """V_SEG_MATCH for the templates of segment loads that change nothing (spec/vmm.r1
        mov_sreg_unchanged): minus the selector of ES, DS and FS while their table entry is the
        descriptor they cache, accessed bit set (the verdict on the guest's tables, read since
        the last write to them or to the mappings they are read through: descriptor_tables.py),
        else a value no selector cancels. Only in protected mode, for non-null selectors. The
        tables are not read for this: their pages would be traced while the kernel runs, and a
        kernel that keeps data beside its GDT (Linux's decompressor) would trap on every store
        there. User code reads them (its
        direct execution needs them), so a kernel entered from user code finds them known."""
        S = self.m.state
        ldt = (S.ldtr_base, S.ldtr_limit) if S.ldtr & ~3 else None
        verdict = self._known_tables() if self._tables_key == (S.gdtr_base, S.gdtr_limit, ldt) else None
        key = (verdict, S.mode, *(S.sel[s] for s in RELOADED_IN_TC), *(S.base[s] for s in RELOADED_IN_TC))
        key += (*(S.limit[s] for s in RELOADED_IN_TC), *(S.attr[s] for s in RELOADED_IN_TC))
        if key == self._segment_match_key:
            return
        self._segment_match_key = key
        match = [SEGMENT_STALE] * 6
        if verdict is not None and S.mode == MODE_PROT:
            for s in RELOADED_IN_TC:
                sel = S.sel[s]
                if sel & ~3 and verdict.holds(sel, S.base[s], S.limit[s], S.attr[s]):
                    match[s] = -sel & M32
        self.vmm_write(C["V_SEG_MATCH"], struct.pack("<6I", *match))

    def hardware_selectors(self, user: bool, translated: bool = True) -> list[int]:
        """Write the slot descriptors for the six segment registers; return the selectors.
        Translated code keeps GS for the VMM; direct execution gets the guest's own GS."""
        S = self.m.state
        if user and not translated and self.own_tables:
            return list(S.sel)  # the guest's own, loaded from its own tables
        shadow = self._kernel_shadow_gdt() if not user and not translated else None
        real = S.mode == MODE_REAL
        sels = []
        for s in range(6):
            if s == GS and translated and not user:
                sels.append(C["SEL_VMM_GS"])
                continue
            sel = S.sel[s]
            if self._in_shadow_gdt(shadow, s):
                # The guest's own selector, from the shadow GDT (CS and SS with RPL 1: CPL 1).
                sels.append((sel & ~3) | 1 if s in (CS, SS) else sel)
                continue
            if S.sel[s] & ~3 == 0 and s != SS and s != CS and not real:
                sels.append(0)
                continue
            attr = S.attr[s]
            dpl = attr >> 5 & 3
            rpl = 3 if user else 1
            if real:
                # Real mode: every segment a present, writable data segment at DPL 1 (SS too),
                # with the guest's base and limit, and the size and granularity bits it has.
                attr = attr & 0xF000 | 0xB3
            elif not user and dpl == 0:
                attr = attr & ~0x60 | 0x20  # DPL 1: usable by the deprivileged kernel
            if user and s == CS:
                attr |= 0x60
            slot = SLOT_BASE + s
            self.vmm_write(C["VMM_GDT"] + slot * 8, descriptors.from_cache(S.base[s], S.limit[s], attr | 1))
            sels.append(slot << 3 | rpl)
        return sels

    def hardware_eflags(self, user: bool, translated: bool = True) -> int:
        v = self.m.eflags()
        if user:
            # The guest's IF, IOPL and NT hold at CPL 3 (an IRET with NT set finds no back link
            # in the VMM's TSS: #TS, emulated); no RF.
            return v & ~EFLAGS.RF | 0x2
        if translated:
            # Kernel under translation: IF on, IOPL 1 (IN and OUT run as they are: spec/io.r1;
            # CLI, STI and POPF are templates, which never let the hardware's IF or IOPL show),
            # no TF VM RF. NT stays the guest's: only IRET reads it, which is a callout, and
            # the POPF template loads it into the hardware.
            return (v & ~0x33300) | 0x1202
        return (v & ~0x37300) | 0x202  # kernel run directly (trap mode): no NT either

    # ------------------------------------------------------------ the guest's own tables, for user code

    def _own_tables_usable(self) -> bool:
        """User code may run with the guest's own GDT and LDT in the hardware: they hold no gate
        or TSS CPL 3 could use (descriptor_tables.py), their pages are mapped for the hardware's
        implicit reads, and every loaded segment register is what its table entry says."""
        S = self.m.state
        verdict = self._guest_tables()
        if not verdict.usable:
            return False
        if not self._tables_mapped:
            # The hardware reads them through the shadow tables, as a supervisor: map their pages
            # now (the CPU's accesses set the guest's accessed bits, as on bare metal when user
            # code loads a selector). (A fill may find the pool full and flush it: the pages
            # mapped before it are checked.)
            mapped = all([self._map_for_hardware(la) for la in verdict.linear_pages])
            if not mapped or not all(self._hw_mapped(la) for la in verdict.linear_pages):
                self.stats["direct_tables_unmappable"] += 1
                return False
            self._tables_mapped = True
        state = (verdict, *S.sel, *S.base, *S.limit, *S.attr)
        if state == self._reversible:
            return True
        if not verdict.reversible(S.sel, S.base, S.limit, S.attr):
            self.stats["direct_nonreversible"] += 1
            return False
        self._reversible = state
        return True

    def _guest_tables(self) -> TablesVerdict:
        """The verdict on the guest's GDT and LDT as they are now, read again only after a write
        to them or a change of the mappings they are read through."""
        S = self.m.state
        ldt = (S.ldtr_base, S.ldtr_limit) if S.ldtr & ~3 else None
        key = (S.gdtr_base, S.gdtr_limit, ldt)
        if self._tables_key == key and self._known_tables() is not None:
            return self._tables
        self._forget_tables()
        self.stats["descriptor_table_checks"] += 1
        verdict = read_tables((S.gdtr_base, S.gdtr_limit), ldt, self._table_page, self.guest_mem.read)
        if verdict.entries:
            self._trace_tables(verdict)
        if not verdict.usable:
            self.stats["direct_tables_refused"] += 1
        self._tables, self._tables_key = verdict, key
        return verdict

    def _table_page(self, la: int) -> int | None:
        """The guest physical page (address) RAM of a descriptor table's linear page, or None."""
        if self.in_vmm(la) or self.in_vmm(la | 0xFFF):
            return None  # the VMM's own pages are there in the hardware
        walk = self.m.walk(la)
        if walk is None or walk[0] + 0x1000 > self.G:
            return None
        return walk[0] & ~0xFFF

    def _map_for_hardware(self, la: int) -> bool:
        """Map a descriptor table's page in the hardware tables for the CPU's own reads (supervisor
        accesses, even from CPL 3), read-only: the table is traced."""
        return self._hw_mapped(la) or self.fill(la, write=False, implicit=True)

    def _hw_mapped(self, la: int) -> bool:
        return bool(self.shadow.hardware_pte(la) & PTE_P)

    def _trace_tables(self, verdict: TablesVerdict) -> None:
        self._table_ranges = verdict.ranges
        for page in verdict.ranges:
            self.m.traces.watch(page, WHY_TABLES, self._on_table_write)
            self._write_protect(page)

    def _tables_moved(self) -> None:
        """The guest's mappings changed (a CR3 write, INVLPG, shadow entries dropped): the
        verdict on its tables stands only while their linear pages still map to the pages it
        read (checked when next asked, `_known_tables`), and the hardware must map them again
        before user code runs with them."""
        if self._tables is not None:
            self._tables_unchecked = True
            self._tables_mapped = False

    def _known_tables(self) -> TablesVerdict | None:
        """The verdict on the guest's tables, if it still holds (their contents are traced; after
        a change of mappings their linear pages must still map where they were read)."""
        verdict = self._tables
        if verdict is not None and self._tables_unchecked:
            if any(self._table_page(la) != gpa for la, gpa in zip(verdict.linear_pages, verdict.frames, strict=True)):
                self._forget_tables()
                return None
            self._tables_unchecked = False
        return verdict

    def _forget_tables(self) -> None:
        for page in self._table_ranges:
            self.m.traces.unwatch(page, WHY_TABLES)
        self._table_ranges = {}
        self._tables = self._tables_key = self._reversible = None
        self._tables_mapped = self._tables_unchecked = False
        self._shadow_gdt_of = None  # the shadow GDT is written again from the next reading

    def _on_table_write(self, page: int, start: int, end: int) -> None:
        """A write to a page holding the guest's GDT or LDT: the verdict goes if it touched them."""
        if any(start < hi and lo < end for lo, hi in self._table_ranges.get(page, ())):
            self.stats["descriptor_table_writes"] += 1
            self._forget_tables()

    def _hardware_context(self, user_direct: bool, v86: bool = False) -> object:
        """The hardware state a world switch starts from: the VMM's (ring 0, exception latch clear),
        with the guest's CR0 FPU bits, and for user code run directly the guest's IDTR and TR
        (SIDT and STR show them; unicorn delivers nothing through an IDT, and reads the I/O
        bitmap from TR's TSS as the guest's CPU would), and its GDTR and LDTR when they are
        usable (v86 code loads no descriptor: always). `v86`: the IRET frame on the ring-0
        stack is the nine-dword one. Built once per distinct state and kept: a
        context_restore costs what one does. The current shadow's directory is in the key: a
        context_restore sets CR3 without flushing unicorn's TLB, which holds that shadow's
        translations (the hardware's CR3 follows the current shadow, `_load_hw_cr3`)."""
        S = self.m.state
        cr0 = HW_CR0 | (S.cr[0] & GUEST_CR0_IN_HARDWARE)
        cr4_guest = S.cr[4] & GUEST_CR4_IN_HARDWARE
        shadow_pd = self.shadow.current.pd
        if not user_direct:
            key: tuple = (cr0, cr4_guest, shadow_pd)
        else:
            key = (cr0, cr4_guest, shadow_pd, S.idtr_base, S.idtr_limit, S.tr, S.tr_base, S.tr_limit, S.tr_attr)
            if self.own_tables:
                key += (S.gdtr_base, S.gdtr_limit, S.ldtr, S.ldtr_base, S.ldtr_limit, S.ldtr_attr)
            key += (v86,)
        self._hw_cr0 = cr0
        self._hw_cr4_guest = cr4_guest
        ctx = self._contexts.get(key)
        if ctx is not None:
            return ctx
        if len(self._contexts) >= CONTEXTS_KEPT:
            self._contexts.clear()
        uc = self.uc
        uc.context_restore(self.ring0)
        uc.reg_write(X.UC_X86_REG_CR3, shadow_pd)
        uc.reg_write(X.UC_X86_REG_CR0, cr0)
        if cr4_guest:
            uc.reg_write(X.UC_X86_REG_CR4, uc.reg_read(X.UC_X86_REG_CR4) | cr4_guest)
        if v86:
            uc.reg_write(X.UC_X86_REG_ESP, self.base + C["VMM_STACK_TOP"] - 36)
        if user_direct:
            uc.reg_write(X.UC_X86_REG_IDTR, (0, S.idtr_base, S.idtr_limit, 0))
            # STR shows the guest's selector; the cache is the VMM's TSS (_setup_vmm_area): a
            # hardware task switch through the guest's (user code's IRET with NT set) would load
            # guest kernel state at the real CPL 0. (QEMU keeps a loaded TSS "available", 9.)
            uc.reg_write(X.UC_X86_REG_TR, (S.tr, self.base + C["VMM_TSS"], 0x67, 0x89 << 8))
            if self.own_tables:
                uc.reg_write(X.UC_X86_REG_GDTR, (0, S.gdtr_base, S.gdtr_limit, 0))
                if S.ldtr & ~3:
                    uc.reg_write(X.UC_X86_REG_LDTR, (S.ldtr, S.ldtr_base, S.ldtr_limit, S.ldtr_attr << 8))
                else:  # a null LDTR: every LDT selector faults (limit 0)
                    uc.reg_write(X.UC_X86_REG_LDTR, (S.ldtr, 0, 0, 0))
        ctx = uc.context_save()
        self._contexts[key] = ctx
        self.stats["hardware_contexts_built"] += 1
        return ctx

    def _adopt_user_segments(self, raw) -> None:
        """Segment registers user code loaded itself (MOV, POP, LDS..., IRET, far transfers), from
        its own tables: the virtual CPU takes them from the hardware."""
        S, m = self.m.state, self.m
        for s, (sel, base, limit, attr) in enumerate(segment_caches(raw)):
            if sel & ~3:
                attr |= ACCESSED
            if (sel, base, limit) != (S.sel[s], S.base[s], S.limit[s]) or (attr ^ S.attr[s]) & ATTR_COMPARED:
                m.b_set_seg(s, sel, base, limit, attr)
                self.stats["user_segment_loads"] += 1

    # ------------------------------------------------------------ the VMM's place in the linear space

    def _window_claimed(self, base: int) -> bool:
        """The guest's own view needs the 4 MB at `base`: its page directory maps something there
        (paging), or RAM or a device is there (no paging: linear is physical)."""
        S = self.m.state
        if S.cr[0] & CR0.PG:
            pde_at = (S.cr[3] & ~0xFFF) + (base >> 22) * 4
            return pde_at + 4 <= self.G and bool(self.guest_mem.read32(pde_at) & PTE_P)
        end = base + VMM_SIZE
        if base < self.G:
            return True
        return any(start < end and base < start + length for start, length in self.platform.mmio_ranges())

    def _check_window(self) -> None:
        """After a change of the guest's mappings: if they claim the VMM's 4 MB, the VMM moves at
        the next safe point (`_relocate`); while paging is on, the guest's page directory page is
        watched for a write to the VMM's entry."""
        S = self.m.state
        pd = S.cr[3] >> 12 if S.cr[0] & CR0.PG else None
        if pd != self._window_pd:
            if self._window_pd is not None:
                self.m.traces.unwatch(self._window_pd, WHY_WINDOW)
            self._window_pd = pd
            if pd is not None and (pd + 1) << 12 <= self.G:
                self.m.traces.watch(pd, WHY_WINDOW, self._on_window_pd_write)
                self._write_protect(pd)
        if self._window_claimed(self.base):
            self.relocation_pending = True

    def _on_window_pd_write(self, page: int, start: int, end: int) -> None:
        if start < self.slot * 4 + 4 and self.slot * 4 < end and self._window_claimed(self.base):
            self.relocation_pending = True

    def _relocate(self) -> None:
        """Move the VMM to 4 MB the guest's tables leave empty (spec/vmm.r1): the TC and the
        shadow tables are dropped, the VMM's descriptors, stubs, pads, hardware context and
        hooks are put at the new place. Only between runs of the hardware (never from a hook:
        the hardware would go on in the stubs at the old place)."""
        self.relocation_pending = False
        if not self._window_claimed(self.base):
            return
        free = next((slot << 22 for slot in range(1023, -1, -1) if not self._window_claimed(slot << 22)), None)
        if free is None:
            raise VMStop("vmm", "the guest maps all 4 GB of its linear space: no 4 MB is left for the VMM")
        old = self.base
        self.flush_translations(counted=False)
        self.uc.ctl_remove_cache(old, old + VMM_SIZE)  # the stubs and pads, run at the old place
        self._place(free)
        self.shadow.move_vmm(self.slot)
        self.tc_next = self.tc_start
        self._setup_vmm_area()
        self.cpu.restore_keeping_fpu(self.ring0)  # (at ring 0: the segment loads below must be allowed)
        self._setup_hardware()
        self._contexts.clear()
        self._forget_tables()
        self._hook_vmm_code()
        self.stats["vmm_relocations"] += 1

    # ------------------------------------------------------------ trap mode's shadow GDT

    def _kernel_shadow_gdt(self) -> TablesVerdict | None:
        """The shadow GDT a kernel run directly (trap mode) loads its own selectors from: the
        guest's GDT entries at their own indices in the VMM's GDT, privilege-adjusted
        (descriptor_tables.shadow_descriptor), kept coherent by the traces on the guest's GDT
        (a write drops the reading, and the next world switch writes the shadow again). Its
        segment registers are the guest's selectors then, so the kernel's PUSH DS, MOV r, Sreg
        and segment loads see and keep the guest's values. None: no readable GDT (the six
        cached descriptors, slots, serve alone)."""
        verdict = self._guest_tables()
        if not verdict.entries:
            return None
        if self._shadow_gdt_of is not verdict:
            gdt = C["VMM_GDT"]
            for index in self._shadow_gdt_indices:
                self.vmm_write(gdt + index * 8, bytes(8))
            self._shadow_gdt_indices = set()
            for key, raw in verdict.entries.items():
                index = key >> 3
                if key & 4 or index >= SLOT_BASE:
                    continue  # LDT entries; the slots and the VMM's own descriptors lie above
                self.vmm_write(gdt + index * 8, shadow_descriptor(raw).to_bytes(8, "little"))
                self._shadow_gdt_indices.add(index)
            self._shadow_gdt_of = verdict
            self.stats["shadow_gdt_writes"] += 1
        return verdict

    def _in_shadow_gdt(self, shadow: TablesVerdict | None, s: int) -> bool:
        """Segment register `s` can be loaded from the shadow GDT: its selector is a GDT entry
        the shadow holds and the entry still says what the register caches."""
        S = self.m.state
        sel = S.sel[s]
        if shadow is None or not sel & ~3 or sel & 4 or sel >> 3 not in self._shadow_gdt_indices:
            return False
        return shadow.holds(sel, S.base[s], S.limit[s], S.attr[s])

    def _adopt_kernel_segments(self, raw) -> None:
        """Segment registers the kernel run directly (trap mode) loaded itself from the shadow
        GDT: the virtual CPU takes them, with the guest's descriptor (not the shadow's DPL)."""
        S, m = self.m.state, self.m
        verdict = self._shadow_gdt_of
        for s, (sel, base, limit, _attr) in enumerate(segment_caches(raw)):
            if sel == self._hw_sels[s]:
                continue  # as the world switch loaded it
            if s in (CS, SS):
                sel = sel & ~3 | S.cpl  # (the hardware's RPL 1 is the deprivileged CPL)
            if sel & ~3 == 0:
                m.b_set_seg(s, sel, 0, 0, 0)
            elif verdict is not None and sel & ~3 in verdict.entries:
                guest = descriptors.to_cache(verdict.entries[sel & ~3].to_bytes(8, "little"))[2]
                m.b_set_seg(s, sel, base, limit, guest | ACCESSED)
            else:
                continue
            self.stats["kernel_segment_loads"] += 1

    # ------------------------------------------------------------ world switch

    @timed("world switches")
    def enter(self, host_eip: int, direct: bool) -> None:
        """Load the virtual CPU into the hardware and IRET into guest context at host_eip:
        translated code (the TC, at CPL 1) or direct execution of the guest's own code."""
        S, uc = self.m.state, self.uc
        user = S.cpl == 3
        v86 = S.mode == MODE_V86
        # v86 code loads no descriptor: its segments are paragraphs, from the IRET frame.
        self.own_tables = direct and user and (v86 or self._own_tables_usable())
        sels = list(S.sel) if v86 else self.hardware_selectors(user, translated=not direct)
        self._hw_sels = sels
        self.vmm_write(C["V_HWSEL"], struct.pack("<6H", *sels))
        self.vmm_write(C["V_EAX"], struct.pack("<8I", *self.m.regs))
        cs = sels[CS] if direct else C["SEL_TC_CODE"]
        eflags = self.hardware_eflags(user, translated=not direct)
        if not direct and not S.stack32:
            # A 16-bit stack segment: the IRET would load only SP (stub enter_tc16).
            self.vmm_write32(C["V_JUMP"], host_eip)
            host_eip = self.L["enter_tc16"]
        frame = struct.pack("<5I", host_eip, cs, eflags, self.m.regs[4], sels[SS])
        if v86:
            frame += struct.pack("<4I", sels[0], sels[3], sels[4], sels[5])  # ES DS FS GS
        self.direct = direct
        self.cpu.running_as = DIRECT_EXECUTION if direct else TRANSLATED_CODE
        self.vmm_write(C["VMM_STACK_TOP"] - len(frame), frame)
        self.publish_virtual()
        guest_fpu = self.cpu.save_context()  # (its x87 and SSE state: building a context restores ring0)
        ctx = self._hardware_context(direct and user, v86)
        self.cpu.restore_keeping_fpu(ctx, guest_fpu)
        self.stats["world_switches"] += 1
        if self.own_tables:
            self.stats["direct_own_tables"] += 1
        self.cpu.event = None
        self.pending = None
        self._restarted = None
        # Direct execution stops at `ring1 exec`'s end address by itself (translated code has a stub).
        self.until = next(iter(self.stop_addresses)) if direct and len(self.stop_addresses) == 1 else 0xFFFFFFFF
        self._start_clock()
        try:
            uc.emu_start(self.L["world_switch_v86" if v86 else "world_switch"], self.until)
        finally:
            self._account_time()

    def resume(self) -> None:
        """Restart the hardware where it stopped, registers untouched (after a hidden fault)."""
        eflags, self._eflags_at_resume = self._eflags_at_resume, None
        eip = self._ready_to_restart(eflags)
        self.cpu.event = None
        self.pending = None
        self._start_clock(restart=True)
        try:
            self.uc.emu_start(eip, self.until)
        finally:
            self._account_time()

    # ------------------------------------------------------------ virtual time and interrupts

    def _start_clock(self, limit: int | None = None, restart: bool = False, unbounded: bool = False) -> None:
        """Before the hardware runs: tell translated code whether an interrupt waits (the STI
        and POPF templates leave for their callouts then), and bound the run by the clock's
        next deadline (`restart`: the hardware restarts where it stopped, the bound set
        before still holds; `unbounded`: no bound, the stubs run to vmm_exit)."""
        if self.clock is None:
            return
        self.vmm_write32(C["V_IRQ_PENDING"], int(self.platform.interrupt_pending()))
        if unbounded:
            self.counter.start(None)
        else:
            if self._stop_next:
                self._stop_next, limit = False, 1
            self.counter.start(self.clock.insns_until_deadline() if limit is None else limit, keep_limit=restart)
        self.counter.bind(self.clock, tsc_offset=self.m.state.tsc)

    def _account_time(self) -> None:
        """After the hardware ran: what it executed advances the virtual clock. (Translated
        code counts its own instructions, so time in `bt` is the TC's, not the guest's, and
        as deterministic.)"""
        if self.clock is None:
            return
        linear = self.uc.reg_read(X.UC_X86_REG_EIP)
        if self.direct:
            linear = (linear + self.m.state.base[CS]) & 0xFFFFFFFF
        ran = self.counter.account(self.clock, linear)
        if self.direct and self.m.state.cpl == 3:
            self.stats["user_instructions_direct"] += ran

    def _interrupt_deliverable(self) -> bool:
        S = self.m.state
        return self.clock is not None and bool(S.eflags & EFLAGS.IF) and self.platform.interrupt_pending()

    def _take_interrupt(self) -> None:
        """The virtual CPU is complete, between two guest instructions: take a waiting
        interrupt if the guest's IF allows, unless the last instruction opened the interrupt
        shadow, in which case the next one runs first (the clock stops the hardware after it)."""
        S = self.m.state
        if S.irq_shadow:
            S.irq_shadow = False
            if self._interrupt_deliverable():
                self._boundaries_to_pass = 1
                self._stop_soon()
            return
        if not self._interrupt_deliverable():
            return
        self.stats["interrupts_delivered"] += 1
        self.last_event = None
        self.ledger.enter("interrupts delivered")
        try:
            self.m.take_interrupt()
        finally:
            self.ledger.leave()

    def _callout_interrupt(self) -> bool:
        """After a callout's instruction (an OUT that unmasked a line, an STI or POPF that set
        IF while an interrupt waits): take the interrupt now, through the guest's IDT, before
        the callout chooses where translated code goes on. False after a VM stop."""
        try:
            self._take_interrupt()
        except VMStop as stop:
            self._exit_to_vmm("vmstop", stop)
            return False
        return True

    def _io_allowed(self, port: int, size: int) -> bool:
        """IN and OUT from code on the hardware, which unicorn never checks: translated code is
        the guest kernel at CPL 0 (always allowed); code run directly (user code, v86, the
        kernel under `trap`) is allowed what the guest's IOPL and TSS bitmap allow."""
        S = self.m.state
        if not self.direct or (S.cpl == 0 and S.mode != MODE_V86):
            return True
        iopl = (self.uc.reg_read(X.UC_X86_REG_EFLAGS) & EFLAGS.IOPL) >> EFLAGS.IOPL_SHIFT
        if S.mode != MODE_V86 and S.cpl <= iopl:
            return True
        return bool(self.m.b_io_bitmap_allows(port, size * 8))

    def _after_device_access(self) -> None:
        """An IN, OUT or MMIO access from guest code on the hardware may have raised INTR: if
        the guest's IF allows, stop at the next guest instruction boundary to take it."""
        if not self.platform.interrupt_pending():
            return
        if self.direct or self.vmm_read32(C["V_VIRT_IF"]) & EFLAGS.IF:
            self._stop_soon()
        else:
            self.vmm_write32(C["V_IRQ_PENDING"], 1)  # the STI and POPF templates look

    def _stop_soon(self) -> None:
        """Make the hardware stop at its next instruction (then go on to the next guest
        boundary): now, from a hook while it runs, or at its next start."""
        if self.counter is not None:
            self.counter.counts.limit = self.counter.counts.calls
            self._stop_next = True

    def _clock_stopped(self) -> bool:
        return self.counter is not None and self.pending is None and self.counter.hit_limit

    def _cut_on_the_way_out(self) -> bool:
        if self.counter is None or not self.counter.hit_limit:
            return False
        return self.uc.reg_read(X.UC_X86_REG_EIP) != self.L["vmm_exit"]

    def _run_to_exit(self) -> None:
        """Let the stubs finish their way to vmm_exit, where the hook stops the hardware."""
        self.cpu.event = None
        self._start_clock(unbounded=True)
        try:
            self.uc.emu_start(self.uc.reg_read(X.UC_X86_REG_EIP), self.until)
        finally:
            self._account_time()

    def _guest_boundary(self) -> int | None:
        """The guest EIP whose instruction begins where the hardware stopped, or None (inside a
        template, in the VMM's stubs)."""
        host = self.uc.reg_read(X.UC_X86_REG_EIP)
        if self.direct:
            return None if self.in_vmm(host) else host  # (not in the world switch's stub)
        where = self.locate(host)
        if where is None or where[1][1] != host:
            return None
        return where[1][0]

    def _step_host(self) -> None:
        """Run the hardware one more instruction (towards a guest instruction boundary)."""
        self.cpu.event = None
        self._start_clock(limit=1)
        try:
            self.uc.emu_start(self.uc.reg_read(X.UC_X86_REG_EIP), self.until)
        finally:
            self._account_time()

    def capture(self, hw_eflags: int | None = None) -> None:
        """Hardware registers back into the virtual CPU (segments stay virtual). `hw_eflags`: the
        hardware's EFLAGS when the caller has them already (a reg_read costs microseconds)."""
        uc = self.uc
        if hw_eflags is None:
            hw_eflags = uc.reg_read(X.UC_X86_REG_EFLAGS)
        self._adopt_hardware_v86(hw_eflags)
        raw = self.cpu.save_context()
        self.m.regs[:] = gprs_and_eip(raw)[0]
        if self.direct and self.own_tables:
            self._adopt_user_segments(raw)
        elif self.direct and self.m.state.cpl != 3 and self._shadow_gdt_of is not None:
            self._adopt_kernel_segments(raw)
        self._merge_eflags(hw_eflags)

    def _adopt_hardware_v86(self, hw_eflags: int | None = None) -> int | None:
        """Unicorn's IRET enters v86 mode from CPL 1 (deviation iret-v86-cpl3; x86 does so only
        at CPL 0, and faults on the v86 CS otherwise). A kernel run directly (trap mode) that
        IRETs to v86 code therefore has done what its IRET at virtual CPL 0 does: the virtual
        CPU takes that v86 state (EFLAGS as popped, selectors loaded v86-style) from the
        hardware, so the v86 code's first event is seen, and delivered, from v86 mode.
        Returns the hardware's EFLAGS, when they were given or read (else None)."""
        if not self.direct or self.m.state.mode != MODE_PROT or self.m.state.cpl != 0:
            return hw_eflags  # only the kernel's IRET (virtual CPL 0) may enter v86 mode
        hw = self.uc.reg_read(X.UC_X86_REG_EFLAGS) if hw_eflags is None else hw_eflags
        if not hw & EFLAGS_VM:
            return hw
        m = self.m
        m.set_eflags(hw)
        for s, rid in enumerate(SEG_IDS):
            sel = self.uc.reg_read(rid)
            m.b_set_seg(s, sel, sel << 4, 0xFFFF, 0xF3)
        return hw

    def _merge_eflags(self, hw: int) -> None:
        """The guest's EFLAGS from the hardware's: the arithmetic flags and DF from the hardware;
        IF and IOPL from the hardware in direct execution (they are the guest's there), from the
        vcpu page under translation (the CLI, STI and POPF templates change them there); AC and ID
        from the hardware too (POPF sets them at any CPL), and NT under translation and in user
        code (the POPF template loads it, a user POPF sets it); the rest virtual."""
        S = self.m.state
        virtual = S.eflags & 0x3F4000  # NT RF VM AC VIF VIP ID
        if self.direct and S.cpl == 3:
            virtual = (virtual & ~0x244000) | (hw & 0x244000)
            ifl = hw & (EFLAGS.IOPL | EFLAGS.IF)
        elif self.direct:  # the kernel under `trap`: the hardware's NT is kept clear
            virtual = (virtual & ~0x240000) | (hw & 0x240000)
            ifl = S.eflags & (EFLAGS.IOPL | EFLAGS.IF)
        else:
            virtual = (virtual & ~0x244000) | (hw & 0x244000)  # the in-TC POPFD loads NT, AC, ID
            ifl = self.vmm_read32(C["V_VIRT_IF"]) & EFLAGS.IF | self.vmm_read32(C["V_VIRT_IOPL"]) & EFLAGS.IOPL
        self.m.set_eflags((hw & 0xDD5) | ifl | virtual | (S.eflags & EFLAGS.TF))

    # ------------------------------------------------------------ translation

    def unit_for(self, key: int) -> Unit:
        """The unit whose key (Vmm.unit_key) is `key`, translated now if there is none."""
        u = self.units.get(key)
        while u is not None and u.forwarded_to is not None:
            u = u.forwarded_to
        if u is None:
            self.ledger.enter("translation")
            try:
                u = self.translate(key)
            finally:
                self.ledger.leave()
        return u

    def _fetch(self, eip: int) -> tuple[Decoded, tuple[int, ...]]:
        return self.m.decode_at(eip)

    def translate(self, key: int) -> Unit:
        """Translate the unit with key `key` (Vmm.unit_key: a guest EIP, or 16-bit code's CS base and
        IP) into a new CCF. The virtual CPU's CS is the unit's (exits and callouts that change
        it leave translated code first)."""
        if key != self.unit_key(key & (0xFFFF if key >= KEY16 else M32)):
            raise VMStop("vmm", f"translating unit {key:#x} while CS is {self.m.state.base[CS]:#x}")
        unit = Unit(key & 0xFFFF if key >= KEY16 else key, self.tc_next + len(INDIRECT_ENTRY), key)
        guest = unit.guest
        code16 = unit.code16
        code = bytearray()
        # Jumps to pad slots, filled in once the unit is known to fit: (offset of the rel32
        # field in code, guest target) for continuations, (offset of the rel32 field, guest
        # EIP, next guest EIP, offset to resume at) for callouts.
        exits: list[tuple[int, int]] = []
        callouts: list[tuple[int, int, int, int, bool, str]] = []
        # In-TC emulations' slow paths, callouts placed after the CCF: (offset of the rel32
        # field of the template's conditional jump, guest EIP, next guest EIP, offset to resume at)
        slow_paths: list[tuple[int, int, int, int, str | None]] = []
        pc = guest
        ended = False
        for _ in range(MAX_UNIT):
            try:
                d, pages = self._fetch(pc)
            except Fault:
                if pc == guest:
                    raise
                break  # the fetch faults when execution gets there
            host = unit.host + len(code)
            rule = self.rule_for(d)[0]
            eax_at = -1
            if pc in self.stop_addresses and pc != guest:
                break
            if rule == "ident":
                if _reads_arith_flags_from_memory(d):
                    code += SETTLE_FLAGS
                # 16-bit code: the same instruction in the TC's 32-bit code (the spec's choice
                # made sure there is one: fact same_in_32bit_code).
                code += same_in_32bit_code(d) if code16 else d.raw
            elif rule in ("direct", "indirect", "inline"):
                start = len(code)
                body, links, marks = self._instance(d, rule, unit.host + start)
                code += body
                for field_off, value in links:
                    if value == "callout":  # an in-TC emulation's slow path
                        slow_paths.append((start + field_off, pc, d.next, start + len(body), d.form))
                    else:
                        exits.append((start + field_off, self._value(d, value)))
                if "eax_saved" in marks:
                    eax_at = start + marks["eax_saved"]
                ended = rule != "inline"
            else:  # callout: state may change, so the unit ends and resumes through a continuation
                start = len(code)
                body, links, _ = self._instance(None, "callout_exit", unit.host + start)
                code += body
                simd = d.form is not None and FORMS[d.form].simd_state
                cause = f"callout {d.form}"
                callouts += [(start + field_off, pc, d.next, len(code), simd, cause) for field_off, _ in links]
                ended = True
            unit.insns.append((pc, host, unit.host + len(code), rule, unit.host + eax_at if eax_at >= 0 else -1))
            self.guest_starts[host] = pc
            self._start_hosts.append(host)
            self._record_code(unit, d, pages)
            self.stats["guest_instructions_translated"] += 1
            self.stats[f"rule_{rule}"] += 1
            pc = d.next
            if ended:
                break
        if not ended or rule == "callout":
            body, links, _ = self._instance(None, "exit_next", unit.host + len(code))
            exits += [(len(code) + field_off, pc) for field_off, _ in links]
            code += body
        for field_off, pc_at, next_guest, resume_off, form in slow_paths:
            stub = len(code)
            body, links, _ = self._instance(None, "callout_exit", unit.host + stub)
            cause = f"callout {form} (in-TC slow path)"
            callouts += [(stub + link_off, pc_at, next_guest, resume_off, False, cause) for link_off, _ in links]
            code += body
            code[field_off : field_off + 4] = _U32.pack((stub - (field_off + 4)) & M32)
        unit.size = len(code)
        full = unit.host + len(code) > self.base + VMM_SIZE
        if full or len(exits) > self.exit_pool.available() or len(callouts) > self.callout_pool.available():
            self.flush_translations()
            return self.translate(key)
        # Each exit jumps to a slot of its own; each jump to an exit pad slot is a patch site.
        for field_off, target in exits:
            ex = Exit(unit.host + field_off, unit.key_of(target), self.exit_pool.take(), unit)
            self._point_at_slot(code, field_off, unit.host, self.exit_pad + ex.slot * PAD_SLOT)
            self.exits[ex.slot] = self.patch_sites[ex.site] = ex
            unit.exit_slots.append(ex.slot)
        for field_off, pc_at, next_guest, resume_off, simd, cause in callouts:
            slot = self.callout_pool.take()
            self._point_at_slot(code, field_off, unit.host, self.callout_pad + slot * PAD_SLOT)
            self.sites[slot] = Site(pc_at, next_guest, unit.host + resume_off, unit, simd, cause)
            unit.callout_slots.append(slot)
        self.host.write(self.tc_phys(self.tc_next), INDIRECT_ENTRY + bytes(code))
        self.uc.ctl_remove_cache(self.tc_next, unit.host + len(code))
        self.tc_next = (unit.host + len(code) + 15) & ~15
        self.units[key] = unit
        self.unit_starts.append(unit.host)
        if code16:
            # (Entered in lookup16's table, 256 entries, only when an indirect branch misses it.)
            self.stats["units_16bit"] += 1
        else:
            self.set_hash(guest, unit.host - len(INDIRECT_ENTRY))
        self.stats["ccfs"] += 1
        self.stats["tc_bytes"] += len(code)
        self._index_unit(unit)
        return unit

    @staticmethod
    def _point_at_slot(code: bytearray, field_off: int, host: int, slot_address: int) -> None:
        """Fill the rel32 field at `field_off` of a unit placed at `host` to reach a pad slot."""
        code[field_off : field_off + 4] = _U32.pack((slot_address - (host + field_off + 4)) & M32)

    def rule_for(self, d: Decoded) -> tuple[str, str]:
        """The rule this instance is translated by, and why when it is not the spec's own: the
        spec's `choose` clauses (spec/vmm.r1) over the facts below."""
        own = RULES[d.form][0] if d.form is not None else "ident"
        rule, reason, _source = choose_rule(own, lambda name: self.FACTS[name](self, d))
        return rule, reason

    def _uses_gs(self, d: Decoded) -> bool:
        return GS_PREFIX in d.prefixes or (d.fields.get("seg") == GS and d.modrm_at >= 0 and d.variant[2] == "mem")

    # The spec's facts (FACTS in generated/rules.py), each answered for an instance.
    FACTS: ClassVar[dict[str, Callable[[Vmm, Decoded], bool]]] = {
        "undefined": lambda vmm, d: d.form is None,
        "invalid_lock": lambda vmm, d: d.lock_invalid,
        "adaptive": lambda vmm, d: d.eip in vmm.callout_override,
        "forced": lambda vmm, d: d.form in vmm.rule_overrides,
        "trap_mode": lambda vmm, d: vmm.mode == "trap",
        "uses_gs": lambda vmm, d: vmm._uses_gs(d),
        "vmm_address": lambda vmm, d: vmm._touches_vmm_area(d),
        "template_fits": lambda vmm, d: vmm._template_applies(d, RULES[d.form][0]),
        "flags_lost_at_store": lambda vmm, d: _changes_flags_before_store(d),
        "code16": lambda vmm, d: not vmm.m.state.code32,
        "paragraph_cs": lambda vmm, d: vmm._paragraph_cs(),
        "same_in_32bit_code": lambda vmm, d: same_in_32bit_code(d) is not None,
        "outside_its_modes": lambda vmm, d: (
            d.form is not None and MODE_NAMES[vmm.m.state.mode] not in FORMS[d.form].modes
        ),
    }

    def _touches_vmm_area(self, d: Decoded) -> bool:
        """An absolute address in the VMM area: a ModRM disp32 (the decoder's `ea` is then an
        expression string of digits) or a MOV moffs (`ea` is the offset itself, no ModRM)."""
        ea = d.fields.get("ea")
        if isinstance(ea, str):
            return ea.isdigit() and self.in_vmm(int(ea))
        moffs = d.modrm_at < 0 and d.variant[2] == "mem"
        return moffs and isinstance(ea, int) and self.in_vmm(ea)

    @staticmethod
    def template_name(d: Decoded, rule: str) -> str:
        """The spec/vmm.r1 template a rule emits: `inline NAME` names it; `direct KIND` and
        `indirect KIND` mean `direct_KIND` and `indirect_KIND`."""
        arg = RULES[d.form][1]
        return arg if rule == "inline" else f"{rule}_{arg}"

    def template_for(self, d: Decoded, rule: str) -> str | None:
        """The template the rule emits for this instance: the first of its name and its
        alternates (NAME/2, NAME/3...: spec/vmm.r1) whose `when` clause covers it, or None (then
        it is a callout)."""
        name = self.template_name(d, rule)
        candidate, n = name, 1
        while candidate in TEMPLATES:
            if self._when_holds(d, TEMPLATES[candidate]):
                return candidate
            n += 1
            candidate = f"{name}/{n}"
        return None

    def _template_applies(self, d: Decoded, rule: str) -> bool:
        return self.template_for(d, rule) is not None

    def _when_holds(self, d: Decoded, t: dict) -> bool:
        """Whether a template's `when` clause covers this instance."""
        osize, asize, mod = d.variant[0], d.variant[1], d.variant[2]
        S = self.m.state
        for key, want in t["when"].items():
            if key.endswith("#"):
                number = d.fields.get(key[:-1], -1)
                if not any(int(lo) <= number <= int(hi) for lo, hi in (r.split("..") for r in want.split(","))):
                    return False
            elif key == "mod":
                if want != mod:
                    return False
            else:
                stack, code = 32 if S.stack32 else 16, 32 if S.code32 else 16
                have = {"osize": osize, "asize": asize, "stack": stack, "code": code}[key]
                if int(want) != have:
                    return False
        return all(_placeholder_value(d, p) is not None for p in t["placeholders"])

    @staticmethod
    def _value(d: Decoded, name: str) -> int:
        """A template's `{@name}` for this instance: `next`, or a decoded field (target, n...)."""
        return d.next if name == "next" else d.fields[name]

    def _instance(self, d: Decoded | None, rule_or_name: str, at: int) -> tuple[bytes, list[tuple[int, str]], dict]:
        """A template's code for instance `d` placed at TC address `at`: the bytes, the rel32
        fields whose `{@name}` target the caller fills in (offset, name: exits and slow paths),
        and the offsets of its marks. Values and the stubs' labels are filled in here."""
        name = self.template_for(d, rule_or_name) if d is not None else rule_or_name
        if name is None:
            raise ValueError(f"no template of rule {rule_or_name} covers {d.form} {d.variant}")
        t = TEMPLATES[name]
        key = tuple(_placeholder_value(d, p) for p in t["placeholders"])
        out = bytearray()
        links: list[tuple[int, str]] = []
        marks: dict[str, int] = {}
        for chunk in t["variants"][key]:
            if isinstance(chunk, bytes):
                out += chunk
                continue
            kind = chunk[0]
            if kind == "ea":
                out += guest_operand(d, *chunk[1:])
            elif kind == "seg":
                out += d.segment_prefix
            elif kind == "addr":
                out += tc_address_prefix(d)
            elif kind == "mark":
                marks[chunk[1]] = len(out)
            else:  # abs32 / rel32: a value of the instance or a stub's label
                symbol, addend = chunk[1], chunk[2]
                if kind == "rel32" and symbol.startswith("@"):
                    if addend != -4:  # the caller fills target - (end of field), as for a branch
                        raise ValueError(f"template {name}: {symbol} is not a branch's rel32 field")
                    links.append((len(out), symbol[1:]))
                    out += bytes(4)
                    continue
                value = self._value(d, symbol[1:]) if symbol.startswith("@") else self.L[symbol]
                if kind == "rel32":
                    value -= at + len(out)
                out += _U32.pack((value + addend) & M32)
        return bytes(out), links, marks

    def _clear_hash(self) -> None:
        """Empty entries hold a guest EIP whose low half differs from their index: never a hit."""
        table = struct.pack("<131072I", *[v for i in range(65536) for v in ((~i) & 0xFFFF, 0)])
        self.vmm_write(C["VMM_HASH"], table)
        self._clear_hash16()

    def _lookup_key16(self, unit: Unit) -> int | None:
        """A 16-bit unit's key in lookup16's table (CS base << 12 | IP), or None: its CS base is
        not a paragraph below 1 MB, and no lookup16 can be looking for it."""
        base = unit.cs_base
        return None if base & 0xF or base > 0xFFFF0 else base << 12 | unit.guest

    @staticmethod
    def _entry16(unit: Unit) -> int:
        """Where a 16-bit unit's entry is in lookup16's table: by its linear address's low byte."""
        return C["VMM_HASH16"] + ((unit.cs_base + unit.guest) & 0xFF) * 8

    def set_hash16(self, unit: Unit) -> None:
        key = self._lookup_key16(unit)
        if key is not None:
            self.vmm_write(self._entry16(unit), struct.pack("<II", key, unit.host - len(INDIRECT_ENTRY)))

    def _clear_hash16(self) -> None:
        """Empty entry i holds key i + 1 (CS base 0, IP i + 1), whose linear address's low byte
        is not i: no lookup at that entry ever looks for it."""
        for i in range(256):
            self._empty_entry16(C["VMM_HASH16"] + i * 8)

    def _empty_entry16(self, entry: int) -> None:
        self.vmm_write(entry, struct.pack("<II", (entry - C["VMM_HASH16"]) // 8 + 1, 0))

    def set_hash(self, guest: int, host: int) -> None:
        off = C["VMM_HASH"] + (guest & 0xFFFF) * 8
        self.vmm_write(off, struct.pack("<II", guest, host))

    def patch(self, site_addr: int, target_host: int) -> None:
        """Chain a continuation: its jump goes straight to the target's CCF from now on. Only a
        patch site the VMM recorded, in a unit still in the TC, is ever written."""
        ex = self.patch_sites.get(site_addr)
        if ex is None or not ex.unit.live:
            raise VMStop("vmm", f"refused to patch {site_addr:#x}: not a live patch site of the TC")
        rel = (target_host - (site_addr + 4)) & M32
        self.host.write32(self.tc_phys(site_addr), rel)
        self.uc.ctl_remove_cache(site_addr - 1, site_addr + 4)
        self.stats["chained_links"] += 1

    def flush_translations(self, counted: bool = True) -> None:
        """Drop every CCF (the TC or an exit pad is full)."""
        self.units.clear()
        self.unit_starts.clear()
        self.guest_starts.clear()
        self._start_hosts.clear()
        self._forget_all_exits()
        self.tc_next = self.tc_start
        self._clear_hash()
        self.uc.ctl_remove_cache(self.tc_start, self.base + VMM_SIZE)
        for p in list(self.code_pages):
            self.unprotect_code_page(p)
        if counted:  # (a move of the VMM is counted as one)
            self.stats["tc_flushes"] += 1

    def _forget_all_exits(self) -> None:
        """Every unit leaves the TC: none of its exits, patch sites or callouts is live any more."""
        for u in self.by_host.values():
            u.live = False
        self.by_host.clear()
        self.units_on_page.clear()
        self.units_on_linear.clear()
        self._code_pdes.clear()
        self.exits.clear()
        self.patch_sites.clear()
        self.sites.clear()
        self.exit_pool.reset()
        self.callout_pool.reset()

    def _forget_patch_sites(self, unit: Unit, start: int, end: int) -> None:
        """The unit's bytes in [start, end) were overwritten: patch sites there are gone."""
        for slot in list(unit.exit_slots):
            ex = self.exits[slot]
            if start <= ex.site < end:
                del self.exits[slot], self.patch_sites[ex.site]
                unit.exit_slots.remove(slot)
                self.exit_pool.give_back(slot)

    def locate(self, host_eip: int) -> tuple[Unit, tuple] | None:
        """The CCF and guest instruction a TC address belongs to."""
        i = bisect.bisect_right(self.unit_starts, host_eip) - 1
        if i < 0:
            return None
        u = self.by_host.get(self.unit_starts[i])
        if u is None or u.forwarded_to is not None or not host_eip < u.host + u.size:
            return None
        for ins in u.insns:
            if ins[1] <= host_eip < ins[2]:
                return u, ins
        return u, u.insns[-1]

    # ------------------------------------------------------------ TC coherency

    def _record_code(self, unit: Unit, d: Decoded, pages: tuple[int, ...]) -> None:
        """Remember the guest bytes one translated instruction came from, and the linear pages
        it was fetched through (the translation is valid only while they map there)."""
        la = (unit.cs_base + d.eip) & M32  # (32-bit code: CS base 0)
        ranges = instruction_ranges(la, len(d.raw), pages)
        unit.code.add(ranges)
        unit.pages.update(page for page, _, _ in ranges)
        unit.maps[la >> 12] = pages[0]
        last = (la + len(d.raw) - 1) & M32
        if len(ranges) > 1:
            unit.maps[last >> 12] = pages[1]

    def _index_unit(self, unit: Unit) -> None:
        self.by_host[unit.host] = unit
        for page in unit.pages:
            self.units_on_page.setdefault(page, set()).add(unit)
            self.protect_code_page(page)
        for lpage in unit.maps:
            self.units_on_linear.setdefault(lpage, set()).add(unit)
            if lpage >> 10 not in self._code_pdes:
                self._code_pdes[lpage >> 10] = self._guest_pde(lpage >> 10)

    def invalidate_unit(self, unit: Unit) -> None:
        """Drop one CCF: nothing reaches it any more. The hash table forgets it; every chained
        jump into it goes back to its own exit pad slot (whose exit translates the guest target
        again); its own exit and callout slots are given back; its pages stop being watched for
        it. Its code stays in the TC, unreachable, until the TC is flushed. A unit running while
        its own code is written leaves it at once: a trap or a callout re-enters at a fresh
        translation of the next instruction (a callout resumes only into a live unit)."""
        if not unit.live:
            return
        unit.live = False
        self.by_host.pop(unit.host, None)
        if self.units.get(unit.key) is unit:
            del self.units[unit.key]
        entry = C["VMM_HASH"] + (unit.guest & 0xFFFF) * 8
        entry_host = unit.host - len(INDIRECT_ENTRY)
        if unit.code16:
            key = self._lookup_key16(unit)
            entry = self._entry16(unit)
            if key is not None and self.vmm_read32(entry) == key and self.vmm_read32(entry + 4) == entry_host:
                self._empty_entry16(entry)
        elif self.vmm_read32(entry) == unit.guest and self.vmm_read32(entry + 4) == entry_host:
            self.vmm_write(entry, struct.pack("<II", (~unit.guest) & 0xFFFF, 0))
        for site_addr in unit.incoming:
            ex = self.patch_sites.get(site_addr)
            if ex is None or not ex.unit.live:
                continue  # a jump in a unit dropped already
            if self.host.read32(self.tc_phys(site_addr)) == (unit.host - (site_addr + 4)) & M32:
                slot_address = self.exit_pad + ex.slot * PAD_SLOT
                self.host.write32(self.tc_phys(site_addr), (slot_address - (site_addr + 4)) & M32)
                self.uc.ctl_remove_cache(site_addr - 1, site_addr + 4)
        unit.incoming.clear()
        self._forget_patch_sites(unit, unit.host, unit.host + unit.size)
        for slot in unit.callout_slots:
            if self.sites.get(slot) is not None and self.sites[slot].unit is unit:
                del self.sites[slot]
                self.callout_pool.give_back(slot)
        unit.callout_slots.clear()
        for page in unit.pages:
            units = self.units_on_page.get(page)
            if units is not None:
                units.discard(unit)
                if not units:
                    del self.units_on_page[page]
                    self.unprotect_code_page(page)
        for lpage in unit.maps:
            units = self.units_on_linear.get(lpage)
            if units is not None:
                units.discard(unit)
                if not units:
                    del self.units_on_linear[lpage]
        self.stats["units_invalidated"] += 1

    def _on_code_write(self, page: int, start: int, end: int) -> None:
        """An emulated write to bytes [start, end) of a page holding translated code: drop the
        units made from those bytes (units made from other bytes of the page stay)."""
        self.stats["code_writes"] += 1
        for unit in list(self.units_on_page.get(page, ())):
            if unit.code.overlaps(page, start, end):
                self.invalidate_unit(unit)

    def _on_mapping_change(self, linear_page: int | None) -> None:
        """Translations are keyed by the guest linear EIP and valid only for the mapping they were
        made under. Decision: rather than key the TC by guest-physical address (the in-TC hash
        lookup and chained jumps work on linear EIPs, and would need a mapping check on every
        indirect branch), the units are checked where the mapping can change, as a TLB would be:
        after a CR3 write (or a CR0/CR4 paging change) every linear page holding translated code
        is walked again, after INVLPG that page; units fetched through a page that now maps to
        another physical page, or to none, are dropped. A kernel mapped alike in every address
        space keeps its translations across process switches; a PTE changed without INVLPG runs
        the old code until one, as the stale TLB entry would on a CPU.
        The shadow page tables: INVLPG drops the page's shadow entry; a CR3 (CR0, CR4) write
        selects the shadow of the new address space (shadow.py)."""
        self._tables_moved()  # the tables' linear pages may map elsewhere now
        if linear_page is None:
            S = self.m.state
            self._check_window()
            self.shadow.select(S.cr[0], S.cr[3], S.cr[4])
            pages = self._pages_to_recheck()
        else:
            self.shadow.invalidate_page(linear_page)
            if linear_page not in self.units_on_linear:
                return  # no translated code there (INVLPG of a data page)
            pages = [linear_page]
        for lpage in pages:
            units = self.units_on_linear.get(lpage)
            if not units:
                continue
            walk = self.m.walk(lpage << 12)
            now = None if walk is None else walk[0] >> 12
            for unit in list(units):
                if unit.maps.get(lpage) != now:
                    self.invalidate_unit(unit)
                    self.stats["units_remapped"] += 1

    def _guest_pde(self, region: int) -> int | None:
        """The guest's page-directory entry for 4 MB region `region` now (None: paging off)."""
        S = self.m.state
        if not S.cr[0] & CR0.PG:
            return None
        return self.m.mem.read32((S.cr[3] & 0xFFFFF000) | region << 2)

    def _pages_to_recheck(self) -> list[int]:
        """After CR0, CR3 or CR4 changed: the linear pages of translated code to walk again. A
        switch to another address space (another CR3, the same paging bits) leaves alone the
        regions whose PDE is the one their units were last checked under: the same page table
        (or 4 MB page) maps them alike there, as the kernel's regions are in every process's
        directory (a CPU keeps such translations too, as global pages). The same CR3 written
        again, or a CR0/CR4 change that leaves paging's meaning alone (CR4.PGE toggled, as
        Linux's global TLB flush does), flushes the rest: every page of a region mapped by page
        tables is walked (a PTE changed since, without INVLPG, takes effect then, as a TLB flush
        makes it), while a region that one unchanged 4 MB page maps keeps its units (no PTE
        there could have changed). A change of CR0.PG or CR4.PSE walks everything."""
        S = self.m.state
        space = (S.cr[3], S.cr[0] & CR0.PG | S.cr[4] & CR4.PSE)
        same_meaning = space[1] == self._checked_space[1]
        switched = space[0] != self._checked_space[0] and same_meaning
        self._checked_space = space
        now = {region: self._guest_pde(region) for region in self._code_pdes}
        if switched:
            moved = {region for region, pde in now.items() if self._code_pdes[region] != pde}
        elif same_meaning:
            big = S.cr[4] & CR4.PSE
            moved = {
                region
                for region, pde in now.items()
                if not (big and pde is not None and pde & PTE.PS and pde & PTE.P and self._code_pdes[region] == pde)
            }
        else:
            moved = set(now)
        pages = [lpage for lpage in self.units_on_linear if lpage >> 10 in moved]
        self.stats["address_space_regions_kept"] += len(now) - len(moved)
        self._code_pdes = now
        return pages

    # ------------------------------------------------------------ shadow paging

    def _flush_hw_tlb(self) -> None:
        """Unicorn caches translations like a TLB: after changing its page tables, drop them."""
        self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)

    def _load_hw_cr3(self, pd: int) -> None:
        """Point the hardware at a shadow directory (also from inside a callout's hook: the VMM
        area every shadow maps alike is where execution goes on)."""
        self.uc.reg_write(X.UC_X86_REG_CR3, pd)

    def guest_walk(self, la: int) -> tuple[int, bool, bool, bool, list[tuple[int, int]]] | None:
        """The guest's translation of `la` without side effects (the interpreter's walker)."""
        return self.m.walk(la)

    def fill(self, la: int, write: bool, implicit: bool = False) -> bool:
        """Map `la` in the current shadow as the guest maps it, if the guest allows this access
        without a fault (ShadowMmu.fill). `implicit`: an access the CPU makes itself (a
        descriptor table), a supervisor's at any CPL."""
        return self.shadow.fill(la, write, supervisor=implicit or self.m.state.cpl != 3)

    def _device_page(self, gpa: int) -> bool:
        """A page of device memory (MMIO) the hardware maps (physcpu): mapped in the shadow
        like RAM, each access is one call into the device, with no trap."""
        return any(base <= gpa < base + length for base, length in self.platform.mmio_ranges())

    def _protected_by_vmm(self, page: int) -> bool:
        """Pages the VMM keeps read-only for reasons of its own besides page tables."""
        return (
            page in self.code_pages
            or page in self._table_ranges
            or page == self._window_pd
            or page in self.debugger_pages
        )

    def _on_shadow_unmap(self) -> None:
        """Shadow entries of the current address space were dropped (a guest PTE or PDE changed,
        or the pool ran out): the interpreter, which emulates instructions of the same guest,
        forgets its translations too, so that an emulated access sees what the hardware's next
        one will (the new mapping, and accessed and dirty bits set again), not an older one."""
        self.m.flush_tlb()
        self._tables_moved()  # their pages may no longer be mapped, for the hardware or at all

    def _on_shadow_untrace(self, page: int) -> None:
        if page in self.m.code_pages and not self._write_protected(page):
            self.m.forget_code_page(page)  # the hardware may write it from now on

    def protect_code_page(self, page: int) -> None:
        if page in self.code_pages:
            return
        self.code_pages.add(page)
        self._write_protect(page)
        self.m.traces.watch(page, WHY_TC, self._on_code_write)

    def unprotect_code_page(self, page: int) -> None:
        """No translated code left on `page`: stop watching it for the TC. The hardware mapping
        stays read-only until the next write to it, which maps it writable (a hidden fault)."""
        self.code_pages.discard(page)
        self.m.traces.unwatch(page, WHY_TC)
        if page in self.m.code_pages and not self._write_protected(page):
            self.m.forget_code_page(page)  # the hardware may write it from now on

    def _write_protected(self, page: int) -> bool:
        """Every write to `page` traps to the VMM and is emulated (so the interpreter sees it)."""
        return (
            page in self.code_pages
            or page in self.traced_pages
            or page in self._table_ranges
            or page == self._window_pd
            or page in self.debugger_pages
        )

    def protect_for_debugger(self, page: int, watched: bool) -> None:
        """A debugger's write watchpoint on guest physical `page` (`ring1 run --gdb`): while
        `watched`, the hardware maps it read-only, so every write to it, from translated or
        direct code, is emulated and its page-trace subscribers hear of it. Unwatched, it stays
        read-only until its next write maps it writable (a hidden fault), like a code page."""
        if watched and page not in self.debugger_pages:
            self.debugger_pages.add(page)
            self._write_protect(page)
        elif not watched:
            self.debugger_pages.discard(page)

    def _write_protect(self, page: int) -> None:
        self.shadow.write_protect(page)

    # ------------------------------------------------------------ hooks (inside emulation: memory writes only)

    @timed("continuations (chaining)")
    def _on_exit_slot(self, uc, address: int, size: int, _user) -> None:
        """A continuation was taken: translate its target, chain its jump there, go there."""
        ex = self._recorded(self.exits, self.exit_pad, address, "exit")
        if ex is None:
            return
        target_eip = ex.target & (0xFFFF if ex.target >= KEY16 else M32)
        if target_eip in self.stop_addresses:
            self._exit_to_vmm("stop", target_eip)
            return
        unit = self._translated_for_exit(ex.target)
        if unit is None:
            return
        if ex.unit.live:  # (translating the target may have flushed the TC, this exit's unit too)
            try:
                self.patch(ex.site, unit.host)
            except VMStop as stop:
                self._exit_to_vmm("vmstop", stop)
                return
            unit.incoming.append(ex.site)  # unlinked again if `unit` is dropped
        if not unit.code16:
            self.set_hash(ex.target, unit.host - len(INDIRECT_ENTRY))
        self.vmm_write32(C["V_JUMP"], unit.host)
        self.stats["translator_entries"] += 1

    @timed("indirect lookup misses")
    def _on_lookup_miss(self, uc, address: int, size: int, _user) -> None:
        """An indirect branch whose guest target (in EAX) has no CCF in the hash table yet."""
        if self.pending is not None:  # already on the way out (after a refusal)
            return
        if self.direct:
            self._refuse(f"direct execution reached the VMM's lookup miss at {address:#x}")
            return
        guest = uc.reg_read(X.UC_X86_REG_EAX)
        uc.reg_write(X.UC_X86_REG_EAX, self.vmm_read32(C["V_SAVE_EAX"]))  # the guest's own EAX
        self.stats["indirect_misses"] += 1
        if guest in self.stop_addresses:
            self._exit_to_vmm("stop", guest)
            return
        unit = self._translated_for_exit(guest)
        if unit is None:
            return
        self.set_hash(guest, unit.host - len(INDIRECT_ENTRY))
        self.vmm_write32(C["V_JUMP"], unit.host)
        self.stats["translator_entries"] += 1

    @timed("indirect lookup misses")
    def _on_lookup16_miss(self, uc, address: int, size: int, _user) -> None:
        """An indirect branch of 16-bit code whose key (CS base << 12 | IP, in EAX) has no CCF in
        lookup16's table yet. The key's CS base must be the virtual CPU's (every change of CS
        leaves translated code first)."""
        if self.pending is not None:
            return
        if self.direct:
            self._refuse(f"direct execution reached the VMM's lookup16 miss at {address:#x}")
            return
        key = uc.reg_read(X.UC_X86_REG_EAX)
        uc.reg_write(X.UC_X86_REG_EAX, self.vmm_read32(C["V_SAVE_EAX"]))  # the guest's own EAX
        self.stats["indirect_misses"] += 1
        S = self.m.state
        ip = key & 0xFFFF
        if S.code32 or key != (S.base[CS] << 12 | ip) & M32:
            self._refuse(f"lookup16 missed with key {key:#x}, but CS's base is {S.base[CS]:#x}")
            return
        if ip in self.stop_addresses:
            self._exit_to_vmm("stop", ip)
            return
        unit = self._translated_for_exit(self.unit_key(ip))
        if unit is None:
            return
        self.set_hash16(unit)
        self.vmm_write32(C["V_JUMP"], unit.host)
        self.stats["translator_entries"] += 1

    def _translated_for_exit(self, key: int) -> Unit | None:
        try:
            return self.unit_for(key)
        except Fault as f:
            self._exit_to_vmm("fetch-fault", (key & (0xFFFF if key >= KEY16 else M32), f))
            return None
        except VMStop as stop:  # (a key of another code segment than CS's: `translate`)
            self._exit_to_vmm("vmstop", stop)
            return None

    def _recorded(self, records: dict, pad: int, address: int, what: str):
        """The record of the pad slot at `address`, or None after a VM stop: the slot must be
        entered at its start, from translated code, and belong to a unit still in the TC."""
        slot, into = divmod(address - pad, PAD_SLOT)
        record = records.get(slot)
        if not into and record is not None and record.unit.live and self.pending is None and not self.direct:
            return record  # (the one case translated code makes: checked first, it is on every exit)
        if self.pending is not None:  # already on the way out (after a refusal): keep its reason
            pass
        elif self.direct:
            self._refuse(f"direct execution reached the VMM's {what} pad at {address:#x}")
        elif into:
            self._refuse(f"the {what} pad entered at {address:#x}, inside slot {slot}")
        else:
            self._refuse(f"{what} pad slot {slot} ({address:#x}) taken, but no live {what} owns it")
        return None

    def _refuse(self, reason: str) -> None:
        """Something reached the VMM's stubs in a way translated code never does: stop the VM."""
        self.stats["refused_exits"] += 1
        self._exit_to_vmm("vmstop", VMStop("vmm", reason))

    def _exit_to_vmm(self, why: str, what: object) -> None:
        self.pending = (why, what)
        self.vmm_write32(C["V_JUMP"], self.L["vmm_exit"])
        self.vmm_write32(C["V_RESTORE"], self.L["restore_regs"])

    def _on_vmm_exit(self, uc, address, size, _user) -> None:
        uc.emu_stop()

    def _on_callout(self, uc, address: int, size: int, _user) -> None:
        """A callout's own slot: the guest's registers and flags are in the vcpu page (template
        callout_exit); emulate its instruction and choose where the slot's jump goes."""
        site = self._recorded(self.sites, self.callout_pad, address, "callout")
        if site is None:
            return
        self.ledger.enter(site.cause)
        try:
            self._callout(site)
        finally:
            self.ledger.leave()

    def _callout(self, site: Site) -> None:
        m, S = self.m, self.m.state
        regs = struct.unpack_from("<8I", self.host.view, self.vmm_phys + C["V_EAX"])
        m.regs[:] = regs
        self._merge_eflags(self.vmm_read32(C["V_EFLAGS"]))
        S.eip = site.guest
        before = (tuple(S.sel), tuple(S.base), tuple(S.attr), S.cpl, S.cr[0], S.cr[3], S.cr[4])
        self.stats["callouts"] += 1
        told = m.traces.told
        simd = site.simd_state
        if simd:
            self._fpu_to_interpreter()
        r = m.step()
        if simd:
            write_fpu(self.uc, S)
        ev = r.event
        if ev is None and r.reason == "vmstop":
            self._exit_to_vmm("vmstop", r.vmstop)
            return
        if ev is not None:
            if self.stop_on_event:
                # The hardware restores the registers from the vcpu page on its way out, and
                # they are captured there: the interpreter's, which a fault leaves as they were,
                # unless it is a new task's (spec/tasks.r1: the switch loaded them before it).
                self.vmm_write(C["V_EAX"], struct.pack("<8I", *m.regs))
                self.vmm_write32(C["V_EFLAGS"], self.hardware_eflags(False))
                self._exit_to_vmm("event", ev)
                return
            try:
                self.deliver(ev)
            except VMStop as stop:
                self._exit_to_vmm("vmstop", stop)
                return
        if S.halted:
            # (HLT just before a stop address: the stop first, as the interpreter's run loop has it)
            self._exit_to_vmm(*(("stop", S.eip) if S.eip in self.stop_addresses else ("halt", None)))
            return
        if self.clock is not None and not self._callout_interrupt():
            return
        if site.guest in self.callout_override:
            record = self.callout_record[site.guest]
            record[0] += 1
            record[1] += m.traces.told != told  # it wrote a watched page: it would have trapped
            if record[0] >= ACQUIT_WINDOW:
                if record[1] * GUILTY_SHARE < record[0]:
                    self._acquit(site.guest, site.unit.cs_base)
                else:
                    record[:] = [0, 0]
        after = (tuple(S.sel), tuple(S.base), tuple(S.attr), S.cpl, S.cr[0], S.cr[3], S.cr[4])
        if (
            self.relocation_pending
            or HW_CR0 | S.cr[0] & GUEST_CR0_IN_HARDWARE != self._hw_cr0
            or S.cr[4] & GUEST_CR4_IN_HARDWARE != self._hw_cr4_guest
        ):
            self._exit_to_vmm("switch", None)  # (CR0 FPU, CR4 SSE bits: at a world switch)
            return
        if after != before or not self.can_translate():  # (POPF and IRET can set TF)
            # (CR0, CR3 and CR4 changes that move mappings dropped the shadow tables already:
            # the machine's mapping listeners, `_on_mapping_change`.)
            if not self.can_translate():
                self._exit_to_vmm("switch", None)
                return
            sels = self.hardware_selectors(False)
            self.vmm_write(C["V_HWSEL"], struct.pack("<6H", *sels))
            self.vmm_write32(C["V_RESTORE"], self.L["restore_segs"])
        else:
            self.vmm_write32(C["V_RESTORE"], self.L["restore_regs"])
        self.vmm_write(C["V_EAX"], struct.pack("<8I", *m.regs))
        self.vmm_write32(C["V_EFLAGS"], self.hardware_eflags(False))
        self.publish_virtual()
        if S.eip in self.stop_addresses:
            self._exit_to_vmm("stop", S.eip)
            return
        key = self.unit_key(S.eip)
        if key == site.unit.key_of(site.next_guest) and site.unit.live:
            self.vmm_write32(C["V_JUMP"], site.resume)
            return
        # Elsewhere (another IP or another CS), or the callout flushed the TC (it wrote a page of
        # translated code): the next guest instruction comes from a fresh translation, never
        # from a dropped unit.
        try:
            unit = self.unit_for(key)
        except Fault as f:
            self._exit_to_vmm("fetch-fault", (S.eip, f))
            return
        self.vmm_write32(C["V_JUMP"], unit.host)

    def _fpu_to_interpreter(self) -> None:
        """The hardware's x87 and SSE state into the virtual CPU, for an instruction the
        interpreter emulates. The last x87 instruction's pointer, when translated code ran it, is
        a TC address with the TC's code selector: the guest's instruction and CS stand for them
        (FNSTENV, FNSAVE and FXSAVE store them; the guest must never see the TC). A data pointer's
        selector is the hardware's selector for one of the guest's segment registers."""
        S = self.m.state
        read_fpu(self.uc, S)
        if self.in_vmm(S.fip):
            where = self.locate(S.fip)
            S.fip = where[1][0] if where is not None else 0
            S.fcs = S.sel[CS]
        if not self.direct and S.fds in self._hw_sels:
            S.fds = S.sel[self._hw_sels.index(S.fds)]

    # ------------------------------------------------------------ events

    def deliver(self, ev: GuestEvent) -> None:
        self.last_event = ev
        self.stats["events_delivered"] += 1
        self.m.deliver_event(ev)

    def _event_in_guest(self, event: CpuEvent, host_eip: int) -> str | None:
        """A CPU exception while in guest context (`host_eip`: where the hardware stopped). Returns
        a stop reason, "resume" to restart the hardware where it stopped, or None to re-enter the
        guest from the virtual state."""
        self.ledger.enter("exceptions from the hardware")  # (relabelled once known)
        try:
            return self._handle_event_in_guest(event, host_eip)
        finally:
            self.ledger.leave()

    def _handle_event_in_guest(self, event: CpuEvent, host_eip: int) -> str | None:
        vector = event.vector
        if vector == SYSENTER_EVENT:
            host_eip = event.eip  # the hardware went on past it, having done nothing
        # The hardware's EFLAGS, read at most once per event (None: not read yet, or rewritten).
        hw_eflags = self._adopt_hardware_v86()
        S = self.m.state
        user = S.cpl == 3
        hw_eflags = self._flags_as_first_seen(host_eip, vector, hw_eflags)
        if vector == 14:
            cr2 = event.cr2  # read by the hook, at the fault
            if not self.in_vmm(cr2) and self._hidden_fault(cr2, host_eip):
                self.ledger.relabel("hidden page faults")
                self.stats["traps"] += 1
                self._eflags_at_resume = hw_eflags
                return "resume"  # a page the guest maps: filled in; the instruction runs again
        where = None
        if self.direct:
            guest_eip = host_eip
        elif self.tc_start <= host_eip < self.base + VMM_SIZE:
            where = self.locate(host_eip)
            if where is None:
                return self._stop(f"exception {vector} at {host_eip:#x}, in no CCF")
            guest_eip = where[1][0]
        else:
            return self._stop(f"exception {vector} in the VMM's stubs at {host_eip:#x}")
        self.capture(hw_eflags)
        if where is not None and where[1][4] >= 0 and host_eip >= where[1][4]:
            self.m.regs[0] = self.vmm_read32(C["V_SAVE_EAX"])  # the sequence had moved EAX aside
        S.eip = guest_eip
        self.stats["traps"] += 1
        if self.direct:
            soft = soft_interrupt_before(self.m, vector)
            if soft is not None:  # INT n run directly: EIP is past it, nothing to emulate
                if self.stop_on_event:
                    self.pending = ("event", soft)
                    return "event"
                if user:
                    self.stats["user_soft_interrupts_reflected"] += 1
                self.ledger.relabel("INT n from direct execution (system calls)")
                self.deliver(soft)
                return None
        if vector == NM_VECTOR:
            # The hardware holds the guest's CR0 FPU bits in guest context (HW_CR0): a #NM is the
            # guest's own (lazy FPU switching, an emulated FPU), as spec/x87.r1 says a VMM that
            # keeps them sees it. Reflected as it is, with nothing to emulate.
            if self.stop_on_event:
                self.pending = ("event", Fault(NM_VECTOR))
                return "event"
            if user:
                self.stats["user_events_reflected"] += 1
            self.stats["nm_reflected"] += 1
            self.ledger.relabel("#NM reflected (lazy FPU)")
            self.deliver(Fault(NM_VECTOR))
            return None
        # Emulate the instruction with the interpreter: a guest fault is raised precisely
        # (with its error code); anything else (a privileged instruction, a protected page,
        # the VMM's area) is done, and execution goes on after it.
        self.trap_counts[guest_eip] += 1
        if self.direct and vector == 14:
            # A store the interpreter is about to make for code that runs directly: unicorn's own
            # translations of that page must go (it does not see Python's writes). Now, while
            # the page is still mapped: unicorn finds the page through the hardware tables, and
            # the write may drop them (a traced page table).
            page = cr2 & ~0xFFF
            self.uc.ctl_remove_cache(page, min(page + 0x2000, 1 << 32))
        m = self.m
        traced, code_writes = self.stats["traced_writes"], self.stats["code_writes"]
        r = m.step()
        if vector == SYSENTER_EVENT:
            self.ledger.relabel("SYSENTER from user code (system calls)")
        elif self.stats["traced_writes"] != traced:
            self.ledger.relabel("traced writes to page tables")
        elif self.stats["code_writes"] != code_writes:
            self.ledger.relabel("writes to translated code")
        elif r.event is not None:
            self.ledger.relabel("guest faults reflected")
        else:
            self.ledger.relabel("traps emulated (privileged or protected)")
        if r.event is not None:
            if self.stop_on_event:
                self.pending = ("event", r.event)
                return "event"
            if user:
                self.stats["user_events_reflected"] += 1  # a fault, or SYSENTER, INT3, INTO emulated
            self.deliver(r.event)
        elif r.reason == "vmstop":
            self.pending = ("vmstop", r.vmstop)
            return "vmstop"
        else:
            self.stats["emulated_after_trap"] += 1
            if self.budget is not None:
                self.budget -= 1  # it ran, in the interpreter
            threshold = TRAP_THRESHOLD << min(self.convictions[guest_eip], 4)
            if not user and self.trap_counts[guest_eip] >= threshold and guest_eip not in self.callout_override:
                self.retranslate(guest_eip)
        if S.halted:
            self.pending = ("halt", None)
            return "halt"
        return None

    def _flags_as_first_seen(self, host_eip: int, vector: int, hw_eflags: int | None) -> int | None:
        """Before anything reads EFLAGS or the instruction restarts, give the faulting instruction
        the flags it saw the first time. Faulting again where it was just restarted, with the same
        registers (it did not complete: a store after a load that filled a page read-only), it
        gets the flags it was restarted with: unicorn's RCL/RCR change them before their store.
        Else unicorn may have lost them at this fault (physcpu.restore_lost_flags).
        `hw_eflags`: the hardware's EFLAGS if known; returns them as they are now (None: unknown)."""
        again, self._restarted = self._restarted, None
        if again is not None and again[0] == host_eip:
            if hw_eflags is None:
                hw_eflags = self.uc.reg_read(X.UC_X86_REG_EFLAGS)
            if hw_eflags == again[2] and not self.direct:
                return hw_eflags  # as restarted, and nothing else to check: the registers do not matter
            if tuple(gprs_and_eip(self.cpu.save_context())[0]) == again[1]:
                if hw_eflags != again[2]:
                    self.uc.reg_write(X.UC_X86_REG_EFLAGS, again[2])
                    self.stats["lost_flags_restored"] += 1
                    return None  # read back as unicorn stores them
                return hw_eflags
        if self.direct and self._restore_flags_unicorn_lost(host_eip, vector):
            return None
        if not self.direct and self.cpu.counter is not None and self.cpu.restore_lost_flags("", True, None):
            # Counting (a platform clock) puts a code hook over the TC: then any instruction
            # that faults has lost the lazy flags it saw (physcpu.lazy_flags_verdict), a MOV
            # load after a CMP included, not only the forms settle_flags guards.
            self.stats["lost_flags_restored"] += 1
            return None
        return hw_eflags

    def _restore_flags_unicorn_lost(self, eip: int, vector: int) -> bool:
        """Unicorn may have lost the flags the faulting instruction saw (physcpu.restore_lost_flags):
        put them back before anything reads EFLAGS or the instruction restarts. Only for the
        guest's own code run directly; translated code settles them before such instructions.
        Not after INT n, which leaves EIP at the next instruction, not at a faulting one.
        Returns whether it rewrote EFLAGS."""
        if vector >= 32:
            return False  # no exception has a vector above 31: INT n, EIP past it (a system call)
        # The interpreter's one-instruction block for this EIP, when it has emulated it before
        # (most trapping instructions trap again), holds the instruction decoded already.
        d = self.m.cached_instruction(eip)
        if d is None:
            try:
                d, _pages = self.m.decode_at(eip)
            except Fault:
                return False
        mnemonic = FORMS[d.form].mnemonics.get(None, "") if d.form else ""
        memory = len(d.variant) > 2 and d.variant[2] == "mem"
        if not self.cpu.may_have_lost_flags(mnemonic, memory):
            return False
        S = self.m.state
        eip_before, S.eip = S.eip, eip
        try:
            soft = soft_interrupt_before(self.m, vector)
        finally:
            S.eip = eip_before
        if soft is None and self.cpu.restore_lost_flags(mnemonic, memory, d.variant[3] if len(d.variant) > 3 else None):
            self.stats["lost_flags_restored"] += 1
            return True
        return False

    def _after_int(self, eip: int, vector: int) -> bool:
        """The instruction that ends at `eip` (an offset in the guest's CS) is INT `vector`,
        read without side effects (no accessed bits, no fault)."""
        S = self.m.state
        start = (S.base[CS] + eip - 2) & M32
        raw = b""
        walk = None
        for la in (start, (start + 1) & M32):
            if walk is None or la & 0xFFF == 0:  # the second byte is on the same page, mostly
                walk = self.m.walk(la)
                if walk is None or walk[0] + 0x1000 > self.G:
                    return False
            raw += self.guest_mem.read(walk[0] | (la & 0xFFF), 1)
        soft = soft_interrupt_in(raw, bool(S.code32))
        return soft is not None and soft[2] and soft[0] == vector  # INT n: its vector an operand

    def _stop(self, reason: str) -> str:
        self.pending = ("vmstop", VMStop("vmm", reason))
        return "vmstop"

    def _hidden_fault(self, la: int, host_eip: int) -> bool:
        """A page the guest maps but the hardware tables do not (yet), or a dirty-bit upgrade:
        filled in. `la` is CR2 at a #PF at `host_eip`."""
        walk = self.guest_walk(la)
        if walk is None:
            return False
        page = walk[0] >> 12
        present = bool(self.shadow.hardware_pte(la) & PTE_P)
        if present and self._write_protected(page):
            return False  # a write to protected memory: emulate it
        # Unicorn reports INT 0Eh run directly as vector 14 too, and then CR2 is stale: no hidden
        # fault to fill (it would map, and mark dirty, whatever page CR2 last named). Asked only
        # here, where a fill would follow: the walks above have no side effects either.
        if self.direct and self._after_int(host_eip, 14):
            return False
        # Not mapped yet: map it (a protected page read-only). Mapped already: the hardware
        # refused a write (read-only until dirty).
        return self.fill(la, write=present)

    def _ready_to_restart(self, hw_eflags: int | None) -> int:
        """Before the faulting instruction runs again: clear unicorn's exception latch, and
        remember what it restarts with (`_flags_as_first_seen` gives it those flags if it
        faults again at once). Returns its EIP."""
        saved = self.cpu.clear_exception_latch()
        gprs, eip = gprs_and_eip(saved)  # from the context the latch's reset saved anyway
        if hw_eflags is None:
            hw_eflags = self.uc.reg_read(X.UC_X86_REG_EFLAGS)
        self._restarted = (eip, tuple(gprs), hw_eflags)
        return eip

    def _hidden_fault_in_place(self, vector: int, host_eip: int, cr2: int | None) -> bool:
        """A hidden page fault dealt with inside unicorn's exception hook: the shadow filled, the
        faulting instruction restarted where it is, without leaving emu_start (the stop, the
        trip through `_run` and `resume`'s emu_start cost more than the fill). The same steps
        as `_handle_event_in_guest` and `resume`, in their order; anything else (a fault the
        guest sees, a split run, kernel code run directly) stops the CPU as before."""
        if vector != 14 or cr2 is None or self._split is not None or self.pending is not None:
            return False
        S = self.m.state
        if self.direct and S.cpl != 3:
            return False  # trap mode's kernel may have IRETed to v86 mode (_adopt_hardware_v86)
        if self.in_vmm(cr2):
            return False
        self.ledger.enter("hidden page faults")
        if not self._hidden_fault(cr2, host_eip):
            self.ledger.cancel()
            return False  # (nothing changed: the stop path decides)
        try:
            hw_eflags = self._flags_as_first_seen(host_eip, vector, None)
            self.stats["traps"] += 1
            self.stats["hidden_faults_in_place"] += 1
            self._refund_unrun(host_eip, whole_instruction=False)  # its block is counted again
            if self.counter is not None:
                linear = (host_eip + S.base[CS]) & M32 if self.direct else host_eip
                self.counter.uncount(linear)
            self._ready_to_restart(hw_eflags)
            return True
        finally:
            self.ledger.leave()

    def retranslate(self, guest_eip: int) -> None:
        """An instruction that keeps trapping: emulate it by callout, and forward its old CCF."""
        self.callout_override.add(guest_eip)
        self.callout_record[guest_eip] = [0, 0]
        self.convictions[guest_eip] += 1
        for old in self._units_holding(guest_eip, self.m.state.base[CS]):
            start = old.key
            if self.units.get(start) is not old or self.unit_key(old.guest) != start:
                continue  # a unit of another code segment (the instruction trapped in this one)
            if old.forwarded_to is None:
                del self.units[start]
                new = self.translate(start)
                self.units[start] = new
                self.stats["retranslations"] += 1
                if not old.live:  # translating flushed the TC: there is nothing left to forward
                    continue
                old.forwarded_to = new
                jump, links, _ = self._instance(None, "forward", old.host)
                code = bytearray(jump)
                for field_off, _name in links:
                    code[field_off : field_off + 4] = _U32.pack((new.host - (old.host + field_off + 4)) & M32)
                self.host.write(self.tc_phys(old.host), bytes(code))
                self._forget_patch_sites(old, old.host, old.host + len(code))
                self.uc.ctl_remove_cache(old.host, old.host + len(code))

    def _units_holding(self, guest_eip: int, cs_base: int) -> list[Unit]:
        """The live units holding the instruction at `guest_eip` of a code segment at `cs_base`,
        from the index of units by the linear pages they were fetched through (conviction and
        acquittal do not look at every unit of the TC)."""
        la = (cs_base + guest_eip) & M32
        return [
            u
            for u in self.units_on_linear.get(la >> 12, ())
            if u.live and u.cs_base == cs_base and any(ins[0] == guest_eip for ins in u.insns)
        ]

    def _acquit(self, guest_eip: int, cs_base: int) -> None:
        """A callout fewer than one in GUILTY_SHARE of whose last ACQUIT_WINDOW runs wrote a page
        the VMM watches (what made it trap): the instruction goes back to its own rule (the
        units holding it are dropped and translated again when next reached); trapping again
        (TRAP_THRESHOLD times, doubled per conviction) convicts it again."""
        self.callout_override.discard(guest_eip)
        self.trap_counts[guest_eip] = 0
        for unit in self._units_holding(guest_eip, cs_base):
            self.invalidate_unit(unit)
        self.stats["acquittals"] += 1

    # ------------------------------------------------------------ running

    def _starts_in(self, address: int, size: int) -> list[tuple[int, int]]:
        """(host address, guest EIP) of the guest instructions that begin in a block."""
        if not self.direct:
            lo = bisect.bisect_left(self._start_hosts, address)
            hi = bisect.bisect_left(self._start_hosts, address + size)
            return [(h, self.guest_starts[h]) for h in self._start_hosts[lo:hi]]
        if self.in_vmm(address):
            return []  # the world switch's IRET on the way in
        code = self._guest_code(address, size) + bytes(16)
        out, at = [], 0
        while at < size:
            out.append((address + at, address + at - self.m.state.base[CS]))
            d = decode(code[at:], address + at, bool(self.m.state.code32))
            at += len(d.raw) if d.form else 1
        return out

    def _guest_code(self, la: int, n: int) -> bytes:
        """The bytes at guest-linear `la` as the guest's page tables map them (zeros where
        they map nothing, or no RAM): unicorn's mem_read takes physical addresses, and code
        run directly lives at the guest's linear ones (user code at 0x40000000, say)."""
        out = bytearray()
        while len(out) < n:
            at = (la + len(out)) & M32
            take = min(n - len(out), 0x1000 - (at & 0xFFF))
            walk = self.m.walk(at)
            if walk is None or walk[0] + 0x1000 > self.G:
                out += bytes(take)
            else:
                out += self.guest_mem.read(walk[0] | (at & 0xFFF), take)
        return bytes(out)

    def _count_block(self, uc, address: int, size: int, _data) -> None:
        if self.budget is None or self._split is not None:
            return
        starts = self._starts_in(address, size)
        if len(starts) <= self.budget:
            self.budget -= len(starts)
            self._last_block = starts
            return
        host, guest = starts[self.budget]
        if host == address:
            self.pending = ("limit", guest)
        else:
            self.pending = ("split", None)
            self._split = (address, host, guest)
            self._last_block = starts[: self.budget]
            self.budget = 0
        uc.emu_stop()

    def _refund_unrun(self, host_eip: int, whole_instruction: bool) -> None:
        """An exception at `host_eip`: the instructions of the last block counted from there on
        did not run (nor, unless the hardware restarts it, the one the fault is in)."""
        if self.budget is None or not self._last_block:
            return
        cut = host_eip
        if whole_instruction:
            cut = max((h for h, _ in self._last_block if h <= host_eip), default=host_eip)
        self.budget += sum(1 for h, _ in self._last_block if h >= cut)
        self._last_block = []

    def _run_split(self) -> None:
        """Run the block the budget ends in again, up to the instruction it ends before."""
        block, host, _guest = self._split
        self.pending = None
        self.until = host
        self.uc.ctl_remove_cache(block, host + 1)  # unicorn honours `until` in blocks it translates
        self.cpu.clear_exception_latch()
        self._start_clock()
        try:
            self.uc.emu_start(self.uc.reg_read(X.UC_X86_REG_EIP), host)
        finally:
            self._account_time()

    def _end_split(self) -> None:
        if self._split is not None:
            block, host, _guest = self._split
            self.uc.ctl_remove_cache(block, host + 1)  # drop the block cut short at `until`
            self._split = None

    def run(self, max_insns: int | None = None) -> tuple[str, object]:
        """Run the guest until it stops. Returns (reason, detail). With `max_insns`, at most that
        many guest instructions run, and then ("limit", None)."""
        self.budget = max_insns
        if max_insns is not None and self._budget_hook is None:
            self._budget_hook = self.uc.hook_add(UC_HOOK_BLOCK, self._count_block)
        elif max_insns is None and self._budget_hook is not None:
            self.uc.hook_del(self._budget_hook)
            self._budget_hook = None
        self._check_window()  # (the guest may have been given paging, and its tables, from outside)
        # Code run directly stops at one stop address by `until`; at several, by code hooks.
        self.cpu.stop_before(set(self.stop_addresses) if len(self.stop_addresses) > 1 else set())
        # While the guest runs, the hardware holds its x87 and SSE state (the interpreter gets it
        # for what it emulates); between runs the virtual CPU does, whole, for whoever looks.
        write_fpu(self.uc, self.m.state)
        try:
            return self._run()
        finally:
            self._fpu_to_interpreter()

    def _run(self) -> tuple[str, object]:
        S = self.m.state
        while True:
            if self.relocation_pending:
                try:
                    self._relocate()
                except VMStop as stop:
                    return ("vmstop", stop)
            if self.clock is not None:
                try:
                    self._take_interrupt()
                except VMStop as stop:
                    return ("vmstop", stop)
            if S.eip in self.stop_addresses:  # (translated, direct or interpreted alike; before HLT's sleep)
                return ("stop", S.eip)
            if S.halted:
                try:
                    if self._interrupt_deliverable() or (
                        self.clock is not None and S.eflags & EFLAGS.IF and self.clock.skip_to_deadline()
                    ):
                        continue  # woken (the interrupt, if still there, is taken at the top)
                except VMStop as stop:  # a device's timer stopped the machine (Ctrl-A x)
                    return ("vmstop", stop)
                return ("halt", None)
            if self.can_translate():
                try:
                    unit = self.unit_for(self.unit_key(S.eip))
                except Fault as f:
                    if self.stop_on_event:
                        return ("event", f)
                    self.deliver(f)
                    continue
                host, user = unit.host, False
            elif self.can_run_direct():
                host, user = S.eip, True
            else:
                reason = self._interpret_until_translatable()
                if reason is not None:
                    return reason
                continue
            try:
                self.enter(host, user)
                while True:
                    while self.cpu.event is not None:
                        at = uc_eip(self)
                        why = self._event_in_guest(self.cpu.event, at)
                        if why != "resume":
                            self._refund_unrun(at, whole_instruction=True)
                            break
                        if self._split is None:  # the restarted block counts the rest again
                            self._refund_unrun(at, whole_instruction=False)
                        self.resume()
                    else:
                        why = "exit"
                    if why == "exit" and self.pending is not None and self._cut_on_the_way_out():
                        # The clock cut the hardware after a callout asked for an exit but
                        # before the stubs reached vmm_exit (restore_regs half done): run on.
                        self._run_to_exit()
                        continue
                    if why == "exit" and self._clock_stopped():
                        # The clock stopped the hardware (a timer is due, or an interrupt
                        # waits for the instruction after a shadow): go on to the next guest
                        # instruction boundary, then let the virtual CPU take the interrupt.
                        self._stop_next = False
                        boundary = self._guest_boundary()
                        if boundary is None or self._boundaries_to_pass:
                            if boundary is not None:
                                self._boundaries_to_pass -= 1
                            self._step_host()
                            continue
                        self.capture()
                        S.eip = boundary
                        why = None
                        break
                    if why != "exit" or self._split is None:
                        break
                    if self.pending is not None and self.pending[0] == "split":
                        self._run_split()
                        continue
                    if self.pending is None and uc_eip(self) == self._split[1]:
                        self.pending = ("limit", self._split[2])
                    break
            except VMStop as stop:
                return ("vmstop", stop)
            except UcError as err:
                return ("vmstop", VMStop("unicorn", f"unicorn stopped: {err}"))
            finally:
                self._end_split()
            if why is None:
                continue
            if why == "halt" and S.halted:
                continue  # HLT, emulated after a trap: the top sleeps or stops
            if why != "exit":
                return self.pending or (why, None)
            if self.pending is None and self.direct and uc_eip(self) in self.stop_addresses:
                self.capture()
                S.eip = uc_eip(self)
                return ("stop", S.eip)
            if self.pending is None:
                return ("vmstop", VMStop("unicorn", "the CPU stopped without a reason"))
            why, what = self.pending
            if why == "limit":
                self.capture()
                S.eip = what
                return ("limit", None)
            if why in ("stop", "halt", "event", "vmstop"):
                self._capture_at_exit()
                if why == "stop":
                    S.eip = what
                if why == "halt" and S.halted:
                    continue  # the top sleeps until an interrupt, or stops
                return (why, what)
            if why == "fetch-fault":
                self._capture_at_exit()
                eip, f = what
                S.eip = eip
                if self.budget is not None and self.budget <= 0:
                    # The fetch was the translator's, ahead of execution (the next unit, after a
                    # callout or an exit): the budget ended before that instruction.
                    return ("limit", None)
                if self.stop_on_event:
                    return ("event", f)
                self.deliver(f)
            # "switch": a callout left the virtual CPU complete (registers, flags, EIP) and in a
            # state translated code cannot run; the hardware went to vmm_exit through
            # restore_regs with the registers from *before* the callout, so nothing is captured.

    def _capture_at_exit(self) -> None:
        """At vmm_exit the hardware holds the guest's registers (a callout restored them first)."""
        self.capture()

    @timed("interpreter (TF, a 32-bit CS not flat, user segments unshadowed...)")
    def _interpret_until_translatable(self) -> tuple[str, object] | None:
        """Single-stepping, a 32-bit kernel CS that is not flat, code at CPL 1 or 2, user code
        with unshadowed segments: the interpreter runs the guest."""
        m = self.m
        m.stop_on_event = self.stop_on_event
        m.stop_addresses = set(self.stop_addresses)
        self.stats["interpreted_stretches"] += 1
        self._fpu_to_interpreter()
        try:
            return self._interpret()
        finally:
            write_fpu(self.uc, m.state)

    def _interpret(self) -> tuple[str, object] | None:
        m = self.m
        start = m.state.icount
        while True:
            if self.budget is not None and self.budget <= 0:
                return ("limit", None)
            r = m.run(256 if self.budget is None else min(256, self.budget))
            self.stats["interpreted_instructions"] += m.state.icount - start
            if self.budget is not None:
                self.budget -= m.state.icount - start
            start = m.state.icount
            if r.reason in ("event", "vmstop", "halt", "stop-address"):
                return ({"stop-address": "stop"}.get(r.reason, r.reason), r.event or r.vmstop)
            if self.can_translate() or self.can_run_direct():
                return None


def _changes_flags_before_store(d: Decoded) -> bool:
    """An instance unicorn changes the flags of before its store can fault (physcpu)."""
    mnemonic = FORMS[d.form].mnemonics.get(None) if d.form else None
    return changes_flags_before_store(mnemonic, len(d.variant) > 2 and d.variant[2] == "mem")


def _reads_arith_flags_from_memory(d: Decoded) -> bool:
    """The instance reads an arithmetic flag (by the spec's `flags`) and has a memory operand."""
    if d.form is None or len(d.variant) < 3 or d.variant[2] != "mem":
        return False
    tested = FORMS[d.form].flags
    return any("test" in tested.get(f, ()) for f in ARITH_FLAG_NAMES)


def uc_eip(vmm: Vmm) -> int:
    return vmm.uc.reg_read(X.UC_X86_REG_EIP)


# ---------------------------------------------------------------- engines


def figures(vmm: Vmm, stats, elapsed: float) -> None:
    s = vmm.stats
    translated = s["guest_instructions_translated"]
    stats.add("guest_instructions_translated", "guest instructions translated", translated)
    stats.add("ccfs", "CCFs (compiled code fragments)", s["ccfs"])
    stats.add("units_16bit", "CCFs of 16-bit code (real mode, 16-bit CS)", s["units_16bit"])
    stats.add("tc_bytes", "TC bytes", s["tc_bytes"])
    share = round(100.0 * s["rule_ident"] / translated, 1) if translated else 0.0
    stats.add("ident_share_percent", "share of IDENT instructions", share, "%")
    stats.add("chained_links", "chained links", s["chained_links"])
    stats.add("translator_entries", "translator entries (continuations and lookup misses)", s["translator_entries"])
    stats.add("indirect_hits", "indirect lookups that hit in the TC", vmm.vmm_read32(C["V_HITS"]))
    stats.add("indirect_misses", "indirect lookups that missed the TC", s["indirect_misses"])
    stats.add("callouts", "callouts", s["callouts"])
    stats.add("traps", "traps", s["traps"])
    stats.add("hidden_page_faults", "hidden page faults filled", s["hidden_page_faults"])
    stats.add(
        "hidden_faults_in_place", "hidden page faults filled inside the exception hook", s["hidden_faults_in_place"]
    )
    stats.add(
        "shadow_entries_prefilled", "shadow entries prefilled (accessed neighbours)", s["shadow_entries_prefilled"]
    )
    stats.add(
        "shadow_entries_installed",
        "shadow entries entered at the guest's write of a present PTE",
        s["shadow_entries_installed"],
    )
    stats.add("traced_writes", "traced writes to guest page tables", s["traced_writes"])
    stats.add(
        "shadow_entries_dropped", "shadow entries dropped by traced writes", s["shadow_entries_dropped"]
    )
    stats.add("cr3_switches_warm", "CR3 switches that found their shadow warm", s["cr3_switches_warm"])
    stats.add("cr3_switches_cold", "CR3 switches to a new (cold) shadow", s["cr3_switches_cold"])
    stats.add("shadows_evicted", "shadows evicted (LRU)", s["shadows_evicted"])
    stats.add("pages_unshadowed", "guest page tables unshadowed (written as data)", s["pages_unshadowed"])
    stats.add("shadow_flushes", "shadow flushes (every shadow dropped)", s["shadow_flushes"])
    stats.add("world_switches", "world switches", s["world_switches"])
    stats.add("vmm_relocations", "VMM moves (the guest's tables claimed its 4 MB)", s["vmm_relocations"])
    stats.add("vmm_base", "where the VMM is in the linear space", f"{vmm.base:#010x}")
    stats.add("retranslations", "retranslations (as callouts, after traps)", s["retranslations"])
    stats.add("acquittals", "callouts given back their own rule (innocent until proven guilty)", s["acquittals"])
    stats.add("events_delivered", "exceptions and software interrupts delivered", s["events_delivered"])
    stats.add("interrupts_delivered", "external interrupts delivered", s["interrupts_delivered"])
    stats.add(
        "interpreted_instructions",
        "instructions run by the interpreter (TF, a 32-bit CS not flat, unshadowed user segments)",
        s["interpreted_instructions"],
    )
    if vmm.clock is not None:
        stats.add("user_instructions_direct", "user instructions run directly", s["user_instructions_direct"])
    for key, label, counter in (
        ("user_world_switches", "world switches into user code with its own tables", "direct_own_tables"),
        ("user_soft_interrupts_reflected", "system calls from user code reflected (INT n run directly)", None),
        ("user_events_reflected", "other user-mode events reflected (faults, emulated INTs)", None),
    ):
        stats.add(key, label, s[counter or key])
    stats.add(
        "user_code_interpreted",
        "user code interpreted: tables refused, segments nonreversible, alignment checking",
        s["direct_tables_refused"] + s["direct_nonreversible"] + s["direct_alignment_check"],
    )
    stats.add("wall_time_s", "wall time", round(elapsed, 6), "s")


class VmmEngine:
    """The `bt` and `trap` modes behind the engine interface (ring1.runtime.engines)."""

    def __init__(
        self, mode: str, memory_size: int, platform: Platform | None = None, rule_overrides: dict | None = None
    ) -> None:
        self.mode = mode
        self.vmm = Vmm(memory_size, platform, mode, rule_overrides)
        self.machine = self.vmm.m

    @classmethod
    def around(cls, vmm: Vmm) -> VmmEngine:
        """An engine over an existing Vmm (tests look at it afterwards)."""
        engine = cls.__new__(cls)
        engine.mode, engine.vmm, engine.machine = vmm.mode, vmm, vmm.m
        return engine

    stop_addresses = delegate("vmm", "stop_addresses")
    stop_on_event = delegate("vmm", "stop_on_event")

    def start(self) -> None:
        pass  # the VMM enters the guest from the virtual CPU at every run

    def set_registers(self, eip: int, regs: dict[int, int]) -> None:
        self.machine.state.eip = eip
        for i, value in regs.items():
            self.machine.regs[i] = value

    def run(self, max_insns: int | None = None):
        from ring1.runtime.engines import Outcome

        try:
            why, what = self.vmm.run(max_insns)
        except KeyboardInterrupt:
            return Outcome("interrupted")
        if why == "stop":
            return Outcome("stop-address")
        if why == "event":
            return Outcome("event", event=what)
        if why == "vmstop":
            return Outcome("vmstop", vmstop=what)
        return Outcome(why)

    def counters(self) -> dict[str, int]:
        """Every count the VMM keeps, with the ones of events that did not happen yet at 0."""
        return {**dict.fromkeys(EVENT_COUNTERS, 0), **self.vmm.stats}

    def figures(self, stats, elapsed: float) -> None:
        figures(self.vmm, stats, elapsed)

    def attach_ledger(self, ledger: NoLedger) -> None:
        self.vmm.ledger = self.vmm.cpu.ledger = ledger

    def stop(self, outcome, max_insns: int | None):
        from ring1.runtime import engines

        return engines.engine_stop(self.machine, outcome.reason, outcome.vmstop, max_insns, "VMM")


__all__ = ["WHY_SHADOW", "WHY_TC", "Vmm", "VmmEngine"]
