"""Where unicorn is wrong for the ALU families (spec/arith.r1 logic.r1 shift.r1 bit.r1), proven.

Each test runs a minimal case on both machines, asserts unicorn's wrong outcome and the
interpreter's architectural one, and checks that the matching entry of deviations.py
accepts exactly that outcome and not a neighbouring one.
"""

from __future__ import annotations

from dataclasses import replace

from ring1.runtime.tools import fresh_machine

from . import deviations
from .harness import Case, differences, reference, run_both, window_segments

ZF, PF, CF, AF, SF = 1 << 6, 1 << 2, 1, 1 << 4, 1 << 7


def case(code: str, form: str | list[str], **regs: int) -> Case:
    spec = fresh_machine.FreshSpec(code=bytes.fromhex(code), regs=regs, segs=window_segments(0, False))
    return Case(spec, [form] if isinstance(form, str) else form)


def test_test_f6_r1_is_test() -> None:
    # F6 /1 ib is TEST r/m8, imm8 on processors: Intel's own decoder (XED) has the iforms
    # TEST_GPR8_IMMb_F6r1 / TEST_GPRv_IMMz_F7r1, AMD's APM lists the /1 alias, and capstone
    # decodes it as test. Unicorn (QEMU 5's decoder) raises #UD.
    c = case("f6 c8 05", "TEST_RMb_Ib_F6r1", eax=0x0A)  # test al, 5 with AL = 0Ah: zero result
    o = run_both(c)
    assert o.theirs.exception == 6 and o.theirs.regs["eip"] == fresh_machine.CODE
    assert o.ours.exception is None and o.ours.regs["eip"] == fresh_machine.CODE + 3
    assert o.ours.regs["eflags"] & (ZF | PF | CF) == ZF | PF
    # The same instruction encoded as F6 /0 runs on unicorn with the interpreter's result.
    ref = reference(0, False)
    r0 = ref.run(deviations.as_test_r0(c))
    assert r0.exception is None and r0.regs["eflags"] == o.ours.regs["eflags"]
    d = deviations.explain(c, o)
    assert d is not None and d.name == "test-f6f7-r1"


def test_test_f7_r1_is_test() -> None:
    c = case("66 f7 c8 00 80", "TEST_RMv_Iv_F7r1", eax=0x8000)  # test ax, 8000h: SF set
    o = run_both(c)
    assert o.theirs.exception == 6
    assert o.ours.exception is None and o.ours.regs["eflags"] & 0x80
    d = deviations.explain(c, o)
    assert d is not None and d.name == "test-f6f7-r1"


def test_bt_register_offset_past_the_segment_limit() -> None:
    # bt [0], eax with EAX = 80000h: the bit offset selects the dword at EA + 80000h / 8 =
    # 10000h (SDM BT: "EA + (4 * (BitOffset DIV 32))"), one byte past the 64 KB window's
    # limit, so the CPU raises #GP(0) (SDM Vol. 3A 5.3, limit checking). Unicorn does not
    # check data segment limits and reads the memory past the segment.
    c = case("0f a3 05 00 00 00 00", "BT_Mv_Rv", eax=0x80000)
    o = run_both(c)
    assert o.ours.exception == 13 and o.ours.error_code == 0 and o.ours.regs["eip"] == fresh_machine.CODE
    assert o.theirs.exception is None and o.theirs.regs["eip"] == fresh_machine.CODE + 7
    assert deviations.bt_offset(c) == (0x10000, 4)
    d = deviations.explain(c, o)
    assert d is not None and d.name == "bt-segment-limit"


def test_bt_register_offset_inside_the_segment_is_compared() -> None:
    # The last dword of the window: both machines agree, and no deviation is involved.
    c = case("0f ab 05 00 00 00 00", "BTS_Mv_Rv", eax=0x7FFE0 - 1)  # bit 31 of the dword at 0FFF8h
    o = run_both(c)
    assert deviations.bt_offset(c) == (0xFFF8, 4)
    assert o.ours.exception is None and not differences(o)


def test_bt_negative_offset_below_the_segment() -> None:
    # A negative 16-bit offset: bt word [2], ax with AX = 8000h reaches 2 - 1000h, which wraps
    # to FFFFF002h with a 32-bit address size: past the limit, #GP(0).
    c = case("66 0f a3 05 02 00 00 00", "BT_Mv_Rv", eax=0x8000)
    o = run_both(c)
    assert deviations.bt_offset(c) == (0xFFFFF002, 2)
    assert o.ours.exception == 13 and o.theirs.exception is None
    d = deviations.explain(c, o)
    assert d is not None and d.name == "bt-segment-limit"


def test_lock_on_instructions_that_do_not_take_it() -> None:
    # SDM LOCK: #UD when LOCK prefixes an instruction other than the listed read-modify-write
    # ones (ADD ADC AND BTC BTR BTS CMPXCHG DEC INC NEG NOT OR SBB SUB XOR XADD XCHG with a
    # memory destination). Unicorn raises #UD for some (LOCK CMP, LOCK ADD r, m) but runs
    # LOCK TEST, LOCK SHL and LOCK BT. The differential generator emits no LOCK prefix, so
    # no deviation is recorded; this pins the interpreter's behaviour.
    for code, form in (("f0 85 03", "TEST_RMv_Rv"), ("f0 d1 23", "SHL_RMv_1"), ("f0 0f a3 03", "BT_Mv_Rv")):
        o = run_both(case(code, form, ebx=0x100))
        assert o.ours.exception == 6 and o.ours.regs["eip"] == fresh_machine.CODE
        assert o.theirs.exception is None
    for code, form in (("f0 39 03", "CMP_RMv_Rv"), ("f0 01 c3", "ADD_RMv_Rv")):
        o = run_both(case(code, form, ebx=0x100))
        assert o.ours.exception == 6 and o.theirs.exception == 6
    o = run_both(case("f0 0f ab 03", "BTS_Mv_Rv", ebx=0x100))
    assert o.ours.exception is None and not differences(o)


