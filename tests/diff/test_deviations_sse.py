"""Where unicorn is wrong on SSE instructions: the minimal cases behind the SSE deviations in
deviations.py.

Each test runs one case on both machines and asserts unicorn's wrong outcome, the
interpreter's right one (with the SDM rule it follows), and that the recorded deviation
explains exactly that difference. A fixed unicorn, or a broken interpreter, makes the test
fail, and then the deviation should go.
"""

from __future__ import annotations

from dataclasses import replace

from ring1.runtime.tools import fresh_machine

from . import deviations
from .harness import Case, Outcome, differences, run_both

SSE_ON = fresh_machine.CR4_OSFXSR | fresh_machine.CR4_OSXMMEXCPT
HIGH = 0x0123456789ABCDEF << 64  # an upper quadword the scalar forms must keep
ONE, TWO, QNAN, SNAN, DENORMAL = 0x3FF0000000000000, 0x4000000000000000, 0x7FF8000000000000, 0x7FF0000000000001, 0x1


def _case(code: str, form: str, xmm: dict[int, int], **spec) -> Case:
    regs = [0] * 8
    for i, v in xmm.items():
        regs[i] = v
    spec.setdefault("cr4", SSE_ON)
    return Case(fresh_machine.FreshSpec(code=bytes.fromhex(code), xmm=tuple(regs), **spec), [form])


def _explained(case: Case, o) -> str | None:
    d = deviations.explain(case, o)
    return d.name if d is not None else None


def test_66_prefix_with_f2_is_still_movsd() -> None:
    # 66 F2 0F 10 C1: with a mandatory F2, the 66 is ignored (SDM vol. 2, 2.1.1, "mandatory
    # prefix"): MOVSD xmm0, xmm1 moves the low double and keeps XMM0's high one. Unicorn runs
    # MOVUPD (66 0F 10) and copies all of XMM1.
    case = _case("66 f2 0f 10 c1", "MOVSD_XMM_XMM", {0: HIGH | ONE, 1: (TWO << 64) | TWO})
    o = run_both(case)
    assert o.ours.regs["xmm0"] == HIGH | TWO
    assert o.theirs.regs["xmm0"] == (TWO << 64) | TWO
    assert differences(o) == [f"xmm0: ours {HIGH | TWO:#x}, unicorn {(TWO << 64) | TWO:#x}"]
    assert _explained(case, o) == "sse-66-with-f2-f3"
    plain = _case("f2 0f 10 c1", "MOVSD_XMM_XMM", {0: HIGH | ONE, 1: (TWO << 64) | TWO})
    assert differences(run_both(plain)) == []


def test_cmpsd_ignores_imm8_bits_7_to_3() -> None:
    # F2 0F C2 C1 08: CMPSD xmm0, xmm1 with imm8 = 8. The legacy encoding compares "using bits
    # 2:0 of imm8 as comparison predicate" (SDM CMPSD): 8 is EQ. Unicorn raises #UD.
    case = _case("f2 0f c2 c1 08", "CMPSD_XMM_XMM_IMM8", {0: HIGH | ONE, 1: ONE})
    o = run_both(case)
    assert o.theirs.exception == 6 and o.theirs.regs["eip"] == fresh_machine.CODE
    assert o.ours.exception is None and o.ours.regs["xmm0"] == HIGH | (1 << 64) - 1
    assert _explained(case, o) == "cmpsd-imm8-reserved"
    # With imm8 = 0 both machines agree.
    assert differences(run_both(_case("f2 0f c2 c1 00", "CMPSD_XMM_XMM_IMM8", {0: HIGH | ONE, 1: ONE}))) == []


def test_cmpsd_sets_mxcsr_flags() -> None:
    # CMPSD LT with a QNaN: the predicate is false and, LT being a signalling predicate, the
    # invalid exception is detected: MXCSR.IE is set (masked, so no fault). Unicorn leaves
    # MXCSR alone.
    case = _case("f2 0f c2 c1 01", "CMPSD_XMM_XMM_IMM8", {0: HIGH | QNAN, 1: ONE})
    o = run_both(case)
    assert o.ours.regs["xmm0"] == o.theirs.regs["xmm0"] == HIGH
    assert o.ours.regs["mxcsr"] == 0x1F81 and o.theirs.regs["mxcsr"] == 0x1F80
    assert differences(o) == ["mxcsr: ours 0x1f81, unicorn 0x1f80"]
    assert _explained(case, o) == "sse-mxcsr-flags"
    # A denormal operand: MXCSR.DE.
    case = _case("f2 0f c2 c1 02", "CMPSD_XMM_XMM_IMM8", {0: DENORMAL, 1: ONE})
    o = run_both(case)
    assert o.ours.regs["xmm0"] == o.theirs.regs["xmm0"] == (1 << 64) - 1
    assert differences(o) == ["mxcsr: ours 0x1f82, unicorn 0x1f80"]
    assert _explained(case, o) == "sse-mxcsr-flags"
    # EQ with a QNaN is a quiet predicate: nothing detected, nothing to explain.
    case = _case("f2 0f c2 c1 00", "CMPSD_XMM_XMM_IMM8", {0: QNAN, 1: ONE})
    assert differences(run_both(case)) == []


def test_cmpsd_flags_deviation_is_exact() -> None:
    # A flag the operands do not call for is not explained: IE for a quiet compare of ordinary
    # numbers would be an interpreter bug, not unicorn's.
    case = _case("f2 0f c2 c1 00", "CMPSD_XMM_XMM_IMM8", {0: ONE, 1: TWO})
    o = run_both(case)
    assert differences(o) == []
    ours = replace(o.ours, regs={**o.ours.regs, "mxcsr": 0x1F81})
    fake = Outcome(ours, o.theirs, o.our_memory, o.their_memory, o.undefined)
    assert differences(fake) == ["mxcsr: ours 0x1f81, unicorn 0x1f80"]
    assert deviations.explain(case, fake) is None


