"""The x87 builtins of the spec (spec/prelude.r1, `f80_...`), on runtime/cpu/softfloat.py.

Each returns one int: the result (an 80-bit register pattern, or a memory pattern for the
stores) in bits 79:0 and what the operation raised above it, `flags << 80`, with flags in
FSW's bit order (IE DE ZE OE UE PE in bits 0-5; bit 9, C1, set when an inexact result was
rounded up in magnitude). The spec applies the flags (x87.r1, `x87_report`). The FCW argument
gives the rounding (RC), the precision of the arithmetic (PC: 24, 53 or 64 bits; the stores
and conversions round to their destination) and the underflow mask.
"""

from __future__ import annotations

from fractions import Fraction

from ring1.runtime.cpu import softfloat as sf
from ring1.runtime.cpu import transcendental
from ring1.runtime.cpu.softfloat import DE, F32, F64, F80, IE, PE, ZE, Env

FLAGS = 80
M80 = (1 << 80) - 1
SIGN80 = 1 << 79
C1 = sf.ROUNDED_UP
FORMATS = {32: F32, 64: F64, 80: F80}
PRECISION = {0: 24, 2: 53}  # FCW.PC; 3 (and the reserved 1) is the full 64 bits
INTEGER_INDEFINITE_BCD = 0xFFFF_C000000000000000  # FBSTP's invalid result: the packed BCD indefinite

# The arithmetic operations, numbered by the ModRM.reg field of their D8 forms.
ADD, MUL, SUB, SUBR, DIV, DIVR = 0, 1, 4, 5, 6, 7


def env(fcw: int, precision_control: bool = True) -> Env:
    return Env(
        rc=fcw >> 10 & 3,
        precision=PRECISION.get(fcw >> 8 & 3) if precision_control else None,
        underflow_masked=bool(fcw & 0x10),
        report_round_up=True,
    )


def widen(bits: int, x: int) -> tuple[int, int]:
    """A binary32/binary64 pattern as the F80 pattern of the same value, exactly, a signalling
    NaN still signalling (the operation it feeds raises IE and picks NaNs by the x87 rules); and
    DE when it is a denormal (normal in F80)."""
    if bits == 80:
        return x & M80, 0
    fmt = FORMATS[bits]
    u = sf.unpack(fmt, x)
    if u.kind == sf.NAN:
        shift = F80.fraction_bits - fmt.fraction_bits
        return F80.infinity(u.sign) | u.significand << shift, 0
    if u.kind == sf.INF:
        return F80.infinity(u.sign), 0
    if u.kind == sf.ZERO:
        return u.sign * SIGN80, 0
    r, _ = sf.round_pack(F80, u.sign, u.significand, u.exponent)
    return r, DE if u.denormal else 0


def _out(result: int, flags: int) -> int:
    return flags << FLAGS | result


def load_real(bits: int, x: int) -> int:
    """FLD m32/m64: the value in F80, exact; IE and the quieted NaN for a signalling one, DE for
    a denormal. FLD m80 (bits 80) loads the pattern as it is, raising nothing."""
    if bits == 80:
        return x & M80
    r, f = sf.convert(FORMATS[bits], F80, x)
    return _out(r, f)


def arith(op: int, a: int, b: int, bits: int, fcw: int) -> int:
    """a op b, a a register, b a register (bits 80) or a binary32/binary64 memory operand."""
    b80, flags = widen(bits, b)
    e = env(fcw)
    match op:
        case 0:
            r, f = sf.add(F80, a, b80, e)
        case 1:
            r, f = sf.mul(F80, a, b80, e)
        case 4:
            r, f = sf.sub(F80, a, b80, e)
        case 5:
            r, f = sf.sub(F80, b80, a, e)
        case 6:
            r, f = sf.div(F80, a, b80, e)
        case 7:
            r, f = sf.div(F80, b80, a, e)
        case _:
            raise ValueError(f"x87 arithmetic operation {op}")
    return _out(r, f | flags)


def sqrt(a: int, fcw: int) -> int:
    r, f = sf.sqrt(F80, a, env(fcw))
    return _out(r, f)


def store_real(bits: int, x: int, fcw: int) -> int:
    """FST m32/m64: x rounded to the destination's format by RC (PC does not apply)."""
    r, f = sf.convert(F80, FORMATS[bits], x, env(fcw, precision_control=False))
    return _out(r, f)


