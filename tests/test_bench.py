"""`ring1 bench`: the JSON documents have their keys and sane values. No timing thresholds:
how fast things are is the benchmarks' business, not the tests'."""

from __future__ import annotations

import json
import math

import pytest

from ring1.runtime.cli import main
from ring1.runtime.tools import bench

REQUIRED = ("alu", "call_ret", "cli_sti", "pushf_popf", "in_port", "int_syscall", "divzero")


def _run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def _positive(v: object) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


@pytest.fixture(scope="module")
def nano() -> dict:
    return bench.run_nano(quick=True)


def test_interp_json(capsys: pytest.CaptureFixture[str]) -> None:
    out = _run_json(capsys, ["bench", "interp", "--json", "--quick"])
    for key in ("interp_ips", "unicorn_ips", "ratio_to_unicorn"):
        assert _positive(out[key]), key
    assert out["ratio_to_unicorn"] == pytest.approx(out["interp_ips"] / out["unicorn_ips"])
    # Counted exactly: whole iterations of the five-instruction loop.
    assert out["interp"]["instructions"] == out["interp"]["iterations"] * bench.INTERP_INSNS_PER_ITER


def test_nano_json_shape(nano: dict) -> None:
    assert set(nano) >= {"benchmarks", "ladder"}
    names = {r["name"] for r in nano["benchmarks"]}
    assert names >= set(REQUIRED)
    assert names == set(bench.NANO_NAMES)
    for rec in nano["benchmarks"]:
        assert {"name", "mode", "ns_per_op", "ratio_to_bare"} <= set(rec)
        assert rec["mode"] in bench.MODES
    for name in bench.NANO_NAMES:
        assert {r["mode"] for r in nano["benchmarks"] if r["name"] == name} == set(bench.MODES), name


def test_nano_values_sane(nano: dict) -> None:
    """Every benchmark runs in every mode: a time, or null with the reason. A subtracted loop may
    measure an operation as free within the noise, but the loop itself always takes time."""
    for rec in nano["benchmarks"]:
        where = f"{rec['name']} in {rec['mode']}"
        assert rec["ns_per_op"] is not None, f"{where}: {rec.get('error')}"
        assert math.isfinite(rec["ns_per_op"]), where
        assert _positive(rec["loop_s"]), where
        assert rec["iterations"] >= 1, where
        if rec["mode"] == "bare":
            assert rec["ratio_to_bare"] == pytest.approx(1.0)
    events = {(r["name"], r["mode"]): r["per_op"] for r in nano["benchmarks"]}
    # The guest's own handlers run: one event delivered per operation.
    for name in ("int_syscall", "divzero", "pgfault"):
        for mode in ("bare", "bt", "trap"):
            assert events[(name, mode)]["events_delivered"] == pytest.approx(1.0), (name, mode)


def test_ladder_shape(nano: dict) -> None:
    lad = nano["ladder"]
    for key in ("trap_ns", "callout_ns", "in_tc_ns"):
        assert lad[key] is not None and math.isfinite(lad[key]), key
    # Each rung is the mechanism it names (counted, not timed).
    assert lad["trap_per_op"]["traps"] == pytest.approx(1.0)
    assert lad["callout_per_op"]["callouts"] == pytest.approx(1.0)
    assert lad["callout_per_op"]["traps"] == 0
    assert lad["in_tc_per_op"]["callouts"] == 0 and lad["in_tc_per_op"]["traps"] == 0


def test_nano_cli_subset(capsys: pytest.CaptureFixture[str]) -> None:
    out = _run_json(
        capsys, ["bench", "nano", "--json", "--quick", "--modes", "bare", "bt", "--only", "alu", "--no-ladder"]
    )
    assert [(r["name"], r["mode"]) for r in out["benchmarks"]] == [("alu", "bare"), ("alu", "bt")]
    assert out["ladder"] is None


def test_nano_cli_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "nano", "--quick", "--modes", "bare,interp", "--only", "cli_sti"]) == 0
    text = capsys.readouterr().out
    assert "cli_sti" in text and "ladder" in text


def test_nano_cli_rejects_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "nano", "--modes", "vt"]) == 2
    assert "unknown vt" in capsys.readouterr().err


@pytest.mark.parametrize("nb", bench.nano_benchmarks(), ids=lambda b: b.name)
def test_loops_agree_across_modes(nb: bench.Nano) -> None:
    """The loops are correct guest code: after a few iterations every mode ends at the loop's end
    with the same registers and flags (the benchmarks time the same work everywhere)."""
    for loop in (nb.loop, nb.baseline_loop()):
        built = bench.build(loop)
        final = {}
        for mode in bench.MODES:
            runner = bench.Runner(mode, built)
            runner.run(3)
            runner.run(2)  # a re-run from the loop head
            final[mode] = runner.final_state()
        assert final["interp"]["eip"] == built.end
        for mode in bench.MODES:
            assert final[mode] == final["interp"], mode