def test_cmpsd_unmasked_invalid_faults() -> None:
    # CMPSD EQ with an SNaN and MXCSR.IM clear: the invalid exception is unmasked, so the
    # instruction faults with #XM (CR4.OSXMMEXCPT set), MXCSR.IE set, XMM0 unchanged (SDM
    # vol. 1, 11.5.1). Unicorn writes the result and goes on.
    mxcsr = 0x1F80 & ~0x80
    case = _case("f2 0f c2 c1 00", "CMPSD_XMM_XMM_IMM8", {0: HIGH | SNAN, 1: ONE}, mxcsr=mxcsr)
    o = run_both(case)
    assert o.ours.exception == 19 and o.ours.regs["eip"] == fresh_machine.CODE
    assert o.ours.regs["xmm0"] == HIGH | SNAN and o.ours.regs["mxcsr"] == mxcsr | 1
    assert o.theirs.exception is None and o.theirs.regs["xmm0"] == HIGH and o.theirs.regs["mxcsr"] == mxcsr
    assert _explained(case, o) == "sse-unmasked-exception"
    # Without CR4.OSXMMEXCPT the same fault is #UD.
    case = _case(
        "f2 0f c2 c1 00", "CMPSD_XMM_XMM_IMM8", {0: HIGH | SNAN, 1: ONE}, mxcsr=mxcsr, cr4=fresh_machine.CR4_OSFXSR
    )
    o = run_both(case)
    assert o.ours.exception == 6 and o.theirs.exception is None
    assert _explained(case, o) == "sse-unmasked-exception"


def test_sse_em_or_no_osfxsr_is_ud_before_ts() -> None:
    # CR0.EM and CR0.TS both set: #UD (SDM vol. 2, Table 2-21 lists #UD for CR0.EM = 1 and
    # CR4.OSFXSR = 0, #NM for CR0.TS = 1; Bochs checks #UD first). Unicorn raises #NM.
    em_ts = fresh_machine.CR0_EM | fresh_machine.CR0_TS
    case = _case("f2 0f 10 c1", "MOVSD_XMM_XMM", {}, cr0_bits=em_ts)
    o = run_both(case)
    assert (o.ours.exception, o.theirs.exception) == (6, 7)
    assert differences(o) == ["exception: ours 6, unicorn 7"]
    assert _explained(case, o) == "sse-ts-before-ud"
    case = _case("f2 0f 10 c1", "MOVSD_XMM_XMM", {}, cr0_bits=fresh_machine.CR0_TS, cr4=0)
    o = run_both(case)
    assert (o.ours.exception, o.theirs.exception) == (6, 7)
    assert _explained(case, o) == "sse-ts-before-ud"
    # TS alone: #NM on both; EM alone: #UD on both.
    for bits, vector in ((fresh_machine.CR0_TS, 7), (fresh_machine.CR0_EM, 6)):
        o = run_both(_case("f2 0f 10 c1", "MOVSD_XMM_XMM", {}, cr0_bits=bits))
        assert o.ours.exception == o.theirs.exception == vector and differences(o) == []


# ------------------------------------------------------------ FXSAVE and FXRSTOR

FXSAVE_DATA = "0f ae 05 00 00 01 00"  # fxsave [0x10000] (the DATA window, 16-byte aligned)
FXRSTOR_DATA = "0f ae 0d 00 00 01 00"  # fxrstor [0x10000]


def test_fxsave_with_66_is_ud() -> None:
    # 66 0F AE /0: FXSAVE is an NP form; we raise #UD, unicorn saves.
    case = _case("66 " + FXSAVE_DATA, "FXSAVE_M512", {})
    o = run_both(case)
    assert (o.ours.exception, o.theirs.exception) == (6, None)
    assert _explained(case, o) == "fxsr-66"
    assert differences(run_both(_case(FXSAVE_DATA, "FXSAVE_M512", {}))) == []


def test_fxsave_stores_fop_where_unicorn_leaves_the_bytes() -> None:
    # Memory at the image is 0xAA before: FOP (0 here) is stored by us, left by unicorn.
    case = _case(FXSAVE_DATA, "FXSAVE_M512", {}, memory={fresh_machine.DATA: b"\xaa" * 512})
    o = run_both(case)
    image = fresh_machine.DATA
    assert o.our_memory[image + 6 : image + 8] == bytes(2)
    assert o.their_memory[image + 6 : image + 8] == b"\xaa\xaa"
    assert [line.split(":")[0] for line in differences(o)] == ["memory at 0x10006"]
    assert _explained(case, o) == "fxsave-fop"


def test_fxrstor_with_a_reserved_mxcsr_bit_faults() -> None:
    # An image whose MXCSR (bytes 24-27) has bit 16 set: #GP(0), nothing loaded. Unicorn loads it.
    image = bytearray(512)
    image[24:28] = (0x1F80 | 1 << 16).to_bytes(4, "little")
    case = _case(FXRSTOR_DATA, "FXRSTOR_M512", {}, memory={fresh_machine.DATA: bytes(image)})
    o = run_both(case)
    assert (o.ours.exception, o.ours.error_code, o.ours.regs["mxcsr"]) == (13, 0, 0x1F80)
    assert o.theirs.exception is None and o.theirs.regs["mxcsr"] == 0x1F80 | 1 << 16
    assert _explained(case, o) == "fxrstor-mxcsr-reserved"
    image[24:28] = (0x1F80).to_bytes(4, "little")
    valid = replace(case.spec, memory={fresh_machine.DATA: bytes(image)})
    assert differences(run_both(replace(case, spec=valid))) == []
