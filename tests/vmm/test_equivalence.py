"""The VMM is invisible: random guest kernel code runs the same under `bt` as under `bare`.

`bare` is the guest on unicorn at its own CPL 0 (`ring1 exec --mode bare`); `bt` translates
the same code to run at CPL 1 (`ring1 exec --mode bt`). The programs (tests/vmm/programs.py)
come from the spec's encodings: arithmetic, logic, shifts, data movement, string ops, flag
ops, stack ops, forward branches, counted loops, direct and indirect calls and returns,
register- and memory-indirect jumps, and about a quarter of the time one of the sensitive
instructions that do not trap at CPL 1 (programs.STEALTH). The comparison
(common.differences) covers the 8 GPRs, EIP, all of EFLAGS (IF and IOPL included), the six
selectors, the exception vector, and every byte of guest memory.

All of EFLAGS but the flags the spec leaves undefined at the end of the run: those whose last
writer, on the path `bare` took (its translation blocks, reported by a block hook), is declared
`undef` by its form (tests/undefined_flags.py). Unicorn computes them lazily, and its result
depends on where its blocks end, which differs between `bare` and `bt`. A program in which an
instruction read such a flag (AAA after BTC, a JC after BSF, PUSHF) is no evidence either way:
it is skipped (hypothesis `assume`, counted among the invalid examples in
`--hypothesis-show-statistics`).

The same stealth instructions under `trap` (naive trap-and-emulate: the kernel run directly
at CPL 1) show the real, deprivileged CPU instead of the virtual one. That is asserted per
instruction, on a small concrete program, next to `bt` giving exactly what `bare` gives.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
from hypothesis import HealthCheck, assume, given, settings

from ring1.runtime.cpu import descriptors
from ring1.runtime.tools import fresh_machine
from ring1.runtime.tools.snippet import SnippetResult

from ..diff.deviations import CF_AF_OF
from ..undefined_flags import flag_names
from .common import differences, new_vmm, run
from .programs import STEALTH, Program, program_ending_with, programs, run_bare_traced

IF, IOPL = 0x200, 0x3000
ZF = 0x40


def _settings(diff_settings: dict, scale: float) -> settings:
    n = max(1, round(diff_settings["max_examples"] * scale))
    return settings(
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        max_examples=n,
        derandomize=diff_settings["derandomize"],
    )


# ---------------------------------------------------------------- the property


def test_random_kernel_code_bt_equals_bare(diff_settings: dict) -> None:
    """The issue's property: bt and bare agree on everything the guest can see."""

    tally: Counter[str] = Counter()

    @_settings(diff_settings, 10)  # 120 programs by default (--diff-examples 12)
    @given(programs(stealth=STEALTH))
    def check(program: Program) -> None:
        assert_bt_equals_bare(program, tally)

    check()
    report(tally)


def assert_bt_equals_bare(program: Program, tally: Counter[str]) -> None:
    """Runs `program` under bare and bt and requires every difference the guest can see to be
    absent, but in the flags the spec leaves undefined at the end of the run (their last writer
    on the path bare took left them so: unicorn's value depends on where its blocks end). A run
    in which an instruction read such a flag is no evidence either way: hypothesis counts it as
    an invalid example, and `tally` counts it."""
    spec = program.spec()
    bare, ran = run_bare_traced(spec)
    assert bare.stop in ("end", "exception"), (bare.stop, bare.diagnosis)
    tally["read an undefined flag" if ran.reads else "compared"] += 1
    tally["compared with flags masked"] += bool(ran.undefined and not ran.reads)
    assume(not ran.reads)
    bt = run(spec, "bt")
    diffs = differences(without_flags(bare, ran.undefined), without_flags(bt, ran.undefined))
    if diffs and bare_lost_flags_at_a_fault(spec, bare, bt, ran.undefined):
        tally["bare wrong at a fault (deviation fault-flags), bt equal to the interpreter"] += 1
        return
    assert diffs == [], (program, f"not compared: {' '.join(flag_names(ran.undefined)) or 'nothing'}", diffs)


