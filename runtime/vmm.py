"""The VMM: the guest kernel binary-translated at CPL 1, guest user code run directly at CPL 3,
on unicorn as the physical CPU. Modes `bt` (the 1999 design) and `trap` (naive
trap-and-emulate, for contrast).

The pieces, and where the spec comes in:

- **Virtual CPU.** The guest-visible state that is not in hardware registers (segment
  caches, CPL, IF and IOPL, control registers, descriptor-table registers) lives in an
  interpreter `Machine` (ring1.runtime.machine) that shares guest memory with unicorn. It is
  authoritative; the vcpu page in the VMM area holds copies that in-TC templates read.
- **Address space** (spec/vmm.r1 has the layout and the protection decision). Host physical
  memory is guest RAM, then the 4 MB VMM area (mapped at VMM_BASE), then a pool for the
  hardware page tables, which are never mapped linearly. Hardware paging is always on:
  guest pages are filled in on demand from the guest's own page tables (hidden page
  faults); the guest's page-table pages are traced (mapped read-only) so writes to them are
  emulated and the shadow dropped; pages holding translated code are read-only too, and a
  write to one drops the translations.
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
- **Events.** Every exception unicorn raises comes to one dispatcher (`_on_event`): hidden
  page faults are filled and the instruction restarted; traced and protected writes are
  emulated; guest faults are re-run by the interpreter for their error code and delivered
  through the guest's IDT by the spec's `deliver` proc.
- **Adaptive translation.** Traps are counted per guest instruction; one that traps
  TRAP_THRESHOLD times is retranslated as a callout and the old CCF forwards to the new one.
"""

from __future__ import annotations

import bisect
import struct
import time
from collections import Counter
from dataclasses import dataclass, field

from unicorn import UC_HOOK_BLOCK, UC_HOOK_CODE
from unicorn import x86_const as X
from unicorn.unicorn_const import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH

from ring1.generated.forms import FORMS
from ring1.generated.rules import CONSTS, RULES, TEMPLATES
from ring1.runtime import x86enc as enc
from ring1.runtime.decoder import Decoded, decode
from ring1.runtime.events import Fault, GuestEvent, VMStop
from ring1.runtime.hostsync import soft_interrupt_before
from ring1.runtime.machine import Machine, Platform
from ring1.runtime.memory import PhysicalMemory
from ring1.runtime.physcpu import GPR_IDS, PhysicalCpu, UcError
from ring1.runtime.state import CS, GS, MODE_PROT, SS

C = CONSTS
VMM_BASE, VMM_SIZE = C["VMM_BASE"], C["VMM_SIZE"]
STUBS = TEMPLATES["vmm_stubs"]
# The few bytes before every CCF where a hit of the in-TC lookup enters (spec/vmm.r1).
INDIRECT_ENTRY = b"".join(TEMPLATES["indirect_entry"]["variants"][()])
L = STUBS["labels"]
POOL_SIZE = 4 << 20  # hardware page directory and tables
MAX_UNIT = 12
TRAP_THRESHOLD = 8
SLOT_BASE = 8160  # GDT slots for the six guest segment registers (selectors 0xFF00..0xFF28)
CALLOUT_FORM = "(callout)"
M32 = 0xFFFFFFFF
PTE_P, PTE_W, PTE_U, PTE_A, PTE_D = 1, 2, 4, 0x20, 0x40

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
    reg field, and the guest's ModRM, SIB, displacement and address size."""
    return d.address_size_prefix + head + d.rm_operand(reg) + tail


def _descriptor(base: int, limit: int, attr: int) -> bytes:
    """A descriptor from a segment cache (limit in bytes; attr = descriptor bits 40..55)."""
    raw_limit = limit >> 12 if attr & 0x8000 else limit
    return struct.pack(
        "<HHBBBB",
        raw_limit & 0xFFFF,
        base & 0xFFFF,
        (base >> 16) & 0xFF,
        attr & 0xFF,
        ((raw_limit >> 16) & 0xF) | (attr >> 8 & 0xF0),
        (base >> 24) & 0xFF,
    )


@dataclass
class Unit:
    """A CCF: the translation of one unit of guest code."""

    guest: int  # guest linear address of its first instruction
    host: int  # its address in the TC
    size: int = 0
    insns: list[tuple[int, int, int, str, int]] = field(default_factory=list)  # guest, host, end, rule, eax saved at
    pages: set[int] = field(default_factory=set)  # guest physical pages its code came from
    forwarded_to: Unit | None = None


@dataclass
class Site:
    """A callout site: the guest instruction it emulates and where translated code resumes."""

    guest: int
    next_guest: int
    resume: int  # TC address after the callout sequence
    unit: Unit


class Stats(Counter):
    pass


