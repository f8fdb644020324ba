"""Every form with semantics, against unicorn, in protected mode at CPL 0 and CPL 3 and in real mode.

`pytest tests/diff -k ADD_RMv_Rv` runs one form; `--diff-examples N` sets the examples per
form and mode (default 20); `--diff-random` draws new ones.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from ring1.generated.forms import FORMS

from . import deviations
from .gen import MODES, case_for
from .harness import Outcome, differences, run_both

SEMANTIC_FORMS = sorted(name for name, f in FORMS.items() if f.semantics)


def check_case(case, outcome: Outcome | None = None) -> None:
    outcome = outcome or run_both(case)
    diffs = differences(outcome)
    if diffs and deviations.explain(case, outcome) is not None:
        return
    assert not diffs, (
        f"{' '.join(case.forms)} in {case.spec.cpl=} real={case.spec.real}: code {case.spec.code.hex(' ')}\n"
        f"registers in: { {k: hex(v) for k, v in case.spec.initial_regs().items()} } ({case.note})\n" + "\n".join(diffs)
    )


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("form", SEMANTIC_FORMS)
def test_form_against_unicorn(form: str, mode: str, diff_settings: dict) -> None:
    @settings(deadline=None, suppress_health_check=list(HealthCheck), database=None, **diff_settings)
    @given(case_for([form], MODES[mode]))
    def check(case) -> None:
        check_case(case)

    check()
