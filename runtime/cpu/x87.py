"""The x87 builtins of the spec (spec/prelude.r1, `f80_...`), on runtime/cpu/softfloat.py.

Each returns one int: the result (an 80-bit register pattern, or a memory pattern for the
stores) in bits 79:0 and what the operation raised above it, `flags << 80`, with flags in
FSW's bit order (IE DE ZE OE UE PE in bits 0-5; bit 9, C1, set when an inexact result was
rounded up in magnitude). The spec applies the flags (x87.r1, `x87_report`). The FCW argument
gives the rounding (RC), the precision of the arithmetic (PC: 24, 53 or 64 bits; the stores
and conversions round to their destination) and the underflow mask.
"""

from __future__ import annotations

from ring1.runtime.cpu import softfloat as sf
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
    An exponent difference of 64 or more reduces by 2**(difference - 63) multiples of b, as
    the 387 and later do in one step (the SDM leaves the step implementation dependent)."""
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
        step = ta - tb - 63
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
