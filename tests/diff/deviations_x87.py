"""Where unicorn is wrong on x87 instructions (spec/x87.r1), recorded; deviations.py adds
these to DEVIATIONS. Proven by tests/diff/test_deviations_x87.py.

Unicorn 2 is QEMU 5.0's TCG, whose x87 code (target/i386/fpu_helper.c before the 5.2 fixes)
computes with softfloat's floatx80 but never moves softfloat's exception flags into FSW, never
raises #MF, does not check the register tags (no stack overflow or underflow), computes the
transcendental instructions and FPREM/FPREM1 through host doubles, and keeps no FOP. Each
deviation below accepts exactly one of these differences, recomputing from the case what the
architecture calls for wherever it can; any other difference in the same example still fails.

Not in the list: x87-fop. Unicorn keeps no FOP (the last opcode; it reads as 0) though it
records FIP; the harness compares neither (translated code runs at other addresses), so no
comparison can meet it. test_deviations_x87.test_fop_not_recorded proves it, and deviation
fxsave-fop (deviations.py) accepts its one visible effect, FXSAVE's image.
"""

from __future__ import annotations

from ring1.generated.forms import FORMS
from ring1.runtime.tools import fresh_machine

from .harness import Case, Outcome

# FSW bits unicorn never writes: the exception flags IE..PE, SF, ES (bits 0-7), C1 (bit 9) and B.
FSW_STATUS = 0x80FF | 0x200
FSW_C1 = 0x200
FSW_ES_B = 0x8080
TOP_MASK = 0x3800
CR0_NE = 0x20
X87_KEYS = set(fresh_machine.X87_KEYS)

# Forms whose C1 is a result (FXAM: the sign; FPREM, FPREM1: a quotient bit), which unicorn sets.
C1_RESULT_FORMS = {"FXAM", "FPREM", "FPREM1"}

# Registers read by forms without st0/sti operands, and forms that push without an `st0 w` operand.
FIXED_READS = {
    "FCOMPP": (0, 1),
    "FUCOMPP": (0, 1),
    "FSCALE": (0, 1),
    "FPREM": (0, 1),
    "FPREM1": (0, 1),
    "FYL2X": (0, 1),
    "FYL2XP1": (0, 1),
    "FPATAN": (0, 1),
}
EXTRA_PUSHES = {"FPTAN", "FSINCOS", "FXTRACT"}
NO_UNDERFLOW = {"FXAM"}  # examines an empty register without a fault


def _decoded(case: Case):
    from ring1.runtime.isa.decoder import decode

    return decode(case.spec.code + bytes(16), fresh_machine.CODE, not case.spec.real)


def _one_x87_form(case: Case) -> str | None:
    if len(case.forms) != 1 or not FORMS[case.forms[0]].source.startswith("spec/x87.r1"):
        return None
    return case.forms[0]


def _diff_keys(o: Outcome) -> set[str]:
    from .harness import differences

    return {line.split(":", 1)[0] for line in differences(o)}


def _runs(case: Case) -> bool:
    """The instruction gets past #NM and #MF (SDM vol. 1, 8.1: CR0.EM or TS; ES with CR0.NE)."""
    spec = case.spec
    if spec.cr0_bits & (fresh_machine.CR0_EM | fresh_machine.CR0_TS):
        return False
    return not (spec.fsw & 0x80 and spec.cr0_bits & CR0_NE)


def _stack_use(case: Case) -> tuple[set[int], bool] | None:
    """The ST(i) the case's one x87 instruction reads, and whether it pushes, from the form's
    operands and the tables above; None when the case is not one decodable x87 form."""
    form = _one_x87_form(case)
    if form is None:
        return None
    d = _decoded(case)
    if d.form != form:
        return None
    reads, pushes = set(FIXED_READS.get(form, ())), form in EXTRA_PUSHES
    for name, kind, access in FORMS[form].operands:
        if kind not in ("st0", "sti"):
            continue
        index = 0 if kind == "st0" else d.fields[name]
        if "r" in access:
            reads.add(index)
        elif kind == "st0":  # written and not read: a load that pushes
            pushes = True
    if form in EXTRA_PUSHES:
        reads.add(0)
    return reads, pushes