class Vmm:
    def __init__(
        self,
        guest_size: int,
        platform: Platform | None = None,
        mode: str = "bt",
        rule_overrides: dict[str, str] | None = None,
    ) -> None:
        self.mode = mode
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
        self.cpu = PhysicalCpu(self.host, platform=self.platform)
        self.uc = self.cpu.uc
        self.stats = Stats()
        self.units: dict[int, Unit] = {}
        self.unit_starts: list[int] = []  # sorted TC addresses, for mapping a host EIP back
        self.sites: dict[int, Site] = {}
        self.callout_override: set[int] = set()  # guest EIPs retranslated as callouts
        self.trap_counts: Counter[int] = Counter()
        self.tc_next = VMM_BASE + C["VMM_TC"]
        self.pending: tuple[str, object] | None = None  # what vmm_exit was taken for
        self.stop_addresses: set[int] = set()
        self.stop_on_event = False
        self.code_pages: set[int] = set()
        self.traced_pages: set[int] = set()
        self.shadow_ptes: dict[int, list[int]] = {}  # guest physical page -> PTE addresses mapping it
        self.pool_next = 2
        self.last_event: GuestEvent | None = None
        self.direct = False
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
        return self.vmm_phys + (addr - VMM_BASE)

    # ------------------------------------------------------------ setup

    def _setup_vmm_area(self) -> None:
        gdt = C["VMM_GDT"]

        def put(sel: int, base: int, limit: int, attr: int) -> None:
            self.vmm_write(gdt + (sel & ~7), _descriptor(base, limit, attr))

        put(C["SEL_VMM_CODE"], 0, M32, 0xC09B)
        put(C["SEL_VMM_DATA"], 0, M32, 0xC093)
        put(C["SEL_TC_CODE"], 0, M32, 0xC0BB)  # DPL 1
        put(C["SEL_VMM_GS"], VMM_BASE, VMM_SIZE - 1, 0xC0B3)  # DPL 1, byte granular limit would not fit
        put(C["SEL_VMM_TSS"], VMM_BASE + C["VMM_TSS"], 0x67, 0x89)
        stub = STUBS["variants"][()][0]
        self.vmm_write(C["VMM_STUBS"], stub)
        self.vmm_write32(C["V_RESTORE"], L["restore_regs"])
        self._clear_hash()

    def _setup_hardware(self) -> None:
        uc = self.uc
        pd = self.pool_phys
        vmm_pt = self.pool_phys + 0x1000
        self.host.write32(pd + 1023 * 4, vmm_pt | PTE_P | PTE_W)
        writable = {C["VMM_VCPU"] >> 12, C["VMM_STACK"] >> 12}
        for i in range(VMM_SIZE >> 12):
            flags = PTE_P | PTE_A | PTE_D | (PTE_W if i in writable else 0)
            self.host.write32(vmm_pt + i * 4, (self.vmm_phys + (i << 12)) | flags)
        uc.reg_write(X.UC_X86_REG_CR3, pd)
        uc.reg_write(X.UC_X86_REG_CR4, 0)
        uc.reg_write(X.UC_X86_REG_CR0, 0x80010031)  # PG WP NE ET PE
        uc.reg_write(X.UC_X86_REG_GDTR, (0, VMM_BASE + C["VMM_GDT"], 8192 * 8 - 1, 0))
        uc.reg_write(X.UC_X86_REG_IDTR, (0, VMM_BASE + C["VMM_IDT"], 0x7FF, 0))
        uc.reg_write(X.UC_X86_REG_CS, C["SEL_VMM_CODE"])
        for rid in (X.UC_X86_REG_SS, X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_FS):
            uc.reg_write(rid, C["SEL_VMM_DATA"])
        uc.reg_write(X.UC_X86_REG_GS, C["SEL_VMM_GS"])
        uc.reg_write(X.UC_X86_REG_ESP, VMM_BASE + C["VMM_STACK_TOP"] - 20)
        uc.reg_write(X.UC_X86_REG_EFLAGS, 0x2)
        self.ring0 = uc.context_save()  # the world switch starts from here (exception latch clear)

    def _setup_hooks(self) -> None:
        self.uc.hook_add(UC_HOOK_CODE, self._on_translate_exit, None, L["translate_exit"], L["translate_exit"])
        self.uc.hook_add(UC_HOOK_CODE, self._on_callout, None, L["callout_hook"], L["callout_hook"])
        self.uc.hook_add(UC_HOOK_CODE, self._on_vmm_exit, None, L["vmm_exit"], L["vmm_exit"])

    # ------------------------------------------------------------ the virtual CPU, seen by translated code

    def can_translate(self) -> bool:
        """Translated execution needs protected mode, the kernel's flat 32-bit CS, and no TF."""
        S = self.m.state
        return self.mode == "bt" and (
            S.mode == MODE_PROT and S.cpl == 0 and S.base[CS] == 0 and S.code32 == 1 and not S.eflags & 0x100
        )

    def can_run_direct(self) -> bool:
        """Direct execution: guest user code at CPL 3, or (trap mode) the kernel itself at CPL 1."""
        S = self.m.state
        if S.mode != MODE_PROT or S.eflags & 0x100:
            return False
        return S.cpl == 3 or (self.mode == "trap" and S.cpl == 0)

    def publish_virtual(self) -> None:
        """Copy the guest-visible state that in-TC templates read into the vcpu page, and the ESP
        that reaches the VMM's scratch stack through the guest's SS (unicorn ignores SS's limit)."""
        S = self.m.state
        scratch = VMM_BASE + C["VMM_SCRATCH_STACK"]
        self.vmm_write32(C["V_SCRATCH_SP"], (scratch - S.base[SS]) & M32)
        eflags = self.m.eflags()
        self.vmm_write32(C["V_VIRT_IF"], eflags & 0x200)
        self.vmm_write32(C["V_VIRT_IOPL"], eflags & 0x3000)
        self.vmm_write(C["V_SEL"], struct.pack("<6H", *S.sel))
        self.vmm_write32(C["V_MSW"], S.cr[0])
        self.vmm_write(C["V_LDTR"], struct.pack("<HH", S.ldtr, S.tr))

    def hardware_selectors(self, user: bool, translated: bool = True) -> list[int]:
        """Write the slot descriptors for the six segment registers; return the selectors.
        Translated code keeps GS for the VMM; direct execution gets the guest's own GS."""
        S = self.m.state
        sels = []
        for s in range(6):
            if s == GS and translated and not user:
                sels.append(C["SEL_VMM_GS"])
                continue
            if S.sel[s] & ~3 == 0 and s != SS and s != CS:
                sels.append(0)
                continue
            attr = S.attr[s]
            dpl = attr >> 5 & 3
            rpl = 3 if user else 1
            if not user and dpl == 0:
                attr = attr & ~0x60 | 0x20  # DPL 1: usable by the deprivileged kernel
            if user and s == CS:
                attr |= 0x60
            slot = SLOT_BASE + s
            self.vmm_write(C["VMM_GDT"] + slot * 8, _descriptor(S.base[s], S.limit[s], attr | 1))
            sels.append(slot << 3 | rpl)
        return sels

    def hardware_eflags(self, user: bool, translated: bool = True) -> int:
        v = self.m.eflags()
        if user:
            return v & ~0x14000 | 0x2  # the guest's IF and IOPL hold at CPL 3; no NT, RF
        if translated:
            # Kernel under translation: IF on, IOPL 0, no TF VM RF. NT stays the guest's: only
            # IRET reads it, which is a callout, and the POPF template loads it into the hardware.
            return (v & ~0x33300) | 0x202
        return (v & ~0x37300) | 0x202  # kernel run directly (trap mode): no NT either

    # ------------------------------------------------------------ world switch

    def enter(self, host_eip: int, direct: bool) -> None:
        """Load the virtual CPU into the hardware and IRET into guest context at host_eip:
        translated code (the TC, at CPL 1) or direct execution of the guest's own code."""
        S, uc = self.m.state, self.uc
        user = S.cpl == 3
        sels = self.hardware_selectors(user, translated=not direct)
        self.vmm_write(C["V_HWSEL"], struct.pack("<6H", *sels))
        self.vmm_write(C["V_EAX"], struct.pack("<8I", *self.m.regs))
        cs = sels[CS] if direct else C["SEL_TC_CODE"]
        eflags = self.hardware_eflags(user, translated=not direct)
        frame = struct.pack("<5I", host_eip, cs, eflags, self.m.regs[4], sels[SS])
        self.direct = direct
        self.vmm_write(C["VMM_STACK_TOP"] - 20, frame)
        self.publish_virtual()
        uc.context_restore(self.ring0)
        self.stats["world_switches"] += 1
        self.cpu.event = None
        self.pending = None
        # Direct execution stops at `ring1 exec`'s end address by itself (translated code has a stub).
        self.until = next(iter(self.stop_addresses)) if direct and len(self.stop_addresses) == 1 else 0xFFFFFFFF
        uc.emu_start(L["world_switch"], self.until)

    def resume(self) -> None:
        """Restart the hardware where it stopped, registers untouched (after a hidden fault)."""
        self.cpu.clear_exception_latch()
        self.cpu.event = None
        self.pending = None
        eip = self.uc.reg_read(X.UC_X86_REG_EIP)
        self.uc.emu_start(eip, self.until)

    def capture(self, host_eip: int | None = None) -> None:
        """Hardware registers back into the virtual CPU (segments stay virtual)."""
        uc = self.uc
        for i, rid in enumerate(GPR_IDS):
            self.m.regs[i] = uc.reg_read(rid)
        self._merge_eflags(uc.reg_read(X.UC_X86_REG_EFLAGS))

    def _merge_eflags(self, hw: int) -> None:
        """The guest's EFLAGS from the hardware's: the arithmetic flags and DF from the hardware;
        IF and IOPL from the hardware in direct execution (they are the guest's there), from the
        vcpu page under translation (the CLI, STI and POPF templates change them there); AC and ID
        from the hardware too (POPF sets them at any CPL), and NT under translation (the POPF
        template loads it); the rest virtual."""
        S = self.m.state
        virtual = S.eflags & 0x3F4000  # NT RF VM AC VIF VIP ID
        if self.direct:
            virtual = (virtual & ~0x240000) | (hw & 0x240000)
            ifl = hw & 0x3200 if S.cpl == 3 else S.eflags & 0x3200
        else:
            virtual = (virtual & ~0x244000) | (hw & 0x244000)  # the in-TC POPFD loads NT, AC, ID
            ifl = self.vmm_read32(C["V_VIRT_IF"]) & 0x200 | self.vmm_read32(C["V_VIRT_IOPL"]) & 0x3000
        self.m.set_eflags((hw & 0xDD5) | ifl | virtual | (S.eflags & 0x100))

    # ------------------------------------------------------------ translation

    def unit_for(self, guest: int) -> Unit:
        u = self.units.get(guest)
        while u is not None and u.forwarded_to is not None:
            u = u.forwarded_to
        if u is None:
            u = self.translate(guest)
        return u

    def _fetch(self, eip: int) -> tuple[Decoded, tuple[int, ...]]:
        return self.m.decode_at(eip)

    def translate(self, guest: int) -> Unit:
        """Translate the unit at guest EIP `guest` into a new CCF."""
        unit = Unit(guest, self.tc_next + len(INDIRECT_ENTRY))
        code = bytearray()
        exits: list[tuple[int, int]] = []  # (offset of a rel32 field in code, guest target)
        # In-TC emulations' slow paths: (rel32 field, guest EIP, next guest EIP, offset to resume at)
        slow_paths: list[tuple[int, int, int, int]] = []
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
                code += d.raw
            elif rule in ("direct", "indirect", "inline"):
                start = len(code)
                body, links, marks = self._instance(d, rule, unit.host + start)
                code += body
                for field_off, value in links:
                    if value == "callout":  # an in-TC emulation's slow path
                        slow_paths.append((start + field_off, pc, d.next, start + len(body)))
                    else:
                        exits.append((start + field_off, self._value(d, value)))
                if "eax_saved" in marks:
                    eax_at = start + marks["eax_saved"]
                ended = rule != "inline"
            else:  # callout
                ended = FORMS[d.form].ends_block if d.form else True
                site_id = len(self.sites) + 1
                code += enc.mov_gs_imm32(C["V_SITE"], site_id)
                code += b"\xe9" + enc.rel32(unit.host + len(code), 5, L["callout_entry"])
                self.sites[site_id] = Site(pc, d.next, unit.host + len(code), unit)
                ended = True  # state may change: the unit ends, and resumes through a continuation
            unit.insns.append((pc, host, unit.host + len(code), rule, unit.host + eax_at if eax_at >= 0 else -1))
            self.guest_starts[host] = pc
            self._start_hosts.append(host)
            unit.pages.update(pages)
            self.stats["guest_instructions_translated"] += 1
            self.stats[f"rule_{rule}"] += 1
            pc = d.next
            if ended:
                break
        if not ended or rule == "callout":
            body, links, _ = self._instance(None, "exit_next", unit.host + len(code))
            exits += [(len(code) + field_off, pc) for field_off, _ in links]
            code += body
        # Continuation stubs, one per exit; each jump into them is a patch site for chaining.
        for field_off, target in exits:
            stub = unit.host + len(code)
            site_addr = unit.host + field_off
            code[field_off : field_off + 4] = _U32.pack((stub - (site_addr + 4)) & M32)
            code += enc.mov_gs_imm32(C["V_NEXT"], target)
            code += enc.mov_gs_imm32(C["V_SITE"], site_addr)
            code += b"\xe9" + enc.rel32(unit.host + len(code), 5, L["translate_exit"])
        # Slow paths: a callout of the instruction itself, resuming after its template.
        for field_off, pc_at, next_guest, resume_off in slow_paths:
            stub = unit.host + len(code)
            site_addr = unit.host + field_off
            code[field_off : field_off + 4] = _U32.pack((stub - (site_addr + 4)) & M32)
            site_id = len(self.sites) + 1
            code += enc.mov_gs_imm32(C["V_SITE"], site_id)
            code += b"\xe9" + enc.rel32(unit.host + len(code), 5, L["callout_entry"])
            self.sites[site_id] = Site(pc_at, next_guest, unit.host + resume_off, unit)
        unit.size = len(code)
        if unit.host + len(code) > VMM_BASE + VMM_SIZE:
            self.flush_translations()
            return self.translate(guest)
        self.host.write(self.tc_phys(self.tc_next), INDIRECT_ENTRY + bytes(code))
        self.uc.ctl_remove_cache(self.tc_next, unit.host + len(code))
        self.tc_next = (unit.host + len(code) + 15) & ~15
        self.units[guest] = unit
        self.unit_starts.append(unit.host)
        self.set_hash(guest, unit.host - len(INDIRECT_ENTRY))
        self.stats["ccfs"] += 1
        self.stats["tc_bytes"] += len(code)
        for p in unit.pages:
            self.protect_code_page(p)
        return unit

    def rule_for(self, d: Decoded) -> tuple[str, str]:
        """The rule this instance is translated by, and why when it is not the spec's own."""
        if d.form is None:
            return "ident", "undefined opcode: the hardware raises #UD, and the interpreter confirms it"
        if d.lock_invalid:
            return "callout", "invalid LOCK prefix: unicorn runs most (deviation invalid-lock); #UD from the spec"
        rule = RULES[d.form][0]
        if d.eip in self.callout_override:
            return "callout", "adaptive: it trapped often, so it was retranslated as a callout"
        if d.form in self.rule_overrides:
            return "callout", "forced to a callout by Vmm(rule_overrides=...)"
        if self.mode == "trap":
            if rule in ("ident", "trap"):
                return rule, ""
            return "callout", "trap mode: the kernel runs untranslated; this is where it exits"
        if 0x65 in d.prefixes or (d.fields.get("seg") == GS and d.modrm_at >= 0 and d.variant[2] == "mem"):
            return "callout", "it uses GS, which is the VMM's: emulated"
        if rule in ("ident", "trap") and self._touches_vmm_area(d):
            return "callout", "its address lies in the VMM's area: emulated"
        if rule in ("direct", "indirect", "inline") and not self._template_applies(d, rule):
            return "callout", "its template does not cover this operand or address size, stack or form"
        if rule == "trap":
            return "ident", "copied; left to trap when the hardware faults"
        return rule, ""

    def _touches_vmm_area(self, d: Decoded) -> bool:
        """An absolute address in the VMM area: a ModRM disp32 (the decoder's `ea` is then an
        expression string of digits) or a MOV moffs (`ea` is the offset itself, no ModRM)."""
        ea = d.fields.get("ea")
        if isinstance(ea, str):
            return ea.isdigit() and int(ea) >= VMM_BASE
        moffs = d.modrm_at < 0 and d.variant[2] == "mem"
        return moffs and isinstance(ea, int) and ea >= VMM_BASE

    @staticmethod
    def template_name(d: Decoded, rule: str) -> str:
        """The spec/vmm.r1 template a rule emits: `inline NAME` names it; `direct KIND` and
        `indirect KIND` mean `direct_KIND` and `indirect_KIND`."""
        arg = RULES[d.form][1]
        return arg if rule == "inline" else f"{rule}_{arg}"

    def _template_applies(self, d: Decoded, rule: str) -> bool:
        """Whether the template's `when` clause covers this instance (else it is a callout)."""
        t = TEMPLATES[self.template_name(d, rule)]
        osize, asize, mod = d.variant[0], d.variant[1], d.variant[2]
        for key, want in t["when"].items():
            if key.endswith("#"):
                lo, hi = (int(v) for v in want.split(".."))
                if not lo <= d.fields.get(key[:-1], -1) <= hi:
                    return False
            elif key == "mod":
                if want != mod:
                    return False
            else:
                have = {"osize": osize, "asize": asize, "stack": 32 if self.m.state.stack32 else 16}[key]
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
        name = self.template_name(d, rule_or_name) if d is not None else rule_or_name
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
                out += d.address_size_prefix
            elif kind == "mark":
                marks[chunk[1]] = len(out)
            else:  # abs32 / rel32: a value of the instance or a stub's label
                symbol, addend = chunk[1], chunk[2]
                if kind == "rel32" and symbol.startswith("@"):
                    links.append((len(out), symbol[1:]))
                    out += bytes(4)
                    continue
                value = self._value(d, symbol[1:]) if symbol.startswith("@") else L[symbol]
                if kind == "rel32":
                    value -= at + len(out)
                out += _U32.pack((value + addend) & M32)
        return bytes(out), links, marks

    def _clear_hash(self) -> None:
        """Empty entries hold a guest EIP whose low half differs from their index: never a hit."""
        table = struct.pack("<131072I", *[v for i in range(65536) for v in ((~i) & 0xFFFF, 0)])
        self.vmm_write(C["VMM_HASH"], table)

    def set_hash(self, guest: int, host: int) -> None:
        off = C["VMM_HASH"] + (guest & 0xFFFF) * 8
        self.vmm_write(off, struct.pack("<II", guest, host))

    def patch(self, site_addr: int, target_host: int) -> None:
        rel = (target_host - (site_addr + 4)) & M32
        self.host.write32(self.tc_phys(site_addr), rel)
        self.uc.ctl_remove_cache(site_addr - 1, site_addr + 4)
        self.stats["chained_links"] += 1

    def flush_translations(self) -> None:
        """Drop every CCF (a write hit translated code, or the TC is full)."""
        self.units.clear()
        self.unit_starts.clear()
        self.guest_starts.clear()
        self._start_hosts.clear()
        self.sites.clear()
        self.tc_next = VMM_BASE + C["VMM_TC"]
        self._clear_hash()
        self.uc.ctl_remove_cache(VMM_BASE + C["VMM_TC"], VMM_BASE + VMM_SIZE)
        for p in list(self.code_pages):
            self.unprotect_code_page(p)
        self.m.flush_blocks()
        self.stats["tc_flushes"] += 1

    def locate(self, host_eip: int) -> tuple[Unit, tuple] | None:
        """The CCF and guest instruction a TC address belongs to."""
        import bisect

        i = bisect.bisect_right(self.unit_starts, host_eip) - 1
        if i < 0:
            return None
        start = self.unit_starts[i]
        for u in self.units.values():
            if u.host == start and host_eip < u.host + u.size:
                for ins in u.insns:
                    if ins[1] <= host_eip < ins[2]:
                        return u, ins
                return u, u.insns[-1]
        return None

    # ------------------------------------------------------------ shadow paging

    def _flush_hw_tlb(self) -> None:
        """Unicorn caches translations like a TLB: after changing its page tables, drop them."""
        self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)

    def _pool_page(self) -> int:
        if self.pool_next >= POOL_SIZE >> 12:
            self.flush_shadow()
        addr = self.pool_phys + (self.pool_next << 12)
        self.pool_next += 1
        self.host.write(addr, bytes(4096))
        return addr

    def flush_shadow(self) -> None:
        """Drop every hardware mapping of guest memory (CR3 written, a traced table changed)."""
        self.host.write(self.pool_phys, bytes(1023 * 4))
        self.pool_next = 2
        self.shadow_ptes.clear()
        self._flush_hw_tlb()
        self.stats["shadow_flushes"] += 1

    def guest_walk(self, la: int) -> tuple[int, bool, bool, bool, list[tuple[int, int]]] | None:
        """The guest's translation of `la` without side effects: (physical, user, writable, dirty,
        [(address, value) of the PDE and PTE]); None when not present."""
        S = self.m.state
        if not S.cr[0] & 0x80000000:
            return la & ~0xFFF, True, True, True, []
        mem = self.guest_mem
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

    def fill(self, la: int, write: bool) -> bool:
        """Map `la` as the guest maps it, if the guest allows this access without a fault."""
        S = self.m.state
        walk = self.guest_walk(la)
        if walk is None:
            return False
        gpa, user, writable, dirty, entries = walk
        if S.cpl == 3 and not user:
            return False
        if write and not writable and (S.cpl == 3 or S.cr[0] & 0x10000):
            return False
        if gpa + 0x1000 > self.G:
            return False  # not RAM: every access is emulated
        # Set the accessed (and, for a write, dirty) bits the CPU would set.
        for i, (addr, value) in enumerate(entries):
            new = value | PTE_A | (PTE_D if write and i == len(entries) - 1 else 0)
            if new != value:
                self.guest_mem.write32(addr, new)
            self.trace_page(addr >> 12)
        if write:
            dirty = True
        page = gpa >> 12
        hw_write = writable and (dirty or not S.cr[0] & 0x80000000)
        if page in self.code_pages or page in self.traced_pages:
            hw_write = False
        pd = self.pool_phys
        pde_addr = pd + (la >> 22) * 4
        pde = self.host.read32(pde_addr)
        if not pde & 1:
            pt = self._pool_page()
            pde = pt | PTE_P | PTE_W | PTE_U
            self.host.write32(pde_addr, pde)
        pte_addr = (pde & 0xFFFFF000) + ((la >> 12) & 0x3FF) * 4
        flags = PTE_P | PTE_A | PTE_D | (PTE_U if user else 0) | (PTE_W if hw_write else 0)
        self.host.write32(pte_addr, gpa | flags)
        self.shadow_ptes.setdefault(page, []).append(pte_addr)
        self._flush_hw_tlb()
        self.stats["hidden_page_faults"] += 1
        return True

    def trace_page(self, page: int) -> None:
        if page in self.traced_pages:
            return
        self.traced_pages.add(page)
        self._write_protect(page)
        self.m.watch_page(page, self._on_traced_write)

    def _on_traced_write(self, page: int) -> None:
        self.stats["traced_writes"] += 1
        self.traced_pages.discard(page)
        self.m.watched_pages.pop(page, None)
        self.flush_shadow()

    def protect_code_page(self, page: int) -> None:
        if page in self.code_pages:
            return
        self.code_pages.add(page)
        self._write_protect(page)
        self.m.watch_page(page, self._on_code_write)

    def unprotect_code_page(self, page: int) -> None:
        self.code_pages.discard(page)
        self.m.watched_pages.pop(page, None)

    def _on_code_write(self, page: int) -> None:
        self.stats["code_writes"] += 1
        self.flush_translations()
        self.flush_shadow()

    def _write_protect(self, page: int) -> None:
        for pte_addr in self.shadow_ptes.get(page, []):
            v = self.host.read32(pte_addr)
            if (v & 0xFFFFF000) >> 12 == page:
                self.host.write32(pte_addr, v & ~PTE_W)
        self._flush_hw_tlb()

    # ------------------------------------------------------------ hooks (inside emulation: memory writes only)

    def _on_translate_exit(self, uc, address, size, _user) -> None:
        guest = self.vmm_read32(C["V_NEXT"])
        site = self.vmm_read32(C["V_SITE"])
        if guest in self.stop_addresses:
            self._exit_to_vmm("stop", guest)
            return
        try:
            unit = self.unit_for(guest)
        except Fault as f:
            self._exit_to_vmm("fetch-fault", (guest, f))
            return
        if site:
            self.patch(site, unit.host)
        else:
            self.stats["indirect_misses"] += 1
        self.set_hash(guest, unit.host - len(INDIRECT_ENTRY))
        self.vmm_write32(C["V_JUMP"], unit.host)
        self.stats["translator_entries"] += 1

    def _exit_to_vmm(self, why: str, what: object) -> None:
        self.pending = (why, what)
        self.vmm_write32(C["V_JUMP"], L["vmm_exit"])
        self.vmm_write32(C["V_RESTORE"], L["restore_regs"])

    def _on_vmm_exit(self, uc, address, size, _user) -> None:
        uc.emu_stop()

    def _on_callout(self, uc, address, size, _user) -> None:
        site = self.sites[self.vmm_read32(C["V_SITE"])]
        m, S = self.m, self.m.state
        regs = struct.unpack_from("<8I", self.host.view, self.vmm_phys + C["V_EAX"])
        m.regs[:] = regs
        self._merge_eflags(self.vmm_read32(C["V_EFLAGS"]))
        S.eip = site.guest
        before = (tuple(S.sel), tuple(S.base), tuple(S.attr), S.cpl, S.cr[0], S.cr[3], S.cr[4])
        self.stats["callouts"] += 1
        ev = None
        m.stop_on_event = True
        try:
            r = m.run(1)
            if r.event is not None:
                ev = r.event
            elif r.reason == "vmstop":
                self._exit_to_vmm("vmstop", r.vmstop)
                return
        finally:
            m.stop_on_event = False
        if ev is not None:
            if self.stop_on_event:
                self._exit_to_vmm("event", ev)
                return
            try:
                self.deliver(ev)
            except VMStop as stop:
                self._exit_to_vmm("vmstop", stop)
                return
        if S.halted:
            self._exit_to_vmm("halt", None)
            return
        after = (tuple(S.sel), tuple(S.base), tuple(S.attr), S.cpl, S.cr[0], S.cr[3], S.cr[4])
        if after != before or not self.can_translate():  # (POPF and IRET can set TF)
            if after[4:] != before[4:]:
                self.flush_shadow()
            if not self.can_translate():
                self._exit_to_vmm("switch", None)
                return
            sels = self.hardware_selectors(False)
            self.vmm_write(C["V_HWSEL"], struct.pack("<6H", *sels))
            self.vmm_write32(C["V_RESTORE"], L["restore_segs"])
        else:
            self.vmm_write32(C["V_RESTORE"], L["restore_regs"])
        self.vmm_write(C["V_EAX"], struct.pack("<8I", *m.regs))
        self.vmm_write32(C["V_EFLAGS"], self.hardware_eflags(False))
        self.publish_virtual()
        if S.eip in self.stop_addresses:
            self._exit_to_vmm("stop", S.eip)
            return
        if S.eip == site.next_guest:
            self.vmm_write32(C["V_JUMP"], site.resume)
            return
        try:
            unit = self.unit_for(S.eip)
        except Fault as f:
            self._exit_to_vmm("fetch-fault", (S.eip, f))
            return
        self.vmm_write32(C["V_JUMP"], unit.host)

    # ------------------------------------------------------------ events

    def deliver(self, ev: GuestEvent) -> None:
        self.last_event = ev
        self.stats["events_delivered"] += 1
        self.m.deliver_event(ev)

    def _event_in_guest(self, vector: int) -> str | None:
        """A CPU exception while in guest context. Returns a stop reason, "resume" to restart
        the hardware where it stopped, or None to re-enter the guest from the virtual state."""
        uc = self.uc
        host_eip = uc.reg_read(X.UC_X86_REG_EIP)
        S = self.m.state
        user = S.cpl == 3
        if vector == 14:
            cr2 = uc.reg_read(X.UC_X86_REG_CR2)
            if cr2 < VMM_BASE and self._hidden_fault(cr2):
                self.stats["traps"] += 1
                return "resume"  # a page the guest maps: filled in; the instruction runs again
        where = None
        if self.direct:
            guest_eip = host_eip
        elif L["callout_entry"] <= host_eip < L["callout_hook"]:
            guest_eip = self.sites[self.vmm_read32(C["V_SITE"])].guest  # saving its registers faulted
        elif host_eip >= VMM_BASE + C["VMM_TC"]:
            where = self.locate(host_eip)
            if where is None:
                return self._stop(f"exception {vector} at {host_eip:#x}, in no CCF")
            guest_eip = where[1][0]
        else:
            return self._stop(f"exception {vector} in the VMM's stubs at {host_eip:#x}")
        self.capture()
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
                self.deliver(soft)
                return None
        # Emulate the instruction with the interpreter: a guest fault is raised precisely
        # (with its error code); anything else (a privileged instruction, a protected page,
        # the VMM's area) is done, and execution goes on after it.
        self.trap_counts[guest_eip] += 1
        m = self.m
        m.stop_on_event = True
        try:
            r = m.run(1)
        finally:
            m.stop_on_event = False
        if r.event is not None:
            if self.stop_on_event:
                self.pending = ("event", r.event)
                return "event"
            self.deliver(r.event)
        elif r.reason == "vmstop":
            self.pending = ("vmstop", r.vmstop)
            return "vmstop"
        else:
            self.stats["emulated_after_trap"] += 1
            if self.budget is not None:
                self.budget -= 1  # it ran, in the interpreter
            if not user and self.trap_counts[guest_eip] >= TRAP_THRESHOLD and guest_eip not in self.callout_override:
                self.retranslate(guest_eip)
        if S.halted:
            self.pending = ("halt", None)
            return "halt"
        return None

    def _stop(self, reason: str) -> str:
        self.pending = ("vmstop", VMStop("vmm", reason))
        return "vmstop"

    def _hidden_fault(self, la: int) -> bool:
        """A page the guest maps but the hardware tables do not (yet), or a dirty-bit upgrade."""
        S = self.m.state
        walk = self.guest_walk(la)
        if walk is None:
            return False
        page = walk[0] >> 12
        pde = self.host.read32(self.pool_phys + (la >> 22) * 4)
        present = False
        if pde & 1:
            pte = self.host.read32((pde & 0xFFFFF000) + ((la >> 12) & 0x3FF) * 4)
            present = bool(pte & 1)
        if present and (page in self.code_pages or page in self.traced_pages):
            return False  # a write to protected memory: emulate it
        # Not mapped yet: map it (a protected page read-only). Mapped already: the hardware
        # refused a write (read-only until dirty).
        write = present
        if not self.fill(la, write):
            return False
        _ = S
        return True

    def retranslate(self, guest_eip: int) -> None:
        """An instruction that keeps trapping: emulate it by callout, and forward its old CCF."""
        self.callout_override.add(guest_eip)
        for start, old in list(self.units.items()):
            if old.forwarded_to is None and any(ins[0] == guest_eip for ins in old.insns):
                del self.units[start]
                new = self.translate(start)
                old.forwarded_to = new
                self.host.write(self.tc_phys(old.host), enc.jmp(old.host, new.host))
                self.uc.ctl_remove_cache(old.host, old.host + 5)
                self.units[start] = new
                self.stats["retranslations"] += 1

    # ------------------------------------------------------------ running

    def _starts_in(self, address: int, size: int) -> list[tuple[int, int]]:
        """(host address, guest EIP) of the guest instructions that begin in a block."""
        if not self.direct:
            lo = bisect.bisect_left(self._start_hosts, address)
            hi = bisect.bisect_left(self._start_hosts, address + size)
            return [(h, self.guest_starts[h]) for h in self._start_hosts[lo:hi]]
        if address >= VMM_BASE:
            return []  # the world switch's IRET on the way in
        code = bytes(self.uc.mem_read(address, size)) + bytes(16)
        out, at = [], 0
        while at < size:
            out.append((address + at, address + at - self.m.state.base[CS]))
            d = decode(code[at:], address + at, bool(self.m.state.code32))
            at += len(d.raw) if d.form else 1
        return out

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
        self.uc.emu_start(self.uc.reg_read(X.UC_X86_REG_EIP), host)

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
        return self._run()

    def _run(self) -> tuple[str, object]:
        S = self.m.state
        while True:
            if S.halted:
                return ("halt", None)
            if S.eip in self.stop_addresses and self.can_translate():
                return ("stop", S.eip)
            if self.can_translate():
                try:
                    unit = self.unit_for(S.eip)
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
                        why = self._event_in_guest(self.cpu.event.vector)
                        if why != "resume":
                            self._refund_unrun(at, whole_instruction=True)
                            break
                        if self._split is None:  # the restarted block counts the rest again
                            self._refund_unrun(at, whole_instruction=False)
                        self.resume()
                    else:
                        why = "exit"
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
                return (why, what)
            if why == "fetch-fault":
                self._capture_at_exit()
                eip, f = what
                S.eip = eip
                if self.stop_on_event:
                    return ("event", f)
                self.deliver(f)
            # "switch": a callout left the virtual CPU complete (registers, flags, EIP) and in a
            # state translated code cannot run; the hardware went to vmm_exit through
            # restore_regs with the registers from *before* the callout, so nothing is captured.

    def _capture_at_exit(self) -> None:
        """At vmm_exit the hardware holds the guest's registers (a callout restored them first)."""
        self.capture()

    def _interpret_until_translatable(self) -> tuple[str, object] | None:
        """Real mode, v86, single-stepping, a non-flat kernel CS: the interpreter runs the guest."""
        m = self.m
        m.stop_on_event = self.stop_on_event
        m.stop_addresses = set(self.stop_addresses)
        self.stats["interpreted_stretches"] += 1
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


