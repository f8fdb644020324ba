"""Where unicorn is wrong, recorded.

Each deviation is proven by a minimal case in test_deviations.py (unicorn does X, the
architecture requires Y, the interpreter does Y). The differential tests accept an
observed difference only when a deviation here explains exactly that difference; any other
difference in the same example still fails.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ring1.generated.forms import FORMS

from .harness import Case, Outcome


@dataclass
class Deviation:
    name: str
    reason: str
    applies: Callable[[Case, Outcome], bool]


def _mnemonics(case: Case) -> set[str]:
    return {m for f in case.forms for m in FORMS[f].mnemonics.values()}


IO_MNEMONICS = {"in", "out", "insb", "insw", "insd", "outsb", "outsw", "outsd"}


def _io_without_permission(case: Case, o: Outcome) -> bool:
    # Unicorn runs IN/OUT at CPL > IOPL although the TSS (I/O map base past its limit)
    # denies every port: the CPU raises #GP(0). Only this exact outcome is accepted.
    return (
        case.spec.cpl == 3
        and bool(_mnemonics(case) & IO_MNEMONICS)
        and o.ours.exception == 13
        and o.theirs.exception is None
    )


DEVIATIONS = [
    Deviation(
        "io-permission",
        "unicorn does not check CPL > IOPL and the TSS I/O bitmap for IN/OUT/INS/OUTS (no #GP)",
        _io_without_permission,
    ),
]


def explain(case: Case, outcome: Outcome) -> Deviation | None:
    for d in DEVIATIONS:
        if d.applies(case, outcome):
            return d
    return None


# ---------------------------------------------------------------- system instructions (spec/system.r1)
# Each is proven by a minimal case in test_deviations_sys.py. The operands of the one instruction
# a case runs are recovered with ring1's decoder, so a deviation accepts only the exact outcome it
# names for the exact operand values that produce it.


def _sys_decoded(case: Case):
    from ring1.runtime import fresh
    from ring1.runtime.decoder import decode

    return decode(case.spec.code + bytes(16), fresh.CODE, not case.spec.real)


def _sys_reg_value(case: Case, index: int) -> int:
    from ring1.runtime import fresh

    return case.spec.initial_regs()[fresh.GPR_NAMES[index]]


def _sys_rm16(case: Case) -> int:
    """The 16-bit r/m source operand of the case's instruction, as it was before the run."""
    from ring1.runtime import fresh

    d = _sys_decoded(case)
    if d.variant[2] == "reg":
        return _sys_reg_value(case, d.fields["src"]) & 0xFFFF
    regs = [_sys_reg_value(case, i) for i in range(8)]
    ea = eval(str(d.fields["ea"]), {"R": regs})  # the decoder's own effective-address expression
    window = case.spec.memory[fresh.DATA]  # every test segment that memory operands use is over it
    return int.from_bytes(window[ea : ea + 2], "little")


def _sys_diff_keys(o: Outcome) -> set[str]:
    from .harness import differences

    return {line.split(":", 1)[0] for line in differences(o)}


def _sys_only(case: Case, o: Outcome, form: str, keys: set[str]) -> bool:
    return case.forms == [form] and bool(_sys_diff_keys(o)) and _sys_diff_keys(o) <= keys


def _sys_gp0_where_unicorn_runs(o: Outcome) -> bool:
    return o.ours.exception == 13 and o.ours.error_code == 0 and o.theirs.exception is None


def _cpuid_model(case: Case, o: Outcome) -> bool:
    # ring1 reports its own virtual CPU (runtime/cpuid.py); unicorn reports QEMU's CPU model.
    from ring1.runtime.cpuid import cpuid

    if not _sys_only(case, o, "CPUID", {"eax", "ebx", "ecx", "edx"}) or o.theirs.exception is not None:
        return False
    regs = case.spec.initial_regs()
    want = cpuid(regs["eax"], regs["ecx"])
    return tuple(o.ours.regs[r] for r in ("eax", "ebx", "ecx", "edx")) == want


def _tsc_value(case: Case, o: Outcome) -> bool:
    # The TSC is not comparable: ring1's counts retired instructions, unicorn's is the host's.
    return o.ours.exception is None and o.theirs.exception is None and _sys_only(case, o, "RDTSC", {"eax", "edx"})