def stack_fault(case: Case) -> bool:
    """Whether the case's one x87 instruction meets a stack overflow or underflow (SDM vol. 1,
    8.5.1.1), from the tags it starts with: a register it reads is empty, or it pushes and
    ST(7) is in use."""
    use = _stack_use(case)
    if use is None or case.forms[0] in NO_UNDERFLOW:
        return False
    reads, pushes = use
    top = case.spec.fsw >> 11 & 7

    def empty(i: int) -> bool:
        return not case.spec.ftw >> ((top + i) & 7) & 1

    return any(empty(i) for i in reads) or (pushes and not empty(7))


def _unsupported_or_pseudo_denormal(x: int) -> bool:
    exponent, integer_bit = x >> 64 & 0x7FFF, x >> 63 & 1
    return (exponent == 0 and integer_bit) or (exponent != 0 and not integer_bit)


def _odd_encodings(case: Case, o: Outcome) -> bool:
    # Since the 387 a register with the integer bit clear and a non-zero exponent (unnormal,
    # pseudo-infinity, pseudo-NaN) is an invalid operand, and a pseudo-denormal (exponent 0,
    # integer bit set) stands for its value with exponent 1 (SDM vol. 1, 8.2.2 and Table 8-3).
    # QEMU 5.0's floatx80 code takes them as they come (its FXAM calls a pseudo-NaN a NaN
    # where the CPU says unsupported). Accepted: a register the instruction reads holds one of
    # them, and only x87 state, EFLAGS and memory differ.
    use = _stack_use(case)
    if use is None or stack_fault(case) or not _runs(case):
        return False
    top = case.spec.fsw >> 11 & 7
    if not any(_unsupported_or_pseudo_denormal(case.spec.fpr[(top + i) & 7]) for i in use[0]):
        return False
    if o.ours.exception is not None or o.theirs.exception is not None:
        return False
    return all(k in X87_KEYS or k == "eflags" or k.startswith("memory") for k in _diff_keys(o))


def _unicorn_status_bits(case: Case) -> set[int]:
    """The FSW status bits unicorn may leave: the initial ones, C1 cleared by FSQRT of a
    negative number, or for a division those with ZE (QEMU 5.0 sets ZE, and ES and B when it
    is unmasked, for any zero divisor, 0/0 too, before the division; SDM: 0/0 is IE, not ZE)."""
    before = case.spec.fsw & FSW_STATUS
    out = {before}
    form = case.forms[0]
    if any(m.startswith(("fdiv", "fidiv")) for m in FORMS[form].mnemonics.values()):
        ze = 0x4 | (FSW_ES_B if not case.spec.fcw & 0x4 else 0)
        out.add(before | ze)
    if form == "FSQRT" and _st0(case) >> 79:
        out.add(before & ~FSW_C1)  # QEMU clears C0-C3 (and sets C2) for a negative operand, -0 too
    return out


# Condition codes the SDM leaves undefined ("C0, C2, C3: Undefined" in each instruction's "FPU
# Flags Affected"), where the CPU and unicorn may differ: all but the compares, FXAM, FPREM,
# FPREM1 (which define them) and the trigonometric instructions (which define C2).
CC_DEFINED_FORMS = {"FXAM", "FPREM", "FPREM1", "FTST", "FINCSTP", "FDECSTP"}
TRIGONOMETRIC_FORMS = {"FSIN", "FCOS", "FPTAN", "FSINCOS"}


def _undefined_cc(form: str) -> int:
    if form in CC_DEFINED_FORMS or form.startswith(("FCOM", "FUCOM", "FICOM")):
        return 0
    return 0x4100 if form in TRIGONOMETRIC_FORMS else 0x4500


def _fsw_status_only(case: Case, o: Outcome) -> bool:
    """FSW differs at most in the status bits unicorn never writes and the condition codes the
    SDM leaves undefined; unicorn's status bits are as it leaves them, ours keep the initial
    exception flags (sticky), TOP and the defined condition codes agree."""
    form = case.forms[0]
    status = (FSW_STATUS & ~FSW_C1 if form in C1_RESULT_FORMS else FSW_STATUS) | _undefined_cc(form)
    before, ours, theirs = case.spec.fsw, o.ours.regs["fsw"], o.theirs.regs["fsw"]
    if (ours ^ theirs) & ~status:
        return False
    exceptions = status & ~_undefined_cc(form)
    if theirs & exceptions not in {b & exceptions for b in _unicorn_status_bits(case)}:
        return False
    return ours & before & 0x7F == before & 0x7F


