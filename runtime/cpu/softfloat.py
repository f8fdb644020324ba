"""An exact binary floating-point core on Python ints, for the x87 and SSE semantics.

Values travel as bit patterns (ints): binary32 (`F32`), binary64 (`F64`) and the x87 extended
format (`F80`: sign 79, exponent 78:64, an explicit integer bit 63, fraction 62:0). Every
operation returns `(result, flags)`: the result pattern and the IEEE exceptions it raised as a
mask in the bit order of FSW and MXCSR (`IE DE ZE OE UE PE` = bits 0..5).

The arithmetic is exact: operands are unpacked to `significand * 2**exponent` with unbounded
Python ints, the exact result (or, for division and square root, a truncation with enough
extra bits and a sticky bit) is rounded once, to `precision` significand bits (x87 precision
control: 24, 53 or 64 bits with the extended exponent range) under the rounding `rc`
(`RC_NEAREST RC_DOWN RC_UP RC_ZERO`, the encoding of FCW.RC and MXCSR.RC).

Conventions, from the SDM (vol. 1, 4.8 and 4.9):
- Tininess is detected after rounding (4.9.1.5: "the result of rounding with unbounded
  exponent ... is non-zero and tiny"), for x87 and SSE alike. With underflow masked, UE is
  set only when the tiny result is also inexact; unmasked, whenever it is tiny.
- Masked overflow gives infinity or the largest finite number by the rounding mode, with OE
  and PE. The x87 unmasked responses (a result with a re-biased exponent) are not modelled:
  callers see the masked result and the flags.
- NaNs: a signalling NaN operand raises IE and is quieted (the quiet bit set). Two NaN
  operands give, under `NAN_X87`, the quiet one if exactly one is signalling, otherwise the one
  with the larger significand (equal significands: the positive one); under `NAN_SSE`, the
  first operand. An invalid operation without a NaN operand gives the default NaN (the "real
  indefinite": negative, quiet, payload zero).
- `F80` encodings the 387 and later no longer support (pseudo-NaN, pseudo-infinity,
  unnormal: exponent non-zero and the integer bit clear) are invalid operands (IE, result the
  default NaN). A pseudo-denormal (exponent 0, integer bit set) is read as the denormal it
  represents (its value is significand * 2**(1 - 16383 - 63)) and raises DE like one.
- DE is raised when a finite operand is denormal (the caller decides which operands count:
  SSE with DAZ zeroes them before calling).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import isqrt
from typing import NamedTuple

IE, DE, ZE, OE, UE, PE = 1, 2, 4, 8, 16, 32

RC_NEAREST, RC_DOWN, RC_UP, RC_ZERO = 0, 1, 2, 3

NAN_X87, NAN_SSE = 0, 1

# Not an IEEE flag: with `Env.report_round_up`, set in the flags when the rounded result's
# magnitude is larger than the exact one's (the x87's C1 after an inexact result). It is FSW's
# C1 bit; it never appears unless asked for (bit 9 of MXCSR is a mask).
ROUNDED_UP = 1 << 9


@dataclass(frozen=True)
class Env:
    """How an operation rounds and reports: `rc` the rounding mode; `precision` the significand
    bits to round to (None: the format's; x87 precision control: 24 or 53 in F80);
    `underflow_masked` selects the masked underflow response (UE only when also inexact);
    `flush_to_zero` (SSE's FTZ, masked underflow only) gives a zero of the right sign instead of
    a tiny result; `nan_rule` NAN_X87 or NAN_SSE; `report_round_up` adds ROUNDED_UP."""

    rc: int = 0
    precision: int | None = None
    underflow_masked: bool = True
    flush_to_zero: bool = False
    nan_rule: int = 0
    report_round_up: bool = False


DEFAULT = Env()

# The kinds an unpacked operand can be.
ZERO, FINITE, INF, NAN, UNSUPPORTED = range(5)


@dataclass(frozen=True)
class Format:
    """A binary interchange format: `precision` significand bits (the integer bit included),
    `exp_bits` exponent bits, and whether the integer bit is stored (x87 extended) or hidden."""

    name: str
    precision: int
    exp_bits: int
    explicit_integer_bit: bool

    @property
    def bias(self) -> int:
        return (1 << (self.exp_bits - 1)) - 1

    @property
    def emin(self) -> int:
        """The exponent of the smallest normal number (value 2**emin)."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        return self.bias

    @property
    def fraction_bits(self) -> int:
        """Bits below the integer bit."""
        return self.precision - 1

    @property
    def significand_field_bits(self) -> int:
        return self.precision if self.explicit_integer_bit else self.precision - 1

    @property
    def width(self) -> int:
        return 1 + self.exp_bits + self.significand_field_bits

    @property
    def sign_bit(self) -> int:
        return 1 << (self.width - 1)

    @property
    def quiet_bit(self) -> int:
        return 1 << (self.fraction_bits - 1)

    @property
    def exp_max_field(self) -> int:
        return (1 << self.exp_bits) - 1

    def infinity(self, sign: int) -> int:
        integer = 1 << self.fraction_bits if self.explicit_integer_bit else 0
        return sign * self.sign_bit | self.exp_max_field << self.significand_field_bits | integer

    def default_nan(self) -> int:
        """The QNaN "real indefinite": negative, quiet, payload zero (0xFFC00000 in F32,
        0xFFFF_C000000000000000 in F80)."""
        return self.infinity(1) | self.quiet_bit

    def largest(self, sign: int, precision: int | None = None) -> int:
        """The largest finite number, with `precision` significand bits (x87 precision control)."""
        p = precision or self.precision
        significand = ((1 << p) - 1) << (self.precision - p)
        return pack(self, sign, significand, self.emax - self.precision + 1)


F32 = Format("binary32", 24, 8, False)
F64 = Format("binary64", 53, 11, False)
F80 = Format("extended", 64, 15, True)


class Unpacked(NamedTuple):
    """An operand: its kind, sign, and for FINITE its value `significand * 2**exponent`
    (significand > 0, not normalized); for NAN `significand` is the fraction field."""

    kind: int
    sign: int
    significand: int
    exponent: int
    denormal: bool


def unpack(fmt: Format, x: int) -> Unpacked:
    sign = x >> (fmt.width - 1) & 1
    biased = x >> fmt.significand_field_bits & fmt.exp_max_field
    field = x & ((1 << fmt.significand_field_bits) - 1)
    fraction = field & ((1 << fmt.fraction_bits) - 1)
    if fmt.explicit_integer_bit:
        integer = field >> fmt.fraction_bits
        if biased == fmt.exp_max_field:
            if not integer:
                return Unpacked(UNSUPPORTED, sign, 0, 0, False)  # pseudo-infinity, pseudo-NaN
            return Unpacked(NAN if fraction else INF, sign, fraction, 0, False)
        if biased == 0:
            if field == 0:
                return Unpacked(ZERO, sign, 0, 0, False)
            return Unpacked(FINITE, sign, field, fmt.emin - fmt.fraction_bits, True)
        if not integer:
            return Unpacked(UNSUPPORTED, sign, 0, 0, False)  # unnormal
        return Unpacked(FINITE, sign, field, biased - fmt.bias - fmt.fraction_bits, False)
    if biased == fmt.exp_max_field:
        return Unpacked(NAN if fraction else INF, sign, fraction, 0, False)
    if biased == 0:
        if fraction == 0:
            return Unpacked(ZERO, sign, 0, 0, False)
        return Unpacked(FINITE, sign, fraction, fmt.emin - fmt.fraction_bits, True)
    return Unpacked(FINITE, sign, fraction | 1 << fmt.fraction_bits, biased - fmt.bias - fmt.fraction_bits, False)


def pack(fmt: Format, sign: int, significand: int, exponent: int) -> int:
    """The pattern of `(-1)**sign * significand * 2**exponent`, which must be representable
    exactly (a rounded result); significand 0 packs a zero of that sign."""
    s = sign * fmt.sign_bit
    if significand == 0:
        return s
    top = significand.bit_length() - 1 + exponent
    if top < fmt.emin:  # a denormal: the exponent field is 0, the quantum 2**(emin - fraction_bits)
        return s | significand << (exponent - (fmt.emin - fmt.fraction_bits))
    shift = exponent - (top - fmt.fraction_bits)
    field = significand << shift if shift >= 0 else significand >> -shift
    if not fmt.explicit_integer_bit:
        field &= (1 << fmt.fraction_bits) - 1
    return s | (top + fmt.bias) << fmt.significand_field_bits | field


def is_nan(fmt: Format, x: int) -> bool:
    return unpack(fmt, x).kind == NAN


def is_signalling(fmt: Format, x: int) -> bool:
    u = unpack(fmt, x)
    return u.kind == NAN and not u.significand & fmt.quiet_bit


def quiet(fmt: Format, x: int) -> int:
    return x | fmt.quiet_bit


def _round_shift(magnitude: int, shift: int, sign: int, rc: int) -> tuple[int, bool]:
    """magnitude / 2**shift rounded to an integer under rc; and whether that was inexact."""
    if shift <= 0:
        return magnitude << -shift, False
    kept = magnitude >> shift
    rest = magnitude & ((1 << shift) - 1)
    if rest == 0:
        return kept, False
    half = 1 << (shift - 1)
    if rc == RC_NEAREST:
        up = rest > half or (rest == half and kept & 1)
    elif rc == RC_ZERO:
        up = False
    else:
        up = (rc == RC_UP) != bool(sign)
    return kept + up, True


def round_pack(fmt: Format, sign: int, significand: int, exponent: int, env: Env = DEFAULT) -> tuple[int, int]:
    """Round the exact value `(-1)**sign * significand * 2**exponent` into fmt, with
    env.precision significand bits and the format's exponent range. A caller that truncated
    an exact result folds a sticky bit into the lowest bit of `significand` (with at least two
    bits below the rounding position)."""
    p = env.precision or fmt.precision
    rc = env.rc
    if significand == 0:
        return pack(fmt, sign, 0, 0), 0
    top = significand.bit_length() - 1 + exponent
    # Tininess after rounding: round to p bits with an unbounded exponent range.
    unbounded, _ = _round_shift(significand, top - p + 1 - exponent, sign, rc)
    tiny = unbounded.bit_length() - 1 + top - p + 1 < fmt.emin
    # A p-bit format with the exponent range of fmt: denormals too have p-bit granularity (an
    # x87 result under precision control is rounded at bit 64 - p of the significand field
    # whatever its exponent, as SoftFloat's and Bochs's extended rounding do).
    quantum = max(top - p + 1, fmt.emin - p + 1)
    rounded, inexact = _round_shift(significand, quantum - exponent, sign, rc)
    if rounded.bit_length() > p:  # rounding carried into a new leading bit
        rounded >>= 1
        quantum += 1
    flags = PE if inexact else 0
    if tiny and (inexact or not env.underflow_masked):
        flags |= UE
    if tiny and env.flush_to_zero and env.underflow_masked:
        return pack(fmt, sign, 0, 0), UE | PE
    if rounded and rounded.bit_length() - 1 + quantum > fmt.emax:
        to_infinity = rc == RC_NEAREST or (rc == RC_UP and not sign) or (rc == RC_DOWN and sign)
        up = ROUNDED_UP if env.report_round_up and to_infinity else 0
        return (fmt.infinity(sign) if to_infinity else fmt.largest(sign, p)), OE | PE | up
    if env.report_round_up and inexact and _magnitude_greater(rounded, quantum, significand, exponent):
        flags |= ROUNDED_UP
    return pack(fmt, sign, rounded, quantum), flags


def _magnitude_greater(a: int, ea: int, b: int, eb: int) -> bool:
    low = min(ea, eb)
    return a << (ea - low) > b << (eb - low)


def _propagate_nan(fmt: Format, a: int, b: int | None, rule: int) -> tuple[int, int]:
    """The NaN result of an operation with a NaN operand, and IE if one is signalling."""
    ua = unpack(fmt, a)
    ub = unpack(fmt, b) if b is not None else None
    a_nan, b_nan = ua.kind == NAN, ub is not None and ub.kind == NAN
    a_snan = a_nan and not ua.significand & fmt.quiet_bit
    b_snan = b_nan and ub is not None and not ub.significand & fmt.quiet_bit
    flags = IE if a_snan or b_snan else 0
    if not b_nan:
        return quiet(fmt, a), flags
    if not a_nan:
        assert b is not None
        return quiet(fmt, b), flags
    assert b is not None and ub is not None
    if rule == NAN_SSE:
        return quiet(fmt, a), flags
    if a_snan != b_snan:
        return quiet(fmt, b if a_snan else a), flags
    qa, qb = ua.significand | fmt.quiet_bit, ub.significand | fmt.quiet_bit
    if qa != qb:
        return quiet(fmt, a if qa > qb else b), flags
    return quiet(fmt, a if not ua.sign else b), flags


Decided = tuple[int, int] | None


def _operands(fmt: Format, a: int, b: int | None, rule: int) -> tuple[Unpacked, Unpacked | None, int, Decided]:
    """Unpack the operands; when one is a NaN or unsupported, the result is decided already."""
    ua = unpack(fmt, a)
    ub = unpack(fmt, b) if b is not None else None
    if ua.kind == UNSUPPORTED or (ub is not None and ub.kind == UNSUPPORTED):
        return ua, ub, IE, (fmt.default_nan(), IE)
    if ua.kind == NAN or (ub is not None and ub.kind == NAN):
        return ua, ub, 0, _propagate_nan(fmt, a, b, rule)
    flags = DE if ua.denormal or (ub is not None and ub.denormal) else 0
    return ua, ub, flags, None


def _zero_sign_of_sum(sa: int, sb: int, rc: int) -> int:
    """The sign of an exact zero sum: the common sign, else + (- when rounding down)."""
    if sa == sb:
        return sa
    return 1 if rc == RC_DOWN else 0


def add(fmt: Format, a: int, b: int, env: Env = DEFAULT) -> tuple[int, int]:
    """a + b."""
    ua, ub, flags, decided = _operands(fmt, a, b, env.nan_rule)
    if decided:
        return decided
    assert ub is not None
    if ua.kind == INF or ub.kind == INF:
        if ua.kind == INF and ub.kind == INF and ua.sign != ub.sign:
            return fmt.default_nan(), flags | IE
        return fmt.infinity(ua.sign if ua.kind == INF else ub.sign), flags
    if ua.kind == ZERO and ub.kind == ZERO:
        return pack(fmt, _zero_sign_of_sum(ua.sign, ub.sign, env.rc), 0, 0), flags
    if ua.kind == ZERO:
        r, f = round_pack(fmt, ub.sign, ub.significand, ub.exponent, env)
        return r, flags | f
    if ub.kind == ZERO:
        r, f = round_pack(fmt, ua.sign, ua.significand, ua.exponent, env)
        return r, flags | f
    low = min(ua.exponent, ub.exponent)
    va = ua.significand << (ua.exponent - low)
    vb = ub.significand << (ub.exponent - low)
    total = (-va if ua.sign else va) + (-vb if ub.sign else vb)
    if total == 0:
        return pack(fmt, _zero_sign_of_sum(ua.sign, ub.sign, env.rc), 0, 0), flags
    r, f = round_pack(fmt, int(total < 0), abs(total), low, env)
    return r, flags | f


def sub(fmt: Format, a: int, b: int, env: Env = DEFAULT) -> tuple[int, int]:
    """a - b (b's sign flipped unless it is a NaN, whose sign propagation must not change)."""
    if unpack(fmt, b).kind in (NAN, UNSUPPORTED) or unpack(fmt, a).kind in (NAN, UNSUPPORTED):
        return add(fmt, a, b, env)
    return add(fmt, a, b ^ fmt.sign_bit, env)


def mul(fmt: Format, a: int, b: int, env: Env = DEFAULT) -> tuple[int, int]:
    """a * b."""
    ua, ub, flags, decided = _operands(fmt, a, b, env.nan_rule)
    if decided:
        return decided
    assert ub is not None
    sign = ua.sign ^ ub.sign
    if ua.kind == INF or ub.kind == INF:
        if ua.kind == ZERO or ub.kind == ZERO:
            return fmt.default_nan(), flags | IE
        return fmt.infinity(sign), flags
    if ua.kind == ZERO or ub.kind == ZERO:
        return pack(fmt, sign, 0, 0), flags
    r, f = round_pack(fmt, sign, ua.significand * ub.significand, ua.exponent + ub.exponent, env)
    return r, flags | f


def div(fmt: Format, a: int, b: int, env: Env = DEFAULT) -> tuple[int, int]:
    """a / b."""
    ua, ub, flags, decided = _operands(fmt, a, b, env.nan_rule)
    if decided:
        return decided
    assert ub is not None
    sign = ua.sign ^ ub.sign
    if ua.kind == INF:
        if ub.kind == INF:
            return fmt.default_nan(), flags | IE
        return fmt.infinity(sign), flags
    if ub.kind == INF:
        return pack(fmt, sign, 0, 0), flags
    if ub.kind == ZERO:
        if ua.kind == ZERO:
            return fmt.default_nan(), flags | IE
        return fmt.infinity(sign), flags | ZE
    if ua.kind == ZERO:
        return pack(fmt, sign, 0, 0), flags
    # Enough quotient bits for any precision and denormal position, then a sticky bit.
    shift = fmt.precision + 3 + ub.significand.bit_length() - ua.significand.bit_length() + 2
    shift = max(shift, 0)
    q, rest = divmod(ua.significand << shift, ub.significand)
    q = q << 1 | (rest != 0)
    r, f = round_pack(fmt, sign, q, ua.exponent - ub.exponent - shift - 1, env)
    return r, flags | f


def sqrt(fmt: Format, a: int, env: Env = DEFAULT) -> tuple[int, int]:
    """The square root of a (-0 for -0; IE and the default NaN for a negative number)."""
    ua, _, flags, decided = _operands(fmt, a, None, NAN_X87)
    if decided:
        return decided
    if ua.kind == ZERO:
        return a, flags
    if ua.sign:
        return fmt.default_nan(), flags | IE
    if ua.kind == INF:
        return a, flags
    m, e = ua.significand, ua.exponent
    extra = 2 * (fmt.precision + 3) - m.bit_length()
    extra = max(extra, 0)
    if (e - extra) % 2:
        extra += 1
    m <<= extra
    e -= extra
    root = isqrt(m)
    sticky = root * root != m
    r, f = round_pack(fmt, 0, root << 1 | sticky, e // 2 - 1, env)
    return r, flags | f


def convert(src: Format, dst: Format, x: int, env: Env = DEFAULT) -> tuple[int, int]:
    """x, a src pattern, rounded into dst. A NaN keeps its sign and the high bits of its payload
    (quieted, IE if it was signalling)."""
    u = unpack(src, x)
    if u.kind == UNSUPPORTED:
        return dst.default_nan(), IE
    if u.kind == NAN:
        flags = 0 if u.significand & src.quiet_bit else IE
        shift = dst.fraction_bits - src.fraction_bits
        payload = u.significand << shift if shift >= 0 else u.significand >> -shift
        return dst.infinity(u.sign) | payload | dst.quiet_bit, flags
    if u.kind == INF:
        return dst.infinity(u.sign), 0
    if u.kind == ZERO:
        return pack(dst, u.sign, 0, 0), 0
    r, f = round_pack(dst, u.sign, u.significand, u.exponent, env)
    return r, f | (DE if u.denormal else 0)


def from_int(dst: Format, value: int, env: Env = DEFAULT) -> tuple[int, int]:
    """A signed integer (a Python int, any size) rounded into dst."""
    return round_pack(dst, int(value < 0), abs(value), 0, env)


def to_int(src: Format, x: int, bits: int, rc: int = RC_NEAREST) -> tuple[int, int]:
    """x rounded to a signed `bits`-bit integer under rc (RC_ZERO for the truncating
    conversions), as a two's complement pattern. A NaN, an infinity or a value out of range
    gives the integer indefinite (1 << bits - 1) and IE; an inexact result PE; a denormal
    operand DE."""
    u = unpack(src, x)
    indefinite = 1 << (bits - 1)
    if u.kind in (NAN, INF, UNSUPPORTED):
        return indefinite, IE
    if u.kind == ZERO:
        return 0, 0
    magnitude, inexact = _round_shift(u.significand, -u.exponent, u.sign, rc)
    value = -magnitude if u.sign else magnitude
    if not -indefinite <= value < indefinite:
        return indefinite, IE
    flags = (PE if inexact else 0) | (DE if u.denormal else 0)
    return value & ((1 << bits) - 1), flags


def round_to_integral(fmt: Format, x: int, rc: int = RC_NEAREST) -> tuple[int, int]:
    """x rounded to an integral value in its format (FRNDINT, ROUNDSD): PE when inexact."""
    ua, _, flags, decided = _operands(fmt, x, None, NAN_X87)
    if decided:
        return decided
    if ua.kind != FINITE:
        return x, flags
    if ua.exponent >= 0:
        return x, flags
    magnitude, inexact = _round_shift(ua.significand, -ua.exponent, ua.sign, rc)
    return pack(fmt, ua.sign, magnitude, 0), flags | (PE if inexact else 0)


# Relations of `compare`, in the order of the x87 condition codes' meaning.
LESS, EQUAL, GREATER, UNORDERED = 0, 1, 2, 3


def compare(fmt: Format, a: int, b: int, signal_qnan: bool) -> tuple[int, int]:
    """The relation of a to b (+0 = -0). IE for a signalling NaN operand, or for any NaN when
    `signal_qnan` (FCOM, COMISD: ordered compares; FUCOM, UCOMISD: unordered ones); IE and
    UNORDERED for unsupported operands; DE for a denormal operand."""
    ua, ub = unpack(fmt, a), unpack(fmt, b)
    if ua.kind == UNSUPPORTED or ub.kind == UNSUPPORTED:
        return UNORDERED, IE
    if ua.kind == NAN or ub.kind == NAN:
        snan = (ua.kind == NAN and not ua.significand & fmt.quiet_bit) or (
            ub.kind == NAN and not ub.significand & fmt.quiet_bit)
        return UNORDERED, IE if snan or signal_qnan else 0
    flags = DE if ua.denormal or ub.denormal else 0
    ka, kb = _order_key(ua), _order_key(ub)
    return (LESS if ka < kb else EQUAL if ka == kb else GREATER), flags


def _order_key(u: Unpacked) -> tuple[int, int, int]:
    """A key that orders finite numbers, zeros and infinities by value (exact, as ints)."""
    if u.kind == ZERO:
        return (0, 0, 0)
    if u.kind == INF:
        return (-2, 0, 0) if u.sign else (2, 0, 0)
    top = u.significand.bit_length() - 1 + u.exponent
    # Compare magnitudes exactly by scaling to a common exponent against the magnitude bound.
    mag = (top, u.significand << (200 - u.significand.bit_length()))
    if u.sign:
        return (-1, -mag[0], -mag[1])
    return (1, mag[0], mag[1])
