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
