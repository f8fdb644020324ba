"""Options for the differential campaigns: `pytest --diff-examples 2000 --diff-random`."""

from __future__ import annotations

import fcntl
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


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


@pytest.fixture(scope="session")
def guests() -> Path:
    """Build every guest (make guests) once per session and worker; workers take turns (a lock
    file), so two pytest-xdist workers never run make over the same objects at once."""
    missing = [tool for tool in ("gcc", "as", "ld", "make") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"cannot build the guests: {', '.join(missing)} not installed")
    out = ROOT / "build" / "guests"
    out.mkdir(parents=True, exist_ok=True)
    with open(ROOT / "build" / ".guests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = subprocess.run(["make", "-s", "guests"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"make guests failed:\n{done.stdout}{done.stderr}"
    return out