def _explained_by(case: Case, o: Outcome, extra) -> bool:
    """Every difference is FSW's status bits (see _fsw_status_only) or one `extra` accepts."""
    if _one_x87_form(case) is None or not _runs(case):
        return False
    if o.ours.exception is not None or o.theirs.exception is not None:
        return False
    keys = _diff_keys(o)
    if "fsw" in keys and _fsw_status_only(case, o):
        keys.discard("fsw")
    return not keys or (extra is not None and extra(case, o, keys))


def _status_not_set(case: Case, o: Outcome) -> bool:
    # The x87 sets FSW's exception flags (IE DE ZE OE UE PE, SF) as an instruction detects
    # them, ES and B when one is unmasked, and C1 (0, or 1 when a result was rounded up or a
    # push overflowed) (SDM vol. 1, 8.1.3, 8.4, and each instruction's "FPU Flags Affected").
    # Unicorn leaves those bits as they were, but for a division by zero (ZE, see
    # _unicorn_status_bits). Accepted: FSW is the only difference, in those bits only (or in
    # the condition codes the SDM leaves undefined, which unicorn sets its own way).
    return _explained_by(case, o, None)


def _fcomi_keeps_osa(case: Case, o: Outcome) -> bool:
    # FCOMI, FCOMIP, FUCOMI, FUCOMIP clear OF, SF and AF (SDM FCOMI: "OF, SF and AF are set to
    # 0"). QEMU 5.0 writes ZF PF CF only. Accepted: EFLAGS differs only in OF SF AF, ours
    # clear, unicorn's the initial ones (and FSW as in x87-status-flags).
    if case.forms[0] not in ("FCOMI_ST0_STi", "FCOMIP_ST0_STi", "FUCOMI_ST0_STi", "FUCOMIP_ST0_STi"):
        return False

    def osa(case: Case, o: Outcome, keys: set[str]) -> bool:
        osa_bits = 0x800 | 0x80 | 0x10
        ours, theirs = o.ours.regs["eflags"], o.theirs.regs["eflags"]
        initial = case.spec.initial_regs()["eflags"]
        return (
            keys == {"eflags"}
            and not (ours ^ theirs) & ~osa_bits
            and not ours & osa_bits
            and (theirs & osa_bits == initial & osa_bits)
        )

    return _explained_by(case, o, osa)


CONSTANTS_ROUNDED_UP = {"FLDPI", "FLDL2E", "FLDLG2", "FLDLN2"}  # the nearest value is above the exact one
CONSTANTS_ROUNDED_DOWN = {"FLDL2T"}


def _constant_ignores_rc(case: Case, o: Outcome) -> bool:
    # FLDPI, FLDL2E, FLDLG2, FLDLN2 and FLDL2T round their 66-bit constants by RC (SDM vol. 1,
    # 8.3.8; the nearest values of the first four are above the exact constants, FLDL2T's
    # below). QEMU 5.0 loads the nearest value whatever RC. Accepted: the pushed register
    # differs by one unit in the last place, in the direction RC calls for.
    form = case.forms[0]
    rc = case.spec.fcw >> 10 & 3
    if form in CONSTANTS_ROUNDED_UP and rc in (1, 3):
        delta = -1
    elif form in CONSTANTS_ROUNDED_DOWN and rc == 2:
        delta = 1
    else:
        return False

    def one_ulp(case: Case, o: Outcome, keys: set[str]) -> bool:
        return (
            len(keys) == 1
            and (key := next(iter(keys))).startswith("fpr")
            and (o.ours.regs[key] == o.theirs.regs[key] + delta)
        )

    return _explained_by(case, o, one_ulp)


