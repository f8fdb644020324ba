"""The translator at work, seen through the VMM's statistics (runtime/vmm/__init__.py, Vmm.stats and the
in-TC hit counter V_HITS), with every run also compared with `bare`.

- a loop runs from chained CCFs: the translation work does not grow with the iteration count;
- RET and indirect calls find their targets in the TC's hash table without leaving it;
- code the guest rewrites after it was translated runs in its new form;
- a fault in the middle of a CCF is reported at the exact guest EIP, with the registers the
  guest had there (including EAX, which indirect-branch sequences move aside);
- an instruction that keeps trapping is retranslated as a callout;
- naive trap-and-emulate pays a trap and a world switch per sensitive instruction; bt none.
"""

from __future__ import annotations

import struct

import pytest

from ring1.generated.rules import CONSTS as C
from ring1.runtime.tools import fresh_machine
from ring1.runtime.vmm import ACQUIT_WINDOW, TRAP_THRESHOLD

from .common import PD, PT0, differences, new_vmm, paged, run


def mov(reg: int, v: int) -> bytes:
    return bytes([0xB8 + reg]) + struct.pack("<I", v & 0xFFFFFFFF)


EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI = range(8)


def bt_and_bare(spec: fresh_machine.FreshSpec, mode: str = "bt"):
    vmm = new_vmm(mode)
    bare, r = run(spec, "bare"), run(spec, mode, vmm)
    assert differences(bare, r) == []
    return bare, vmm


# ---------------------------------------------------------------- chaining


def counted_loop(n: int) -> bytes:
    # mov ecx, n; top: add eax, ecx; xor edx, eax; dec ecx; jnz top; (a second unit) inc ebx
    return mov(ECX, n) + b"\x01\xc8\x31\xc2\x49\x75\xf9" + b"\x43"


def test_a_loop_runs_chained_without_translating_per_iteration() -> None:
    counts = {}
    for n in (3, 1000):
        bare, vmm = bt_and_bare(fresh_machine.FreshSpec(code=counted_loop(n)))
        assert bare.regs["eax"] == n * (n + 1) // 2
        counts[n] = vmm.stats.copy()
    few, many = counts[3], counts[1000]
    for stat in ("guest_instructions_translated", "ccfs", "translator_entries", "chained_links", "world_switches"):
        assert few[stat] == many[stat], stat
    assert many["chained_links"] >= 2  # the loop's back edge and its exit
    assert many["callouts"] == many["traps"] == 0


# ---------------------------------------------------------------- indirect branches


def _call_loop(n: int, how: str) -> fresh_machine.FreshSpec:
    sub = fresh_machine.CODE + 5
    code = b"\xe9" + struct.pack("<I", 4) + b"\x01\xd8\x43\xc3"  # jmp main; sub: add eax, ebx; inc ebx; ret
    code += mov(ECX, n) + mov(EDI, sub)
    top = fresh_machine.CODE + len(code)
    if how == "direct":
        code += b"\xe8" + struct.pack("<I", (sub - (top + 5)) & 0xFFFFFFFF)
    elif how == "reg":
        code += b"\xff\xd7"  # call edi
    else:
        code += b"\xff\x15" + struct.pack("<I", fresh_machine.DATA)  # call [DATA]
    code += b"\x49\x0f\x85"  # dec ecx; jnz top
    code += struct.pack("<I", (top - (fresh_machine.CODE + len(code) + 4)) & 0xFFFFFFFF)
    return fresh_machine.FreshSpec(code=code, memory={fresh_machine.DATA: struct.pack("<I", sub)})


@pytest.mark.parametrize("how", ["direct", "reg", "mem"])
def test_ret_and_indirect_calls_hit_the_tc_lookup(how: str) -> None:
    hits = {}
    for n in (4, 200):
        bare, vmm = bt_and_bare(_call_loop(n, how))
        assert bare.regs["ebx"] == n
        hits[n] = vmm.vmm_read32(C["V_HITS"]), vmm.stats.copy()
    (few_hits, few), (many_hits, many) = hits[4], hits[200]
    # Every RET (and every indirect CALL) is a lookup; all but the first few hit in the TC.
    lookups = 200 * (1 if how == "direct" else 2)
    assert many_hits >= lookups - 4 and many_hits - few_hits >= (200 - 4) * (1 if how == "direct" else 2)
    assert many["indirect_misses"] == few["indirect_misses"] <= 3
    assert many["translator_entries"] == few["translator_entries"]
    assert many["world_switches"] == few["world_switches"]


