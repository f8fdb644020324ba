"""Where unicorn is wrong on x87 instructions: the minimal cases behind deviations_x87.py.

Each test runs one case on both machines and asserts unicorn's wrong outcome, the
interpreter's right one (with the SDM rule it follows), and that the recorded deviation
explains exactly that difference. A fixed unicorn, or a broken interpreter, makes the test
fail, and then the deviation should go.
"""

from __future__ import annotations

from dataclasses import replace

from unicorn import x86_const as X

from ring1.runtime.tools import fresh_machine

from . import deviations
from .harness import Case, Outcome, differences, reference, run_both, window_segments

ONE, TWO, THREE = 0x3FFF_8000000000000000, 0x4000_8000000000000000, 0x4000_C000000000000000
QNAN = 0x7FFF_C000000000000000
INDEFINITE = 0xFFFF_C000000000000000
TOP7 = 7 << 11  # TOP = 7: ST(0) is R7, ST(1) is R0
FCW_MASKED = 0x37F  # every exception masked, 64-bit precision, round to nearest


def _case(code: str, form: str, fpr: dict[int, int], ftw: int, fsw: int = TOP7, fcw: int = FCW_MASKED, **spec) -> Case:
    regs = tuple(fpr.get(i, 0) for i in range(8))
    return Case(
        fresh_machine.FreshSpec(
            code=bytes.fromhex(code), fpr=regs, ftw=ftw, fsw=fsw, fcw=fcw, segs=window_segments(0, False), **spec
        ),
        [form],
    )


def _explained(case: Case, o) -> str | None:
    d = deviations.explain(case, o)
    return d.name if d is not None else None


def test_status_flags_not_set() -> None:
    # FDIV ST(0), ST(1): 1 / 3 is inexact, so PE is set; nearest rounds it up, so C1 = 1
    # (SDM FDIV, "FPU Flags Affected"). Unicorn leaves FSW as it was.
    case = _case("d8 f1", "FDIV_ST0_STi", {7: ONE, 0: THREE}, ftw=0x81)
    o = run_both(case)
    assert o.ours.regs["fpr7"] == o.theirs.regs["fpr7"] == 0x3FFD_AAAAAAAAAAAAAAAB
    assert o.ours.regs["fsw"] == TOP7 | 0x200 | 0x20 and o.theirs.regs["fsw"] == TOP7
    assert _explained(case, o) == "x87-status-flags"
    # 0 / 0 is an invalid operation (IE), not a division by zero; unicorn sets ZE.
    case = _case("d8 f1", "FDIV_ST0_STi", {}, ftw=0x81)
    o = run_both(case)
    assert o.ours.regs["fsw"] == TOP7 | 0x1 and o.theirs.regs["fsw"] == TOP7 | 0x4
    assert _explained(case, o) == "x87-status-flags"


def test_status_deviation_is_exact() -> None:
    # A difference that is not a status bit (here TOP) is not explained.
    case = _case("d8 c1", "FADD_ST0_STi", {7: ONE, 0: ONE}, ftw=0x81)
    o = run_both(case)
    assert differences(o) == []
    fake_fsw = 6 << 11 | 0x20
    fake = Outcome(replace(o.ours, regs={**o.ours.regs, "fsw": fake_fsw}), o.theirs, o.our_memory, o.their_memory, 0)
    assert deviations.explain(case, fake) is None


def test_fcomi_clears_of_sf_af() -> None:
    # FCOMI ST(0), ST(1) with 1 < 3: ZF PF CF = 0 0 1 and OF SF AF cleared (SDM FCOMI).
    # Unicorn keeps OF SF AF.
    osa = 0x800 | 0x80 | 0x10
    case = _case("db f1", "FCOMI_ST0_STi", {7: ONE, 0: THREE}, ftw=0x81, regs={"eflags": 0x2 | osa})
    o = run_both(case)
    assert o.ours.regs["eflags"] & (osa | 0x45) == 0x1
    assert o.theirs.regs["eflags"] & (osa | 0x45) == osa | 0x1
    assert _explained(case, o) == "x87-fcomi-osa"


