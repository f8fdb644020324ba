"""runtime/cpu/softfloat.py against the host's IEEE arithmetic (numpy float32, float64 and, on
x86, long double: the x87 extended format) for round-to-nearest, and against exact rational
arithmetic for the directed rounding modes, the flags and the special cases."""

from __future__ import annotations

import operator
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ring1.runtime.cpu import softfloat as sf
from ring1.runtime.cpu.softfloat import DE, F32, F64, F80, IE, OE, PE, UE, ZE, Env

HOST_TYPES = {F32: (np.float32, np.uint32), F64: (np.float64, np.uint64)}
HAS_LONG_DOUBLE = np.finfo(np.longdouble).nmant == 63


def host_value(fmt: sf.Format, x: int) -> np.generic:
    if fmt is F80:
        raw = np.frombuffer(x.to_bytes(16, "little"), dtype=np.longdouble)
        return raw[0]
    ftype, itype = HOST_TYPES[fmt]
    return np.array([x], dtype=itype).view(ftype)[0]


def host_bits(fmt: sf.Format, v: np.generic) -> int:
    if fmt is F80:
        return int.from_bytes(np.array([v], dtype=np.longdouble).tobytes()[:10], "little")
    ftype, itype = HOST_TYPES[fmt]
    return int(np.array([v], dtype=ftype).view(itype)[0])


def exact(fmt: sf.Format, x: int) -> Fraction:
    u = sf.unpack(fmt, x)
    assert u.kind in (sf.FINITE, sf.ZERO)
    v = Fraction(u.significand) * Fraction(2) ** u.exponent
    return -v if u.sign else v


def patterns(fmt: sf.Format) -> st.SearchStrategy[int]:
    """Bit patterns weighted toward the interesting ones: zeros, denormals, the extremes of
    the exponent range, infinities and NaNs, and random ones; F80 patterns are supported."""
    w = fmt.width
    exponents = st.sampled_from([0, 1, 2, fmt.bias - 1, fmt.bias, fmt.bias + 1, fmt.exp_max_field - 1,
                                 fmt.exp_max_field]) | st.integers(0, fmt.exp_max_field)
    fraction = st.sampled_from([0, 1, fmt.quiet_bit, (1 << fmt.fraction_bits) - 1]) | st.integers(
        0, (1 << fmt.fraction_bits) - 1)

    def build(sign: int, e: int, f: int) -> int:
        integer = (1 << fmt.fraction_bits) if fmt.explicit_integer_bit and e != 0 else 0
        return sign << (w - 1) | e << fmt.significand_field_bits | integer | f

    return st.builds(build, st.integers(0, 1), exponents, fraction)


def same_result(fmt: sf.Format, ours: int, host: int) -> bool:
    """Equal patterns; NaNs only need to both be NaNs (the host's propagation rule is its own)."""
    if sf.is_nan(fmt, ours) or sf.is_nan(fmt, host):
        return sf.is_nan(fmt, ours) and sf.is_nan(fmt, host)
    return ours == host


BINARY_OPS: dict[str, tuple[Callable[..., tuple[int, int]], Callable[[np.generic, np.generic], np.generic]]] = {
    "add": (sf.add, operator.add),
    "sub": (sf.sub, operator.sub),
    "mul": (sf.mul, operator.mul),
    "div": (sf.div, operator.truediv),
}
FORMATS = [F32, F64] + ([F80] if HAS_LONG_DOUBLE else [])


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("op", list(BINARY_OPS))
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_nearest_matches_host(fmt: sf.Format, op: str, data: st.DataObject) -> None:
    a, b = data.draw(patterns(fmt)), data.draw(patterns(fmt))
    ours, _ = BINARY_OPS[op][0](fmt, a, b)
    with np.errstate(all="ignore"):
        host = host_bits(fmt, BINARY_OPS[op][1](host_value(fmt, a), host_value(fmt, b)))
    assert same_result(fmt, ours, host), (hex(a), hex(b), hex(ours), hex(host))


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_sqrt_matches_host(fmt: sf.Format, data: st.DataObject) -> None:
    a = data.draw(patterns(fmt))
    ours, _ = sf.sqrt(fmt, a)
    with np.errstate(all="ignore"):
        host = host_bits(fmt, np.sqrt(host_value(fmt, a)))
    assert same_result(fmt, ours, host), (hex(a), hex(ours), hex(host))


def exact_op(op: str, x: Fraction, y: Fraction) -> Fraction:
    return {"add": x + y, "sub": x - y, "mul": x * y, "div": x / y if y else Fraction(0)}[op]