# ---------------------------------------------------------------- self-modifying code


def test_code_rewritten_after_translation_runs_in_its_new_form() -> None:
    # Twice round a loop: the body loads EDX from an immediate and adds it to EAX; then it
    # rewrites that immediate (a store into the code page it is running from, translated
    # already). The second round must add the new value: 1 + 0x100, as on bare.
    code = mov(ECX, 2)
    top = len(code)
    code += mov(EDX, 1)  # top: mov edx, 1 (its imm32 is patched)
    imm = fresh_machine.CODE + top + 1
    code += b"\x01\xd0"  # add eax, edx
    code += b"\xc7\x05" + struct.pack("<II", imm, 0x100)  # mov dword [imm], 0x100
    code += b"\x49\x0f\x85"
    code += struct.pack("<I", (fresh_machine.CODE + top - (fresh_machine.CODE + len(code) + 4)) & 0xFFFFFFFF)
    bare, vmm = bt_and_bare(fresh_machine.FreshSpec(code=code))
    assert bare.regs["eax"] == 0x101
    # Only the units made from the written bytes are dropped, not the whole TC.
    assert vmm.stats["code_writes"] >= 1 and vmm.stats["units_invalidated"] >= 1
    assert vmm.stats["tc_flushes"] == 0


def test_code_written_through_another_mapping_and_by_a_string_instruction() -> None:
    # The new code arrives by REP MOVSB from the DATA window over a routine that has run
    # already (called once before, and once after the copy).
    routine = fresh_machine.CODE + 0x200
    code = b"\xe8" + struct.pack("<I", routine - (fresh_machine.CODE + 5))  # call routine (old: eax += 1)
    code += mov(ESI, fresh_machine.DATA) + mov(EDI, routine) + mov(ECX, 6) + b"\xfc\xf3\xa4"  # rep movsb
    here = fresh_machine.CODE + len(code)
    code += b"\xe8" + struct.pack("<I", routine - (here + 5))  # call routine (new: eax += 0x50)
    page = bytearray(b"\xf4" * 0x1000)
    page[: len(code)] = code
    page[0x200:0x206] = b"\x83\xc0\x01\x90\x90\xc3"  # add eax, 1; nop; nop; ret
    spec = fresh_machine.FreshSpec(
        code=code,
        memory={fresh_machine.CODE: bytes(page), fresh_machine.DATA: b"\x83\xc0\x50\x90\x90\xc3"},  # add eax, 0x50
    )
    bare, vmm = bt_and_bare(spec)
    assert bare.regs["eax"] == 0x51
    assert vmm.stats["code_writes"] >= 1


# ---------------------------------------------------------------- precise faults inside a CCF

PREFIX = (
    mov(EAX, 0x11) + mov(EBX, 0x22) + b"\x01\xd8\x8d\x34\x18" + b"\x47"
)  # ...; add eax, ebx; lea esi, [eax+ebx]; inc edi


