"""Short random sequences of MMX and SSE/SSE2 integer forms against unicorn: the MMX and XMM
registers, the x87 TOP and tags and memory carried from one instruction to the next (and
through the interpreter's blocks, which join the instructions' templates) must agree too."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ring1.generated.decode import ENCODINGS
from ring1.generated.forms import FORMS
from ring1.runtime.isa.decoder import decode
from ring1.runtime.tools import fresh_machine

from .gen import MODES, case_for, is_simd_integer
from .harness import run_both
from .test_forms import check_case

POOL = sorted(name for name, f in FORMS.items() if f.semantics and is_simd_integer(name))


def has_ignored_66(code: bytes, code32: bool) -> bool:
    """An instruction with a 66 prefix besides its mandatory F2 or F3 (deviation
    sse-66-with-f2-f3: unicorn lets the 66 pick another instruction)."""
    at = 0
    while at < len(code):
        d = decode(code[at:] + bytes(16), fresh_machine.CODE + at, code32)
        if d.form is None:
            return False
        if 0x66 in d.prefixes and ENCODINGS[d.form][9] in (0xF2, 0xF3):
            return True
        at += d.length
    return False


@pytest.mark.parametrize("mode", sorted(MODES))
def test_simd_integer_sequences_against_unicorn(mode: str, diff_settings: dict) -> None:
    @settings(
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        max_examples=diff_settings["max_examples"] * 5,
        derandomize=diff_settings["derandomize"],
    )
    @given(
        st.lists(st.sampled_from(POOL), min_size=2, max_size=5).flatmap(
            lambda forms: case_for(forms, MODES[mode], reload=True, aligned=True)
        )
    )
    def check(case) -> None:
        # Where unicorn's step is wrong (deviations mmx-ts-before-ud, sse-ts-before-ud,
        # mmx-pending-x87 and sse-66-with-f2-f3, accepted for a form alone) a sequence says
        # nothing more: leave those states and encodings out.
        spec = case.spec
        ts = spec.cr0_bits & fresh_machine.CR0_TS
        assume(not (ts and (spec.cr0_bits & fresh_machine.CR0_EM or not spec.cr4 & fresh_machine.CR4_OSFXSR)))
        assume(not (spec.fsw & 0x80 and spec.cr0_bits & fresh_machine.CR0_NE))
        assume(not has_ignored_66(spec.code, not spec.real))
        check_case(case, run_both(case))

    check()
