"""The system-instruction deviations of deviations.py, each proven by a minimal case.

Each test runs one instruction on both machines, asserts unicorn's outcome, the outcome the
architecture requires (Intel SDM, vol. 2 instruction pages and vol. 3; or, for model
differences, what ring1's virtual CPU defines), that the interpreter produces the latter, and
that exactly the named deviation explains the difference.
"""

from __future__ import annotations

from ring1.runtime.cpu.cpuid import cpuid
from ring1.runtime.tools import fresh_machine

from . import deviations
from .harness import Case, differences, run_both, window_segments

GP, UD, PF = 13, 6, 14


def both(code: bytes, form: str, *, cpl: int = 0, real: bool = False, **regs: int):
    spec = fresh_machine.FreshSpec(code=code, regs=regs, cpl=cpl, real=real, segs=window_segments(cpl, real))
    case = Case(spec, [form])
    return case, run_both(case)


def explained_by(case: Case, o, name: str) -> None:
    assert differences(o), "no difference left to explain"
    d = deviations.explain(case, o)
    assert d is not None and d.name == name, d


def test_cpuid_reports_the_virtual_cpu() -> None:
    # Model difference: CPUID is emulated against ring1's virtual CPU (runtime/cpuid.py).
    case, o = both(b"\x0f\xa2", "CPUID", eax=0, ecx=0)
    assert tuple(o.ours.regs[r] for r in ("eax", "ebx", "ecx", "edx")) == cpuid(0)
    assert o.theirs.regs["eax"] != cpuid(0)[0]  # QEMU's model reports more basic leaves
    explained_by(case, o, "cpuid-model")


def test_rdtsc_values_differ() -> None:
    # Not comparable: ring1's TSC counts retired instructions (deterministic), unicorn's is the host's.
    case, o = both(b"\x0f\x31", "RDTSC", cpl=3)
    assert o.ours.exception is None and o.theirs.exception is None
    assert (o.ours.regs["edx"], o.ours.regs["eax"]) == (0, 0)
    assert (o.theirs.regs["edx"], o.theirs.regs["eax"]) != (0, 0)
    explained_by(case, o, "tsc-value")


def test_rdmsr_microcode_revision() -> None:
    # Model difference: the virtual CPU has no microcode, so IA32_BIOS_SIGN_ID reads 0.
    case, o = both(b"\x0f\x32", "RDMSR", ecx=0x8B)
    assert (o.ours.regs["edx"], o.theirs.regs["edx"]) == (0, 1)
    explained_by(case, o, "microcode-revision")


def test_rdmsr_wrmsr_of_a_missing_msr() -> None:
    # SDM RDMSR/WRMSR: "#GP(0) ... If the value in ECX specifies a reserved or unimplemented MSR address."
    case, o = both(b"\x0f\x32", "RDMSR", ecx=0x12345678, eax=5, edx=6)
    assert (o.ours.exception, o.ours.error_code) == (GP, 0)
    assert o.theirs.exception is None and (o.theirs.regs["eax"], o.theirs.regs["edx"]) == (0, 0)
    explained_by(case, o, "msr-unknown")
    case, o = both(b"\x0f\x30", "WRMSR", ecx=0x12345678)
    assert (o.ours.exception, o.ours.error_code) == (GP, 0)
    assert o.theirs.exception is None
    explained_by(case, o, "msr-unknown")


def test_rdpmc_is_ud_on_unicorn() -> None:
    # SDM RDPMC: at CPL 0 (or with CR4.PCE) it reads counter ECX; otherwise #GP(0). Never #UD on P6.
    case, o = both(b"\x0f\x33", "RDPMC", ecx=0, eax=7, edx=7)
    assert o.ours.exception is None and (o.ours.regs["eax"], o.ours.regs["edx"]) == (0, 0)
    assert o.theirs.exception == UD
    explained_by(case, o, "rdpmc-ud")
    case, o = both(b"\x0f\x33", "RDPMC", cpl=3, ecx=0)
    assert (o.ours.exception, o.ours.error_code) == (GP, 0)
    assert o.theirs.exception == UD
    explained_by(case, o, "rdpmc-ud")