def test_constants_follow_rc() -> None:
    # FLDPI rounding down (RC = 1): pi's nearest 64-bit value is above pi, so rounding down
    # gives the one below (SDM vol. 1, 8.3.8). Unicorn loads the nearest value.
    case = _case("d9 eb", "FLDPI", {}, ftw=0, fsw=0, fcw=FCW_MASKED | 1 << 10)
    o = run_both(case)
    assert o.ours.regs["fpr7"] == 0x4000_C90FDAA22168C234 and o.theirs.regs["fpr7"] == 0x4000_C90FDAA22168C235
    assert _explained(case, o) == "x87-constant-rc"


def test_stack_overflow_and_underflow() -> None:
    # FLD1 with every register in use: stack overflow, IE SF C1, and (IE masked) the QNaN
    # indefinite pushed (SDM vol. 1, 8.5.1.1). Unicorn pushes 1.0 over R7.
    case = _case("d9 e8", "FLD1", {i: TWO for i in range(8)}, ftw=0xFF, fsw=0)
    o = run_both(case)
    assert o.ours.regs["fpr7"] == INDEFINITE and o.ours.regs["fsw"] == 7 << 11 | 0x200 | 0x41
    assert o.theirs.regs["fpr7"] == ONE and o.theirs.regs["fsw"] == 7 << 11
    assert _explained(case, o) == "x87-stack-fault"
    # FADD ST(0), ST(1) with ST(1) empty: underflow, IE SF, ST(0) = the indefinite.
    case = _case("d8 c1", "FADD_ST0_STi", {7: ONE}, ftw=0x80)
    o = run_both(case)
    assert o.ours.regs["fpr7"] == INDEFINITE and o.theirs.regs["fpr7"] == ONE
    assert _explained(case, o) == "x87-stack-fault"


def test_unmasked_invalid_leaves_destination() -> None:
    # FSQRT of -1 with IM clear: an unmasked invalid operation leaves ST(0) unchanged, sets IE,
    # ES and B (SDM vol. 1, 4.9.2 and 8.6). Unicorn writes the indefinite.
    fcw = FCW_MASKED & ~0x1
    case = _case("d9 fa", "FSQRT", {7: ONE | 1 << 79}, ftw=0x80, fcw=fcw)
    o = run_both(case)
    assert o.ours.regs["fpr7"] == ONE | 1 << 79 and o.ours.regs["fsw"] == TOP7 | 0x8081
    assert o.theirs.regs["fpr7"] == INDEFINITE
    assert _explained(case, o) == "x87-unmasked-exception"


def test_pending_exception_raises_mf() -> None:
    # A pending unmasked exception (ES) with CR0.NE set: the next x87 instruction raises #MF
    # before it executes (SDM vol. 1, 8.7). Unicorn runs it.
    case = _case(
        "d8 c1", "FADD_ST0_STi", {7: ONE, 0: ONE}, ftw=0x81, fsw=TOP7 | 0x8081, fcw=FCW_MASKED & ~1, cr0_bits=0x20
    )
    o = run_both(case)
    assert o.ours.exception == 16 and o.ours.regs["fpr7"] == ONE
    assert o.theirs.exception is None and o.theirs.regs["fpr7"] == TWO
    assert _explained(case, o) == "x87-pending-mf"
    # With CR0.NE clear the error would go out on FERR#; the machine ignores it (IGNNE#).
    case = replace(case, spec=replace(case.spec, cr0_bits=0))
    o = run_both(case)
    assert o.ours.exception is None and differences(o) == []


def _fbstp_case(st0: int) -> Case:
    case = _case("df 35 00 00 00 00", "FBSTP_M80", {7: st0}, ftw=0x80)
    return case


def test_fbstp_invalid_and_negative_zero() -> None:
    # FBSTP of a QNaN: invalid, the packed BCD indefinite stored (SDM FBSTP). Unicorn stores
    # digits of QEMU's int64 conversion.
    o = run_both(case := _fbstp_case(QNAN))
    data = fresh_machine.DATA
    assert o.our_memory[data : data + 10] == INDEFINITE.to_bytes(10, "little")
    assert o.their_memory[data : data + 10] != INDEFINITE.to_bytes(10, "little")
    assert _explained(case, o) == "x87-fbstp-invalid"
    # FBSTP of -0.25: rounds to -0, stored with the sign byte 0x80; unicorn stores +0.
    o = run_both(case := _fbstp_case(0xBFFD_8000000000000000))
    assert o.our_memory[data : data + 10] == bytes(9) + b"\x80"
    assert o.their_memory[data : data + 10] == bytes(10)
    assert _explained(case, o) == "x87-fbstp-negative-zero"