def bare_lost_flags_at_a_fault(
    spec: fresh_machine.FreshSpec, bare: SnippetResult, bt: SnippetResult, undefined: int
) -> bool:
    """Unicorn changes CF, AF and OF when an instruction faults right after one that set them
    (deviation fault-flags, tests/diff/test_deviations_alu.py): where bare stopped at a fault
    and differs from bt in those flags alone, bt must equal the spec (the interpreter) exactly."""
    if bare.stop != "exception" or ((bare.regs["eflags"] ^ bt.regs["eflags"]) & ~undefined & ~CF_AF_OF):
        return False
    if differences(without_flags(bare, CF_AF_OF | undefined), without_flags(bt, CF_AF_OF | undefined)):
        return False
    interp = run(spec, "interp")
    return not differences(without_flags(interp, undefined), without_flags(bt, undefined))


def report(tally: Counter[str]) -> None:
    """Prints the tally (`pytest -rP` shows it). Hypothesis draws the skipped programs on top of
    the valid ones it was asked for, so the number compared stays `max_examples`."""
    print(", ".join(f"{n} {what}" for what, n in sorted(tally.items())))


def without_flags(r: SnippetResult, flags: int) -> SnippetResult:
    return dataclasses.replace(r, regs=r.regs | {"eflags": r.regs["eflags"] & ~flags})


# ---------------------------------------------------------------- which flags are compared

AF, CF, OF, PF, SF = 0x10, 0x1, 0x800, 0x4, 0x80
AND_EAX_EBX, ADD_EAX_1, JZ_3 = bytes.fromhex("21d8"), bytes.fromhex("83c001"), bytes.fromhex("7403")


@pytest.mark.parametrize("eax, undefined", [(0, AF), (1, 0)], ids=["if-skipped", "if-ran"])
def test_undefined_flags_follow_the_path_bare_took(eax: int, undefined: int) -> None:
    # and eax, ebx (AF undefined); jz over: add eax, 1 (AF defined) -- whether ADD ran is data
    spec = fresh_machine.FreshSpec(code=AND_EAX_EBX + JZ_3 + ADD_EAX_1, regs={"eax": eax, "ebx": 1})
    bare, ran = run_bare_traced(spec)
    assert bare.stop == "end" and bare.regs["eax"] == (2 if eax else 0)  # the ADD ran or not
    assert ran.undefined == undefined and ran.reads == []


@pytest.mark.parametrize("first, undefined", [(AND_EAX_EBX, AF), (bytes.fromhex("01d8"), 0)], ids=["and", "add"])
def test_an_instruction_that_faults_leaves_the_flags_of_the_one_before(first: bytes, undefined: int) -> None:
    # ...; div ecx with ECX 0: #DE, and DIV (which would leave all six undefined) did not run
    spec = fresh_machine.FreshSpec(code=first + bytes.fromhex("f7f1"), regs={"ecx": 0})
    bare, ran = run_bare_traced(spec)
    assert (bare.stop, bare.exception, bare.regs["eip"]) == ("exception", 0, fresh_machine.CODE + 2)
    assert ran.undefined == undefined


BSF_EAX_EBX, SHL_EAX_CL, REPE_CMPSB = bytes.fromhex("0fbcc3"), bytes.fromhex("d3e0"), bytes.fromhex("f3a6")


@pytest.mark.parametrize("ecx, undefined", [(0, CF | OF | SF | AF | PF), (1, AF), (32, CF | OF | SF | AF | PF)])
def test_a_shift_by_a_masked_count_of_zero_changes_no_flag(ecx: int, undefined: int) -> None:
    # bsf eax, ebx leaves CF OF SF AF PF undefined; shl eax, cl defines all but AF unless CL & 31 is 0
    spec = fresh_machine.FreshSpec(code=BSF_EAX_EBX + SHL_EAX_CL, regs={"ebx": 6, "ecx": ecx})
    _, ran = run_bare_traced(spec)
    assert ran.undefined == undefined


@pytest.mark.parametrize("ecx, undefined", [(0, AF), (2, 0), (0x10000, 0)])
def test_a_rep_string_instruction_with_a_count_of_zero_changes_no_flag(ecx: int, undefined: int) -> None:
    # and eax, ebx (AF undefined); repe cmpsb defines all six unless ECX is 0
    regs = {"ecx": ecx, "esi": fresh_machine.DATA, "edi": fresh_machine.DATA + 0x100}
    _, ran = run_bare_traced(fresh_machine.FreshSpec(code=AND_EAX_EBX + REPE_CMPSB, regs=regs))
    assert ran.undefined == undefined


