"""No escape from guest context into the VMM (issue 8): the VMM's control data out of the guest's
reach, patches only at live recorded sites, and translated code that rewrites its own page
from a callout.

The decision (spec/vmm.r1, header): nothing guest context can write decides where the VMM
jumps or what it patches. Control data (V_JUMP, V_RESTORE, V_HWSEL, V_SCRATCH_SP) is on the
control page, read-only at CPL 1; an exit is identified by the address of its own pad slot,
seen by a code hook, never by a field in memory; `patch()` writes only patch sites it recorded
in units still in the TC. So in every test below the run ends in a clean stop (a VM stop with
a diagnosis) or a correct run, and the VMM's read-only parts are unchanged, checked by a
digest; the control page holds exactly what the VMM itself wrote there.

The hostile guests come in three strengths:
- translated kernel code at CPL 1 (`bt`), storing through registers into the vcpu page (the
  one page it can write) at the offsets the VMM's control data used to have, and into the
  control page, between exits of every kind;
- untranslated kernel code at CPL 1 (`trap` runs the kernel directly), which can jump into
  any stub or pad slot itself;
- an untranslated jump planted in a CCF under `bt` (what the flushed-TC bug of issue 8 gave
  a guest), to each stub and pad slot.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable

import pytest

from ring1.generated.rules import CONSTS as C
from ring1.runtime.cpu.events import VMStop
from ring1.runtime.isa.assembler import assemble
from ring1.runtime.tools import fresh_machine
from ring1.runtime.tools.snippet import interp_machine
from ring1.runtime.vmm import CALLOUT_PAD, EXIT_PAD, PAD_SLOT, L, SlotPool, Unit, Vmm

from .common import VMM_LINEAR, assert_clean, differences, new_vmm, run

F = fresh_machine.FreshSpec
CONTROL = C["VMM_CONTROL"]
CONTROL_FIELDS = ("V_JUMP", "V_RESTORE", "V_SCRATCH_SP", "V_HWSEL", "V_SCRATCH_FLAT", "V_VMM_SS")
TC_LINEAR = C["VMM_BASE"] + C["VMM_TC"]
# Where the VMM's control data lived on the guest-writable vcpu page before this decision:
# V_JUMP, V_NEXT, V_SITE, V_RESTORE, V_JUMP2, V_SCRATCH_SP and the six V_HWSEL words.
OLD_CONTROL_OFFSETS = (0x28, 0x2C, 0x30, 0x34, 0x40, 0x4C, 0x78, 0x7C, 0x80)


def mov_eax(v: int) -> bytes:
    return b"\xb8" + struct.pack("<I", v & 0xFFFFFFFF)


def mov_ebx(v: int) -> bytes:
    return b"\xbb" + struct.pack("<I", v & 0xFFFFFFFF)


def store_at_ebx(offset: int, value: int) -> bytes:
    """mov dword [ebx + offset], value: an address the translator cannot see."""
    return b"\xc7\x83" + struct.pack("<iI", offset, value & 0xFFFFFFFF)


ADD_EAX = b"\x05\x01\x00\x00\x00"  # add eax, 1


# ---------------------------------------------------------------- what must not change


def read_only_digest(vmm: Vmm) -> str:
    """The VMM's read-only parts: its own descriptors, IDT, TSS, stubs and both exit pads."""
    gdt, area = C["VMM_GDT"], vmm.vmm_phys
    own = vmm.host.read(area + gdt + (C["SEL_VMM_TSS"] & ~7), 0x10000 - (C["SEL_VMM_TSS"] & ~7))
    tables_and_stubs = vmm.host.read(area + C["VMM_IDT"], C["VMM_STACK"] - C["VMM_IDT"])
    pads = vmm.host.read(area + C["VMM_EXIT_PAD"], C["VMM_TC"] - C["VMM_EXIT_PAD"])
    return hashlib.sha256(own + tables_and_stubs + pads).hexdigest()


