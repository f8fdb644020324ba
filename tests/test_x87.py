"""The x87 builtins (runtime/cpu/x87.py): the transcendental instructions against mpmath's
values within the SDM's bound (vol. 1, 8.3.10: less than one ulp; these are the correctly
rounded values, so round-to-nearest must be within half an ulp and the directed modes on the
right side), the constants against their exact values, and the integer and BCD conversions."""

from __future__ import annotations

import mpmath
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ring1.runtime.cpu import softfloat as sf
from ring1.runtime.cpu import x87
from ring1.runtime.cpu.softfloat import F80

mpmath.mp.prec = 300
M80 = (1 << 80) - 1
FCW_NEAREST = 0x37F
ONE = 0x3FFF_8000000000000000


def value(x: int) -> mpmath.mpf:
    u = sf.unpack(F80, x)
    assert u.kind in (sf.FINITE, sf.ZERO)
    v = mpmath.mpf(u.significand) * mpmath.mpf(2) ** u.exponent
    return -v if u.sign else v


def ulp(x: int) -> mpmath.mpf:
    u = sf.unpack(F80, x)
    top = u.significand.bit_length() - 1 + u.exponent
    return mpmath.mpf(2) ** max(top - 63, F80.emin - 63)


def extended(draw_exponent: st.SearchStrategy[int], sign: st.SearchStrategy[int]) -> st.SearchStrategy[int]:
    return st.builds(
        lambda s, e, f: s << 79 | (e + 0x3FFF) << 64 | 1 << 63 | f, sign, draw_exponent, st.integers(0, (1 << 63) - 1)
    )


def check(result: int, exact: mpmath.mpf, rc: int) -> None:
    """The result is the exact value rounded by rc: within half an ulp to nearest, the
    neighbour below (down, toward zero for positive values) or above (up) otherwise."""
    got = value(result & M80)
    error = got - exact
    u = ulp(result & M80)
    if rc == sf.RC_NEAREST:
        assert abs(error) <= u / 2 * (1 + mpmath.mpf(2) ** -60), (hex(result & M80), float(error / u))
    elif rc == sf.RC_DOWN or (rc == sf.RC_ZERO and exact > 0):
        assert -u < error <= 0
    else:
        assert 0 <= error < u


UNARY = {
    x87.F2XM1: (lambda x: mpmath.power(2, x) - 1, extended(st.integers(-80, -1), st.integers(0, 1))),
    x87.FSIN: (mpmath.sin, extended(st.integers(-70, 62), st.integers(0, 1))),
    x87.FCOS: (mpmath.cos, extended(st.integers(-70, 62), st.integers(0, 1))),
    x87.FPTAN: (mpmath.tan, extended(st.integers(-70, 62), st.integers(0, 1))),
}


@pytest.mark.parametrize("op", list(UNARY), ids=["F2XM1", "FSIN", "FCOS", "FPTAN"])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_unary_transcendentals_are_correctly_rounded(op: int, data: st.DataObject) -> None:
    fn, args = UNARY[op]
    x = data.draw(args)
    rc = data.draw(st.integers(0, 3))
    r = x87.transcendental_op(op, x, 0, FCW_NEAREST | rc << 10)
    exact = fn(value(x))
    check(r, exact, rc)
    if op == x87.FPTAN:
        assert r >> 80 & M80 == ONE  # FPTAN pushes 1.0


@settings(max_examples=60, deadline=None)
@given(y=extended(st.integers(-20, 20), st.integers(0, 1)), x=extended(st.integers(-20, 20), st.integers(0, 1)))
def test_fpatan_and_fyl2x(y: int, x: int) -> None:
    check(x87.transcendental_op(x87.FPATAN, x, y, FCW_NEAREST), mpmath.atan2(value(y), value(x)), sf.RC_NEAREST)
    positive = x & ~(1 << 79)
    check(
        x87.transcendental_op(x87.FYL2X, positive, y, FCW_NEAREST),
        value(y) * mpmath.log(value(positive), 2),
        sf.RC_NEAREST,
    )


@settings(max_examples=60, deadline=None)
@given(y=extended(st.integers(-20, 20), st.integers(0, 1)), x=extended(st.integers(-70, -3), st.integers(0, 1)))
def test_fyl2xp1(y: int, x: int) -> None:
    check(
        x87.transcendental_op(x87.FYL2XP1, x, y, FCW_NEAREST),
        value(y) * mpmath.log(1 + value(x), 2),
        sf.RC_NEAREST,
    )