def test_bt_and_bare_differ_in_a_flag_left_undefined_which_is_not_compared() -> None:
    # shl eax, 1; btc eax, ebx: BTC leaves OF undefined, and unicorn's OF differs with where its
    # blocks end (the campaigns' failure): the two runs differ there, and only there.
    spec = fresh_machine.FreshSpec(code=bytes.fromhex("d1e0 0fbbd8"), regs={"eax": 0xCC22_AF58, "ebx": 0x677F_6CBD})
    bare, ran = run_bare_traced(spec)
    bt = run(spec, "bt")
    assert (bare.regs["eflags"] ^ bt.regs["eflags"]) == OF and len(differences(bare, bt)) == 1
    assert ran.undefined == OF | SF | AF | PF and ran.reads == []
    assert differences(without_flags(bare, ran.undefined), without_flags(bt, ran.undefined)) == []


def test_bare_loses_flags_at_a_fault_after_a_flag_writer_and_bt_equals_the_spec() -> None:
    # sub al, 2; div cl with CL 0: #DE right after SUB; unicorn (bare) changes AF (deviation
    # fault-flags), bt reports SUB's flags as the interpreter does
    spec = fresh_machine.FreshSpec(code=bytes.fromhex("2c02 f6f1"), regs={"eax": 0x100, "ecx": 0})
    bare, ran = run_bare_traced(spec)
    bt, interp = run(spec, "bt"), run(spec, "interp")
    assert bare.exception == bt.exception == 0 and ran.undefined == 0
    assert differences(bt, interp) == [] and (bare.regs["eflags"] ^ bt.regs["eflags"]) == AF
    assert bare_lost_flags_at_a_fault(spec, bare, bt, ran.undefined)
    # and not when bt is off the spec in anything else
    assert not bare_lost_flags_at_a_fault(spec, bare, dataclasses.replace(bt, regs=bt.regs | {"ecx": 1}), 0)


def test_the_issue_program_reads_an_undefined_flag() -> None:
    # shl eax, 1; btc eax, ebx; aaa: AAA reads the AF that BTC (and SHL) left undefined, and
    # leaves OF SF ZF PF undefined itself (the campaign's failure: OF told apart by unicorn's blocks)
    spec = fresh_machine.FreshSpec(code=bytes.fromhex("d1e0 0fbbd8 37"))
    _, ran = run_bare_traced(spec)
    assert [(eip, form) for eip, form, _ in ran.reads] == [(fresh_machine.CODE + 5, "AAA")]
    assert ran.reads[0][2] == AF
    assert ran.undefined == OF | SF | ZF | PF


def test_a_condition_reads_only_its_own_flags() -> None:
    # and eax, ebx leaves AF undefined; jz, jc, jo, jp do not read AF (cond in spec/prelude.r1)
    for jcc in ("74", "72", "70", "7a"):
        _, ran = run_bare_traced(fresh_machine.FreshSpec(code=AND_EAX_EBX + bytes.fromhex(jcc + "00")))
        assert ran.reads == [] and ran.undefined == AF
    # bsf leaves CF undefined: jc (CF) and ja (CF, ZF) read it, jz does not
    for jcc, reads in (("72", True), ("77", True), ("74", False)):
        _, ran = run_bare_traced(fresh_machine.FreshSpec(code=bytes.fromhex("0fbcc3" + jcc + "00"), regs={"ebx": 2}))
        assert bool(ran.reads) == reads, jcc


@pytest.mark.parametrize("form", STEALTH)
def test_stealth_result_is_the_last_thing_bt_equals_bare(form: str, diff_settings: dict) -> None:
    """Programs whose last instruction is the stealth instruction: nothing after it can hide
    what it returned (in a register, in memory, or in the flags)."""

    tally: Counter[str] = Counter()

    @_settings(diff_settings, 1 / 3)
    @given(program_ending_with(form))
    def check(program: Program) -> None:
        assert_bt_equals_bare(program, tally)

    check()
    report(tally)


# Recorded unicorn deviations (tests/diff/deviations.py) are left out of the random pool,
# since `bare` (unicorn) is wrong there. Under `bt` the deviating encodings do not reach
# unicorn's faulty path (TEST F6/F7 /1 raises #UD on unicorn, bt emulates it after the trap;
# SMSW r32 is translated to the in-TC template that stores all of the virtual CR0), so bt
# gives the architected result: compared with the interpreter (the spec) instead.
@pytest.mark.parametrize("form", ["TEST_RMb_Ib_F6r1", "TEST_RMv_Iv_F7r1", "SMSW"])
def test_deviating_forms_under_bt_equal_the_spec(form: str, diff_settings: dict) -> None:
    @_settings(diff_settings, 1 / 3)
    @given(programs(pool=[form], max_chunks=3, neutral=False))
    def check(program) -> None:
        spec = program.spec()
        assert differences(run(spec, "interp"), run(spec, "bt")) == [], program

    check()