def _stack_fault_not_detected(case: Case, o: Outcome) -> bool:
    # A push onto a register in use, or a read of an empty one, is a stack fault: IE and SF,
    # and with IE masked the destination gets the QNaN indefinite (SDM vol. 1, 8.5.1.1).
    # Unicorn ignores the tags and computes with whatever the registers hold. Accepted when
    # the starting tags make the instruction fault (recomputed from the case), ours reports the
    # fault (IE and SF set), and only x87 state, EFLAGS (FCOMI) and memory (stores) differ.
    if _one_x87_form(case) is None or not _runs(case) or not stack_fault(case):
        return False
    if o.ours.exception is not None or o.theirs.exception is not None:
        return False
    if o.ours.regs["fsw"] & 0x41 != 0x41:
        return False
    return all(k in X87_KEYS or k == "eflags" or k.startswith("memory") for k in _diff_keys(o))


def _unmasked_exception_completes(case: Case, o: Outcome) -> bool:
    # An unmasked invalid-operation, denormal or zero-divide exception leaves the destination
    # and the stack unchanged, as does an unmasked overflow or underflow for a store to memory;
    # FSW gets the flag and ES, and #MF comes at the next x87 instruction (SDM vol. 1, 8.5 and
    # 4.9.2). Unicorn writes the result anyway. Accepted: ours ends with an unmasked exception
    # flag set (the operands cannot be re-examined here without the interpreter's own
    # arithmetic, so an unmasked flag already set at the start counts too), wrote no register,
    # tag, TOP or memory, and unicorn completed.
    if _one_x87_form(case) is None or not _runs(case):
        return False
    if o.ours.exception is not None or o.theirs.exception is not None:
        return False
    ours = o.ours.regs
    if not ours["fsw"] & 0x80 or not ours["fsw"] & ~case.spec.fcw & 0x1F:
        return False
    if any(ours[f"fpr{i}"] != case.spec.fpr[i] for i in range(8)) or ours["ftw"] != case.spec.ftw:
        return False
    if (ours["fsw"] ^ case.spec.fsw) & TOP_MASK:
        return False
    data = case.spec.memory.get(fresh_machine.DATA)
    if data is not None and o.our_memory[fresh_machine.DATA : fresh_machine.DATA + len(data)] != data:
        return False
    return all(k in X87_KEYS or k == "eflags" or k.startswith("memory") for k in _diff_keys(o))


def _st0(case: Case) -> int:
    return case.spec.fpr[case.spec.fsw >> 11 & 7]


def _fbstp_invalid_not_detected(case: Case, o: Outcome) -> bool:
    # FBSTP of a NaN, an infinity, an unsupported encoding or a value whose rounded integer has
    # more than 18 digits is an invalid operation: with IE masked it stores the packed BCD
    # indefinite (SDM FBSTP). QEMU 5.0 converts through int64 and stores digits of whatever
    # that gives. Accepted: ST(0) is such a value (examined here), and memory and FSW's status
    # bits are the only differences.
    if case.forms[0] != "FBSTP_M80" or stack_fault(case):
        return False
    x = _st0(case)
    exponent, integer_bit = x >> 64 & 0x7FFF, x >> 63 & 1
    invalid = exponent == 0x7FFF or (exponent != 0 and not integer_bit) or exponent - 0x3FFF >= 59
    if not invalid:
        return False
    return _explained_by(case, o, lambda c, o, keys: all(k.startswith("memory") for k in keys))


def _fbstp_negative_zero(case: Case, o: Outcome) -> bool:
    # FBSTP of a negative value that rounds to zero stores -0: the sign byte 0x80 and zero
    # digits (SDM FBSTP, table "FBSTP Results": -1 < -F < -0 gives -0 or -1 by RC, -0 gives -0).
    # QEMU 5.0 takes the sign from the int64 it converts to, and stores +0. Accepted: ST(0) is
    # negative and below 1 in magnitude, and the stored sign byte is the only memory difference.
    if case.forms[0] != "FBSTP_M80" or stack_fault(case):
        return False
    x = _st0(case)
    if not x >> 79 or (x >> 64 & 0x7FFF) >= 0x3FFF:
        return False
    window = range(fresh_machine.DATA, fresh_machine.DATA + fresh_machine.DATA_SIZE)
    diff = [i for i in window if o.our_memory[i] != o.their_memory[i]]
    if len(diff) != 1 or (o.our_memory[diff[0]], o.their_memory[diff[0]]) != (0x80, 0x00):
        return False
    return _explained_by(case, o, lambda c, o, keys: all(k.startswith("memory") for k in keys))