def test_transcendental_special_cases() -> None:
    big = 0x403F_8000000000000000  # 2**64: out of FSIN's range
    assert x87.transcendental_op(x87.FSIN, big, 0, FCW_NEAREST) >> 160 == x87.OUT_OF_RANGE
    assert x87.transcendental_op(x87.FSIN, F80.infinity(0), 0, FCW_NEAREST) >> 160 & sf.IE
    assert x87.transcendental_op(x87.FCOS, 0, 0, FCW_NEAREST) & M80 == ONE
    assert x87.transcendental_op(x87.F2XM1, ONE, 0, FCW_NEAREST) & M80 == ONE  # 2**1 - 1, exact
    r = x87.transcendental_op(x87.FYL2X, 0, ONE, FCW_NEAREST)  # 1 * log2(0)
    assert r & M80 == F80.infinity(1) and r >> 160 & sf.ZE
    r = x87.transcendental_op(x87.FYL2X, 0x4001_8000000000000000, ONE, FCW_NEAREST)  # log2(4) = 2, exact
    assert r == 0x4000_8000000000000000
    assert x87.transcendental_op(x87.FYL2X, ONE | 1 << 79, ONE, FCW_NEAREST) >> 160 & sf.IE  # log of -1


def exact_constants() -> dict[str, mpmath.mpf]:
    return {
        "pi": mpmath.pi,
        "l2e": mpmath.log(mpmath.e, 2),
        "l2t": mpmath.log(10, 2),
        "lg2": mpmath.log10(2),
        "ln2": mpmath.log(2),
    }


@pytest.mark.parametrize(
    "name, nearest, above",
    [
        ("pi", 0x4000_C90FDAA22168C235, True),
        ("l2e", 0x3FFF_B8AA3B295C17F0BC, True),
        ("l2t", 0x4000_D49A784BCD1B8AFE, False),
        ("lg2", 0x3FFD_9A209A84FBCFF799, True),
        ("ln2", 0x3FFE_B17217F7D1CF79AC, True),
    ],
)
def test_constants_of_the_spec(name: str, nearest: int, above: bool) -> None:
    """spec/x87.r1's constants are the nearest values, above or below the exact one as
    x87_rounded_const is told."""
    exact = exact_constants()[name]
    check(nearest, exact, sf.RC_NEAREST)
    assert (value(nearest) > exact) == above


def test_integer_and_bcd_conversions() -> None:
    assert x87.from_int(0xFFFF, 16) == 0xBFFF_8000000000000000  # -1
    r = x87.to_int(0x4000_A000000000000000, 16, FCW_NEAREST | 2 << 10)  # 2.5 rounded up: 3, C1
    assert r & 0xFFFF == 3 and r >> 80 == sf.PE | x87.C1
    assert x87.from_bcd(0x8000_000000000000_0123) == 0xC005_F600000000000000  # -123
    assert x87.to_bcd(0xC005_F600000000000000, FCW_NEAREST) == 0x8000_000000000000_0123
    assert x87.to_bcd(F80.infinity(0), FCW_NEAREST) == sf.IE << 80 | x87.INTEGER_INDEFINITE_BCD
    assert x87.to_bcd(0x403B_DE0B6B3A76400000, FCW_NEAREST) >> 80 == sf.IE  # 10**18: 19 digits


def test_partial_remainders() -> None:
    seven, two = 0x4001_E000000000000000, 0x4000_8000000000000000
    r = x87.partial_remainder(seven, two, 0, FCW_NEAREST)  # 7 = 3 * 2 + 1: C0 C3 C1 = 0 1 1
    assert r & M80 == ONE and r >> 80 & 0xFFFF == 1 << 14 | 1 << 9
    r = x87.partial_remainder(seven, two, 1, FCW_NEAREST)  # FPREM1: 7 = 4 * 2 - 1, quotient 4: C0
    assert r & M80 == ONE | 1 << 79 and r >> 80 & 0xFFFF == 1 << 8
    huge = 0x40FF_8000000000000000  # 2**256 by 3: incomplete, C2
    assert x87.partial_remainder(huge, 0x4000_C000000000000000, 0, FCW_NEAREST) >> 80 & 0xFFFF == 1 << 10
