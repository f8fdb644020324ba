"""Where unicorn is wrong on x87 instructions (spec/x87.r1), recorded; deviations.py adds
these to DEVIATIONS. Proven by tests/diff/test_deviations_x87.py.

Unicorn 2 is QEMU 5.0's TCG, whose x87 code (target/i386/fpu_helper.c before the 5.2 fixes)
computes with softfloat's floatx80 but never moves softfloat's exception flags into FSW, never
raises #MF, does not check the register tags (no stack overflow or underflow), computes the
transcendental instructions and FPREM/FPREM1 through host doubles, and keeps no FOP. Each
deviation below accepts exactly one of these differences, recomputing from the case what the
architecture calls for wherever it can; any other difference in the same example still fails.
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


def stack_fault(case: Case) -> bool:
    """Whether the case's one x87 instruction meets a stack overflow or underflow (SDM vol. 1,
    8.5.1.1), from the tags it starts with: a register it reads is empty, or it pushes and
    ST(7) is in use. The registers come from the form's operands and the table above."""
    form = _one_x87_form(case)
    if form is None or form in NO_UNDERFLOW:
        return False
    d = _decoded(case)
    if d.form != form:
        return False
    top = case.spec.fsw >> 11 & 7
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

    def empty(i: int) -> bool:
        return not case.spec.ftw >> ((top + i) & 7) & 1

    return any(empty(i) for i in reads) or (pushes and not empty(7))


def _status_not_set(case: Case, o: Outcome) -> bool:
    # The x87 sets FSW's exception flags (IE DE ZE OE UE PE, SF) as an instruction detects
    # them, ES and B when one is unmasked, and C1 (0, or 1 when a result was rounded up or a
    # push overflowed) (SDM vol. 1, 8.1.3, 8.4, and each instruction's "FPU Flags Affected").
    # Unicorn leaves those bits as they were. Accepted: FSW is the only difference, unicorn's
    # status bits are the initial ones, ours keep the initial exception flags (they are
    # sticky), and both agree on every other FSW bit (TOP, C0, C2, C3).
    form = _one_x87_form(case)
    if form is None or not _runs(case) or _diff_keys(o) != {"fsw"}:
        return False
    status = FSW_STATUS & ~FSW_C1 if form in C1_RESULT_FORMS else FSW_STATUS
    before, ours, theirs = case.spec.fsw, o.ours.regs["fsw"], o.theirs.regs["fsw"]
    if (ours ^ theirs) & ~status or (theirs ^ before) & status:
        return False
    return ours & before & 0x7F == before & 0x7F


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
    # 4.9.2). Unicorn writes the result anyway. Accepted: ours raised a new unmasked exception
    # (ES set, it was clear), wrote no register, tag, TOP or memory, and unicorn completed.
    if _one_x87_form(case) is None or not _runs(case) or case.spec.fsw & 0x80:
        return False
    if o.ours.exception is not None or o.theirs.exception is not None or not o.ours.regs["fsw"] & 0x80:
        return False
    ours = o.ours.regs
    if any(ours[f"fpr{i}"] != case.spec.fpr[i] for i in range(8)) or ours["ftw"] != case.spec.ftw:
        return False
    if (ours["fsw"] ^ case.spec.fsw) & TOP_MASK:
        return False
    data = case.spec.memory.get(fresh_machine.DATA)
    if data is not None and o.our_memory[fresh_machine.DATA : fresh_machine.DATA + len(data)] != data:
        return False
    return all(k in X87_KEYS or k == "eflags" or k.startswith("memory") for k in _diff_keys(o))


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
    ]