FAULTS = {
    # #DE in the middle of a unit (xor ecx, ecx; div ecx), flags set by the ADD before it
    "#DE": (fresh_machine.FreshSpec(code=PREFIX + b"\x31\xc9\xf7\xf1" + mov(EDX, 5)), 0),
    # #GP: a selector load in the middle of a unit
    "#GP": (fresh_machine.FreshSpec(code=PREFIX + b"\x66\xb9\xf8\xff\x8e\xd9" + mov(EDX, 5)), 13),
    # #UD: UD2 after ident instructions
    "#UD": (fresh_machine.FreshSpec(code=PREFIX + b"\x0f\x0b" + mov(EDX, 5)), 6),
    # #PF: a load from an unmapped page (paging on, 0x400000 not mapped)
    "#PF load": (paged(PREFIX + b"\x8b\x0d\x00\x00\x40\x00" + mov(EDX, 5)), 14),
    # #PF: a store to an unmapped page after a PUSH (ESP moved earlier in the unit)
    "#PF store after push": (paged(PREFIX + b"\x53\x89\x1d\x00\x10\x40\x00" + mov(EDX, 5)), 14),
    # #PF: CALL through a pointer in an unmapped page (EAX is moved aside by the sequence)
    "#PF call [mem]": (paged(PREFIX + b"\xff\x15\x00\x20\x40\x00" + mov(EDX, 5)), 14),
    # #PF: JMP to a register target in an unmapped page: the fetch there faults
    "#PF jmp reg to unmapped": (paged(PREFIX + mov(ECX, 0x403000) + b"\xff\xe1"), 14),
    # #PF: RET with ESP pointing into an unmapped page
    "#PF ret": (paged(PREFIX + mov(ESP, 0x404000) + b"\xc3"), 14),
    # #PF: PUSH with ESP at an unmapped page (the store is the instruction's own)
    "#PF push": (paged(PREFIX + mov(ESP, 0x405004) + b"\x50"), 14),
}


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_a_fault_inside_a_ccf_is_precise(name: str) -> None:
    spec, vector = FAULTS[name]
    bare = run(spec, "bare")
    assert bare.exception == vector, (bare.stop, bare.exception, bare.diagnosis)
    bt = run(spec, "bt")
    assert differences(bare, bt) == []
    if vector == 14:
        assert bt.cr2 == bare.cr2


# ---------------------------------------------------------------- adaptive retranslation


def pte_update_loop(n: int) -> fresh_machine.FreshSpec:
    # A kernel loop that rewrites a page-table entry (of an unused page) n times: the page
    # table is traced (write-protected in the hardware tables), so each store traps and is
    # emulated, until the store is retranslated as a callout.
    pte = PT0 + 0x300 * 4  # maps linear 0x300000, beyond guest RAM: never used
    code = b"\x31\xc0" + mov(ECX, n)  # xor eax, eax (it holds CR0 after ENABLE_PAGING)
    top = len(code)
    code += b"\x89\x0d" + struct.pack("<I", pte) + b"\x01\xc8"  # mov [pte], ecx; add eax, ecx
    code += b"\x49\x0f\x85"
    code += struct.pack("<I", (top - (len(code) + 4)) & 0xFFFFFFFF)  # dec ecx; jnz top
    return paged(code)


def test_an_instruction_that_keeps_trapping_is_retranslated() -> None:
    n = 60
    bare, vmm = bt_and_bare(pte_update_loop(n))
    assert bare.regs["eax"] == n * (n + 1) // 2
    assert vmm.stats["retranslations"] >= 1
    assert len(vmm.callout_override) >= 1
    # Trapping stopped once the store became a callout. (The shadow MMU stops tracing a page
    # table written as data, and then the callout writes no watched page: after a window of
    # ACQUIT_WINDOW such callouts it is acquitted, tried again with its own rule, and convicted
    # again when the page is traced again, after twice as many traps.)
    acquittals = vmm.stats["acquittals"]
    assert acquittals <= 1
    thresholds = sum(TRAP_THRESHOLD << k for k in range(acquittals + 1))
    assert vmm.stats["emulated_after_trap"] <= thresholds + 2
    assert vmm.stats["callouts"] >= ACQUIT_WINDOW


def sometimes_guilty_store(n: int, every: int) -> fresh_machine.FreshSpec:
    # A kernel loop whose one store writes a page-table entry (of an unused page) on every
    # `every`-th iteration and a data page on the others: guilty (a watched page) only then.
    # Each iteration first reads a fresh page through the same table, a fill that keeps it a
    # page table (a table only written to is taken for data: shadow.UNSHADOW_AFTER).
    from ring1.runtime.isa.assembler import assemble

    text = f"""
        mov ecx, {n}
        mov esi, 0x100000
    top:
        mov edx, [esi]
        add esi, 0x1000
        mov ebx, ecx
        and ebx, {every - 1}
        jnz data
        mov ebx, {PT0 + 0x300 * 4}
        jmp store
    data:
        lea ebx, [esi - 0x800]
    store:
        mov [ebx], ecx
        dec ecx
        jnz top
    """
    return paged(assemble(text, origin=fresh_machine.CODE + len(paged(b"").code)).code)


