"""The modes ring1 runs a guest in, behind one interface: the engine registry.

An engine is one virtual machine in one mode:

  interp  the generated interpreter alone ("full emulation");
  bare    unicorn at the guest's own CPL, the VMM out of the way (the reference);
  bt      the VMM: the guest kernel binary-translated at CPL 1 (the 1999 design);
  trap    the VMM running the kernel untranslated at CPL 1 (naive trap-and-emulate).

Every engine keeps the guest's virtual CPU in an interpreter `Machine` (`engine.machine`):
loaders and snippets set the state there, `start()` hands it to the engine's CPU, `run()` runs
until a stop address, the budget, an event (with `stop_on_event`), HLT, or a VM stop, and
leaves the final state there again. `ring1 run`, `ring1 exec`, the benchmarks and the tests
all make their engines here, so adding a mode is one registration.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ring1.runtime.events import GuestEvent, VMStop
    from ring1.runtime.guest import RunStats, Stop
    from ring1.runtime.machine import Machine, Platform

MODES = ("bt", "trap", "interp", "bare")

# mode -> "module:factory", imported when the mode is first used (start-up stays short).
_REGISTRY: dict[str, str] = {
    "interp": "ring1.runtime.guest:InterpEngine",
    "bare": "ring1.runtime.bare:BareEngine",
    "bt": "ring1.runtime.vmm:VmmEngine",
    "trap": "ring1.runtime.vmm:VmmEngine",
}


@dataclass
class Outcome:
    """How a run ended, in every mode: the engines' one stop vocabulary.

    reason: "stop-address" (EIP reached a stop address), "limit" (the budget ran out), "event"
    (a guest exception or software interrupt, with `stop_on_event`), "halt", "vmstop" (a
    clean VM stop: the exit port, a triple fault, an unsupported case...), "interrupted"."""

    reason: str
    event: GuestEvent | None = None
    vmstop: VMStop | None = None


class Engine(Protocol):
    mode: str
    machine: Machine  # the guest's virtual CPU and memory, authoritative between runs
    stop_addresses: set[int]  # linear addresses where a run stops before the instruction there
    stop_on_event: bool  # report guest exceptions and software interrupts instead of delivering them

    def start(self) -> None:
        """Take the whole state of `machine` (set by a loader or a snippet) into the engine's CPU."""

    def set_registers(self, eip: int, regs: dict[int, int]) -> None:
        """Between runs: a new EIP and general registers (index -> value), nothing else."""

    def run(self, max_insns: int | None = None) -> Outcome:
        """Run at most `max_insns` guest instructions (None: no budget)."""

    def counters(self) -> dict[str, int]:
        """The engine's event counts so far (world switches, callouts, events delivered...)."""

    def figures(self, stats: RunStats, elapsed: float) -> None:
        """Add this run's figures to `ring1 run --stats`."""

    def stop(self, outcome: Outcome, max_insns: int | None) -> Stop:
        """How the run ended, as `ring1 run` reports it."""


class UnknownMode(ValueError):
    pass


def create(mode: str, memory_size: int, platform: Platform | None = None, **options) -> Engine:
    """A new engine in `mode` with `memory_size` bytes of guest RAM. Options: `rule_overrides`
    (bt: force forms to callouts, for the benchmarks' ladder)."""
    where = _REGISTRY.get(mode)
    if where is None:
        raise UnknownMode(f"unknown mode {mode!r} (modes: {', '.join(MODES)})")
    module, factory = where.split(":")
    return getattr(importlib.import_module(module), factory)(mode, memory_size, platform, **options)


def register(mode: str, factory: str) -> None:
    """Add a mode: `factory` is "module:callable", called as (mode, memory_size, platform, **options)."""
    _REGISTRY[mode] = factory


def modes() -> tuple[str, ...]:
    return tuple(_REGISTRY)
