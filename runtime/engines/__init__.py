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
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ring1.runtime.cpu.events import Fault, VMStop
from ring1.runtime.cpu.state import CS
from ring1.runtime.devices.platform import GuestExit
from ring1.runtime.ledger import NoLedger, TimeLedger

if TYPE_CHECKING:
    from collections.abc import Callable

    from ring1.runtime.boot.multiboot import BootImage
    from ring1.runtime.cpu.events import GuestEvent
    from ring1.runtime.cpu.machine import Machine, Platform
    from ring1.runtime.devices.platform import GuestPlatform

MODES = ("bt", "trap", "interp", "bare")

# mode -> "module:factory", imported when the mode is first used (start-up stays short).
_REGISTRY: dict[str, str] = {
    "interp": "ring1.runtime.engines.interp:InterpEngine",
    "bare": "ring1.runtime.engines.bare:BareEngine",
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

    def attach_ledger(self, ledger: NoLedger) -> None:
        """Account the run's wall time by cause in `ledger` (ring1.runtime.ledger) from now on."""

    def stop(self, outcome: Outcome, max_insns: int | None) -> Stop:
        """How the run ended, as `ring1 run` reports it."""


# The counts of events that cost an exit or more, which engines report in counters() (and
# `ring1 bench nano` per operation).
EVENT_COUNTERS = (
    "world_switches",
    "callouts",
    "traps",
    "events_delivered",
    "hidden_page_faults",
    "traced_writes",
    "translator_entries",
    "shadow_flushes",
)


def delegate(owner: str, name: str) -> property:
    """An engine attribute that is `self.<owner>.<name>` (the machinery's own setting)."""

    def get(self):
        return getattr(getattr(self, owner), name)

    def set_(self, value) -> None:
        setattr(getattr(self, owner), name, value)

    return property(get, set_, doc=f"{owner}.{name}")


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


# Process exit statuses of `ring1 run` for a run that did not end at the exit port.
EXIT_USAGE = 2  # bad command line, unreadable or unbootable image, mode not available
EXIT_TRIPLE_FAULT = 121
EXIT_UNIMPLEMENTED = 122  # an instruction without semantics, or an unsupported case
EXIT_HALT = 123  # HLT with no interrupt that could ever wake the CPU
EXIT_LIMIT = 124  # the instruction budget (--max-insns) ran out, as timeout(1) does
EXIT_VMSTOP = 125  # any other clean VM stop
EXIT_INTERRUPTED = 130  # Ctrl-C
EXIT_CONSOLE_CLOSED = 141  # the console's reader went away, as a process killed by SIGPIPE


# ---------------------------------------------------------------- statistics


@dataclass
class Figure:
    key: str  # snake_case, the JSON key
    label: str  # for people
    value: object  # int, float, str, or a dict of details (JSON only)
    unit: str = ""


@dataclass
class RunStats:
    """The figures `ring1 run --stats` prints and `--json-stats` writes, in the order added.

    Every engine adds its own (`add`): the interpreter its instructions and blocks, the VMM
    its translated instructions, CCFs, TC bytes, IDENT share, chained links, callouts...
    A figure whose value is a dict appears only in the JSON."""

    mode: str
    figures: list[Figure] = field(default_factory=list)
    # Set before the run: account the run's wall time by cause (ring1.runtime.ledger).
    timed: bool = False
    # While a run is on: its figures so far, as a new RunStats (`ring1 run` on SIGUSR1).
    snapshot: Callable[[], RunStats] | None = field(default=None, repr=False)

    def add(self, key: str, label: str, value: object, unit: str = "") -> None:
        self.figures = [f for f in self.figures if f.key != key]
        self.figures.append(Figure(key, label, value, unit))

    def get(self, key: str) -> object:
        return next((f.value for f in self.figures if f.key == key), None)

    def as_json(self) -> dict:
        return {"mode": self.mode, **{f.key: f.value for f in self.figures}}

    def format(self) -> str:
        from ring1.runtime.tools import tables

        rows = [(f.label, _format_value(f.value, f.unit)) for f in self.figures if not isinstance(f.value, dict)]
        lines = [f"ring1 run stats (mode {self.mode}):", *tables.render(None, rows, "ll", indent="  ")]
        seconds, entries = self.get("time_by_cause_s"), self.get("entries_by_cause")
        if isinstance(seconds, dict) and isinstance(entries, dict):
            total = sum(seconds.values()) or 1.0
            split = [
                (cause, f"{t:.3f} s", f"{100 * t / total:.1f} %", f"{entries[cause]:,}" if cause in entries else "")
                for cause, t in seconds.items()
                if t >= total / 1000
            ]
            lines.append("  where the wall time went (entries: exits to Python, for what the hardware calls):")
            lines += tables.render(("cause", "time", "share", "entries"), split, "lrrr", indent="    ")
        return "\n".join(lines)


def _format_value(value: object, unit: str) -> str:
    if isinstance(value, float):
        text = f"{value:.1f}" if unit == "%" else f"{value:.3f}"
    elif isinstance(value, int):
        text = f"{value:,}"
    else:
        text = str(value)
    return f"{text} {unit}".rstrip()


# ---------------------------------------------------------------- running


@dataclass
class Stop:
    """How a run ended, the same for every engine."""

    kind: str  # "exit", "triple-fault", "no-semantics", "unsupported", "halt", "limit", "interrupted", or a VMStop kind
    detail: str  # what happened, for people
    guest_status: int | None = None  # the value written to the exit port
    eip: int | None = None  # guest EIP (offset in CS) of the instruction the run stopped at
    cs: int | None = None
    code: bytes = b""  # the instruction bytes at cs:eip, as far as they could be read

    @property
    def exit_status(self) -> int:
        if self.kind == "exit":
            status = self.guest_status or 0
            return status if status <= 0xFF else 0xFF
        return {
            "triple-fault": EXIT_TRIPLE_FAULT,
            "no-semantics": EXIT_UNIMPLEMENTED,
            "unsupported": EXIT_UNIMPLEMENTED,
            "no-delivery": EXIT_UNIMPLEMENTED,
            "halt": EXIT_HALT,
            "limit": EXIT_LIMIT,
            "interrupted": EXIT_INTERRUPTED,
            "console-closed": EXIT_CONSOLE_CLOSED,
            "user-quit": EXIT_INTERRUPTED,
            "poweroff": 0,  # ACPI S5: the guest shut the machine down, a normal end
            "reset": 0,  # the guest asked for a reset; ring1 ends the run there (QEMU's -no-reboot)
        }.get(self.kind, EXIT_VMSTOP)

    def diagnosis(self, mode: str) -> str | None:
        """One line for stderr, or None after a clean exit through the exit port."""
        if self.kind in ("exit", "poweroff"):
            return None
        where = ""
        if self.eip is not None:
            where = f"; guest eip {self.eip:#010x}"
            if self.cs is not None:
                where += f" (cs {self.cs:#06x})"
            where += f", bytes {self.code.hex(' ') if self.code else '(unreadable)'}"
        return f"ring1 run: {self.detail}{where}; mode {mode}"


def run_image(
    mode: str,
    image: BootImage,
    platform: GuestPlatform,
    max_insns: int | None,
    stats: RunStats,
    driver: Callable[[Engine], Stop] | None = None,
) -> Stop:
    """`ring1 run`: boot `image` on `platform` in `mode` (an engine of ring1.runtime.engines),
    run it (at most `max_insns` guest instructions if given), add the engine's figures to
    `stats` and say how the run ended. A `driver` runs the booted engine instead (the GDB
    stub: ring1.runtime.tools.gdbstub) and says how the run ended."""
    from ring1.runtime.boot.multiboot import interp_boot

    engine = create(mode, image.memory_size, platform)
    if image.rom is None:  # (a system ROM sets the machine up itself)
        platform.install_firmware(engine.machine.mem)  # then the kernel, which wins where they meet
    interp_boot(image, platform, engine.machine)
    engine.start()
    ledger = None
    if stats.timed:
        ledger = TimeLedger("interpreter" if mode == "interp" else "ring1 (Python), other")
        platform.ledger = ledger
        engine.attach_ledger(ledger)
    started = time.perf_counter()

    def collect(into: RunStats) -> RunStats:
        engine.figures(into, time.perf_counter() - started)
        platform.figures(into)
        if ledger is not None:
            split = ledger.snapshot()
            into.add("time_by_cause_s", "wall time by cause", split["seconds"], "s")
            into.add("entries_by_cause", "entries by cause", split["entries"])
        return into

    stats.snapshot = lambda: collect(RunStats(stats.mode))
    try:
        if driver is not None:
            stop = driver(engine)
        else:
            stop = engine.stop(engine.run(max_insns), max_insns)
    finally:
        stats.snapshot = None
    collect(stats)
    return stop


def instruction_bytes(m: Machine, eip: int) -> bytes:
    """Up to 15 bytes at CS:eip, or b"" if they cannot be fetched."""
    try:
        data, _ = m.fetch(eip)
    except (Fault, VMStop):
        return b""
    try:
        from ring1.runtime.isa.decoder import decode

        d = decode(data, eip, bool(m.state.code32))
        return data[: d.length] if d.form is not None else data[:8]
    except Exception:
        return data


def _halt_detail(m: Machine) -> str:
    if m.state.eflags & 0x200:
        return "HLT with interrupts enabled, but nothing on this platform raises an interrupt"
    return "HLT with interrupts disabled"


def engine_stop(m: Machine, why: str, what: object, max_insns: int | None, engine: str) -> Stop:
    """How a run on the hardware ended (the bare, bt and trap engines), as `ring1 run` reports it.
    `m` holds the guest's state at the end; `what` is the VMStop (or GuestExit) of a "vmstop"."""
    S = m.state
    if why == "vmstop":
        if isinstance(what, GuestExit):
            return Stop("exit", what.reason, guest_status=what.status)
        assert isinstance(what, VMStop)
        return _stop_at(m, what.kind, what.reason, S.eip)
    if why == "halt":
        return _stop_at(m, "halt", _halt_detail(m), (S.eip - 1) & 0xFFFFFFFF)  # EIP is past the HLT
    if why == "interrupted":
        return _stop_at(m, "interrupted", "interrupted (Ctrl-C)", S.eip)
    if why == "limit":
        return _stop_at(m, "limit", f"the instruction budget ran out after {max_insns:,} instructions", S.eip)
    return _stop_at(m, why, f"the {engine} stopped ({why})", S.eip)


def _stop_at(m: Machine, kind: str, detail: str, eip: int) -> Stop:
    code = instruction_bytes(m, eip)
    if code and _undefined(m, eip):
        detail += " (ring1's spec has no form for the instruction there: #UD)"
    post = getattr(m.platform, "post_code", None)
    if post is not None:
        detail += f"; last POST code {post:#04x}"
    return Stop(kind, detail, eip=eip, cs=m.state.sel[CS], code=code)


def _undefined(m: Machine, eip: int) -> bool:
    try:
        d, _ = m.decode_at(eip)
    except Exception:
        return False
    return d.form is None
