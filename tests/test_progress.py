"""The progress line of `ring1 bench`: shown and rewritten in place on a terminal, erased at
the end, and silent when stderr is not a terminal."""

from __future__ import annotations

import io
import sys

import pytest

from ring1.runtime.cli import main
from ring1.runtime.tools import bench
from ring1.runtime.tools.progress import Progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def screen(written: str) -> str:
    """What a terminal shows of a line written with carriage returns."""
    shown: list[str] = []
    at = 0
    for ch in written:
        if ch == "\r":
            at = 0
            continue
        if at < len(shown):
            shown[at] = ch
        else:
            shown.append(ch)
        at += 1
    return "".join(shown)


def test_line_is_rewritten_in_place_and_erased() -> None:
    term = FakeTerminal()
    with Progress("nano", 2, term) as progress:
        progress.step("syscall bt")
        assert screen(term.getvalue()) == "nano: syscall bt 1/2"
        progress.step("alu bare")  # shorter: the old tail is blanked
        assert screen(term.getvalue()).rstrip() == "nano: alu bare 2/2"
    assert "\n" not in term.getvalue()
    assert screen(term.getvalue()).strip() == ""


def test_silent_when_not_a_terminal() -> None:
    out = io.StringIO()
    with Progress("nano", 1, out) as progress:
        progress.step("alu bare")
    assert out.getvalue() == "" and progress.done == 1


def test_bench_nano_counts_its_steps_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    term = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", term)
    bench.run_nano(("bare", "bt"), ("alu",), quick=True, ladder=False)
    written = term.getvalue()
    assert "nano: alu bare 1/2" in written and "nano: alu bt 2/2" in written
    assert screen(written).strip() == ""


def test_bench_quiet_when_stderr_is_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    assert not sys.stderr.isatty()
    assert main(["bench", "nano", "--quick", "--only", "alu", "--modes", "bare", "bt"]) == 0
    assert main(["bench", "interp", "--quick"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "alu" in captured.out