@pytest.mark.parametrize("every", [2, 8])
def test_a_callout_is_acquitted_on_the_share_of_its_runs_that_would_have_trapped(every: int) -> None:
    # Convicted after TRAP_THRESHOLD traps, the store is a callout; one in eight guilty runs is
    # fewer than one in GUILTY_SHARE: acquitted after ACQUIT_WINDOW callouts, and convicted
    # again only after twice TRAP_THRESHOLD traps. One in two stays a callout.
    n = 240
    _bare, vmm = bt_and_bare(sometimes_guilty_store(n, every))
    assert vmm.stats["retranslations"] >= 1
    if every == 2:
        assert vmm.stats["acquittals"] == 0
        assert vmm.stats["callouts"] >= n - TRAP_THRESHOLD * every
    else:
        assert vmm.stats["acquittals"] >= 1
        assert vmm.stats["callouts"] <= n - TRAP_THRESHOLD * every - ACQUIT_WINDOW


def test_an_unicorn_undefined_opcode_that_traps_in_a_loop_is_retranslated() -> None:
    # TEST r/m8, imm8 with ModRM.reg = 1 (F6 /1): an alias of F6 /0 on P6, #UD on unicorn
    # (deviation test-f6f7-r1). Under bt it traps, is emulated, and after TRAP_THRESHOLD traps
    # becomes a callout. `bare` (unicorn) stops on the #UD, so the spec is the reference.
    code = mov(ECX, 30) + b"\xf6\xc9\x01\x83\xd0\x00\x49\x75\xf7"  # test cl, 1; adc eax, 0; dec ecx; jnz
    spec = fresh_machine.FreshSpec(code=code)
    vmm = new_vmm("bt")
    ref, bt = run(spec, "interp"), run(spec, "bt", vmm)
    assert differences(ref, bt) == [] and bt.regs["eax"] == 0  # TEST clears CF
    assert run(spec, "bare").exception == 6
    assert vmm.stats["retranslations"] >= 1
    assert vmm.stats["emulated_after_trap"] == TRAP_THRESHOLD


# ---------------------------------------------------------------- trap mode against bt


def sensitive_loop(n: int) -> fresh_machine.FreshSpec:
    # cli; pushfd; sti; popfd; mov eax, ss; dec ecx; jnz: with IF on at the start
    body = b"\xfa\x9c\xfb\x9d\x8c\xd0\x49\x75\xf7"
    return fresh_machine.FreshSpec(code=mov(ECX, n) + body, regs={"eflags": 0x202})


def test_trap_mode_pays_a_trap_per_sensitive_instruction_bt_none() -> None:
    n = 50
    spec = sensitive_loop(n)
    bare = run(spec, "bare")
    bt_vmm, trap_vmm = new_vmm("bt"), new_vmm("trap")
    bt, trap = run(spec, "bt", bt_vmm), run(spec, "trap", trap_vmm)
    assert differences(bare, bt) == []
    # CLI and STI trap (#GP at CPL 1, IOPL 0) and are emulated, with a world switch back each
    # time; PUSHF, POPF and MOV from SS do not trap, so trap mode cannot see them. Under bt,
    # CLI, STI, PUSHF, POPF and MOV from SS are in-TC templates: no trap and no callout at all.
    assert trap_vmm.stats["traps"] >= 2 * n
    assert trap_vmm.stats["world_switches"] >= 2 * n
    assert bt_vmm.stats["emulated_after_trap"] == 0  # (its one trap: the first touch of the stack page)
    assert bt_vmm.stats["world_switches"] <= 3
    assert bt_vmm.stats["callouts"] == 0  # spec/flags.r1: `translate inline popf_virtual`
    # And trap mode is wrong: the last POPF restores IF = 0 (pushed after the CLI), which POPF
    # at CPL 1 silently ignores, so the guest's IF stays on.
    assert not bare.regs["eflags"] & 0x200 and trap.regs["eflags"] & 0x200
    # (and MOV from SS shows RPL 1 in EAX, PUSHF pushed the real IF onto the stack)
    assert {d.split(":")[0].split(" ")[0] for d in differences(bare, trap)} == {"eflags", "eax", "memory"}