# ---------------------------------------------------------------- trap mode diverges


def _eax_if(bare, trap) -> bool:
    return not bare.regs["eax"] & IF and trap.regs["eax"] & IF


LDT_DESCRIPTOR = descriptors.segment(0x11000, 0xFF, 0x82, 0x0)  # an LDT, put in the GDT's slot 0x38

# name: (code, initial registers, extra memory, what trap shows instead of the virtual CPU)
STEALTH_CASES = {
    # pushfd; pop eax: the real IF (on at CPL 1 while the guest's is off) ...
    "PUSHF (IF)": (bytes.fromhex("9c58"), {}, {}, _eax_if),
    # ... and the real IOPL (0) where the guest's is 3
    "PUSHF (IOPL)": (
        bytes.fromhex("9c58"),
        {"eflags": IOPL | IF},
        {},
        lambda b, t: b.regs["eax"] & IOPL == IOPL and t.regs["eax"] & IOPL == 0,
    ),
    # push 0x200; popfd: at CPL 1 with IOPL 0, POPF leaves IF alone, silently
    "POPF (IF)": (
        bytes.fromhex("68000200009d"),
        {},
        {},
        lambda b, t: b.regs["eflags"] & IF and not t.regs["eflags"] & IF,
    ),
    # push 0x3000; popfd: and IOPL too (only CPL 0 changes it)
    "POPF (IOPL)": (
        bytes.fromhex("68003000009d"),
        {},
        {},
        lambda b, t: b.regs["eflags"] & IOPL == IOPL and t.regs["eflags"] & IOPL == 0,
    ),
    # mov eax, cs: the RPL is the real CPL, 1 (and the selector the VMM's slot)
    "MOV from Sreg (CS)": (
        bytes.fromhex("8cc8"),
        {},
        {},
        lambda b, t: b.regs["eax"] & 3 == 0 and t.regs["eax"] & 3 == 1,
    ),
    # mov eax, ss: likewise
    "MOV from Sreg (SS)": (
        bytes.fromhex("8cd0"),
        {},
        {},
        lambda b, t: b.regs["eax"] == 0x10 and t.regs["eax"] & 3 == 1,
    ),
    # push cs; pop eax
    "PUSH CS": (bytes.fromhex("0e58"), {}, {}, lambda b, t: b.regs["eax"] == 0x08 and t.regs["eax"] & 3 == 1),
    # push ss; pop eax
    "PUSH SS": (bytes.fromhex("1658"), {}, {}, lambda b, t: b.regs["eax"] == 0x10 and t.regs["eax"] & 3 == 1),
    # sgdt [0x10000]; mov eax, [0x10002]: the base of the VMM's GDT, in the VMM's area
    "SGDT": (
        bytes.fromhex("0f010500000100a102000100"),
        {},
        {},
        lambda b, t: b.regs["eax"] == fresh_machine.GDT and t.regs["eax"] >= 0xFFC00000,
    ),
    # sidt [0x10000]; mov eax, [0x10002]
    "SIDT": (
        bytes.fromhex("0f010d00000100a102000100"),
        {},
        {},
        lambda b, t: b.regs["eax"] == fresh_machine.IDT and t.regs["eax"] >= 0xFFC00000,
    ),
    # mov ax, 0x38; lldt ax; sldt eax: LLDT traps (#GP at CPL 1) and is emulated into the
    # virtual LDTR, the hardware's stays null, and SLDT (which does not trap) reads that
    "SLDT (after LLDT)": (
        bytes.fromhex("66b838000f00d00f00c0"),
        {},
        {fresh_machine.GDT + 0x38: LDT_DESCRIPTOR},
        lambda b, t: b.regs["eax"] == 0x38 and t.regs["eax"] == 0,
    ),
    # smsw eax: the real CR0 has NE (and PG, WP: beyond the low word) set for the VMM
    # str eax: the hardware task register is the VMM's (none loaded), not the guest's 0x28
    "STR": (
        bytes.fromhex("0f00c8"),
        {},
        {},
        lambda b, t: b.regs["eax"] == fresh_machine.SEL_TSS and t.regs["eax"] != 0x28,
    ),
    # mov eax, 8; lar ecx, eax: looked up in the VMM's GDT, where slot 1 is empty
    "LAR": (
        bytes.fromhex("b8080000000f02c8"),
        {},
        {},
        lambda b, t: b.regs["eflags"] & ZF and not t.regs["eflags"] & ZF and b.regs["ecx"] != t.regs["ecx"],
    ),
    # mov eax, 8; lsl ecx, eax
    "LSL": (
        bytes.fromhex("b8080000000f03c8"),
        {},
        {},
        lambda b, t: b.regs["eflags"] & ZF and not t.regs["eflags"] & ZF and b.regs["ecx"] != t.regs["ecx"],
    ),
    # mov eax, 8; verr ax
    "VERR": (
        bytes.fromhex("b8080000000f00e0"),
        {},
        {},
        lambda b, t: b.regs["eflags"] & ZF and not t.regs["eflags"] & ZF,
    ),
    # mov eax, 0x10; verw ax
    "VERW": (
        bytes.fromhex("b8100000000f00e8"),
        {},
        {},
        lambda b, t: b.regs["eflags"] & ZF and not t.regs["eflags"] & ZF,
    ),
}


