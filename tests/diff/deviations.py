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


def _int6_reported_as_fault(case: Case, o: Outcome) -> bool:
    # Unicorn reports INT 6 to its hook like the #UD exception: EIP at the INT instruction.
    # The CPU delivers INT n as a trap, after the instruction; only EIP may differ.
    return (
        "INT_Ib" in case.forms
        and o.ours.exception == 6
        and o.theirs.exception == 6
        and o.theirs.regs["eip"] < o.ours.regs["eip"]
        and {k: v for k, v in o.ours.regs.items() if k != "eip"} == {k: v for k, v in o.theirs.regs.items() if k != "eip"}
    )


def _icebp_undefined(case: Case, o: Outcome) -> bool:
    # Unicorn raises #UD for ICEBP (F1); the CPU delivers #DB (vector 1) as a trap.
    return "ICEBP" in case.forms and o.ours.exception == 1 and o.theirs.exception == 6


DEVIATIONS += [
    Deviation("int6-eip", "unicorn reports INT 6 with EIP at the instruction, as it reports #UD", _int6_reported_as_fault),
    Deviation("icebp", "unicorn raises #UD for ICEBP (F1) instead of delivering #DB", _icebp_undefined),
]


def _invalid_lock_ignored(case: Case, o: Outcome) -> bool:
    # The SDM raises #UD for LOCK on an instruction that cannot be locked (or with a register
    # destination); unicorn does so only for some instructions. Accept exactly: we raise #UD at
    # an instruction our decoder finds LOCK-invalid, and unicorn went on without #UD.
    from ring1.runtime.decoder import decode

    if o.ours.exception != 6 or o.theirs.exception == 6:
        return False
    eip = o.ours.regs["eip"]
    base = 0 if not case.spec.real else o.ours.regs["cs"] << 4
    code = o.our_memory[base + eip : base + eip + 15]
    d = decode(code, eip, not case.spec.real)
    return d.lock and d.lock_invalid


DEVIATIONS.append(
    Deviation("invalid-lock", "unicorn ignores an invalid LOCK prefix on most instructions (no #UD)", _invalid_lock_ignored)
)


# ------------------------------------------------------------ data transfer (spec/datamov.r1)
# Proven by tests/diff/test_deviations_data.py.


def _enter_o16_writes_all_of_ebp(case: Case, o: Outcome) -> bool:
    # ENTER with a 16-bit operand size on a 32-bit stack: Intel's pseudocode ends with
    # BP <- FrameTemp (so does Bochs), keeping EBP[31:16]; unicorn (QEMU's gen_enter) writes
    # the whole of EBP at the stack-address size. Only that exact EBP difference is accepted.
    from ring1.runtime import fresh
    from ring1.runtime.decoder import decode

    from .harness import differences

    if case.forms != ["ENTER"] or case.spec.real or o.ours.exception is not None or o.theirs.exception is not None:
        return False
    d = decode(case.spec.code, fresh.CODE, True)
    if d.form != "ENTER" or d.variant[0] != 16:
        return False
    regs = case.spec.initial_regs()
    frame = (regs["esp"] - 2) & 0xFFFFFFFF
    ours, theirs = o.ours.regs["ebp"], o.theirs.regs["ebp"]
    return (
        ours == (regs["ebp"] & 0xFFFF0000) | (frame & 0xFFFF)
        and theirs == frame
        and differences(o) == [f"ebp: ours {ours:#x}, unicorn {theirs:#x}"]
    )


DEVIATIONS.append(
    Deviation(
        "enter-o16-ebp",
        "unicorn's 16-bit ENTER on a 32-bit stack writes all of EBP; Intel writes BP only (SDM ENTER pseudocode)",
        _enter_o16_writes_all_of_ebp,
    )
)


def _ret_imm16_sign_extended(case: Case, o: Outcome) -> bool:
    # RET/RETF imm16: the SDM adds the immediate zero-extended to ESP; unicorn (QEMU reads it
    # with a signed load) adds it sign-extended. Accept only that: same state but ESP off by
    # 0x10000 * k in the upper half, for an immediate >= 0x8000 on a 32-bit stack.
    from ring1.runtime.decoder import decode

    d = decode(case.spec.code, 0x8000, not case.spec.real)
    if d.form not in ("RET_NEAR_Iw", "RET_FAR_Iw") or d.fields.get("n", 0) < 0x8000:
        return False
    same = {k: v for k, v in o.ours.regs.items() if k != "esp"} == {k: v for k, v in o.theirs.regs.items() if k != "esp"}
    return same and (o.ours.regs["esp"] - o.theirs.regs["esp"]) & 0xFFFFFFFF == 0x10000


DEVIATIONS.append(
    Deviation("ret-imm16-signed", "unicorn adds RET's imm16 to ESP sign-extended; the SDM zero-extends it", _ret_imm16_sign_extended)
)


def _iret_drops_rf(case: Case, o: Outcome) -> bool:
    # IRET loads RF from the popped EFLAGS (SDM IRET pseudocode: EFLAGS <- tempEFLAGS, with RF);
    # unicorn (QEMU's load_eflags mask has no RF) leaves it clear. Accept only an RF difference.
    from .harness import differences

    if "IRET" not in case.forms:
        return False
    diff = o.ours.regs["eflags"] ^ o.theirs.regs["eflags"]
    only_flags = all(d.startswith("eflags") for d in differences(o))
    return diff == 0x10000 and bool(o.ours.regs["eflags"] & 0x10000) and only_flags


def _iret_to_v86_from_outer_level(case: Case, o: Outcome) -> bool:
    # At CPL > 0 IRET ignores VM in the popped EFLAGS and returns within protected mode; unicorn
    # (QEMU's helper_iret_protected does not check the CPL) enters virtual-8086 mode.
    return (
        "IRET" in case.forms
        and case.spec.cpl == 3
        and not case.spec.real
        and bool(o.theirs.regs["eflags"] & 0x20000)
        and not o.ours.regs["eflags"] & 0x20000
    )


DEVIATIONS += [
    Deviation("iret-rf", "unicorn's IRET does not load RF from the popped EFLAGS", _iret_drops_rf),
    Deviation("iret-v86-cpl3", "unicorn's IRET enters v86 mode from CPL > 0 when the popped EFLAGS has VM", _iret_to_v86_from_outer_level),
]
