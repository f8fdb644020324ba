"""The task-switching guest (guests/tasks.c) under `ring1 run`: the same console, line for line,
under `bare` (unicorn switches tasks itself for JMP, CALL and IRET; the spec does the task-gate
delivery), `bt` (the switches are callouts and VMM-delivered events, after which the VMM takes
up the new task's CR3, segments, LDTR, TR, EFLAGS and CR0) and `interp` (spec/tasks.r1), and the
lines the architecture requires: a JMP frees the task it leaves, a CALL through a task gate
nests (NT, the back link, the caller stays busy), IRET returns through the back link, and a
#DF made of a #GP whose gate is not present reaches the IDT's task gate with error code 0 and
the main task saved at the faulting instruction.
"""

from __future__ import annotations

import json
import subprocess
from functools import cache
from pathlib import Path

import pytest

from tests.runs import ring1

MODES = ["bare", "bt", "interp"]

EXPECTED = """\
tasks: main task, TR 0018, main TSS busy, page 00400000 reads "the main task's frame"
task A: running, TR 0020, entered by JMP: NT 0, back link 0000
task A: main TSS available, A TSS busy, CR0.TS 1
task A: own page directory yes, page 00400000 reads "task A's frame"
main: back by JMP, TR 0018, NT 0, main TSS busy, A TSS available, CR0.TS 1
main: registers kept across the switches: yes; page 00400000 reads "the main task's frame"
task B: entry 1, TR 0028, called through the task gate: NT 1, back link 0018
task B: main TSS busy (nested), B TSS busy, LDTR 0040, FS reads its LDT segment
main: back by IRET, TR 0018, NT 0, B TSS available, LDTR 0000
task B: entry 2, TR 0028, called through the task gate: NT 1, back link 0018
task B: main TSS busy (nested), B TSS busy, LDTR 0040, FS reads its LDT segment
main: back by IRET, TR 0018, NT 0, B TSS available, LDTR 0000
main: loading DS with fff8, the #GP gate not present
df task: #DF error code 0, TR 0030, NT 1, back link 0018
df task: main task saved at the faulting instruction: yes; main TSS busy; page 00400000 reads "task A's frame"
main: back from the double-fault task, TR 0018, NT 0, DF TSS available, main TSS busy
tasks: done, 0 failed
"""


@cache
def run(guests: Path, mode: str) -> subprocess.CompletedProcess:
    return ring1("run", str(guests / "tasks.elf"), "--mode", mode)


@pytest.mark.parametrize("mode", MODES)
def test_the_tasks_guest_prints_what_the_architecture_requires(guests: Path, mode: str) -> None:
    done = run(guests, mode)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == EXPECTED


def test_the_tasks_guest_prints_the_same_in_every_mode(guests: Path) -> None:
    outputs = {mode: run(guests, mode).stdout for mode in MODES}
    assert outputs["bt"] == outputs["bare"] == outputs["interp"]


def test_under_bt_the_main_task_runs_translated(guests: Path, tmp_path: Path) -> None:
    """The switches are the VMM's callouts and delivered events, not a fall back to the
    interpreter for the whole run: the tasks' code is translated."""
    stats = tmp_path / "stats.json"
    done = ring1("run", str(guests / "tasks.elf"), "--mode", "bt", "--json-stats", str(stats))
    assert done.returncode == 0, done.stderr
    figures = json.loads(stats.read_text())
    assert figures["callouts"] > 0 and figures["guest_instructions_translated"] > 500, figures
    assert figures["interpreted_instructions"] == 0
    assert figures["events_delivered"] == 1  # the #GP that became the #DF, through the task gate
