"""Short random sequences of forms against unicorn: state carried from one instruction to the
next (lazy flags, partial registers, memory) must agree too."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ring1.generated.forms import FORMS
from ring1.runtime.isa.decoder import decode
from ring1.runtime.tools import fresh_machine

from .deviations import ALONE_FORMS, IO_MNEMONICS, is_locked_neg
from .gen import MODES, case_for
from .harness import run_both
from .test_forms import check_case

FAMILIES = ("arith", "logic", "shift", "bit", "datamov", "flags", "string")
POOL = sorted(
    name
    for name, f in FORMS.items()
    if f.semantics
    and name not in ALONE_FORMS
    and f.source.split(":")[0].removeprefix("spec/").removesuffix(".r1") in FAMILIES
)


# Instances (not forms) with a single-instruction deviation: LOCK NEG (lock-neg-flags).
def has_locked_neg(code: bytes, code32: bool) -> bool:
    at = 0
    while at < len(code):
        if is_locked_neg(code[at:], code32):
            return True
        d = decode(code[at:] + bytes(16), fresh_machine.CODE + at, code32)
        at += len(d.raw) if d.form else 1
    return False


# At CPL 3 (IOPL 0, every port denied) unicorn runs IN/OUT/INS/OUTS where the CPU raises #GP
# (deviation io-permission, accepted for the form alone): in a sequence its wrong step would
# derail everything after it, so sequences at CPL 3 leave the I/O forms out.
IO_FORMS = {name for name in POOL if set(FORMS[name].mnemonics.values()) & IO_MNEMONICS}


def pool_for(mode: str) -> list[str]:
    return [name for name in POOL if not (MODES[mode].cpl == 3 and name in IO_FORMS)]


@pytest.mark.parametrize("mode", sorted(MODES))
def test_sequences_against_unicorn(mode: str, diff_settings: dict) -> None:
    @settings(
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        max_examples=diff_settings["max_examples"] * 10,
        derandomize=diff_settings["derandomize"],
    )
    @given(
        st.lists(st.sampled_from(pool_for(mode)), min_size=2, max_size=5).flatmap(
            lambda forms: case_for(forms, MODES[mode], reload=True)
        )
    )
    def check(case) -> None:
        assume(not has_locked_neg(case.spec.code, not case.spec.real))
        outcome = run_both(case)
        # An instruction that ran and read a flag its last writer left undefined (the hardware
        # may give either value): the case says nothing. Counted by hypothesis as invalid.
        assume(not outcome.reads_undefined)
        check_case(case, outcome)

    check()
