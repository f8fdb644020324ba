"""The `interp` mode: the whole guest on the generated interpreter ("full emulation")."""

from __future__ import annotations

from collections import Counter

from ring1.runtime.cpu.events import EXCEPTION_NAMES, ExternalInterrupt, GuestEvent, Trap, VMStop
from ring1.runtime.cpu.machine import Machine, Platform
from ring1.runtime.cpu.state import CS
from ring1.runtime.devices.platform import GuestExit
from ring1.runtime.engines import Outcome, RunStats, Stop, _halt_detail, _stop_at, delegate, instruction_bytes


class CountingMachine(Machine):
    """The interpreter's Machine, counting the blocks it compiles and the events it delivers."""

    def __init__(self, *args, **kwargs) -> None:
        self.blocks_compiled = 0
        # (event class, vector, kind) -> deliveries: named only when the report asks
        # (events_delivered), not at every delivery (formatting cost a third of an INT n's).
        self._delivered: dict[tuple[type, int, int | None], int] = {}
        self.last_event: tuple[GuestEvent, int] | None = None  # the event being delivered, and its guest EIP
        super().__init__(*args, **kwargs)

    def compile_at(self, eip: int, single: bool = False):
        block = super().compile_at(eip, single)
        self.blocks_compiled += 1
        return block

    def deliver_event(self, ev: GuestEvent) -> None:
        key = (ev.__class__, ev.vector, ev.kind if isinstance(ev, Trap) else None)
        delivered = self._delivered
        delivered[key] = delivered.get(key, 0) + 1
        self.last_event = (ev, self.state.eip)
        Machine.deliver_event(self, ev)

    @property
    def events_delivered(self) -> Counter[str]:
        """Deliveries by event name: "#PF", "int 0x80", "int3", "interrupt 0x20"..."""
        names: Counter[str] = Counter()
        for (cls, vector, kind), count in self._delivered.items():
            names[_event_name(cls, vector, kind)] += count
        return names


def _event_name(cls: type, vector: int, kind: int | None) -> str:
    """How the run report names an event: by vector for exceptions and interrupts, by form
    for INT3, INTO and ICEBP."""
    if issubclass(cls, ExternalInterrupt):
        return f"interrupt {vector:#x}"
    if issubclass(cls, Trap):
        return {3: "int3", 4: "into", 5: "icebp"}.get(kind, f"int {vector:#x}")
    return EXCEPTION_NAMES.get(vector, f"vector {vector}")


def _stopped_eip(m: Machine, stop: VMStop) -> int:
    """The EIP of the instruction a VMStop came from. The block runner leaves S.eip at the
    start of the block when a VMStop escapes it; for an instruction without semantics the
    block tells which of its instructions that was."""
    S = m.state
    eip = S.eip
    if stop.kind != "no-semantics":
        return eip
    key = (eip, S.base[CS], S.code32)
    block = m.blocks.get(key) or m.single_blocks.get(key)
    form = stop.reason.split(" ", 1)[0]
    if block is not None:
        for d in block.insns:
            if d.form == form:
                return d.eip
    return eip


class InterpEngine:
    """The `interp` mode: the whole guest on the generated interpreter."""

    def __init__(self, mode: str, memory_size: int, platform: Platform | None = None) -> None:
        self.mode = mode
        self.machine = CountingMachine(memory_size, platform)

    stop_addresses = delegate("machine", "stop_addresses")
    stop_on_event = delegate("machine", "stop_on_event")

    def start(self) -> None:
        pass  # the interpreter runs on the machine's state itself

    def set_registers(self, eip: int, regs: dict[int, int]) -> None:
        self.machine.state.eip = eip
        for i, value in regs.items():
            self.machine.regs[i] = value

    def run(self, max_insns: int | None = None):
        try:
            r = self.machine.run(max_insns)
        except KeyboardInterrupt:
            return Outcome("interrupted")
        return Outcome(r.reason, r.event, r.vmstop)

    def counters(self) -> dict[str, int]:
        return {"events_delivered": sum(self.machine.events_delivered.values())}

    def attach_ledger(self, ledger) -> None:
        """Nothing to attach: the whole run is the interpreter (the ledger's base cause), but for
        device accesses, which the platform's bus charges itself."""

    def figures(self, stats: RunStats, elapsed: float) -> None:
        m = self.machine
        S = m.state
        stats.add("instructions", "instructions executed", S.icount)
        stats.add("blocks_compiled", "blocks compiled", m.blocks_compiled)
        stats.add("io_operations", "I/O operations", m.platform.io_total())
        stats.add("exceptions_delivered", "exceptions delivered", sum(m.events_delivered.values()))
        stats.add("wall_time_s", "wall time", round(elapsed, 6), "s")
        if elapsed > 0:
            stats.add("instructions_per_s", "instructions per second", int(S.icount / elapsed))
        stats.add("io_by_port", "I/O operations by port", m.platform.io_by_port())
        stats.add("exceptions_by_vector", "exceptions delivered by vector", dict(sorted(m.events_delivered.items())))

    def stop(self, outcome, max_insns: int | None) -> Stop:
        m = self.machine
        S = m.state
        if outcome.reason == "interrupted":
            return _stop_at(m, "interrupted", "interrupted (Ctrl-C)", S.eip)
        if outcome.reason == "vmstop":
            vs = outcome.vmstop
            assert vs is not None
            if isinstance(vs, GuestExit):
                return Stop("exit", vs.reason, guest_status=vs.status)
            if vs.kind == "triple-fault" and m.last_event is not None:
                event, eip = m.last_event
                return _stop_at(m, vs.kind, f"{vs.reason}, after {event} at eip {eip:#010x} found no handler", eip)
            return _stop_at(m, vs.kind, vs.reason, _stopped_eip(m, vs))
        if outcome.reason == "halt":
            # S.eip is past the HLT; report the HLT itself.
            eip = S.eip - 1 if instruction_bytes(m, (S.eip - 1) & 0xFFFFFFFF)[:1] == b"\xf4" else S.eip
            return _stop_at(m, "halt", _halt_detail(m), eip)
        if outcome.reason == "limit":
            return _stop_at(m, "limit", f"the instruction budget ran out after {S.icount:,} instructions", S.eip)
        return _stop_at(m, outcome.reason, f"the interpreter stopped ({outcome.reason})", S.eip)