# ---------------------------------------------------------------- in-TC POPF and its slow path


def popf_loop(value: int, n: int) -> bytes:
    # mov ecx, n; top: push value; popfd; dec ecx... (DEC would overwrite POPF's arithmetic
    # flags, so the loop counts with LEA and JECXZ, which leave them alone)
    top = b"\x68" + struct.pack("<I", value) + b"\x9d" + b"\x8d\x49\xff" + b"\xe3\x02" + b"\xeb\xf3"
    return mov(ECX, n) + top


@pytest.mark.parametrize("value", [0x2, 0x202, 0x3202, 0x3002, 0x2C3, 0x244ED7])
def test_popf_is_emulated_in_the_tc(value: int) -> None:
    # IF, IOPL, the arithmetic flags, DF, NT, AC and ID: the guest sees every one, and no
    # POPF leaves the TC.
    bare, vmm = bt_and_bare(fresh_machine.FreshSpec(code=popf_loop(value, 50)))
    assert bare.regs["eflags"] & 0x3200 == value & 0x3200
    assert vmm.stats["callouts"] == 0
    assert vmm.stats["traps"] == vmm.stats["hidden_page_faults"] <= 1  # the stack page's first touch
    assert vmm.stats["rule_inline"] >= 1


def test_popf_setting_tf_takes_the_slow_path_and_single_steps_as_on_bare() -> None:
    # push 0x302; popfd (TF, IF); nop; nop: #DB after the first NOP, EIP at the second.
    spec = fresh_machine.FreshSpec(code=bytes.fromhex("68 02 03 00 00 9d 90 90"))
    bare, vmm = bt_and_bare(spec)
    assert bare.exception == 1 and bare.regs["eip"] == fresh_machine.CODE + 7
    assert vmm.stats["callouts"] == 1


@pytest.mark.parametrize("code", ["8c f0", "8c f8", "67 8c f0", "8c e3"])
def test_mov_from_a_segment_register_that_does_not_exist_is_ud_as_on_bare(code: str) -> None:
    # Sreg 6 and 7 do not exist: #UD. The in-TC template (spec/vmm.r1, `when ... src#=0..5`)
    # must not read past the six selectors in the vcpu page; 8c e3 (mov ebx, fs) is the control.
    bare, _ = bt_and_bare(fresh_machine.FreshSpec(code=bytes.fromhex(code)))
    assert (bare.exception == 6) == (code != "8c e3")


# ---------------------------------------------------------------- the instruction budget

AF_THEN_FAULT = "b0 01 04 0f 89 25 00 00 01 00 9c 58"  # add al, 0Fh (AF); store: hidden #PF; pushfd


@pytest.mark.parametrize("budget", [1, 2, 3, 4, 5, 100])
def test_a_budget_stops_bt_where_the_interpreter_stops(budget: int) -> None:
    from ring1.runtime.tools.snippet import run_interp, run_vmm

    spec = fresh_machine.FreshSpec(code=bytes.fromhex(AF_THEN_FAULT))
    ours, bt = run_interp(spec, budget), run_vmm(spec, "bt", budget)
    assert (bt.stop, bt.regs) == (ours.stop, ours.regs)
    if budget == 100:  # ran to the end: AF survived the restart of the faulting store
        assert bt.stop == "end" and bt.regs["eax"] & 0x10


def test_every_fact_of_the_spec_is_answered_by_the_translator() -> None:
    from ring1.generated.rules import FACTS
    from ring1.runtime.vmm import Vmm

    assert set(Vmm.FACTS) == set(FACTS)