class ControlMirror:
    """Every write the VMM makes to its control page, replayed into a copy: at the end the page
    must equal the copy, so no store from guest context changed it."""

    def __init__(self, vmm: Vmm) -> None:
        self.vmm = vmm
        self.copy = bytearray(vmm.host.read(vmm.vmm_phys + CONTROL, 0x1000))
        write, write32 = vmm.vmm_write, vmm.vmm_write32

        def mirrored_write(offset: int, data: bytes) -> None:
            write(offset, data)
            self._note(offset, bytes(data))

        def mirrored_write32(offset: int, value: int) -> None:
            write32(offset, value)
            self._note(offset, struct.pack("<I", value & 0xFFFFFFFF))

        vmm.vmm_write, vmm.vmm_write32 = mirrored_write, mirrored_write32

    def _note(self, offset: int, data: bytes) -> None:
        for i, b in enumerate(data):
            if CONTROL <= offset + i < CONTROL + 0x1000:
                self.copy[offset + i - CONTROL] = b

    def unchanged_by_the_guest(self) -> bool:
        return self.vmm.host.read(self.vmm.vmm_phys + CONTROL, 0x1000) == bytes(self.copy)


def watched_vmm(mode: str) -> tuple[Vmm, str, ControlMirror]:
    vmm = new_vmm(mode)
    return vmm, read_only_digest(vmm), ControlMirror(vmm)


def assert_vmm_intact(vmm: Vmm, digest: str, mirror: ControlMirror) -> None:
    assert read_only_digest(vmm) == digest, "the guest changed the VMM's read-only parts"
    assert mirror.unchanged_by_the_guest(), "the control page holds something the VMM did not write"


def test_control_data_is_on_a_page_guest_context_cannot_write() -> None:
    vmm = new_vmm("bt")
    pte = vmm.host.read32(vmm.pool_phys + 0x1000 + (CONTROL >> 12) * 4)
    assert pte & 1 and not pte & 2 and not pte & 4  # present, read-only, supervisor (CR0.WP is set)
    for name in CONTROL_FIELDS:
        assert CONTROL <= C[name] < CONTROL + 0x1000, name
    for name in ("V_NEXT", "V_SITE"):  # exits no longer pass anything in memory
        assert name not in C


# ---------------------------------------------------------------- a callout writes its own code page

# Issue 8, item 2: a callout whose guest instruction writes the page of its own code flushed the
# TC inside the callout, and the VMM resumed at the callout's old resume address in the flushed
# TC. Each of these must give bare's results. VAR is on the code page, past the code.
VAR = fresh_machine.CODE + 0x800
TWELVE_ADDS = ADD_EAX * 12
SELF_WRITING_CALLOUTS = {
    "sgdt, twelve adds": b"\x0f\x01\x05" + struct.pack("<I", VAR) + TWELVE_ADDS,
    "sgdt, one add": b"\x0f\x01\x05" + struct.pack("<I", VAR) + ADD_EAX,
    "sidt": b"\x0f\x01\x0d" + struct.pack("<I", VAR) + TWELVE_ADDS,
    "str m16": b"\x0f\x00\x0d" + struct.pack("<I", VAR) + TWELVE_ADDS,
    "smsw m16": b"\x0f\x01\x25" + struct.pack("<I", VAR) + TWELVE_ADDS,
    "mov m16, ds": b"\x8c\x1d" + struct.pack("<I", VAR) + TWELVE_ADDS,
    # the stack on the code page: a push that is a callout (it uses GS), then read what it pushed
    "push gs:[0]": b"\xbc" + struct.pack("<I", VAR) + b"\x65\xff\x35\x00\x00\x00\x00" + b"\x8b\x0c\x24"
    + TWELVE_ADDS,
    "rep insb": b"\xbf" + struct.pack("<I", VAR) + b"\xb9\x04\x00\x00\x00\xba\x80\x00\x00\x00\xfc\xf3\x6c"
    + TWELVE_ADDS,
    # a store that traps (the page holds translated code) until it is retranslated as a callout
    "store retranslated as a callout": b"\xb9\x10\x00\x00\x00"  # 16 rounds of: store; twelve adds
    + b"\x89\x0d" + struct.pack("<I", VAR) + TWELVE_ADDS + b"\x49\x75" + bytes([(-(6 + 60 + 3)) & 0xFF]),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(SELF_WRITING_CALLOUTS))