def test_lock_neg_takes_sf_zf_pf_from_the_operand() -> None:
    # NEG byte [0x10000] with 01h there: the result FFh has SF and PF set (and CF, AF). Unicorn's
    # locked NEG reports SF = 0, PF = 0: the sign and parity of the operand 01h, not the result.
    SF, AF = 1 << 7, 1 << 4
    for value, locked in ((0x01, SF | PF), (0x10, SF | PF), (0x7F, SF | PF)):
        spec = fresh_machine.FreshSpec(
            code=bytes.fromhex("f0 f6 1d 00 00 01 00"), regs={"eflags": 2}, memory={fresh_machine.DATA: bytes([value])}
        )
        c = Case(spec, ["NEG_RMb"])
        o = run_both(c)
        assert o.ours.regs["eflags"] & (SF | ZF | PF) == locked
        assert o.theirs.regs["eflags"] & (SF | ZF | PF) == 0  # operand: positive, non-zero, odd parity
        assert (
            o.ours.regs["eflags"] & (CF | AF) == o.theirs.regs["eflags"] & (CF | AF) == CF | (AF if value & 0xF else 0)
        )
        assert o.our_memory == o.their_memory
        d = deviations.explain(c, o)
        assert d is not None and d.name == "lock-neg-flags"
        # Without LOCK unicorn computes them from the result, as the interpreter does.
        r = reference(0, False).run(deviations.as_unlocked(c))
        assert r.regs["eflags"] == o.ours.regs["eflags"]
    # 80h negates to itself: operand and result agree, and so do the machines.
    spec = fresh_machine.FreshSpec(
        code=bytes.fromhex("f0 f6 1d 00 00 01 00"), regs={"eflags": 2}, memory={fresh_machine.DATA: b"\x80"}
    )
    assert differences(run_both(Case(spec, ["NEG_RMb"]))) == []


def test_lock_neg_deviation_accepts_nothing_else() -> None:
    # The same wrong flags on an unlocked NEG would be a real disagreement: not accepted.
    spec = fresh_machine.FreshSpec(
        code=bytes.fromhex("f0 f6 1d 00 00 01 00"), regs={"eflags": 2}, memory={fresh_machine.DATA: b"\x01"}
    )
    c = Case(spec, ["NEG_RMb"])
    o = run_both(c)
    from dataclasses import replace

    wrong_reg = replace(o.theirs, regs={**o.theirs.regs, "ecx": 1})
    assert (
        deviations._lock_neg_flags_of_operand(
            c, deviations.Outcome(o.ours, wrong_reg, o.our_memory, o.their_memory, o.undefined)
        )
        is False
    )
    wrong_cf = replace(o.theirs, regs={**o.theirs.regs, "eflags": o.theirs.regs["eflags"] ^ CF})
    assert (
        deviations._lock_neg_flags_of_operand(
            c, deviations.Outcome(o.ours, wrong_cf, o.our_memory, o.their_memory, o.undefined)
        )
        is False
    )
    unlocked = deviations.as_unlocked(c)
    assert deviations._lock_neg_flags_of_operand(unlocked, run_both(unlocked)) is False


def test_a_fault_right_after_a_flag_writer_changes_cf_af_of_on_unicorn() -> None:
    # sub al, 2; div cl with AX = 100h and CL = 0: SUB leaves AL = FEh with CF, AF and SF set,
    # DIV raises #DE, and a fault changes no flag (SDM Vol. 3A 6.5: a fault reports the state
    # before the instruction). Unicorn reports AF clear after the fault; with a NOP between the
    # two, or without the DIV, it has AF set like the interpreter.
    c = case("2c 02 f6 f1", ["SUB_AL_Ib", "DIV_RMb"], eax=0x100, ecx=0)
    o = run_both(c)
    assert o.ours.exception == 0 == o.theirs.exception
    assert o.ours.regs["eip"] == fresh_machine.CODE + 2 == o.theirs.regs["eip"]
    assert o.ours.regs["eflags"] & (CF | AF | SF | ZF) == CF | AF | SF
    assert o.theirs.regs["eflags"] & (CF | AF | SF | ZF) == CF | SF
    for code in ("2c 02 90 f6 f1", "2c 02"):
        other = run_both(case(code, ["SUB_AL_Ib"], eax=0x100, ecx=0))
        assert other.theirs.regs["eflags"] == other.ours.regs["eflags"] == o.ours.regs["eflags"]
    d = deviations.explain(c, o)
    assert d is not None and d.name == "fault-flags"
    # Not a neighbouring outcome: a changed SF, or a register, is not explained.
    for regs in ({"eflags": o.theirs.regs["eflags"] ^ SF}, {"ecx": 1}):
        theirs = replace(o.theirs, regs={**o.theirs.regs, **regs})
        assert deviations.explain(c, replace(o, theirs=theirs)) is None