def test_transcendentals_in_double_precision() -> None:
    # F2XM1 of 2**-40: 2**x - 1 = x ln 2 (1 + ...), which the CPU gives to 64 bits; QEMU's
    # pow(2.0, x) - 1.0 in doubles keeps about 13 bits of it.
    case = _case("d9 f0", "F2XM1", {7: 0x3FD7_8000000000000000}, ftw=0x80)
    o = run_both(case)
    assert o.ours.regs["fpr7"] == 0x3FD6_B17217F7D20CF928  # mpmath's 2**(2**-40) - 1, rounded to nearest
    assert o.theirs.regs["fpr7"] != o.ours.regs["fpr7"]
    assert _explained(case, o) == "x87-transcendental-precision"
    # FSIN of 1: the double sine differs from the extended one in the last 11 bits.
    case = _case("d9 fe", "FSIN", {7: ONE}, ftw=0x80)
    o = run_both(case)
    assert o.ours.regs["fpr7"] >> 11 == o.theirs.regs["fpr7"] >> 11
    assert _explained(case, o) in ("x87-transcendental-precision", "x87-status-flags")


def test_fop_not_recorded() -> None:
    # Every non-control x87 instruction records its opcode in FOP (SDM vol. 1, 8.1.9: the
    # first byte's low 3 bits, then the ModRM byte): FADD ST(0), ST(1) (D8 C1) leaves 0x0C1.
    # Unicorn keeps no FOP (reads as 0) though it records FIP. The differential harness does
    # not compare FOP (nor FIP: translated code runs at other addresses), so this deviation
    # shows here only: deviation x87-fop.
    from ring1.runtime.tools.snippet import interp_machine

    case = _case("d8 c1", "FADD_ST0_STi", {7: ONE, 0: ONE}, ftw=0x81)
    ref = reference(0, False)
    ref.run(case)
    assert ref.cpu.uc.reg_read(X.UC_X86_REG_FOP) == 0
    assert ref.cpu.uc.reg_read(X.UC_X86_REG_FIP) == fresh_machine.CODE
    m = interp_machine(case.spec)
    m.stop_on_event = True
    m.stop_addresses = {fresh_machine.CODE + 2}
    m.run(10)
    assert m.state.fop == 0x0C1 and m.state.fip == fresh_machine.CODE


def test_pseudo_denormal_operand() -> None:
    # A pseudo-denormal (exponent 0, integer bit set) stands for its value with exponent 1
    # (SDM vol. 1, 8.2.2): 0x0000_8000000000000000 is 2**-16382, twice that is 2**-16381.
    # Unicorn's FADD gives 0.
    pseudo = 0x0000_8000000000000000
    case = _case("d8 c0", "FADD_ST0_STi", {7: pseudo}, ftw=0x80)
    o = run_both(case)
    assert o.ours.regs["fpr7"] == 0x0002_8000000000000000 and o.theirs.regs["fpr7"] != o.ours.regs["fpr7"]
    assert _explained(case, o) == "x87-odd-encodings"


def test_signalling_nan_stored_quiet() -> None:
    # FST m32 of a signalling NaN: IE, and the NaN stored quieted (quiet bit set), its payload
    # truncated (SDM vol. 1, 4.8.3.4). Unicorn stores it still signalling.
    snan = 0xFFFF_A000000000000000
    case = _case("d9 15 00 00 00 00", "FST_M32", {7: snan}, ftw=0x80)
    o = run_both(case)
    data = fresh_machine.DATA
    assert int.from_bytes(o.our_memory[data : data + 4], "little") == 0xFFE00000
    assert int.from_bytes(o.their_memory[data : data + 4], "little") == 0xFFA00000
    assert _explained(case, o) == "x87-nan-conversion"


def test_fst_sti_tags_the_destination() -> None:
    # FST ST(1) with ST(1) empty: ST(1) gets ST(0) and becomes valid (SDM FST). Unicorn copies
    # the value and leaves the tag empty.
    case = _case("dd d1", "FST_STi", {7: ONE}, ftw=0x80)
    o = run_both(case)
    assert o.ours.regs["fpr0"] == o.theirs.regs["fpr0"] == ONE
    assert o.ours.regs["ftw"] == 0x81 and o.theirs.regs["ftw"] == 0x80
    assert _explained(case, o) == "x87-fst-sti-tag"