def _microcode_revision(case: Case, o: Outcome) -> bool:
    # MSR 0x8B (IA32_BIOS_SIGN_ID): QEMU reports microcode revision 1 in EDX; ring1's virtual
    # CPU has no microcode and reads 0.
    return (
        _sys_only(case, o, "RDMSR", {"edx"})
        and case.spec.initial_regs()["ecx"] == 0x8B
        and o.ours.exception is None
        and o.theirs.exception is None
        and (o.ours.regs["edx"], o.theirs.regs["edx"]) == (0, 1)
    )


def _msr_unknown(case: Case, o: Outcome) -> bool:
    # QEMU's TCG RDMSR reads 0 (or its own value) and WRMSR ignores the write for MSRs the
    # virtual P6 does not have; ring1 raises #GP(0), as the CPU does for an unimplemented MSR.
    from ring1.runtime.machine import KNOWN_MSRS

    if case.spec.initial_regs()["ecx"] in KNOWN_MSRS or not _sys_gp0_where_unicorn_runs(o):
        return False
    return _sys_only(case, o, "RDMSR", {"exception", "eip", "eax", "edx"}) or _sys_only(
        case, o, "WRMSR", {"exception", "eip"}
    )


def _rdpmc_ud(case: Case, o: Outcome) -> bool:
    # QEMU's RDPMC is unimplemented: #UD always (after a CR4.PCE test with the sense inverted).
    if o.theirs.exception != 6 or o.ours.exception not in (None, 13):
        return False
    if o.ours.exception is None and (o.ours.regs["eax"], o.ours.regs["edx"]) != (0, 0):
        return False
    return _sys_only(case, o, "RDPMC", {"exception", "eip", "eax", "edx"})


def _ltr_null(case: Case, o: Outcome) -> bool:
    # QEMU's LTR loads a null selector (an unusable TR) instead of raising #GP(0).
    return (
        not case.spec.real
        and case.spec.cpl == 0
        and _sys_gp0_where_unicorn_runs(o)
        and _sys_only(case, o, "LTR", {"exception", "eip"})
        and _sys_rm16(case) & 0xFFFC == 0
    )


def _sysenter_noop(case: Case, o: Outcome) -> bool:
    # Unicorn turns SYSENTER into a hookable no-op (UC_X86_INS_SYSENTER) that falls through to
    # the next instruction; the fresh machine's SYSENTER_CS is 0, so the CPU raises #GP(0).
    return (
        not case.spec.real and _sys_gp0_where_unicorn_runs(o) and _sys_only(case, o, "SYSENTER", {"exception", "eip"})
    )


def _cr_write_unchecked(case: Case, o: Outcome) -> bool:
    # QEMU's MOV to CR0/CR4 skips checks the CPU makes: CR0.PG without PE, CR0.NW without CD,
    # and reserved CR4 bits (here: every bit but TSD DE PSE PGE PCE, the virtual CPU's
    # CPUID features) all raise #GP(0). With PG but no PE unicorn turns paging on and then
    # faults fetching the next instruction (#PF).
    from ring1.runtime.snippet import interp_machine

    if case.forms != ["MOV_CR_R32"] or (not case.spec.real and case.spec.cpl != 0):
        return False
    d = _sys_decoded(case)
    n, v = d.fields["dst"], _sys_reg_value(case, d.fields["src"])
    pg_without_pe = n == 0 and v >> 31 & 1 and not v & 1
    nw_without_cd = n == 0 and v >> 29 & 1 and not v >> 30 & 1
    cr4_reserved = n == 4 and v & ~interp_machine(case.spec).ns["p_cr4_implemented"]()  # the spec's own mask
    if not (pg_without_pe or nw_without_cd or cr4_reserved):
        return False
    if o.ours.exception != 13 or o.ours.error_code != 0:
        return False
    if o.theirs.exception not in ((None, 14) if pg_without_pe else (None,)):
        return False
    return _sys_diff_keys(o) <= {"exception", "eip"}


