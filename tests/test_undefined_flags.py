"""The undefined-flag bookkeeping shared by the differential and the VMM equivalence tests."""

from __future__ import annotations

from ring1.runtime.tools import fresh_machine

from .undefined_flags import condition_flags, executed_prefix, flag_mask, follow, form_effect, straight_line

AF, CF, ZF, SF, OF, PF = (flag_mask(f) for f in ("af", "cf", "zf", "sf", "of", "pf"))
CODE = bytes.fromhex("21d8 f7f1 37")  # and eax, ebx; div ecx; aaa


def test_conditions_read_the_flags_of_cond_in_the_spec() -> None:
    cc = condition_flags()
    assert (cc[4], cc[2], cc[7], cc[12], cc[15], cc[10]) == (ZF, CF, CF | ZF, SF | OF, ZF | SF | OF, PF)
    assert form_effect("JCC_REL8", 4).reads == ZF
    assert form_effect("SETCC_RMb", 0).reads == OF


def test_the_last_writer_decides() -> None:
    insns = straight_line(CODE, fresh_machine.CODE, True)
    assert [d.form for d in insns] == ["AND_RMv_Rv", "DIV_RMv", "AAA"]
    ran = follow(insns)  # DIV left AF undefined and AAA reads it
    assert [(eip, form, flags) for eip, form, flags in ran.reads] == [(fresh_machine.CODE + 4, "AAA", AF)]
    assert ran.undefined == OF | SF | ZF | PF  # AAA's own (it defines AF and CF)
    ran = follow(straight_line(bytes.fromhex("21d8 01d8 37"), fresh_machine.CODE, True))  # and; add; aaa
    assert ran.reads == [] and ran.undefined == OF | SF | ZF | PF
    assert follow(straight_line(bytes.fromhex("21d8 f8"), fresh_machine.CODE, True)).undefined == AF  # and; clc


def test_a_run_stopped_at_a_fault_or_a_trap_ran_the_instructions_before_its_eip() -> None:
    insns = straight_line(CODE, fresh_machine.CODE, True)
    assert follow(executed_prefix(insns, fresh_machine.CODE + 2)).undefined == AF  # #DE at DIV: only AND ran
    assert follow(executed_prefix(insns, fresh_machine.CODE)).undefined == 0  # AND faulted: nothing ran
    assert executed_prefix(insns, fresh_machine.CODE + 5) == insns  # ended: all ran


def test_the_differential_harness_masks_what_the_count_left_undefined() -> None:
    # bsf eax, ebx; shl eax, cl; rcl eax, 0: the flags the BSF left undefined stay so when CL is 0
    # (and RCL by an immediate 0 changes none either)
    from .diff.harness import Case, run_both, window_segments

    code = bytes.fromhex("0fbcc3 d3e0 c1d000")
    for ecx, undefined in ((0, CF | OF | SF | AF | PF), (3, AF)):
        spec = fresh_machine.FreshSpec(code=code, regs={"ebx": 6, "ecx": ecx}, segs=window_segments(0, False))
        outcome = run_both(Case(spec, ["BSF_Rv_RMv", "SHL_RMv_CL", "RCL_RMv_Ib"]))
        assert outcome.undefined == undefined and not outcome.reads_undefined