def _undefined_result(case: Case, o: Outcome) -> bool:
    # Results the SDM leaves undefined: F2XM1 outside -1 <= x <= 1, FYL2XP1 outside
    # |x| < 1 - sqrt(2)/2, FBLD of digits past 9. Accepted: the register written is the only
    # difference (and FSW's status bits).
    form = case.forms[0]
    if form not in ("F2XM1", "FYL2XP1", "FBLD_M80") or stack_fault(case):
        return False
    if form == "FBLD_M80":
        d = _decoded(case)
        regs = [case.spec.initial_regs()[name] for name in fresh_machine.GPR_NAMES]
        ea = eval(str(d.fields["ea"]), {"R": regs})
        window = case.spec.memory.get(fresh_machine.DATA, b"")
        digits = int.from_bytes(window[ea : ea + 9].ljust(9, b"\0"), "little")
        if all((digits >> (4 * k) & 0xF) <= 9 for k in range(18)):
            return False
    else:
        x = _st0(case)
        exponent, integer_bit = x >> 64 & 0x7FFF, x >> 63 & 1
        if exponent == 0x7FFF or not integer_bit:
            return False
        magnitude = (x & ((1 << 64) - 1)) / 2**63 * 2.0 ** (exponent - 0x3FFF)
        if magnitude <= (1.0 if form == "F2XM1" else 0.29289):
            return False
    return _explained_by(case, o, lambda c, o, keys: all(k.startswith("fpr") for k in keys))


TRANSCENDENTAL_FORMS = {"F2XM1", "FYL2X", "FYL2XP1", "FPATAN", "FSIN", "FCOS", "FPTAN", "FSINCOS"}
MAXTAN = 2.0**63


def _to_double(x: int, rc: int) -> float:
    import struct

    from ring1.runtime.cpu import softfloat as sf

    bits, _ = sf.convert(sf.F80, sf.F64, x, sf.Env(rc=rc))
    return struct.unpack("<d", bits.to_bytes(8, "little"))[0]


def _to_extended(v: float) -> int:
    import struct

    from ring1.runtime.cpu import x87

    return x87.widen(64, int.from_bytes(struct.pack("<d", v), "little"))[0]


def qemu_transcendental(case: Case) -> dict[str, int] | None:
    """What QEMU 5.0 leaves in the x87 registers and TOP for the case's transcendental
    instruction: ST(0) (and ST(1)) converted to double by RC, the host's libm function (the
    same libm unicorn calls), the double converted back (target/i386/fpu_helper.c, helper_f2xm1
    and the others). None when the C library raises instead of returning (a domain error)."""
    import math

    form, spec = case.forms[0], case.spec
    top, rc = spec.fsw >> 11 & 7, spec.fcw >> 10 & 3
    regs = {f"fpr{i}": v for i, v in enumerate(spec.fpr)}
    st0, st1 = f"fpr{top}", f"fpr{(top + 1) & 7}"
    x = _to_double(spec.fpr[top], rc)
    y = _to_double(spec.fpr[(top + 1) & 7], rc)
    push = f"fpr{(top - 1) & 7}"
    try:
        if form == "F2XM1":
            regs[st0] = _to_extended(math.pow(2.0, x) - 1.0)
        elif form in ("FYL2X", "FYL2XP1"):
            arg = x if form == "FYL2X" else x + 1.0
            if arg > 0.0:
                regs[st1] = _to_extended(math.log(arg) / math.log(2.0) * y)
        elif form == "FPATAN":
            # glibc's atan2 returns x + y for a NaN operand (CPython's math.atan2 would not).
            regs[st1] = _to_extended(x + y if math.isnan(x) or math.isnan(y) else math.atan2(y, x))
        elif not (x > MAXTAN or x < -MAXTAN):  # QEMU computes a NaN too
            if form == "FSIN":
                regs[st0] = _to_extended(math.sin(x))
            elif form == "FCOS":
                regs[st0] = _to_extended(math.cos(x))
            elif form == "FPTAN":
                regs[st0] = _to_extended(math.tan(x))
                regs[push] = 0x3FFF_8000000000000000
            elif form == "FSINCOS":
                regs[st0] = _to_extended(math.sin(x))
                regs[push] = _to_extended(math.cos(x))
    except (ValueError, OverflowError):
        return None
    return regs


