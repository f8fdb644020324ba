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