@pytest.mark.parametrize("fmt", [F32, F64, F80], ids=lambda f: f.name)
@pytest.mark.parametrize("op", list(BINARY_OPS))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_directed_roundings_bracket_the_exact_value(fmt: sf.Format, op: str, data: st.DataObject) -> None:
    """Rounding down and up give the neighbours of the exact value (equal when it is exact,
    adjacent otherwise), toward zero the one of smaller magnitude, and PE says which."""
    a, b = data.draw(patterns(fmt)), data.draw(patterns(fmt))
    ua, ub = sf.unpack(fmt, a), sf.unpack(fmt, b)
    if {ua.kind, ub.kind} - {sf.FINITE, sf.ZERO} or (op == "div" and ub.kind == sf.ZERO):
        return
    precision = data.draw(st.sampled_from([None, 24, 53])) if fmt is F80 else None
    fn = BINARY_OPS[op][0]
    down, fdown = fn(fmt, a, b, Env(rc=sf.RC_DOWN, precision=precision))
    up, fup = fn(fmt, a, b, Env(rc=sf.RC_UP, precision=precision))
    zero, _ = fn(fmt, a, b, Env(rc=sf.RC_ZERO, precision=precision))
    value = exact_op(op, exact(fmt, a), exact(fmt, b))
    if fdown & OE or fup & OE:
        return  # an infinity or the largest finite: checked in test_overflow_responses
    lo, hi = exact(fmt, down), exact(fmt, up)
    assert lo <= value <= hi
    assert bool(fdown & PE) == bool(fup & PE) == (lo != value)
    if lo != hi:  # adjacent: the floor and ceiling at the exact value's quantum
        p = precision or fmt.precision
        top = abs(value).numerator.bit_length() - abs(value).denominator.bit_length()
        if Fraction(2) ** top > abs(value):
            top -= 1
        quantum = max(top - p + 1, fmt.emin - p + 1)
        assert hi - lo == Fraction(2) ** quantum
    assert exact(fmt, zero) == (lo if value >= 0 else hi)


def test_special_cases() -> None:
    one = 0x3FFF_8000000000000000
    inf = F80.infinity(0)
    assert sf.add(F80, inf, inf ^ F80.sign_bit) == (F80.default_nan(), IE)
    assert F80.default_nan() == 0xFFFF_C000000000000000
    assert F32.default_nan() == 0xFFC00000
    assert sf.div(F80, one, 0) == (inf, ZE)
    assert sf.div(F80, 0, 0) == (F80.default_nan(), IE)
    assert sf.mul(F80, inf, 0) == (F80.default_nan(), IE)
    assert sf.sqrt(F80, one | F80.sign_bit) == (F80.default_nan(), IE)
    assert sf.sqrt(F80, F80.sign_bit) == (F80.sign_bit, 0)  # sqrt(-0) = -0
    # x + (-x) is +0, except rounding down.
    assert sf.sub(F80, one, one) == (0, 0)
    assert sf.sub(F80, one, one, Env(rc=sf.RC_DOWN)) == (F80.sign_bit, 0)
    # Unnormal and pseudo-infinity operands are invalid.
    assert sf.add(F80, 0x3FFF_4000000000000000, one) == (F80.default_nan(), IE)
    assert sf.add(F80, 0x7FFF_0000000000000000, one) == (F80.default_nan(), IE)
    # A pseudo-denormal is the denormal it represents (DE).
    assert sf.add(F80, 0x0000_8000000000000000, 0) == (0x0001_8000000000000000, DE)


def test_nan_propagation_rules() -> None:
    qnan_small = 0x7FFF_C000000000000001
    qnan_large = 0xFFFF_C000000000000100
    snan = 0x7FFF_8000000000000F00
    one = 0x3FFF_8000000000000000
    assert sf.add(F80, qnan_small, qnan_large) == (qnan_large, 0)  # larger significand
    assert sf.add(F80, snan, qnan_small) == (qnan_small, IE)  # x87: the quiet one
    assert sf.add(F80, snan, one) == (snan | F80.quiet_bit, IE)
    sse = Env(nan_rule=sf.NAN_SSE)
    assert sf.add(F64, 0x7FF4000000000000, 0x7FF8000000000001, sse) == (0x7FFC000000000000, IE)  # first


def test_overflow_responses() -> None:
    big = F80.largest(0)
    for rc, expected in [(sf.RC_NEAREST, F80.infinity(0)), (sf.RC_UP, F80.infinity(0)),
                         (sf.RC_DOWN, big), (sf.RC_ZERO, big)]:
        assert sf.add(F80, big, big, Env(rc=rc)) == (expected, OE | PE)
    # Precision control: the largest finite has 24 significand bits.
    r, f = sf.mul(F80, big, 0x3FFF_8000000000000000 | 1, Env(rc=sf.RC_ZERO, precision=24))
    assert (r, f) == (0x7FFE_FFFFFF0000000000, OE | PE)