def test_a_callout_writing_its_own_code_page_resumes_in_a_fresh_translation(name: str) -> None:
    spec = F(code=SELF_WRITING_CALLOUTS[name])
    vmm, digest, mirror = watched_vmm("bt")
    bare, bt = run(spec, "bare"), run(spec, "bt", vmm)
    assert bare.stop == "end"
    assert differences(bare, bt) == []
    assert vmm.stats["callouts"] >= 1 and vmm.stats["code_writes"] >= 1  # the case this is about
    assert vmm.stats["refused_exits"] == 0
    assert_vmm_intact(vmm, digest, mirror)


# ---------------------------------------------------------------- translated hostile code (bt)


def hostile_stores() -> bytes:
    """Register-addressed stores of VMM addresses over the old control fields of the vcpu page
    and over the control page: stub addresses, the TC, the VMM's code selector."""
    values = (L["world_switch"], TC_LINEAR, L["restore_regs"], C["SEL_VMM_CODE"] * 0x10001)
    code = mov_ebx(VMM_LINEAR)
    for i, off in enumerate(OLD_CONTROL_OFFSETS):
        code += store_at_ebx(off, values[i % len(values)])
    for i, name in enumerate(CONTROL_FIELDS):
        code += store_at_ebx(C[name], values[i % len(values)])
    return code


def hostile_loop() -> bytes:
    """Five rounds of: corrupt, then take every kind of exit (continuation, indirect lookup,
    callout, the PUSHFD template's scratch stack)."""
    body = hostile_stores()
    body += b"\x01\xc8"  # add eax, ecx
    body += b"\xe8" + struct.pack("<i", 0)  # call the function below (fixed up)
    body += hostile_stores()
    body += b"\x0f\x01\x07"  # sgdt [edi]: a callout
    body += b"\x83\xc7\x08"  # add edi, 8
    body += hostile_stores()
    body += b"\x9c\x5a"  # pushfd; pop edx
    body += b"\x8c\xce"  # mov esi, cs
    body += b"\x49"  # dec ecx
    head = b"\xb9\x05\x00\x00\x00" + b"\xbf" + struct.pack("<I", fresh_machine.DATA)  # mov ecx, 5; mov edi, DATA
    loop_at = len(head)
    jnz = b"\x0f\x85" + struct.pack("<i", loop_at - (loop_at + len(body) + 6))
    skip = b"\xeb\x04"  # over the function
    function = b"\x8d\x04\x48\xc3"  # lea eax, [eax + ecx*2]; ret
    code = bytearray(head + body + jnz + skip + function)
    call_at = code.index(b"\xe8\x00\x00\x00\x00", loop_at)
    fn_at = len(code) - len(function)
    code[call_at + 1 : call_at + 5] = struct.pack("<i", fn_at - (call_at + 5))
    return bytes(code)


def test_translated_code_storing_over_control_fields_cannot_steer_the_vmm() -> None:
    # Without paging the VMM area is beyond guest RAM: the interpreter (the reference) makes the
    # stores open bus. Under bt the vcpu page takes them (documented: guest state only), and
    # stores to the control page fault and are emulated as the guest's own (open bus too).
    spec = F(code=hostile_loop())
    vmm, digest, mirror = watched_vmm("bt")
    ref, bt = run(spec, "interp"), run(spec, "bt", vmm)
    assert_clean(bt)
    assert ref.stop == "end" and differences(ref, bt) == []
    s = vmm.stats
    assert s["chained_links"] >= 2 and s["indirect_misses"] >= 1 and s["callouts"] >= 5
    assert s["refused_exits"] == 0
    assert_vmm_intact(vmm, digest, mirror)


# ---------------------------------------------------------------- untranslated hostile code (trap)

VCPU_GARBAGE = b"".join(store_at_ebx(off, L["world_switch"]) for off in OLD_CONTROL_OFFSETS)
STUB_TARGETS = {
    "restore_regs": L["restore_regs"],
    "restore_segs": L["restore_segs"],
    "lookup": L["lookup"],
    "lookup_miss": L["lookup_miss"],
    "world_switch": L["world_switch"],
    "vmm_exit": L["vmm_exit"],
    "exit pad slot 0": EXIT_PAD,
    "exit pad, inside slot 3": EXIT_PAD + 3 * PAD_SLOT + 1,
    "callout pad slot 0": CALLOUT_PAD,
    "the TC": TC_LINEAR,
}