def test_software_interrupts_are_known_from_the_spec() -> None:
    """Unicorn reports INT n and a fault alike; the VMM tells them apart by the forms whose
    semantics raise a software interrupt (FormInfo.soft_interrupt, from spec/control.r1)."""
    from ring1.generated.forms import FORMS

    soft = {name: f.soft_interrupt for name, f in FORMS.items() if f.soft_interrupt is not None}
    assert soft == {"INT_Ib": ("vector", 2), "INT3": (3, 3), "INTO": (4, 4), "ICEBP": (1, 5)}


def test_push_of_a_segment_register_is_emulated_in_the_tc() -> None:
    # PUSH ES, CS, SS, DS, FS, GS, each popped into a register: the guest's own selectors
    # (CS with the guest's RPL 0, not the TC's CPL 1; GS the guest's, not the VMM's),
    # zero-extended over a dirty stack slot, without a callout.
    dirty = b"\x68\xff\xff\xff\xff\x5f"  # push 0xffffffff; pop edi
    code = b""
    for push, pop in (
        (b"\x06", 0x58),
        (b"\x0e", 0x59),
        (b"\x16", 0x5A),
        (b"\x1e", 0x5B),
        (b"\x0f\xa0", 0x5D),
        (b"\x0f\xa8", 0x5E),
    ):
        code += dirty + push + bytes([pop])  # ... pop eax, ecx, edx, ebx, ebp, esi
    spec = fresh_machine.FreshSpec(code=code)
    vmm = new_vmm("bt")
    bt, bare = run(spec, "bt", vmm), run(spec, "bare")
    assert differences(bare, bt) == []
    got = [bt.regs[r] for r in ("eax", "ecx", "edx", "ebx", "ebp", "esi")]
    assert got == [bt.regs[s] for s in ("es", "cs", "ss", "ds", "fs", "gs")] and got[1] & 3 == 0
    assert vmm.stats["callouts"] == 0 and vmm.stats["rule_inline"] == 6


def test_push_cs_onto_its_own_code_page_from_the_tc() -> None:
    # The stack on the page of the code that pushes: the in-TC PUSH writes a page of translated
    # code (protected: it traps, is emulated, and the units of the page are dropped) and the
    # guest goes on in a fresh translation, as on bare.
    var = fresh_machine.CODE + 0x800
    code = b"\xbc" + struct.pack("<I", var) + b"\x0e" + b"\x8b\x0c\x24" + b"\x05\x01\x00\x00\x00" * 12
    vmm = new_vmm("bt")
    spec = fresh_machine.FreshSpec(code=code)
    bt, bare = run(spec, "bt", vmm), run(spec, "bare")
    assert differences(bare, bt) == []
    assert bt.regs["ecx"] == bt.regs["cs"] and vmm.stats["code_writes"] >= 1


# ---------------------------------------------------------------- MOV from a control register


def test_mov_from_cr0_cr2_cr3_cr4_reads_the_vcpu_page_in_the_tc() -> None:
    # spec/vmm.r1 mov_from_cr_virtual: no callout (ENABLE_PAGING's two writes are the only ones),
    # the guest's own values (not the hardware's shadow CR3 or its CR0 with WP and CR4 with TSD).
    reads = b"\x0f\x20\xc0\x0f\x20\xd3\x0f\x20\xd9\x0f\x20\xe2\x0f\x20\xc6"  # eax=cr0 ebx=cr2 ecx=cr3 edx=cr4 esi=cr0
    bare, vmm = bt_and_bare(paged(reads))
    assert bare.regs["ecx"] == PD and bare.regs["eax"] & 0x80000001 == 0x80000001
    assert vmm.stats["callouts"] == 2  # mov cr3, eax; mov cr0, eax


def test_mov_from_cr1_is_a_callout_that_raises_ud() -> None:
    spec = fresh_machine.FreshSpec(code=b"\x0f\x20\xc8")  # mov eax, cr1
    vmm = new_vmm("bt")
    ref, bt = run(spec, "interp"), run(spec, "bt", vmm)
    assert ref.exception == 6 and differences(ref, bt) == []


# ---------------------------------------------------------------- segment loads that change nothing


def _segment_loads(text: str, memory: dict[int, bytes] | None = None) -> fresh_machine.FreshSpec:
    from ring1.runtime.isa.assembler import assemble

    return fresh_machine.FreshSpec(code=assemble(text, origin=fresh_machine.CODE).code, memory=memory or {})