def test_underflow_is_detected_after_rounding() -> None:
    # Just below the smallest normal F64, 2**-1022 - 2**-1076, rounds to it at 53 bits and an
    # unbounded exponent: tiny before rounding, not after (SDM 4.9.1.5), so no UE; PE only.
    smallest_normal = 0x0010000000000000
    r, f = sf.round_pack(F64, 0, (1 << 54) - 1, -1076)
    assert (r, f) == (smallest_normal, PE)
    # An inexact denormal result: UE and PE; exact: nothing unless underflow is unmasked.
    assert sf.round_pack(F64, 0, 3, -1076) == (0x0000000000000001, UE | PE)  # 3 * 2**-1076 -> 2**-1074
    assert sf.round_pack(F64, 0, 1, -1074) == (1, 0)
    assert sf.round_pack(F64, 0, 1, -1074, Env(underflow_masked=False)) == (1, UE)
    assert sf.round_pack(F64, 0, 3, -1076, Env(flush_to_zero=True)) == (0, UE | PE)


def test_rounded_up_is_reported_on_request() -> None:
    one, seven = 0x3FFF_8000000000000000, 0x4001_E000000000000000
    seventh = sf.div(F80, one, seven)
    assert not seventh[1] & sf.ROUNDED_UP
    r, f = sf.div(F80, one, seven, Env(rc=sf.RC_UP, report_round_up=True))
    assert f & sf.ROUNDED_UP and r == seventh[0] + 1  # 1/7 rounds down to nearest, up is the next one
    _, f = sf.div(F80, one, seven, Env(report_round_up=True))
    assert f == PE


def test_integer_conversions() -> None:
    half = 0x3FFE_8000000000000000  # 0.5
    two_and_half = 0x4000_A000000000000000  # 2.5
    assert sf.to_int(F80, two_and_half, 16) == (2, PE)  # ties to even
    assert sf.to_int(F80, two_and_half, 16, sf.RC_UP) == (3, PE)
    assert sf.to_int(F80, half | F80.sign_bit, 16, sf.RC_DOWN) == (0xFFFF, PE)
    assert sf.to_int(F80, 0x400E_8000000000000000, 16) == (0x8000, IE)  # 32768 is out of range
    assert sf.to_int(F80, 0x400D_FFFE000000000000, 16) == (0x7FFF, 0)
    assert sf.to_int(F80, 0x400E_8000000000000000 | F80.sign_bit, 16) == (0x8000, 0)  # -32768 fits
    assert sf.to_int(F80, F80.default_nan(), 32) == (0x80000000, IE)
    assert sf.from_int(F80, -3) == (0xC000_C000000000000000, 0)
    assert sf.from_int(F32, (1 << 24) + 1) == (0x4B800000, PE)
    assert sf.round_to_integral(F80, two_and_half) == (0x4000_8000000000000000, PE)


def test_conversions_between_formats() -> None:
    assert sf.convert(F32, F80, 0x3F800000) == (0x3FFF_8000000000000000, 0)
    assert sf.convert(F32, F80, 0x00000001) == (0x3F6A_8000000000000000, DE)  # a denormal, normal in F80
    assert sf.convert(F32, F80, 0x7F800001) == (0x7FFF_C000010000000000, IE)  # SNaN quieted, payload kept
    assert sf.convert(F80, F32, 0x3FFF_8000008000000000) == (0x3F800000, PE)  # a tie to even
    assert sf.convert(F80, F64, F80.default_nan()) == (0xFFF8000000000000, 0)


def test_compare() -> None:
    one, two = 0x3FFF_8000000000000000, 0x4000_8000000000000000
    assert sf.compare(F80, one, two, False) == (sf.LESS, 0)
    assert sf.compare(F80, two | F80.sign_bit, one, False) == (sf.LESS, 0)
    assert sf.compare(F80, 0, F80.sign_bit, False) == (sf.EQUAL, 0)
    assert sf.compare(F80, F80.infinity(0), two, False) == (sf.GREATER, 0)
    assert sf.compare(F80, F80.default_nan(), one, False) == (sf.UNORDERED, 0)
    assert sf.compare(F80, F80.default_nan(), one, True) == (sf.UNORDERED, IE)
    assert sf.compare(F80, 1, 2, False) == (sf.LESS, DE)