def test_alignment_check_is_not_raised_by_unicorn() -> None:
    # SDM vol. 3, #AC: at CPL 3 with CR0.AM and EFLAGS.AC set, a misaligned data access raises
    # #AC(0) (a dword at an address not a multiple of 4). mov eax, [eax] with EAX = 1.
    spec = fresh_machine.FreshSpec(
        code=b"\x8b\x00",
        regs={"eax": 1, "eflags": 0x40202},
        cpl=3,
        segs=window_segments(3, False),
        cr0_bits=fresh_machine.CR0_AM,
    )
    case = Case(spec, ["MOV_Rv_RMv"])
    o = run_both(case)
    assert (o.ours.exception, o.ours.error_code) == (17, 0)
    assert o.theirs.exception is None
    explained_by(case, o, "no-alignment-check")


def test_ltr_null_selector() -> None:
    # SDM LTR: "#GP(0) If the source operand contains a NULL segment selector."
    case, o = both(b"\x0f\x00\xd8", "LTR", eax=0x0003)
    assert (o.ours.exception, o.ours.error_code) == (GP, 0)
    assert o.theirs.exception is None
    explained_by(case, o, "ltr-null")
    _, o = both(b"\x0f\x00\xd8", "LTR", eax=0x28)  # a busy TSS: both fault, nothing to explain
    assert o.ours.exception == o.theirs.exception == GP and not differences(o)


def test_sysenter_with_sysenter_cs_zero() -> None:
    # SDM SYSENTER: "#GP(0) If IA32_SYSENTER_CS[15:2] = 0." (0 in the fresh machine).
    case, o = both(b"\x0f\x34", "SYSENTER", cpl=3)
    assert (o.ours.exception, o.ours.error_code) == (GP, 0)
    assert o.theirs.exception is None and o.theirs.regs["eip"] == fresh_machine.CODE + 2
    explained_by(case, o, "sysenter-noop")


def test_mov_cr4_reserved_bit() -> None:
    # SDM MOV CR: "#GP(0) If an attempt is made to write a 1 to any reserved bit in CR4." (bit 31
    # is reserved on every IA-32 processor).
    case, o = both(b"\x0f\x22\xe0", "MOV_CR_R32", eax=0x80000000)
    assert (o.ours.exception, o.ours.error_code) == (GP, 0)
    assert o.theirs.exception is None
    explained_by(case, o, "cr-write-unchecked")


def test_mov_cr0_invalid_combinations() -> None:
    # SDM MOV CR: "#GP(0) If an attempt is made to write invalid bit combinations in CR0 (such as
    # setting the PG flag to 1 when the PE flag is set to 0, or setting the CD flag to 0 when the
    # NW flag is set to 1)."
    case, o = both(b"\x0f\x22\xc0", "MOV_CR_R32", eax=0x80000010)
    assert (o.ours.exception, o.ours.error_code) == (GP, 0)
    assert o.theirs.exception == PF  # paging went on, and the next fetch faulted
    explained_by(case, o, "cr-write-unchecked")
    case, o = both(b"\x0f\x22\xc0", "MOV_CR_R32", eax=0x20000011)
    assert (o.ours.exception, o.ours.error_code) == (GP, 0)
    assert o.theirs.exception is None
    explained_by(case, o, "cr-write-unchecked")
    _, o = both(b"\x0f\x22\xc0", "MOV_CR_R32", eax=0x60000011)  # CD and NW: valid on both
    assert not differences(o)


def test_unicorn_fetches_at_its_stop_address() -> None:
    # Real mode, MOV CR0 with PE and PG (valid in one write): paging goes on with CR3 0, over
    # page tables that map nothing at the snippet's end. The run ends there: the interpreter
    # fetches nothing more; unicorn translates the instruction at its stop address first.
    case, o = both(b"\x0f\x22\xc5", "MOV_CR_R32", real=True, ebp=0x80000001)
    assert o.ours.exception is None and o.ours.regs["eip"] == fresh_machine.CODE + 3
    assert o.theirs.exception == PF and o.theirs.cr2 == fresh_machine.CODE + 3
    explained_by(case, o, "fetch-at-stop")


def test_smsw_to_a_32_bit_register() -> None:
    # P6-family processors store all of CR0 in a 32-bit register (SDM: the high half is
    # undefined); QEMU writes the low word only.
    case, o = both(b"\x0f\x01\xe0", "SMSW", cpl=3, eax=0xFFFFFFFF)
    assert o.ours.regs["eax"] == 0x11
    assert o.theirs.regs["eax"] == 0xFFFF0011
    explained_by(case, o, "smsw-r32")
    case, o = both(b"\x66\x0f\x01\xe0", "SMSW", real=True, eax=0xFFFFFFFF)
    assert (o.ours.regs["eax"], o.theirs.regs["eax"]) == (0x10, 0xFFFF0010)
    explained_by(case, o, "smsw-r32")
