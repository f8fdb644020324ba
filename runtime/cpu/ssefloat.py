"""SSE and SSE2 floating-point lanes on the exact core (softfloat), as the spec's builtins
`sse_arith`, `sse_convert` and `sse_reciprocal` use them.

Each function computes one lane under MXCSR and returns `result | flags << 64`: the lane's
result pattern in the low bits and the exception flags it raised in MXCSR's bit order (IE DE
ZE OE UE PE = bits 0..5) above bit 64. The spec ORs the lanes' flags, sets them in MXCSR and
decides whether an unmasked one faults (sse.r1, `simd_fp_flags`): nothing here faults.

What MXCSR does to a lane (SDM Vol. 1, 10.2.3 and 11.5):
- DAZ (bit 6) reads a denormal source as a zero of its sign, before anything else: no DE.
- RC (bits 14:13) rounds; FZ (bit 15) with underflow masked returns a tiny result as a zero
  of its sign, with UE and PE. UM (bit 11) clear reports underflow for every tiny result,
  exact or not (masked: only inexact ones). Tininess is detected after rounding.
- Two NaN operands give the first (the destination's) one, quieted.
- Exceptions are prioritized per lane (Vol. 1, 11.5.2; Russinoff, "SSE pre-computation
  exceptions"): an invalid operation or a division by zero hides the denormal-operand one
  (a denormal divided by zero is ZE alone; the square root of a negative denormal IE alone).
- The conversions to integers report IE and PE, never DE (their "SIMD Floating-Point
  Exceptions" lists), and give the integer indefinite 0x80000000 for a NaN, an infinity or
  a value out of range.
"""

from __future__ import annotations

from functools import lru_cache

from ring1.runtime.cpu import softfloat as sf

FLAGS_SHIFT = 64

# sse_arith's operations (spec/sse.r1 names them with consts).
ADD, SUB, MUL, DIV, SQRT = range(5)
_BINARY = (sf.add, sf.sub, sf.mul, sf.div)

# sse_convert's kinds.
F32_TO_F64, F64_TO_F32, I32_TO_F32, I32_TO_F64, F32_TO_I32, F64_TO_I32, F32_TO_I32_TRUNC, F64_TO_I32_TRUNC = range(8)

MXCSR_DAZ, MXCSR_UM, MXCSR_FZ = 1 << 6, 1 << 11, 1 << 15


@lru_cache(maxsize=64)
def environment(mxcsr: int) -> sf.Env:
    """The rounding environment MXCSR selects (cached: few MXCSR values occur)."""
    um = bool(mxcsr & MXCSR_UM)
    return sf.Env(rc=mxcsr >> 13 & 3, underflow_masked=um, flush_to_zero=bool(mxcsr & MXCSR_FZ), nan_rule=sf.NAN_SSE)


def read_daz(fmt: sf.Format, x: int, mxcsr: int) -> int:
    """A source operand as the lane reads it: a denormal is a zero of its sign under DAZ."""
    if mxcsr & MXCSR_DAZ and not x >> fmt.significand_field_bits & fmt.exp_max_field and x & (fmt.sign_bit - 1):
        return x & fmt.sign_bit
    return x


def _format(width: int) -> sf.Format:
    return sf.F32 if width == 32 else sf.F64


def _prioritized(flags: int) -> int:
    """An invalid operation or a zero divisor hides the denormal operand (SSE's precedence)."""
    return flags & ~sf.DE if flags & (sf.IE | sf.ZE) else flags


def arith(op: int, width: int, a: int, b: int, mxcsr: int) -> int:
    """One lane of ADD SUB MUL DIV (a op b) or SQRT (of b) in binary32 or binary64."""
    fmt = _format(width)
    env = environment(mxcsr & 0xFFC0)
    b = read_daz(fmt, b, mxcsr)
    if op == SQRT:
        r, f = sf.sqrt(fmt, b, env)
    else:
        r, f = _BINARY[op](fmt, read_daz(fmt, a, mxcsr), b, env)
    return r | _prioritized(f) << FLAGS_SHIFT


def convert(kind: int, a: int, mxcsr: int) -> int:
    """One lane of a conversion between binary32, binary64 and 32-bit signed integers."""
    env = environment(mxcsr & 0xFFC0)
    if kind == F32_TO_F64:
        r, f = sf.convert(sf.F32, sf.F64, read_daz(sf.F32, a, mxcsr), env)
    elif kind == F64_TO_F32:
        r, f = sf.convert(sf.F64, sf.F32, read_daz(sf.F64, a, mxcsr), env)
    elif kind in (I32_TO_F32, I32_TO_F64):
        signed = (a & 0xFFFFFFFF) - ((a & 0x80000000) << 1)
        r, f = sf.from_int(sf.F32 if kind == I32_TO_F32 else sf.F64, signed, env)
    else:
        fmt = sf.F32 if kind in (F32_TO_I32, F32_TO_I32_TRUNC) else sf.F64
        rc = sf.RC_ZERO if kind in (F32_TO_I32_TRUNC, F64_TO_I32_TRUNC) else env.rc
        r, f = sf.to_int(fmt, read_daz(fmt, a, mxcsr), 32, rc)
        f &= ~sf.DE
    return r | f << FLAGS_SHIFT


# RCPSS and RSQRTSS are approximations the SDM bounds (relative error at most 1.5 * 2**-12);
# their exact bits are each processor's own. ring1 returns what QEMU's TCG (unicorn) does, so
# that the differential tests compare bits: 1 / x, and 1 / sqrt(x) with the square root
# rounded first, both rounded to nearest in binary32 whatever MXCSR.RC says. The SDM's
# special cases are kept: a denormal source reads as a zero of its sign (so 1/x is an infinity),
# a tiny result is flushed to a zero of its sign, a NaN is returned quieted; nothing raises a
# flag (tests/test_ssefloat.py checks the error bound).
RECIP, RECIP_SQRT = 0, 1
_NEAREST = sf.Env(nan_rule=sf.NAN_SSE)
_ONE = 0x3F800000


def reciprocal(op: int, a: int) -> int:
    """One lane of RCPPS (op 0) or RSQRTPS (op 1): the result pattern, no flags."""
    fmt = sf.F32
    x = read_daz(fmt, a & 0xFFFFFFFF, MXCSR_DAZ)
    if op == RECIP_SQRT:
        x, _ = sf.sqrt(fmt, x, _NEAREST)
    r, _ = sf.div(fmt, _ONE, x, _NEAREST)
    if not r >> 23 & 0xFF and r & 0x7FFFFF:  # tiny: flushed
        r &= fmt.sign_bit
    return r