def jump_to(target: int) -> bytes:
    return mov_ebx(VMM_LINEAR) + VCPU_GARBAGE + mov_eax(target) + b"\xff\xe0"  # ...; jmp eax


@pytest.mark.parametrize("name", sorted(STUB_TARGETS))
def test_kernel_code_run_directly_jumping_into_the_vmm_is_stopped(name: str) -> None:
    # `trap` runs the guest kernel untranslated at CPL 1: it can jump to any VMM address. Every
    # such entry ends in a VM stop that says why, or in the guest's own fault (the stubs' GS
    # operands are the guest's own GS there, so they read and jump through guest memory),
    # never in the VMM acting for it.
    spec = F(code=jump_to(STUB_TARGETS[name]), regs={"esp": fresh_machine.STACK_TOP - 64})
    vmm, digest, mirror = watched_vmm("trap")
    r = run(spec, "trap", vmm)
    assert_clean(r)
    assert r.stop in ("vmstop", "exception"), (r.stop, r.diagnosis)
    assert vmm.stats["chained_links"] == vmm.stats["callouts"] == vmm.stats["ccfs"] == 0
    assert_vmm_intact(vmm, digest, mirror)


def test_kernel_code_run_directly_writing_the_control_page_writes_its_own_memory() -> None:
    # The control page is read-only at CPL 1: the stores fault and are emulated as the guest's
    # own, which beyond guest RAM is open bus, as in the interpreter.
    code = mov_ebx(VMM_LINEAR) + b"".join(store_at_ebx(C[n], L["vmm_exit"] + i) for i, n in enumerate(CONTROL_FIELDS))
    spec = F(code=code + mov_eax(7))
    vmm, digest, mirror = watched_vmm("trap")
    ref, r = run(spec, "interp"), run(spec, "trap", vmm)
    assert r.stop == "end" and differences(ref, r) == []
    assert vmm.stats["emulated_after_trap"] == len(CONTROL_FIELDS)
    assert_vmm_intact(vmm, digest, mirror)


# ---------------------------------------------------------------- an untranslated jump planted in a CCF (bt)


def planted(
    target_of: Callable[[Vmm, Unit], int], code: bytes = ADD_EAX * 3, regs: dict[str, int] | None = None
) -> tuple[Vmm, str, ControlMirror, tuple]:
    """Translate the snippet's first unit, overwrite its CCF's start with `jmp target`, run."""
    spec = F(code=code, regs=regs or {})
    vmm, digest, mirror = watched_vmm("bt")
    interp_machine(spec, vmm.m)
    vmm.stop_on_event = True
    vmm.stop_addresses = {fresh_machine.CODE + len(code)}
    unit = vmm.translate(fresh_machine.CODE)
    target = target_of(vmm, unit)
    jump = assemble(f"jmp {target:#x}", origin=unit.host).code
    vmm.host.write(vmm.tc_phys(unit.host), jump)
    vmm.uc.ctl_remove_cache(unit.host, unit.host + len(jump))
    return vmm, digest, mirror, vmm.run(10_000)


PLANTED = {
    "an exit pad slot no exit owns": lambda vmm, unit: EXIT_PAD + (vmm.exit_pool.next + 7) * PAD_SLOT,
    "inside the unit's own exit slot": lambda vmm, unit: EXIT_PAD + unit.exit_slots[0] * PAD_SLOT + 2,
    "a callout pad slot no callout owns": lambda vmm, unit: CALLOUT_PAD + 9 * PAD_SLOT,
    "inside a callout pad slot": lambda vmm, unit: CALLOUT_PAD + 4,
}


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_a_planted_jump_into_the_vmm_is_a_vm_stop_with_a_diagnosis(name: str) -> None:
    vmm, digest, mirror, (why, what) = planted(PLANTED[name])
    assert why == "vmstop" and isinstance(what, VMStop) and what.reason, (why, what)
    assert vmm.stats["refused_exits"] >= 1 and vmm.stats["chained_links"] == 0
    assert_vmm_intact(vmm, digest, mirror)


