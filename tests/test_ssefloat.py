"""ring1's SSE lanes (runtime/cpu/ssefloat.py): what MXCSR does to them, and the approximations
RCPPS and RSQRTPS within the SDM's bound. The differential tests (tests/diff) compare every
form with unicorn and, where unicorn is wrong, with the host CPU."""

from __future__ import annotations

import random
from fractions import Fraction
from math import isqrt

from ring1.runtime.cpu import softfloat as sf
from ring1.runtime.cpu import ssefloat

FLAGS = 1 << 64
RESET = 0x1F80


def _value(bits: int) -> Fraction:
    u = sf.unpack(sf.F32, bits)
    return Fraction(u.significand) * Fraction(2) ** u.exponent * (-1 if u.sign else 1)


def test_reciprocal_within_the_sdm_bound() -> None:
    # "|Relative Error| <= 1.5 * 2^-12" (SDM RCPPS, RSQRTPS), over normal inputs whose results
    # are normal. ring1 returns the correctly rounded 1/x, and 1/sqrt(x) with the root rounded
    # first: well inside the bound.
    rnd = random.Random(13)
    bound = Fraction(3, 2) * Fraction(1, 2**12)
    for _ in range(2000):
        x = rnd.randint(0x00800000, 0x7E7FFFFF)
        r = ssefloat.reciprocal(ssefloat.RECIP, x)
        exact = 1 / _value(x)
        assert abs(_value(r) - exact) / exact <= bound
        r = ssefloat.reciprocal(ssefloat.RECIP_SQRT, x)
        v = _value(x)
        # 1/sqrt(v) bounded by integer square roots at a fine scale (exact enough for the bound).
        scale = 2**80
        root = Fraction(isqrt(int(v * scale * scale)), scale)
        exact = 1 / root
        assert abs(_value(r) - exact) / exact <= bound


def test_reciprocal_special_cases() -> None:
    assert ssefloat.reciprocal(ssefloat.RECIP, 0x00000001) == 0x7F800000  # a denormal reads as +0
    assert ssefloat.reciprocal(ssefloat.RECIP, 0x80400000) == 0xFF800000
    assert ssefloat.reciprocal(ssefloat.RECIP, 0x7F7FFFFF) == 0  # tiny: flushed
    assert ssefloat.reciprocal(ssefloat.RECIP_SQRT, 0xBF800000) == 0xFFC00000  # negative: indefinite
    assert ssefloat.reciprocal(ssefloat.RECIP_SQRT, 0x80000000) == 0xFF800000
    assert ssefloat.reciprocal(ssefloat.RECIP, 0x7F800001) == 0x7FC00001  # an SNaN, quieted


def test_daz_ftz_and_precedence() -> None:
    denormal, one, zero = 0x00000001, 0x3F800000, 0
    # DAZ: the denormal reads as zero, no DE.
    assert ssefloat.arith(ssefloat.ADD, 32, denormal, zero, RESET | 0x40) == 0
    assert ssefloat.arith(ssefloat.ADD, 32, denormal, zero, RESET) == denormal | sf.DE * FLAGS
    # FZ with underflow masked: a tiny result is a zero with UE and PE.
    assert ssefloat.arith(ssefloat.MUL, 32, 0x00800000, 0x3F000000, RESET | 0x8000) == (sf.UE | sf.PE) * FLAGS
    # Underflow unmasked: an exact tiny result reports UE too.
    assert ssefloat.arith(ssefloat.ADD, 32, denormal, zero, RESET & ~0x800) == denormal | (sf.DE | sf.UE) * FLAGS
    # A zero divisor hides the denormal dividend; a negative denormal's root is invalid only.
    assert ssefloat.arith(ssefloat.DIV, 32, denormal, zero, RESET) == 0x7F800000 | sf.ZE * FLAGS
    assert ssefloat.arith(ssefloat.SQRT, 32, 0, 0x80000001, RESET) == 0xFFC00000 | sf.IE * FLAGS
    # Two NaNs: the first.
    assert ssefloat.arith(ssefloat.ADD, 32, 0x7FC00000, 0x7FF00000, RESET) == 0x7FC00000
    # Rounding: 1 + 2^-24 rounds to 1 (nearest even) or up.
    assert ssefloat.arith(ssefloat.ADD, 32, one, 0x33800000, RESET) == one | sf.PE * FLAGS
    assert ssefloat.arith(ssefloat.ADD, 32, one, 0x33800000, RESET | 0x4000) == one + 1 | sf.PE * FLAGS


def test_conversions_to_integers() -> None:
    # NaN, infinity, out of range: the integer indefinite with IE; a denormal: PE, never DE.
    indefinite = ((ssefloat.F32_TO_I32, 0x7FC00000), (ssefloat.F32_TO_I32, 0x4F000000))
    for kind, x in (*indefinite, (ssefloat.F64_TO_I32, 0x41E0000000000000)):
        assert ssefloat.convert(kind, x, RESET) == 0x80000000 | sf.IE * FLAGS
    assert ssefloat.convert(ssefloat.F32_TO_I32, 0x80000001, RESET) == sf.PE * FLAGS
    assert ssefloat.convert(ssefloat.F32_TO_I32, 0x80000001, RESET | 0x40) == 0
    # 2.5 rounds to 2 (nearest even), truncates to 2, rounds up to 3.
    assert ssefloat.convert(ssefloat.F32_TO_I32, 0x40200000, RESET) == 2 | sf.PE * FLAGS
    assert ssefloat.convert(ssefloat.F32_TO_I32_TRUNC, 0x40600000, RESET) == 3 | sf.PE * FLAGS
    assert ssefloat.convert(ssefloat.F32_TO_I32, 0x40200000, RESET | 0x4000) == 3 | sf.PE * FLAGS
    assert ssefloat.convert(ssefloat.I32_TO_F32, 0xFFFFFFFF, RESET) == 0xBF800000
    assert ssefloat.convert(ssefloat.I32_TO_F32, 0x7FFFFFFF, RESET) == 0x4F000000 | sf.PE * FLAGS