SEL_DATA0, SEL_WINDOW0 = fresh_machine.SEL_DATA0, fresh_machine.SEL_WINDOW0


def _system_call_with(handler: str) -> fresh_machine.FreshSpec:
    """The kernel IRETs to user code, which loads DS, ES and FS with its data selector and makes a system call; the
    kernel's INT 0x80 handler (at fresh_machine.HANDLER) is `handler`, then IRET."""
    from ring1.runtime.isa.assembler import assemble

    from .common import iret_to_user

    user = f"mov ax, {fresh_machine.SEL_DATA3}\nmov ds, ax\nmov es, ax\nmov fs, ax\nmov eax, 5\ncmp eax, 7"
    text = iret_to_user() + f"\nuser:\n{user}\nint 0x80\nsetl bl"
    kernel = assemble(handler + "\niretd", origin=fresh_machine.HANDLER).code
    code = assemble(text, origin=fresh_machine.CODE).code
    return fresh_machine.FreshSpec(code=code, memory={fresh_machine.HANDLER: kernel})


def test_reloading_the_selector_a_segment_register_holds_stays_in_the_tc() -> None:
    # spec/vmm.r1 mov_sreg_unchanged, pop_*_unchanged: in the kernel, entered from user code
    # (which had the VMM read the guest's tables), DS, ES and FS hold the user's selector, whose
    # GDT entry is what they cache: reloading it (MOV from a register, POP) is no callout. The
    # flags are the guest's throughout (set before the call, read after it).
    from .common import run_delivering

    reloads = """
        mov dx, ds
        mov ds, dx
        mov es, dx
        mov fs, dx
        push edx
        pop ds
        push edx
        pop es
        push edx
        pop fs
    """
    counts = {}
    for name, handler in (("reloads", reloads), ("nothing", "mov dx, ds")):
        spec = _system_call_with(handler)
        vmm = new_vmm("bt")
        bt, bare = run_delivering(spec, "bt", vmm), run_delivering(spec, "bare")
        assert bt.stop == "end" and differences(bare, bt, memory=False) == []
        assert bt.regs["ebx"] & 0xFF == 1
        counts[name] = vmm.stats["callouts"]
    assert counts["reloads"] == counts["nothing"]


def test_a_segment_load_that_changes_something_is_a_callout() -> None:
    # Another selector (the DATA window's base), then the first one back: each loads; a GDT
    # entry rewritten after its load (its base): reloading the same selector loads the new
    # descriptor, which the test sees through DS.
    window_entry = fresh_machine.GDT + SEL_WINDOW0
    text = f"""
        mov edx, {SEL_WINDOW0}
        mov ds, dx
        mov eax, [0]
        mov dword ptr es:[{window_entry + 2}], 0x93020000
        mov ds, dx
        mov ebx, [0]
        push {SEL_DATA0}
        pop ds
        mov ecx, [{fresh_machine.DATA}]
        mov esi, ds
    """
    memory = {fresh_machine.DATA: struct.pack("<I", 0x11111111), 0x20000: struct.pack("<I", 0x22222222)}
    bare, vmm = bt_and_bare(_segment_loads(text, memory))
    assert (bare.regs["eax"], bare.regs["ebx"], bare.regs["ecx"]) == (0x11111111, 0x22222222, 0x11111111)
    assert vmm.stats["callouts"] >= 3


@pytest.mark.parametrize("mode", ["bt", "interp"])
def test_a_pop_of_a_segment_whose_stack_read_faults_restarts_whole(mode: str) -> None:
    # POP DS with ESP on a page the guest's tables leave out: the #PF is the POP's, EAX and
    # ECX (the template's scratch) and ESP as they were.
    code = b"\xb8\x44\x33\x22\x11\xb9\x88\x77\x66\x55\xbc\x00\x00\x40\x00\x1f"  # eax, ecx, esp=0x400000; pop ds
    spec = paged(code)
    bare, got = run(spec, "bare"), run(spec, mode)
    assert bare.exception == 14 and differences(bare, got) == []