def _double_precision_transcendentals(case: Case, o: Outcome) -> bool:
    # QEMU 5.0 computes F2XM1, FYL2X, FYL2XP1, FPATAN, FSIN, FCOS, FPTAN and FSINCOS with the
    # host's double functions (pow(2, x) - 1, log(x) / log(2) * y, ...): about 53 good bits at
    # best, none for F2XM1 of a tiny x, where the SDM asks for less than one ulp of 64 (vol. 1,
    # 8.3.10); ours are the exact values rounded (tests/test_x87.py checks them against
    # mpmath). Accepted: unicorn's registers are exactly what that double computation gives
    # (recomputed here), and only those registers, the tags and TOP of an instruction that
    # pushes or pops, and FSW differ.
    form = case.forms[0]
    if form not in TRANSCENDENTAL_FORMS or stack_fault(case) or not _runs(case):
        return False
    expected = qemu_transcendental(case)
    if expected is None or any(o.theirs.regs[k] != v for k, v in expected.items()):
        return False
    if o.ours.exception is not None or o.theirs.exception is not None:
        return False
    return all(k in X87_KEYS for k in _diff_keys(o))


def _extended_value(x: int) -> float | None:
    """An 80-bit pattern as a float (None for infinities and NaNs; denormals flush to 0.0)."""
    import math

    exponent, significand = x >> 64 & 0x7FFF, x & ((1 << 64) - 1)
    if exponent == 0x7FFF:
        return None
    v = math.ldexp(significand, max(exponent, 1) - 0x3FFF - 63)
    return -v if x >> 79 & 1 else v


def _fprem_in_double(case: Case, o: Outcome) -> bool:
    # QEMU 5.0's FPREM and FPREM1 divide in double precision (helper_fprem: ST0 and ST1 as
    # doubles, the quotient by division and floor), and reduce only partially from an exponent
    # difference of 53 where the CPU reduces completely up to 63 (SDM FPREM). The remainder is
    # exact on the CPU. Accepted: ST(0) and FSW are the only differences, both results are
    # finite, and they agree to 2**-40 of the dividend or the exponent difference is 53 or more.
    if case.forms[0] not in ("FPREM", "FPREM1") or stack_fault(case) or not _runs(case):
        return False
    if o.ours.exception is not None or o.theirs.exception is not None:
        return False
    top = case.spec.fsw >> 11 & 7
    st0 = f"fpr{top}"
    if not _diff_keys(o) <= {st0, "fsw"}:
        return False
    import math

    a, b = case.spec.fpr[top], case.spec.fpr[(top + 1) & 7]
    if (a >> 64 & 0x7FFF) - (b >> 64 & 0x7FFF) >= 53:
        return True
    rc = case.spec.fcw >> 10 & 3
    st0_double, st1_double = _to_double(a, rc), _to_double(b, rc)
    if o.theirs.regs[st0] == 0x7FFF_C000000000000000 and (
        math.isnan(st0_double) or math.isinf(st0_double) or math.isnan(st1_double) or st1_double == 0.0
    ):
        return True  # QEMU's NaN for what its doubles make invalid (a denormal divisor is 0.0 there)
    dividend, ours, theirs = _extended_value(a), _extended_value(o.ours.regs[st0]), _extended_value(o.theirs.regs[st0])
    if dividend is None or ours is None or theirs is None:
        return False
    return abs(ours - theirs) <= 2.0**-40 * max(abs(dividend), 2.0**-16000)


def _is_snan80(x: int) -> bool:
    return x >> 64 & 0x7FFF == 0x7FFF and x >> 63 & 1 and not x >> 62 & 1 and x & ((1 << 62) - 1) != 0