def from_int(value: int, bits: int) -> int:
    """FILD and the integer operands: a bits-bit two's complement integer, exactly."""
    signed = value - (1 << bits) if value >> (bits - 1) & 1 else value
    r, _ = sf.from_int(F80, signed)
    return r


def to_int(x: int, bits: int, fcw: int) -> int:
    """FIST: x rounded by RC to a bits-bit integer; the integer indefinite and IE when it does
    not fit (or is a NaN or infinite); C1 when it was rounded up in magnitude."""
    r, f = sf.to_int(F80, x, bits, fcw >> 10 & 3)
    if f & PE and _rounded_away(x, r, bits):
        f |= C1
    return _out(r, f)


def _rounded_away(x: int, r: int, bits: int) -> bool:
    u = sf.unpack(F80, x)
    value = r - (1 << bits) if r >> (bits - 1) & 1 else r
    magnitude = abs(value)
    low = min(u.exponent, 0)
    return magnitude << -low > u.significand << (u.exponent - low)


def compare(a: int, b: int, bits: int, quiet: int) -> int:
    """The relation of a to b (0 less, 1 equal, 2 greater, 3 unordered); b as in `arith`. IE
    for a signalling NaN, or any NaN unless `quiet` (FUCOM); DE for a denormal."""
    b80, flags = widen(bits, b)
    rel, f = sf.compare(F80, a, b80, signal_qnan=not quiet)
    return _out(rel, f | flags)


def classify(x: int) -> int:
    """FXAM's C3 C2 C0 for a non-empty register, as FSW bits (C0 bit 8, C2 bit 10, C3 bit 14)."""
    kind = sf.unpack(F80, x)
    c0, c2, c3 = 1 << 8, 1 << 10, 1 << 14
    if kind.kind == sf.UNSUPPORTED:
        return 0
    if kind.kind == sf.NAN:
        return c0
    if kind.kind == sf.INF:
        return c2 | c0
    if kind.kind == sf.ZERO:
        return c3
    if kind.denormal:
        return c3 | c2
    return c2


def round_int(x: int, fcw: int) -> int:
    """FRNDINT: x rounded to an integral value by RC."""
    r, f = sf.round_to_integral(F80, x, fcw >> 10 & 3)
    if f & PE and sf.unpack(F80, r).kind != sf.NAN:
        u, v = sf.unpack(F80, x), sf.unpack(F80, r)
        if v.kind == sf.FINITE and _greater_magnitude(v, u):
            f |= C1
    return _out(r, f)


def _greater_magnitude(a: sf.Unpacked, b: sf.Unpacked) -> bool:
    low = min(a.exponent, b.exponent)
    return a.significand << (a.exponent - low) > b.significand << (b.exponent - low)


def from_bcd(x: int) -> int:
    """FBLD: an 18-digit packed BCD integer (sign in bit 79) as F80, exactly. Digits past 9
    are undefined in the SDM; they count with their binary value here."""
    value = 0
    for k in range(17, -1, -1):
        value = value * 10 + (x >> (4 * k) & 0xF)
    r, _ = sf.from_int(F80, value)
    return r | (x >> 79 & 1) * SIGN80


def to_bcd(x: int, fcw: int) -> int:
    """FBSTP: x rounded by RC to an integer, stored as 18 packed BCD digits and a sign; the
    packed BCD indefinite and IE when it has more digits (or is a NaN or infinite)."""
    r, f = sf.to_int(F80, x, 128, fcw >> 10 & 3)
    value = r - (1 << 128) if r >> 127 else r
    if f & IE or abs(value) > 10**18 - 1:
        return _out(INTEGER_INDEFINITE_BCD, IE)
    if f & PE and _rounded_away(x, r, 128):
        f |= C1
    digits = 0
    magnitude = abs(value)
    for k in range(18):
        digits |= magnitude % 10 << (4 * k)
        magnitude //= 10
    return _out(digits | (x >> 79 & 1) * SIGN80, f)


