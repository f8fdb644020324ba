"""Where unicorn is wrong on MMX and SSE/SSE2 integer instructions: the minimal cases behind
the deviations mmx-exponent, mmx-ts-before-ud, mmx-pending-x87 and sse-alignment in
deviations.py.

Each test runs one case on both machines and asserts unicorn's wrong outcome, the
interpreter's right one (with the SDM rule it follows), and that the recorded deviation
explains exactly that difference. A fixed unicorn, or a broken interpreter, makes the test
fail, and then the deviation should go.
"""

from __future__ import annotations

from ring1.runtime.tools import fresh_machine

from . import deviations
from .harness import Case, differences, run_both

PADDB_MM0_MM1 = "0f fc c1"
ONES, TWOS, THREES = 0x0101010101010101, 0x0202020202020202, 0x0303030303030303
EXPONENT = 0xFFFF << 64
FCW_IM_CLEAR = fresh_machine.FCW_INIT & ~1  # the invalid-operation exception unmasked
FSW_PENDING = 0x81  # ES and IE: an unmasked invalid operation waits for the next x87/MMX instruction


def _case(code: str, form: str, fpr: dict[int, int], **spec) -> Case:
    regs = [0] * 8
    for i, v in fpr.items():
        regs[i] = v
    return Case(fresh_machine.FreshSpec(code=bytes.fromhex(code), fpr=tuple(regs), **spec), [form])


def _explained(case: Case, o) -> str | None:
    d = deviations.explain(case, o)
    return d.name if d is not None else None


def test_mmx_write_sets_the_exponent() -> None:
    # PADDB mm0, mm1: the CPU writes MM0 into bits 63:0 of R0 and sets bits 79:64 to ones (SDM
    # vol. 1, 9.5.1). Unicorn keeps R0's exponent (0x1234 here). TOP = 0, all tags valid: both.
    case = _case(PADDB_MM0_MM1, "PADDB_MM_MMRM", {0: 0x1234 << 64 | ONES, 1: 0x5678 << 64 | TWOS}, fsw=0x2800, ftw=0x3)
    o = run_both(case)
    assert o.ours.regs["fpr0"] == EXPONENT | THREES
    assert o.theirs.regs["fpr0"] == 0x1234 << 64 | THREES
    assert o.ours.regs["fsw"] == o.theirs.regs["fsw"] == 0 and o.ours.regs["ftw"] == o.theirs.regs["ftw"] == 0xFF
    assert differences(o) == [f"fpr0: ours {EXPONENT | THREES:#x}, unicorn {0x1234 << 64 | THREES:#x}"]
    assert _explained(case, o) == "mmx-exponent"
    # Already all ones, nothing differs.
    same = _case(PADDB_MM0_MM1, "PADDB_MM_MMRM", {0: EXPONENT | ONES, 1: TWOS})
    assert differences(run_both(same)) == []


def test_mmx_em_before_ts() -> None:
    # CR0.EM and CR0.TS both set: #UD (SDM vol. 3, chapter 12, the table of the actions MMX
    # instructions take for EM, MP and TS). Unicorn raises #NM.
    both = fresh_machine.CR0_EM | fresh_machine.CR0_TS
    case = _case(PADDB_MM0_MM1, "PADDB_MM_MMRM", {0: ONES, 1: TWOS}, cr0_bits=both)
    o = run_both(case)
    assert (o.ours.exception, o.theirs.exception) == (6, 7)
    assert differences(o) == ["exception: ours 6, unicorn 7"]
    assert _explained(case, o) == "mmx-ts-before-ud"
    # EM alone: #UD on both; TS alone: #NM on both.
    for bits, vector in ((fresh_machine.CR0_EM, 6), (fresh_machine.CR0_TS, 7)):
        o = run_both(_case(PADDB_MM0_MM1, "PADDB_MM_MMRM", {0: ONES, 1: TWOS}, cr0_bits=bits))
        assert o.ours.exception == o.theirs.exception == vector and differences(o) == []


def test_mmx_pending_x87_exception_raises_mf() -> None:
    # An unmasked invalid operation is pending (FSW.ES) and CR0.NE is set: the MMX instruction
    # raises #MF before it changes anything. Unicorn runs it.
    spec = {"fsw": FSW_PENDING, "fcw": FCW_IM_CLEAR, "ftw": 0x3}
    case = _case(PADDB_MM0_MM1, "PADDB_MM_MMRM", {0: ONES, 1: TWOS}, cr0_bits=fresh_machine.CR0_NE, **spec)
    o = run_both(case)
    assert o.ours.exception == 16 and o.ours.regs["eip"] == fresh_machine.CODE
    assert o.ours.regs["fpr0"] == ONES and o.ours.regs["fsw"] == FSW_PENDING and o.ours.regs["ftw"] == 0x3
    assert o.theirs.exception is None and o.theirs.regs["fpr0"] == THREES
    assert _explained(case, o) == "mmx-pending-x87"
    # CR0.NE clear: the CPU reports the error through FERR# (not modelled: the instruction runs,
    # as with IGNNE#), so both machines run it; only the exponent differs.
    o = run_both(_case(PADDB_MM0_MM1, "PADDB_MM_MMRM", {0: ONES, 1: TWOS}, **spec))
    assert o.ours.exception is None and o.theirs.exception is None
    assert differences(o) == [f"fpr0: ours {EXPONENT | THREES:#x}, unicorn {THREES:#x}"]


def test_sse_misaligned_m128_raises_gp() -> None:
    # PADDB xmm0, [eax] with EAX = 0x10008: a 128-bit operand not 16-byte aligned raises #GP(0)
    # (SDM vol. 1, 11.6.7) before the operand is read. Unicorn adds.
    sse_on = fresh_machine.CR4_OSFXSR | fresh_machine.CR4_OSXMMEXCPT
    misaligned = fresh_machine.FreshSpec(code=bytes.fromhex("66 0f fc 00"), regs={"eax": 0x10008}, cr4=sse_on)
    case = Case(misaligned, ["PADDB_XMM_XMMRM"])
    o = run_both(case)
    assert o.ours.exception == 13 and o.ours.regs["eip"] == fresh_machine.CODE and o.ours.regs["xmm0"] == 0
    assert o.theirs.exception is None
    assert _explained(case, o) == "sse-alignment"
    # Aligned, or MOVDQU (which takes any address): both machines agree.
    aligned = fresh_machine.FreshSpec(code=bytes.fromhex("66 0f fc 00"), regs={"eax": 0x10010}, cr4=sse_on)
    assert differences(run_both(Case(aligned, ["PADDB_XMM_XMMRM"]))) == []
    movdqu = fresh_machine.FreshSpec(code=bytes.fromhex("f3 0f 6f 00"), regs={"eax": 0x10008}, cr4=sse_on)
    assert differences(run_both(Case(movdqu, ["MOVDQU_XMM_XMMRM"]))) == []