# What unicorn's fresh machine holds where the harness leaves unicorn at its own reset values
# (runtime/snippet.py writes neither GDTR/IDTR/CR0 in real mode nor CR4 in protected mode).
UNICORN_FRESH_REAL = {"cr0": 0x0, "gdtr": (0, 0), "idtr": (0, 0)}
UNICORN_FRESH_PROT_CR4 = 0x50200  # OSFXSR, FSGSBASE, OSXSAVE
_FRESH_STATE_FORMS = {"MOV_R32_CR", "SMSW", "SGDT", "SIDT"}


def _rerun_from_unicorn_fresh_state(case: Case, o: Outcome) -> Outcome:
    """The interpreter's run again, from the state unicorn's fresh machine really starts in."""
    from ring1.runtime.snippet import interp_machine

    from .harness import run_interp_on

    m = interp_machine(case.spec)
    S = m.state
    if case.spec.real:
        S.cr[0] = UNICORN_FRESH_REAL["cr0"]
        S.gdtr_base, S.gdtr_limit = UNICORN_FRESH_REAL["gdtr"]
        S.idtr_base, S.idtr_limit = UNICORN_FRESH_REAL["idtr"]
    else:
        S.cr[4] = UNICORN_FRESH_PROT_CR4
    ours = run_interp_on(m, case.spec, case.max_insns)
    return Outcome(ours, o.theirs, bytes(m.mem.view), o.their_memory, o.undefined)


def _fresh_state(case: Case, o: Outcome) -> bool:
    from .harness import differences

    if len(case.forms) != 1 or case.forms[0] not in _FRESH_STATE_FORMS:
        return False
    return not differences(_rerun_from_unicorn_fresh_state(case, o))


def _smsw_r32_low_word(case: Case, o: Outcome) -> bool:
    # QEMU's SMSW writes 16 bits even to a 32-bit register, keeping the register's high half;
    # P6-family processors store all of CR0 there (the SDM leaves the high half undefined).
    from ring1.runtime import fresh

    if case.forms != ["SMSW"]:
        return False
    d = _sys_decoded(case)
    if d.variant[0] != 32 or d.variant[2] != "reg":
        return False
    if case.spec.real:
        o = _rerun_from_unicorn_fresh_state(case, o)  # unicorn's real-mode CR0 is 0 (see fresh-state)
    name = fresh.GPR_NAMES[d.fields["dst"]]
    if _sys_diff_keys(o) != {name}:
        return False
    before = _sys_reg_value(case, d.fields["dst"])
    ours, theirs = o.ours.regs[name], o.theirs.regs[name]
    return theirs == (before & 0xFFFF0000) | (ours & 0xFFFF)


DEVIATIONS.extend(
    [
        Deviation(
            "cpuid-model", "CPUID reports ring1's virtual CPU (runtime/cpuid.py), unicorn QEMU's model", _cpuid_model
        ),
        Deviation(
            "tsc-value", "the time-stamp counter is ring1's retired-instruction count, unicorn's the host's", _tsc_value
        ),
        Deviation("microcode-revision", "MSR 0x8B: unicorn reports microcode revision 1, ring1 0", _microcode_revision),
        Deviation(
            "msr-unknown", "unicorn reads 0 / ignores writes for MSRs the virtual CPU lacks (no #GP(0))", _msr_unknown
        ),
        Deviation("rdpmc-ud", "unicorn's RDPMC is unimplemented: #UD always", _rdpmc_ud),
        Deviation("ltr-null", "unicorn's LTR accepts a null selector (no #GP(0))", _ltr_null),
        Deviation(
            "sysenter-noop", "unicorn's SYSENTER is a hookable no-op (no #GP(0) with SYSENTER_CS = 0)", _sysenter_noop
        ),
        Deviation(
            "cr-write-unchecked",
            "unicorn's MOV CR0/CR4 skips the PG/PE, NW/CD and reserved-CR4 #GP(0) checks",
            _cr_write_unchecked,
        ),
        Deviation(
            "fresh-state",
            "unicorn's fresh machine: real-mode GDTR/IDTR/CR0 = 0, protected-mode CR4 = 0x50200",
            _fresh_state,
        ),
        Deviation(
            "smsw-r32",
            "unicorn's SMSW to a 32-bit register writes the low word only; P6 stores all of CR0",
            _smsw_r32_low_word,
        ),
    ]
)