@pytest.mark.parametrize("stub", ["restore_regs", "restore_segs"])
def test_a_planted_jump_to_a_stub_goes_where_the_control_page_says(stub: str) -> None:
    # These stubs jump through V_JUMP or V_RESTORE, which only the VMM writes: here (no exit
    # taken yet) V_JUMP is vmm_exit, so the CPU stops, and the VMM says it had no reason to.
    vmm, digest, mirror, (why, what) = planted(lambda vmm, unit: L[stub])
    assert why == "vmstop" and "without a reason" in what.reason, (why, what)
    assert vmm.stats["chained_links"] == vmm.stats["callouts"] == 0
    assert_vmm_intact(vmm, digest, mirror)


def test_a_planted_jump_to_the_units_own_exit_slot_only_continues_the_guest() -> None:
    # Entering a live exit's slot makes the VMM do what that exit asks for, and nothing else:
    # translate its recorded target and chain its recorded site. Here the target is the end
    # of the snippet, where the run stops.
    vmm, digest, mirror, (why, what) = planted(lambda vmm, unit: EXIT_PAD + unit.exit_slots[0] * PAD_SLOT)
    assert (why, what) == ("stop", fresh_machine.CODE + 15)
    assert vmm.stats["refused_exits"] == 0
    assert_vmm_intact(vmm, digest, mirror)


def test_a_planted_jump_to_the_lookup_translates_eax_as_a_guest_eip() -> None:
    # The lookup's target is the guest's to choose anyway (an indirect branch): EAX is taken as
    # a guest EIP, translated from guest memory and entered at CPL 1, like any `jmp eax`.
    code = b"\x90" * 10 + ADD_EAX * 2
    vmm, digest, mirror, (why, what) = planted(lambda vmm, unit: L["lookup"], code, {"eax": fresh_machine.CODE + 10})
    assert (why, what) == ("stop", fresh_machine.CODE + len(code))
    assert (
        vmm.stats["indirect_misses"] == 1 and vmm.units[fresh_machine.CODE + 10].insns[0][0] == fresh_machine.CODE + 10
    )
    assert_vmm_intact(vmm, digest, mirror)


# ---------------------------------------------------------------- patch() itself


def test_patch_refuses_any_address_but_a_live_recorded_site() -> None:
    spec = F(code=ADD_EAX + b"\x75\x00" + ADD_EAX)  # add; jnz next; add: two exits
    vmm = new_vmm("bt")
    interp_machine(spec, vmm.m)
    unit = vmm.translate(fresh_machine.CODE)
    whole = vmm.host.read(vmm.vmm_phys, C["VMM_SIZE"])
    site = vmm.exits[unit.exit_slots[0]].site
    for address in (L["world_switch"], site + 1, site - 4, TC_LINEAR + C["VMM_SIZE"] // 2, 0):
        with pytest.raises(VMStop, match="refused to patch"):
            vmm.patch(address, unit.host)
    vmm.flush_translations()
    assert not unit.live
    with pytest.raises(VMStop, match="refused to patch"):
        vmm.patch(site, unit.host)  # a site of a dropped unit
    after = vmm.host.read(vmm.vmm_phys, C["VMM_SIZE"])
    tc = C["VMM_TC"]
    assert after[tc:] == whole[tc:]  # nothing written in the TC (the flush leaves its bytes)


FILLING = {
    "exit_pool": (ADD_EAX + b"\x75\x00") * 40,  # 40 units: add; jnz next (two exits each)
    "callout_pool": (b"\x0f\x01\x05" + struct.pack("<I", fresh_machine.DATA) + ADD_EAX) * 40,  # sgdt [DATA]; add
}


@pytest.mark.parametrize("pool", sorted(FILLING))
def test_a_full_pad_flushes_the_tc_like_a_full_tc(pool: str) -> None:
    # Slots are handed out per exit and come back when the units go: with only a few slots,
    # a run over many units keeps flushing and still computes what bare does.
    spec = F(code=FILLING[pool])
    vmm = new_vmm("bt")
    setattr(vmm, pool, SlotPool(9))
    bare, bt = run(spec, "bare"), run(spec, "bt", vmm)
    assert differences(bare, bt) == []
    assert vmm.stats["tc_flushes"] >= 4 and vmm.stats["refused_exits"] == 0