def scale(a: int, b: int, fcw: int) -> int:
    """FSCALE: a * 2**trunc(b)."""
    ua, ub = sf.unpack(F80, a), sf.unpack(F80, b)
    if sf.UNSUPPORTED in (ua.kind, ub.kind):
        return _out(F80.default_nan(), IE)
    if sf.NAN in (ua.kind, ub.kind):
        r, f = sf.add(F80, a, b)  # the NaN rules of any two-operand operation
        return _out(r, f)
    flags = DE if ua.denormal or ub.denormal else 0
    if ub.kind == sf.INF:
        if (ua.kind == sf.ZERO and not ub.sign) or (ua.kind == sf.INF and ub.sign):
            return _out(F80.default_nan(), flags | IE)
        if ub.sign:
            return _out(ua.sign * SIGN80, flags)
        return _out(F80.infinity(ua.sign) if ua.kind != sf.ZERO else a, flags)
    if ua.kind != sf.FINITE:
        return _out(a, flags)
    n = 0
    if ub.kind == sf.FINITE:
        n = ub.significand >> -ub.exponent if ub.exponent < 0 else ub.significand << min(ub.exponent, 20)
        n = min(n, 1 << 20)
        n = -n if ub.sign else n
    r, f = sf.round_pack(F80, ua.sign, ua.significand, ua.exponent + n, env(fcw))
    return _out(r, f | flags)


def extract(a: int) -> int:
    """FXTRACT: the exponent of a (as F80, in bits 79:0) and its significand (an F80 with
    exponent 0, in bits 159:80), flags above bit 160. Zero: ZE, the exponent -infinity."""
    u = sf.unpack(F80, a)
    if u.kind == sf.UNSUPPORTED:
        return IE << 160 | F80.default_nan() << 80 | F80.default_nan()
    if u.kind == sf.NAN:
        q = a | F80.quiet_bit
        return (0 if a & F80.quiet_bit else IE) << 160 | q << 80 | q
    if u.kind == sf.INF:
        return a << 80 | F80.infinity(0)
    if u.kind == sf.ZERO:
        return ZE << 160 | a << 80 | F80.infinity(1)
    top = u.significand.bit_length() - 1 + u.exponent
    significand, _ = sf.round_pack(F80, u.sign, u.significand, u.exponent - top)
    exponent, _ = sf.from_int(F80, top)
    return (DE if u.denormal else 0) << 160 | significand << 80 | exponent


def partial_remainder(a: int, b: int, ieee: int, fcw: int) -> int:
    """FPREM (ieee 0: the quotient truncated) and FPREM1 (1: rounded to nearest): the partial
    remainder of a by b in bits 79:0; above it the FSW bits the instruction sets (C2 when the
    reduction is incomplete, else C0 C3 C1 = the quotient's bits 2 1 0) at 80, and flags at 96.
    An exponent difference d of 64 or more is reduced by a multiple of b * 2**(d - N) with
    N = 32 + d mod 32 (the SDM leaves N between 32 and 63 to the implementation; AMD's manual
    gives this one)."""
    ua, ub = sf.unpack(F80, a), sf.unpack(F80, b)
    if sf.UNSUPPORTED in (ua.kind, ub.kind):
        return IE << 96 | F80.default_nan()
    if sf.NAN in (ua.kind, ub.kind):
        r, f = sf.add(F80, a, b)
        return f << 96 | r
    flags = DE if ua.denormal or ub.denormal else 0
    if ua.kind == sf.INF or ub.kind == sf.ZERO:
        return (flags | IE) << 96 | F80.default_nan()
    if ua.kind == sf.ZERO or ub.kind == sf.INF:
        return flags << 96 | a
    ta = ua.significand.bit_length() - 1 + ua.exponent
    tb = ub.significand.bit_length() - 1 + ub.exponent
    low = min(ua.exponent, ub.exponent)
    va = ua.significand << (ua.exponent - low)
    vb = ub.significand << (ub.exponent - low)
    if ta - tb >= 64:
        step = ta - tb - (32 + (ta - tb) % 32)  # N = 32 + (difference mod 32), as AMD documents it
        q = va // (vb << step)  # truncated, whatever the instruction
        rem = va - q * (vb << step)
        r, _ = sf.round_pack(F80, ua.sign, rem, low)
        if rem == 0:
            r = ua.sign * SIGN80
        return flags << 96 | (1 << 10) << 80 | r
    q, rem = divmod(va, vb)
    if ieee and (2 * rem > vb or (2 * rem == vb and q & 1)):
        q += 1
        rem -= vb
    sign = ua.sign ^ (rem < 0)
    r, f = sf.round_pack(F80, sign, abs(rem), low, env(fcw, precision_control=False))
    if rem == 0:
        r = ua.sign * SIGN80
    cc = (q >> 2 & 1) << 8 | (q >> 1 & 1) << 14 | (q & 1) << 9
    return (flags | f & sf.UE) << 96 | cc << 80 | r


# ------------------------------------------------------------ transcendental instructions

