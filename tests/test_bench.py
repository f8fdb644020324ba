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