def uc_eip(vmm: Vmm) -> int:
    return vmm.uc.reg_read(X.UC_X86_REG_EIP)


# ---------------------------------------------------------------- engines


def figures(vmm: Vmm, stats, elapsed: float) -> None:
    s = vmm.stats
    translated = s["guest_instructions_translated"]
    stats.add("guest_instructions_translated", "guest instructions translated", translated)
    stats.add("ccfs", "CCFs (compiled code fragments)", s["ccfs"])
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
    stats.add("world_switches", "world switches", s["world_switches"])
    stats.add("retranslations", "retranslations", s["retranslations"])
    stats.add("events_delivered", "exceptions and interrupts delivered", s["events_delivered"])
    stats.add(
        "interpreted_instructions",
        "instructions run by the interpreter (real mode, v86, TF)",
        s["interpreted_instructions"],
    )
    stats.add("wall_time_s", "wall time", round(elapsed, 6), "s")


def run_engine(mode: str):
    def engine(image, platform, max_insns, stats):
        from ring1.runtime import guest

        vmm = Vmm(image.memory_size, platform, mode)
        guest.interp_boot(image, platform, vmm.m)
        started = time.perf_counter()
        try:
            why, what = vmm.run(max_insns)
        except KeyboardInterrupt:
            why, what = "interrupted", None
        figures(vmm, stats, time.perf_counter() - started)
        return guest.engine_stop(vmm.m, why, what, max_insns, "VMM")

    return engine


__all__ = ["Vmm", "run_engine"]