F2XM1, FYL2X, FYL2XP1, FPATAN, FSIN, FCOS, FPTAN, FSINCOS = range(8)
OUT_OF_RANGE = 1 << 10  # FSW's C2: the argument of FSIN, FCOS, FSINCOS, FPTAN is 2**63 or more
ONE80 = 0x3FFF_8000000000000000


def _value(u: sf.Unpacked) -> Fraction:
    v = Fraction(u.significand) * Fraction(2) ** u.exponent if u.kind == sf.FINITE else Fraction(0)
    return -v if u.sign else v


def _round_value(v: Fraction, e: Env, exact: bool = False) -> tuple[int, int]:
    """An approximation v (WORKING_BITS good bits) of an irrational result, or an exact v, rounded to F80."""
    if v == 0:
        return 0, 0
    sign = int(v < 0)
    n, d = abs(v.numerator), v.denominator
    shift = transcendental.WORKING_BITS + 8 - (n.bit_length() - d.bit_length())
    q, rest = divmod(n << shift, d) if shift >= 0 else divmod(n, d << -shift)
    sticky = 0 if exact and rest == 0 else 1
    return sf.round_pack(F80, sign, q << 1 | sticky, -shift - 1, e)


def _pack3(first: int, second: int, flags: int) -> int:
    return flags << 160 | second << 80 | first


def transcendental_op(op: int, a: int, b: int, fcw: int) -> int:
    """The transcendental instruction `op` on ST(0) = a (and ST(1) = b): its result in bits
    79:0 (the new ST(0), or ST(1) for the popping FYL2X, FYL2XP1, FPATAN), the value pushed
    after it in bits 159:80 (FPTAN's 1.0, FSINCOS's cosine), flags from bit 160 (C2 =
    OUT_OF_RANGE: nothing was computed)."""
    e = env(fcw, precision_control=False)
    ua = sf.unpack(F80, a)
    two = op in (FYL2X, FYL2XP1, FPATAN)
    ub = sf.unpack(F80, b) if two else None
    if ua.kind == sf.UNSUPPORTED or (ub is not None and ub.kind == sf.UNSUPPORTED):
        nan = F80.default_nan()
        return _pack3(nan, nan, IE)
    if ua.kind == sf.NAN or (ub is not None and ub.kind == sf.NAN):
        r, f = sf.add(F80, a, b) if two else sf.add(F80, a, a)
        return _pack3(r, r, f)
    flags = DE if ua.denormal or (ub is not None and ub.denormal) else 0
    if op in (FSIN, FCOS, FPTAN, FSINCOS):
        return _trigonometric(op, ua, a, e, flags)
    if op == F2XM1:
        return _f2xm1(ua, a, e, flags)
    assert ub is not None
    if op == FPATAN:
        return _fpatan(ub, ua, e, flags)
    return _fyl2x(op, ua, ub, b, e, flags)


def _trigonometric(op: int, u: sf.Unpacked, a: int, e: Env, flags: int) -> int:
    if u.kind == sf.INF:
        nan = F80.default_nan()
        return _pack3(nan, nan, flags | IE)
    if u.kind == sf.FINITE and u.significand.bit_length() + u.exponent > 63:
        return _pack3(a, 0, OUT_OF_RANGE)
    if u.kind == sf.ZERO:  # sin ±0 = ±0, tan ±0 = ±0, cos ±0 = 1: exact
        if op == FCOS:
            return _pack3(ONE80, 0, flags)
        return _pack3(a, ONE80, flags)  # FPTAN pushes 1.0, FSINCOS cos 0 = 1.0
    x = _value(u)
    s, c = transcendental.sin_cos(x)
    if op == FSIN:
        r, f = _round_value(s, e)
        return _pack3(r, 0, flags | f)
    if op == FCOS:
        r, f = _round_value(c, e)
        return _pack3(r, 0, flags | f)
    if op == FPTAN:
        r, f = _round_value(s / c, e)
        return _pack3(r, ONE80, flags | f)
    r, f = _round_value(s, e)
    r2, f2 = _round_value(c, e)
    # FSINCOS: C1 and PE from both results; the sine's flags and the cosine's rounding direction.
    return _pack3(r, r2, flags | f | (f2 & ~C1))


