"""Options for the differential campaigns: `pytest --diff-examples 2000 --diff-random`."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ring1")
    group.addoption(
        "--diff-examples",
        type=int,
        default=12,
        help="hypothesis examples per form and mode in the differential tests (default 12)",
    )
    group.addoption(
        "--diff-random",
        action="store_true",
        help="draw fresh random examples instead of the reproducible default sequence",
    )


@pytest.fixture
def diff_settings(request: pytest.FixtureRequest) -> dict:
    return {
        "max_examples": request.config.getoption("--diff-examples"),
        "derandomize": not request.config.getoption("--diff-random"),
    }
