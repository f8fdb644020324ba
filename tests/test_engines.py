"""The engine registry: every mode behind one interface, one stop vocabulary."""

from __future__ import annotations

import pytest

from ring1.runtime import engines
from ring1.runtime.isa.assembler import assemble
from ring1.runtime.tools import fresh_machine
from ring1.runtime.tools.snippet import interp_machine

LOOP = assemble("mov ecx, 5\nhead:\nadd eax, ecx\nloop head\nend:\nhlt", origin=fresh_machine.CODE)


@pytest.mark.parametrize("mode", engines.MODES)
def test_every_mode_runs_to_a_stop_address_with_the_same_result(mode: str) -> None:
    engine = engines.create(mode, fresh_machine.MEMORY_SIZE)
    assert engine.mode == mode
    interp_machine(fresh_machine.FreshSpec(code=LOOP.code), engine.machine)
    engine.start()
    engine.stop_addresses = {LOOP.labels["end"]}
    outcome = engine.run(10_000)
    assert outcome.reason == "stop-address", outcome
    assert engine.machine.regs[0] == 15 and engine.machine.state.eip == LOOP.labels["end"]
    engine.set_registers(LOOP.labels["head"], {0: 100, 1: 2})  # a re-run from the loop head
    assert engine.run(10_000).reason == "stop-address" and engine.machine.regs[0] == 103


@pytest.mark.parametrize("mode", engines.MODES)
def test_every_mode_reports_a_guest_event_when_asked(mode: str) -> None:
    engine = engines.create(mode, fresh_machine.MEMORY_SIZE)
    interp_machine(fresh_machine.FreshSpec(code=bytes.fromhex("31 db f7 f3")), engine.machine)  # xor ebx, ebx; div ebx
    engine.stop_on_event = True
    engine.start()
    outcome = engine.run(100)
    assert outcome.reason == "event" and outcome.event.vector == 0
    assert engine.machine.state.eip == fresh_machine.CODE + 2  # at the faulting DIV


def test_every_mode_stops_on_its_budget() -> None:
    for mode in engines.MODES:
        engine = engines.create(mode, fresh_machine.MEMORY_SIZE)
        interp_machine(fresh_machine.FreshSpec(code=bytes.fromhex("eb fe")), engine.machine)  # jmp $
        engine.start()
        assert engine.run(1000).reason == "limit", mode


def test_unknown_modes_are_refused() -> None:
    with pytest.raises(engines.UnknownMode, match="modes: bt, trap, interp, bare"):
        engines.create("vt-x", fresh_machine.MEMORY_SIZE)