def _nan_conversions(case: Case, o: Outcome) -> bool:
    # A signalling NaN operand raises IE and gives its quiet version (SDM vol. 1, 4.8.3.4 and
    # Table 4-7); converted to a smaller format its payload is truncated, keeping the sign.
    # QEMU 5.0 converts m32/m64 signalling NaNs to extended keeping them signalling (FLD,
    # FSCALE's operands), and stores the default NaN (negative) when the truncated payload is
    # zero. Accepted: every register difference is ours = unicorn's with the quiet bit set on
    # a signalling NaN of unicorn's, and every memory difference is in a real stored from a NaN
    # ST(0): ours its quieted, truncated self, unicorn's the same without the quiet bit, or the
    # default NaN.
    if stack_fault(case):
        return False

    def quieted(case: Case, o: Outcome, keys: set[str]) -> bool:
        for key in keys:
            if key.startswith("fpr"):
                theirs = o.theirs.regs[key]
                if not (_is_snan80(theirs) and o.ours.regs[key] == theirs | 1 << 62):
                    return False
            elif not key.startswith("memory"):
                return False
        if any(k.startswith("memory") for k in keys):
            x = _st0(case)
            if x >> 64 & 0x7FFF != 0x7FFF:
                return False
            real = (64, 1 << 51, 0xFFF8000000000000) if case.forms[0].endswith("_M64") else (32, 1 << 22, 0xFFC00000)
            if not case.forms[0].endswith(("_M32", "_M64")):
                return False
            bits, quiet_bit, default = real
            window = range(fresh_machine.DATA, fresh_machine.DATA + fresh_machine.DATA_SIZE)
            at = [i for i in window if o.our_memory[i] != o.their_memory[i]]
            if not at or at[-1] - at[0] >= bits // 8:
                return False
            for base in range(at[-1] - bits // 8 + 1, at[0] + 1):
                ours = int.from_bytes(o.our_memory[base : base + bits // 8], "little")
                theirs = int.from_bytes(o.their_memory[base : base + bits // 8], "little")
                if ours == theirs | quiet_bit or theirs == default:
                    return True
            return False
        return True

    return _explained_by(case, o, quieted)


def _fst_sti_tag(case: Case, o: Outcome) -> bool:
    # FST ST(i) and FSTP ST(i) write ST(i), which makes it valid (SDM FST: the tag follows the
    # value). QEMU 5.0 copies the value and leaves the tag empty. Accepted: the tag word differs
    # in ST(i)'s bit only, ours set and unicorn's as it was (empty).
    if case.forms[0] not in ("FST_STi", "FSTP_STi", "FSTPNCE_STi", "FSTP_STi_DFD0", "FSTP_STi_DFD8"):
        return False
    if stack_fault(case):
        return False
    d = _decoded(case)
    top = case.spec.fsw >> 11 & 7
    bit = 1 << ((top + d.fields["dst"]) & 7)
    if case.spec.ftw & bit:
        return False

    def tag(case: Case, o: Outcome, keys: set[str]) -> bool:
        return keys == {"ftw"} and o.ours.regs["ftw"] == o.theirs.regs["ftw"] | bit and not o.theirs.regs["ftw"] & bit

    return _explained_by(case, o, tag)


def _fscale_by_infinity(case: Case, o: Outcome) -> bool:
    # FSCALE by an infinite ST(1) gives an infinity (ST(0) finite non-zero, +inf), a zero
    # (-inf), or the indefinite (0 * 2**+inf, inf * 2**-inf) (SDM FSCALE, Table 3-xx). QEMU 5.0
    # converts ST(1) to a 32-bit integer first and scales by that. Accepted: ST(1) is infinite,
    # only ST(0) and FSW differ.
    if case.forms[0] != "FSCALE" or stack_fault(case) or not _runs(case):
        return False
    top = case.spec.fsw >> 11 & 7
    st1 = case.spec.fpr[(top + 1) & 7]
    if st1 & ((1 << 79) - 1) != 0x7FFF_8000000000000000:
        return False
    st0 = f"fpr{top}"
    return _explained_by(case, o, lambda c, o, keys: keys <= {st0})


def _fxtract_specials(case: Case, o: Outcome) -> bool:
    # FXTRACT of an infinity gives the infinity and an exponent of +inf, of a NaN the NaN twice,
    # of a denormal its true exponent and normalized significand (SDM FXTRACT). QEMU 5.0 reads
    # the exponent field as it is (16384 and 1.0 for an infinity). Accepted: ST(0) is an
    # infinity, a NaN or a denormal, and only the two result registers and FSW differ.
    if case.forms[0] != "FXTRACT" or stack_fault(case) or not _runs(case):
        return False
    top = case.spec.fsw >> 11 & 7
    x = case.spec.fpr[top]
    exponent = x >> 64 & 0x7FFF
    if not (exponent == 0x7FFF or (exponent == 0 and x & ((1 << 64) - 1))):
        return False
    results = {f"fpr{top}", f"fpr{(top - 1) & 7}"}
    return _explained_by(case, o, lambda c, o, keys: keys <= results)


def _pending_exception_not_raised(case: Case, o: Outcome) -> bool:
    # With CR0.NE set, an x87 instruction that finds an unmasked exception pending (FSW.ES)
    # raises #MF before it executes (SDM vol. 1, 8.7; vol. 3A, 6.15 "Interrupt 16"). Unicorn
    # runs it. Accepted: the case starts with ES and NE set, ours faults with #MF at the
    # instruction with the x87 state unchanged, and unicorn raised nothing.
    spec = case.spec
    if _one_x87_form(case) is None or not (spec.fsw & 0x80 and spec.cr0_bits & CR0_NE):
        return False
    if spec.cr0_bits & (fresh_machine.CR0_EM | fresh_machine.CR0_TS):
        return False
    if o.ours.exception != 16 or o.ours.regs["eip"] != fresh_machine.CODE or o.theirs.exception is not None:
        return False
    return all(o.ours.regs[k] == v for k, v in spec.simd().items() if k in X87_KEYS)


def deviations() -> list:
    from .deviations import Deviation

    return [
        Deviation(
            "x87-status-flags",
            "unicorn never sets FSW's exception flags, SF, ES, B or C1 (QEMU 5.0 drops softfloat's flags)",
            _status_not_set,
        ),
        Deviation(
            "x87-fcomi-osa", "unicorn's FCOMI/FUCOMI[P] leave OF, SF and AF instead of clearing them", _fcomi_keeps_osa
        ),
        Deviation(
            "x87-constant-rc",
            "unicorn's FLDPI FLDL2E FLDL2T FLDLG2 FLDLN2 ignore the rounding control",
            _constant_ignores_rc,
        ),
        Deviation(
            "x87-stack-fault",
            "unicorn does not detect x87 stack overflow or underflow (no IE/SF, no QNaN indefinite)",
            _stack_fault_not_detected,
        ),
        Deviation(
            "x87-unmasked-exception",
            "unicorn writes the destination despite an unmasked IE, DE or ZE (or OE, UE for a store)",
            _unmasked_exception_completes,
        ),
        Deviation(
            "x87-pending-mf",
            "unicorn does not raise #MF for a pending unmasked x87 exception with CR0.NE set",
            _pending_exception_not_raised,
        ),
        Deviation(
            "x87-fbstp-invalid",
            "unicorn's FBSTP stores digits for a NaN, infinity or 19-digit value",
            _fbstp_invalid_not_detected,
        ),
        Deviation(
            "x87-nan-conversion",
            "unicorn keeps converted signalling NaNs signalling, stores the default NaN for a payload lost in a store",
            _nan_conversions,
        ),
        Deviation("x87-fst-sti-tag", "unicorn's FST/FSTP ST(i) leave ST(i)'s tag empty", _fst_sti_tag),
        Deviation(
            "x87-fbstp-negative-zero",
            "unicorn's FBSTP stores +0 for a negative value rounded to zero",
            _fbstp_negative_zero,
        ),
        Deviation(
            "x87-odd-encodings",
            "unicorn computes with unnormals, pseudo-infinities, pseudo-NaNs and pseudo-denormals as they come",
            _odd_encodings,
        ),
        Deviation(
            "x87-fscale-infinity",
            "unicorn's FSCALE by an infinite ST(1) scales by a saturated integer",
            _fscale_by_infinity,
        ),
        Deviation(
            "x87-fxtract-specials",
            "unicorn's FXTRACT of an infinity, NaN or denormal reads the raw exponent",
            _fxtract_specials,
        ),
        Deviation(
            "x87-undefined-result",
            "a result the SDM leaves undefined (F2XM1, FYL2XP1 out of range, FBLD of non-BCD digits)",
            _undefined_result,
        ),
        Deviation(
            "x87-transcendental-precision",
            "unicorn computes the x87 transcendentals with the host's double functions",
            _double_precision_transcendentals,
        ),
        Deviation("x87-fprem-double", "unicorn computes FPREM and FPREM1 in double precision", _fprem_in_double),
    ]
