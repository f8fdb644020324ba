"""Where unicorn is wrong on data-transfer instructions: the minimal cases behind the data
deviations in deviations.py.

Each test runs one case on both machines and asserts unicorn's wrong outcome, the
interpreter's right one (with the SDM rule it follows), and that the recorded deviation
explains exactly that difference and nothing more. A fixed unicorn, or a broken
interpreter, makes the test fail, and then the deviation should go.
"""

from __future__ import annotations

from ring1.runtime.tools import fresh_machine

from . import deviations
from .harness import Case, differences, run_both, window_segments


def _case(code: str, forms: list[str], regs: dict[str, int], cpl: int = 0, real: bool = False) -> Case:
    spec = fresh_machine.FreshSpec(
        code=bytes.fromhex(code), regs=regs, cpl=cpl, real=real, segs=window_segments(cpl, real)
    )
    return Case(spec, forms)


def test_enter_o16_on_a_32bit_stack_writes_bp_only() -> None:
    # 66 C8 10 00 00: ENTER 0x10, 0 with a 16-bit operand size, in 32-bit protected mode
    # (SS.B = 1, so the stack size is 32). SDM, ENTER, Operation: "IF OperandSize = 32 THEN
    # EBP <- FrameTemp ELSE (* OperandSize = 16 *) BP <- FrameTemp" -- EBP[31:16] stays.
    # FrameTemp is ESP after pushing BP: 0x7000 - 2 = 0x6FFE; ESP = 0x6FFE - 0x10.
    case = _case("66 c8 10 00 00", ["ENTER"], {"ebp": 0xABCD6000})
    o = run_both(case)
    assert o.ours.exception is None and o.theirs.exception is None
    assert o.ours.regs["esp"] == o.theirs.regs["esp"] == 0x6FEE
    assert o.ours.regs["ebp"] == 0xABCD6FFE  # BP <- FrameTemp, EBP[31:16] kept
    assert o.theirs.regs["ebp"] == 0x00006FFE  # unicorn: all of EBP <- FrameTemp
    assert differences(o) == ["ebp: ours 0xabcd6ffe, unicorn 0x6ffe"]
    explained = deviations.explain(case, o)
    assert explained is not None and explained.name == "enter-o16-ebp"


def test_enter_o16_deviation_is_that_case_only() -> None:
    # With a nesting level the frame pointer is pushed too; memory agrees, only EBP differs.
    case = _case("66 c8 08 00 01", ["ENTER"], {"ebp": 0x12346000})
    o = run_both(case)
    assert differences(o) == ["ebp: ours 0x12346ffe, unicorn 0x6ffe"]
    assert deviations.explain(case, o) is not None
    # A 32-bit ENTER writes all of EBP on both machines: nothing to explain, nothing explained.
    case32 = _case("c8 08 00 01", ["ENTER"], {"ebp": 0x12346000})
    o32 = run_both(case32)
    assert differences(o32) == []
    assert deviations.explain(case32, o32) is None
    # When EBP's high half already matches FrameTemp's, the machines agree.
    same = _case("66 c8 10 00 00", ["ENTER"], {"ebp": 0x6000})
    assert differences(run_both(same)) == []