def _f2xm1(u: sf.Unpacked, a: int, e: Env, flags: int) -> int:
    if u.kind == sf.ZERO:
        return _pack3(a, 0, flags)
    if u.kind == sf.INF:
        return _pack3(F80.infinity(0) if not u.sign else 0xBFFF_8000000000000000, 0, flags)
    x = _value(u)
    if x in (1, -1):
        exact = Fraction(1) if x == 1 else Fraction(-1, 2)
        r, f = _round_value(exact, e, exact=True)
        return _pack3(r, 0, flags | f)
    if abs(x) <= 1:
        r, f = _round_value(transcendental.exp2m1(x), e)
        return _pack3(r, 0, flags | f)
    # Outside [-1, 1] the SDM leaves the result undefined; this is 2**x - 1 all the same.
    if x > 1 << 15:
        r, f = sf.round_pack(F80, 0, 1, 1 << 15, e)
        return _pack3(r, 0, flags | f)
    if x < -100:
        r, f = _round_value(Fraction(-1) + Fraction(1, 1 << 100), e)
        return _pack3(r, 0, flags | f)
    n = int(x // 1)
    v = Fraction(2) ** n * (transcendental.exp2m1(x - n) + 1) - 1
    r, f = _round_value(v, e)
    return _pack3(r, 0, flags | f)


def _fpatan(uy: sf.Unpacked, ux: sf.Unpacked, e: Env, flags: int) -> int:
    """atan2(ST(1), ST(0)), zeros and infinities by the SDM's FPATAN table (C99's atan2)."""
    pi = transcendental.pi()

    def signed(v: Fraction) -> Fraction:
        return -v if uy.sign else v

    if uy.kind == sf.ZERO:
        if ux.sign:  # x -0, negative, -inf: ±pi
            r, f = _round_value(signed(pi), e)
            return _pack3(r, 0, flags | f)
        return _pack3(uy.sign * SIGN80, 0, flags)
    if uy.kind == sf.INF:
        if ux.kind == sf.INF:
            v = pi / 4 if not ux.sign else 3 * pi / 4
        else:
            v = pi / 2
        r, f = _round_value(signed(v), e)
        return _pack3(r, 0, flags | f)
    if ux.kind == sf.INF:
        if not ux.sign:
            return _pack3(uy.sign * SIGN80, 0, flags)
        r, f = _round_value(signed(pi), e)
        return _pack3(r, 0, flags | f)
    if ux.kind == sf.ZERO:
        r, f = _round_value(signed(pi / 2), e)
        return _pack3(r, 0, flags | f)
    r, f = _round_value(transcendental.atan2(_value(uy), _value(ux)), e)
    return _pack3(r, 0, flags | f)


def _fyl2x(op: int, ux: sf.Unpacked, uy: sf.Unpacked, y: int, e: Env, flags: int) -> int:
    """FYL2X: y * log2(x); FYL2XP1: y * log2(x + 1). Special operands by the SDM's tables."""
    nan = F80.default_nan()
    x = _value(ux)
    arg = x if op == FYL2X else x + 1  # the logarithm's argument (infinite x: infinite)
    if ux.kind == sf.INF:
        if ux.sign:
            return _pack3(nan, 0, flags | IE)
        if uy.kind == sf.ZERO:
            return _pack3(nan, 0, flags | IE)
        return _pack3(F80.infinity(uy.sign), 0, flags)
    if arg < 0:
        return _pack3(nan, 0, flags | IE)
    if arg == 0:  # log2 0 = -inf
        if uy.kind == sf.ZERO:
            return _pack3(nan, 0, flags | IE)
        return _pack3(F80.infinity(uy.sign ^ 1), 0, flags | (0 if uy.kind == sf.INF else ZE))
    if arg == 1:  # log2 1 = 0 (FYL2XP1 of ±0: ±0)
        if uy.kind == sf.INF:
            return _pack3(nan, 0, flags | IE)
        zero_sign = ux.sign if op == FYL2XP1 else 0
        return _pack3((uy.sign ^ zero_sign) * SIGN80, 0, flags)
    log_negative = arg < 1
    if uy.kind == sf.INF:
        return _pack3(F80.infinity(uy.sign ^ log_negative), 0, flags)
    if uy.kind == sf.ZERO:
        return _pack3((uy.sign ^ log_negative) * SIGN80, 0, flags)
    n, d = arg.numerator, arg.denominator
    if n & (n - 1) == 0 and d & (d - 1) == 0:  # a power of two: the logarithm is an integer
        power, _ = sf.from_int(F80, n.bit_length() - d.bit_length())
        r, f = sf.mul(F80, y, power, e)
        return _pack3(r, 0, flags | f)
    log = transcendental.log2(x) if op == FYL2X else transcendental.log2_1p(x)
    r, f = _round_value(_value(uy) * log, e)
    return _pack3(r, 0, flags | f)
