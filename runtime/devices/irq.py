"""Interrupt wiring: the lines devices raise and the controller the CPU asks for a vector.

A device holds an `IrqLine` and drives it (`set(level)`, or `pulse()` for an edge); it never
learns what is at the other end. The platform connects each line to one or more inputs of
interrupt controllers (`IrqSink`: an ISA IRQ goes to the 8259 pair and to the I/O APIC pin the
MP/ACPI tables give for it), as the wires on a PC's board do.

The CPU sees one `InterruptController`: its INTR pin (`interrupt_pending`) and the interrupt
acknowledge cycle (`acknowledge`, which returns the vector and moves the request into
service). With the local APIC enabled that is the APIC (which itself asks the 8259 for an
ExtINT through LINT0); otherwise the master 8259.
"""

from __future__ import annotations

from typing import Protocol


class IrqSink(Protocol):
    """An interrupt controller's inputs: `pin` goes to `level` (True = asserted)."""

    def set_irq(self, pin: int, level: bool) -> None: ...


class InterruptController(Protocol):
    """What the CPU sees of the interrupt system."""

    def interrupt_pending(self) -> bool:
        """INTR is asserted: a maskable interrupt waits for the CPU (its IF decides)."""
        ...

    def acknowledge(self) -> int:
        """The acknowledge cycle: the vector to take (a spurious vector if the request went
        away), the request moving into service."""
        ...


class IrqLine:
    """One interrupt request wire, connected to controller inputs by the platform."""

    __slots__ = ("_ends", "level", "name", "raised")

    def __init__(self, name: str) -> None:
        self.name = name
        self.level = False
        self._ends: list[tuple[IrqSink, int]] = []
        self.raised = 0  # low-to-high transitions, for `ring1 run --stats`

    def connect(self, sink: IrqSink, pin: int) -> None:
        self._ends.append((sink, pin))
        if self.level:
            sink.set_irq(pin, True)

    def set(self, level: bool) -> None:
        level = bool(level)
        if level == self.level:
            return
        self.level = level
        if level:
            self.raised += 1
        for sink, pin in self._ends:
            sink.set_irq(pin, level)

    def raise_(self) -> None:
        self.set(True)

    def lower(self) -> None:
        self.set(False)

    def pulse(self) -> None:
        """An edge: up and down again (an edge-triggered input latches the rising edge)."""
        self.set(True)
        self.set(False)


class NoInterrupts:
    """The controller of a platform without interrupt sources: INTR never rises."""

    def interrupt_pending(self) -> bool:
        return False

    def acknowledge(self) -> int:
        raise RuntimeError("acknowledge without a pending interrupt")
