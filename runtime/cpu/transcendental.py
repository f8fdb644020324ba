"""The x87 transcendental functions on exact rationals: F2XM1, FYL2X, FYL2XP1, FPTAN, FPATAN,
FSIN, FCOS, FSINCOS (runtime/cpu/x87.py turns them into builtins).

Each function is evaluated to `WORKING_BITS` significant bits (series on Fractions whose
size is kept in check by rounding every partial sum to that many bits), then rounded once
into the x87 extended format by RC. That is far inside the SDM's bound (vol. 1, 8.3.10: at
most one ulp of error, for the trigonometric functions with arguments below 2**63); the
results are correctly rounded except in the rare case where the exact value lies within
2**-WORKING_BITS of a rounding boundary. The argument reduction of FSIN, FCOS, FSINCOS and
FPTAN uses pi to `PI_BITS` bits, not the 66-bit pi of Intel's hardware (SDM vol. 1, 8.3.10):
the mathematically correct value, which differs from a real CPU's for arguments near large
multiples of pi.
"""

from __future__ import annotations

from fractions import Fraction
from functools import cache

WORKING_BITS = 160
PI_BITS = 256 + 64


def _trim(x: Fraction, bits: int = WORKING_BITS + 16) -> Fraction:
    """x rounded toward zero to `bits` significant bits (a Fraction with a power-of-two denominator)."""
    if x == 0:
        return x
    n, d = abs(x.numerator), x.denominator
    shift = bits - (n.bit_length() - d.bit_length())
    q = (n << shift) // d if shift >= 0 else n // (d << -shift)
    v = Fraction(q, 1 << shift) if shift >= 0 else Fraction(q << -shift)
    return v if x > 0 else -v


@cache
def pi() -> Fraction:
    """pi to PI_BITS bits, by Machin's formula."""

    def arctan_inverse(k: int) -> Fraction:
        total, term, n, sign = Fraction(0), Fraction(1, k), 1, 1
        while term.numerator.bit_length() - term.denominator.bit_length() > -PI_BITS - 16:
            total += sign * term / n
            term /= k * k
            n += 2
            sign = -sign
        return _trim(total, PI_BITS + 16)

    return _trim(16 * arctan_inverse(5) - 4 * arctan_inverse(239), PI_BITS)


def _small(x: Fraction, bits: int) -> bool:
    """|x| < 2**-bits (x != 0)."""
    return abs(x.numerator).bit_length() - x.denominator.bit_length() < -bits


def _series(first: Fraction, ratio) -> Fraction:
    """first + t1 + t2 + ..., t(k+1) = t(k) * ratio(k+1), until the terms are below the working
    precision relative to the first."""
    total, term, k = first, first, 0
    scale = abs(first.numerator).bit_length() - first.denominator.bit_length()
    while True:
        k += 1
        term = _trim(term * ratio(k))
        if term == 0 or abs(term.numerator).bit_length() - term.denominator.bit_length() < scale - WORKING_BITS - 8:
            return total + term
        total += term


@cache
def ln2() -> Fraction:
    return 2 * _atanh(Fraction(1, 3))


def _atanh(s: Fraction) -> Fraction:
    """atanh(s) = s + s**3/3 + s**5/5 ..., for |s| <= 1/3."""
    if s == 0:
        return s
    total, power, k = s, s, 1
    scale = abs(s.numerator).bit_length() - s.denominator.bit_length()
    while True:
        power = _trim(power * s * s)
        k += 2
        term = power / k
        total = _trim(total + term)
        if power == 0 or abs(power.numerator).bit_length() - power.denominator.bit_length() < scale - WORKING_BITS - 8:
            return total


def ln1p(x: Fraction) -> Fraction:
    """ln(1 + x), x > -1, keeping relative precision for small x."""
    if x == 0:
        return x
    y = 1 + x
    if abs(x) < Fraction(1, 2):
        return 2 * _atanh(x / (2 + x))
    e = y.numerator.bit_length() - y.denominator.bit_length()
    m = y / Fraction(2) ** e  # in [1/2, 2)
    if m >= Fraction(3, 2):
        m, e = m / 2, e + 1
    elif m < Fraction(3, 4):
        m, e = m * 2, e - 1
    return e * ln2() + 2 * _atanh((m - 1) / (m + 1))


def log2(x: Fraction) -> Fraction:
    return ln1p(x - 1) / ln2()


def log2_1p(x: Fraction) -> Fraction:
    return ln1p(x) / ln2()


def expm1(t: Fraction) -> Fraction:
    """e**t - 1 for |t| <= 1 (relative precision for small t)."""
    if t == 0:
        return t
    return _series(t, lambda k: t / (k + 1))


def exp2m1(x: Fraction) -> Fraction:
    return expm1(x * ln2())


def _sin_cos_reduced(r: Fraction) -> tuple[Fraction, Fraction]:
    """sin r and cos r for |r| <= pi/4."""
    sin = r if r == 0 else _series(r, lambda k: -r * r / ((2 * k) * (2 * k + 1)))
    cos = _series(Fraction(1), lambda k: -r * r / ((2 * k - 1) * (2 * k)))
    return sin, cos


def sin_cos(x: Fraction) -> tuple[Fraction, Fraction]:
    """sin x and cos x, reducing x by the nearest multiple of pi/2."""
    half_pi = pi() / 2
    k = round(x / half_pi)
    r = x - k * half_pi
    s, c = _sin_cos_reduced(r)
    return [(s, c), (c, -s), (-s, -c), (-c, s)][k % 4]


def atan(z: Fraction) -> Fraction:
    """atan z, by Euler's series after reducing |z| to at most 1."""
    if z == 0:
        return z
    if abs(z) > 1:
        return (pi() / 2 if z > 0 else -pi() / 2) - atan(1 / z)
    q = z * z / (1 + z * z)
    first = z / (1 + z * z)
    return _series(first, lambda k: q * (2 * k) / (2 * k + 1))


def atan2(y: Fraction, x: Fraction) -> Fraction:
    """The angle of (x, y) in (-pi, pi], for x, y not both zero."""
    if x > 0:
        return atan(y / x)
    if x == 0:
        return pi() / 2 if y > 0 else -pi() / 2
    return atan(y / x) + (pi() if y >= 0 else -pi())