def test_rule_override_forces_callout() -> None:
    from ring1.runtime.tools import fresh_machine
    from ring1.runtime.vmm import Vmm

    with pytest.raises(ValueError):
        Vmm(fresh_machine.MEMORY_SIZE, rule_overrides={"CLI": "inline"})
    with pytest.raises(ValueError):
        Vmm(fresh_machine.MEMORY_SIZE, rule_overrides={"NO_SUCH_FORM": "callout"})
    built = bench.build(bench.ladder_loop())
    runner = bench.Runner("bt", built, {"CLI": "callout"})
    runner.run(3)
    assert runner.engine.counters()["callouts"] == 3 * bench.ladder_loop().unroll
    plain = bench.Runner("bt", built)
    plain.run(3)
    assert plain.engine.counters()["callouts"] == 0


def test_startup_json(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    from tests.test_guests import flat_kernel

    kernel = tmp_path / "exit.elf"
    kernel.write_bytes(flat_kernel(bytes.fromhex("b0 00 e6 f4")))  # mov al, 0; out 0xf4, al: exit 0
    doc = _run_json(capsys, ["bench", "startup", "--json", "--repeats", "1", "--guest", str(kernel)])
    assert set(doc["commands"]) == {"python", "exec_bt", "exec_interp", "run_hello_bt"}
    for rec in doc["commands"].values():
        assert _positive(rec["wall_s"]) and _positive(rec["ratio_to_python"])
    assert doc["commands"]["python"]["ratio_to_python"] == 1.0


def test_startup_needs_its_guest(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    assert main(["bench", "startup", "--guest", str(tmp_path / "absent.elf")]) == 2
    assert "make guests" in capsys.readouterr().err


# ---------------------------------------------------------------- issue 10: user processes

PROCESS_ROWS = ("syscall", "pgfault_user", "ptemod_user", "cr3switch", "forkwait")
TARGETS = {"syscall": 3, "pgfault_user": 3, "ptemod_user": 2, "cr3switch": None, "forkwait": None}
# The guest kernels' own counts per operation (one operation of cr3switch switches to one of
# the two spaces: each space's page is written every other operation).
GUEST_PER_OP = {
    "syscall": {"syscalls": 1},
    "pgfault_user": {"page_faults": 1},
    "ptemod_user": {"pte_writes": 1, "syscalls": 1},
    "cr3switch": {"space_a_touches": 0.5, "space_b_touches": 0.5},
    "forkwait": {"forks": 1, "exits": 1, "reaped": 1},
}
# Events the guest's handlers get per operation: a system call or a fault is one, a fork+wait
# pair three (fork, wait and the child's exit); ptemod_user's is in its baseline too.
EVENTS_PER_OP = {"syscall": 1, "pgfault_user": 1, "ptemod_user": 0, "cr3switch": 0, "forkwait": 3}


def test_process_rows_in_exits(nano: dict) -> None:
    """Issue 10's rows: in every mode a time, the same run's exit price, the time in exits, the
    exits the engine counted, the target; and the guest kernel did one operation's work per
    operation."""
    exit_ns = nano["exit_ns"]
    assert _positive(exit_ns)
    recs = {(r["name"], r["mode"]): r for r in nano["benchmarks"]}
    for name in PROCESS_ROWS:
        for mode in bench.MODES:
            rec, where = recs[(name, mode)], f"{name} in {mode}"
            assert rec["exit_ns"] == exit_ns, where
            assert rec["exits_per_op"] == pytest.approx(rec["ns_per_op"] / exit_ns), where
            assert rec["target_exits"] == TARGETS[name], where
            if TARGETS[name] is not None:
                noise = rec["noise_ns"]
                lost = noise is not None and abs(rec["ns_per_op"]) < noise  # (not with --quick's one repeat)
                assert rec["within_target"] == (None if lost else rec["exits_per_op"] <= TARGETS[name]), where
            assert rec["guest_per_op"] == pytest.approx(GUEST_PER_OP[name]), where
            if mode == "interp":
                assert rec["exits_counted_per_op"] is None, where
                continue
            assert rec["per_op"]["events_delivered"] == pytest.approx(EVENTS_PER_OP[name]), where
            counted = rec["exits_counted_per_op"]
            if mode == "bare":
                assert counted == rec["per_op"]["events_delivered"], where
            else:
                assert counted == pytest.approx(sum(rec["per_op"][k] for k in bench.VMM_EXITS), abs=1e-3), where
    # Unicorn delivers nothing through an IDT: user code's INT 0x80 and #PF enter the VMM.
    for name in ("syscall", "pgfault_user"):
        for mode in ("bt", "trap"):
            assert recs[(name, mode)]["exits_counted_per_op"] >= 1, (name, mode)


def _nano(name: str) -> bench.Nano:
    return next(b for b in bench.nano_benchmarks() if b.name == name)


def _ran(mode: str, loop: bench.Loop, iterations: tuple[int, ...] = (3, 2)) -> bench.Runner:
    runner = bench.Runner(mode, bench.build(loop))
    for n in iterations:  # the first run from the prologue, the next from the loop head at CPL 3
        runner.run(n)
    return runner


@pytest.mark.parametrize("mode", bench.MODES)
def test_user_kernel_did_the_work(mode: str) -> None:
    """syscall, pgfault_user and ptemod_user: the kernel's handler ran once per iteration, from
    user mode, and did what it says."""
    r = _ran(mode, _nano("syscall").loop)
    assert r.guest_word(bench.SYSCALLS) == 5
    assert r.final_state()["esp"] == bench.fresh_machine.STACK_TOP  # the user stack, as it was

    r = _ran(mode, _nano("pgfault_user").loop)
    assert r.guest_word(bench.PAGE_FAULTS) == 5
    assert r.guest_word(bench.FAULT_CR2) == bench.TEST_PAGE
    assert r.guest_word(bench.FAULT_ERROR) == bench.U  # a user read of a page not present
    base = _ran(mode, _nano("pgfault_user").baseline_loop())
    assert base.guest_word(bench.PAGE_FAULTS) == 0 and base.final_state()["eax"] == bench.FRAME_B_WORD

    r = _ran(mode, _nano("ptemod_user").loop)
    assert r.guest_word(bench.PTE_WRITES) == 5 and r.guest_word(bench.SYSCALLS) == 5
    # Each read after a remap sees the other frame: B, A, B, A, B.
    a, b = bench.FRAME_A_WORD, bench.FRAME_B_WORD
    assert r.final_state()["ebx"] == 3 * b + 2 * a
    assert r.guest_word(bench.TEST_PTE) & ~0xFFF == bench.FRAME_B


@pytest.mark.parametrize("mode", bench.MODES)
def test_cr3switch_touched_both_spaces(mode: str) -> None:
    r = _ran(mode, _nano("cr3switch").loop)
    assert r.guest_word(bench.FRAME_A) == bench.FRAME_A_WORD + 5
    assert r.guest_word(bench.FRAME_B) == bench.FRAME_B_WORD + 5
    base = _ran(mode, _nano("cr3switch").baseline_loop())  # no switch: one space only
    assert base.guest_word(bench.FRAME_A) == bench.FRAME_A_WORD + 10
    assert base.guest_word(bench.FRAME_B) == bench.FRAME_B_WORD


@pytest.mark.parametrize("mode", bench.MODES)
def test_forkwait_reaped_every_child(mode: str) -> None:
    """Every fork was waited for: as many forks, exits and reaps as iterations; each child
    exited with its own copy of the data word changed and the parent's left alone; every slot
    but pid 1's is free again and every frame given back."""
    fw = bench.ForkWait
    r = _ran(mode, fw.loop())
    assert [r.guest_word(a) for a in (fw.FORKS, fw.EXITS, fw.REAPED)] == [5, 5, 5]
    assert r.guest_word(fw.NEXT_PID) == 2 + 5
    assert r.guest_word(fw.CURRENT) == fw.PROCS
    states = [r.guest_word(fw.PROCS + i * fw.PROC_SIZE + fw.P_STATE) for i in range(fw.NPROC)]
    assert states == [fw.RUNNABLE] + [fw.FREE] * (fw.NPROC - 1)
    assert r.guest_word(fw.FREE_TOP) == fw.free_top()
    assert r.guest_word(fw.FIRST_USER) == fw.USER_WORD  # the parent's copy
    assert r.guest_word(fw.FIRST_USER + 4) == 5 * (fw.USER_WORD + 1)  # the sum of the children's statuses
    assert r.final_state()["ebx"] == fw.USER_WORD + 1


def test_in_exits_table_says_why_a_row_did_not_run() -> None:
    rec = {
        "name": "forkwait",
        "mode": "bt",
        "ns_per_op": None,
        "error": "bt: the loop did not reach its end (vmstop)",
        "exits_per_op": None,
        "exits_counted_per_op": None,
        "target_exits": None,
    }
    text = "\n".join(bench.format_in_exits({"benchmarks": [rec], "exit_ns": 400.0}))
    assert "forkwait  bt" in text and "error" in text and "did not reach its end" in text


def test_nano_cli_process_table(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "nano", "--quick", "--modes", "bare", "bt", "--only", "syscall", "--no-ladder"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "In exits" in text and "<= 3" in text and "traps" in text
    assert "ladder" not in text