@pytest.mark.parametrize("name", sorted(STEALTH_CASES))
def test_trap_mode_shows_the_real_cpu_on_a_stealth_instruction(name: str) -> None:
    code, regs, memory, shows_real = STEALTH_CASES[name]
    spec = fresh_machine.FreshSpec(code=code, regs=regs, memory=memory)
    bare, bt, trap = run(spec, "bare"), run(spec, "bt"), run(spec, "trap")
    assert bare.stop == "end"
    assert differences(bare, bt) == []
    assert differences(bare, trap) != []
    assert shows_real(bare, trap), differences(bare, trap)


# Stealth instructions trap mode gets right, and why.


@pytest.mark.parametrize("code, eflags", [(b"\xfa", IF), (b"\xfb", 0)], ids=["CLI", "STI"])
def test_trap_mode_gets_cli_and_sti_right_because_they_trap(code: bytes, eflags: int) -> None:
    # CLI and STI are sensitive but not stealthy at CPL 1 with IOPL 0: they raise #GP, so
    # trap-and-emulate sees them and emulates them on the virtual IF. (They are in STEALTH for
    # bt, which must not take the trap: there they are in-TC templates on the vcpu page.)
    spec = fresh_machine.FreshSpec(code=code, regs={"eflags": eflags | 0x2})
    bare = run(spec, "bare")
    trap_vmm, bt_vmm = new_vmm("trap"), new_vmm("bt")
    trap, bt = run(spec, "trap", trap_vmm), run(spec, "bt", bt_vmm)
    assert bare.regs["eflags"] & IF == (IF if code == b"\xfb" else 0)
    assert differences(bare, trap) == []
    assert differences(bare, bt) == []
    assert trap_vmm.stats["emulated_after_trap"] == 1  # it trapped, and was emulated
    assert bt_vmm.stats["traps"] == 0 and bt_vmm.stats["rule_inline"] >= 1


def test_trap_mode_gets_smsw_right_because_the_hardware_has_the_guests_cr0_bits() -> None:
    # SMSW is unprivileged and stealthy, but what it shows (PE MP EM TS ET NE) is what the
    # hardware's CR0 holds in guest context: the guest's FPU bits (the VMM keeps them there so
    # that FPU instructions fault with #NM where the guest's would) and PE, set in both.
    spec = fresh_machine.FreshSpec(code=bytes.fromhex("0f01e0"), cr0_bits=fresh_machine.CR0_MP)  # smsw eax
    bare, bt, trap = run(spec, "bare"), run(spec, "bt"), run(spec, "trap")
    assert bare.regs["eax"] & 0xFFFF == 0x13  # PE MP ET
    assert differences(bare, bt) == [] and differences(bare, trap) == []


def test_sldt_on_the_fresh_machine_does_not_show_trap_mode() -> None:
    # On the fresh machine the guest's LDTR is null and so is the hardware's under the VMM:
    # SLDT returns 0 in every mode, so it cannot tell trap mode apart here (it does after an
    # LLDT: "SLDT (after LLDT)" above).
    spec = fresh_machine.FreshSpec(code=bytes.fromhex("b8ffffffff0f00c0"))  # mov eax, -1; sldt eax
    bare, bt, trap = run(spec, "bare"), run(spec, "bt"), run(spec, "trap")
    assert bare.regs["eax"] == 0
    assert differences(bare, bt) == [] and differences(bare, trap) == []
