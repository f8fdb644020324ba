"""Virtual time: the one clock every device of the platform reads and sets its timers on.

Time is virtual nanoseconds since power-on. By default (`source="guest"`) it advances only
with the guest's progress: each executed guest instruction is `ns_per_insn` nanoseconds
(NS_PER_INSN: a 100 MIPS virtual CPU), so the same image and input give the same interrupt
points, run after run. An engine reports progress with `advance(instructions)` after each
stretch it ran, and asks `insns_until_deadline()` how far it may run before a timer is due,
so a timer fires at the instruction boundary its deadline falls on (within one stretch).
A device read in the middle of a stretch (an IN, an MMIO load) sees the time of its own
instruction: the engine tells the clock how far it got (`unaccounted`).
`HLT` with interrupts enabled jumps time to the next deadline (`skip_to_deadline`).

With `source="host"` (`ring1 run --clock host`) virtual time follows the host's monotonic
clock instead, for interactive use; the engines still bound their stretches by
`insns_until_deadline()`, which then converts the time left at the same nominal rate, and HLT
sleeps on the host until the deadline. A stretch is then at least HOST_MIN_SLICE instructions,
so timers fire a little late rather than starve the guest when ring1 falls behind the host.

Timers: `clock.timer(callback)` makes one; `arm(deadline_ns)` sets (or moves) it, `cancel()`
stops it. A due timer's callback gets the deadline it was armed for (the clock itself may be
a little past it: at the end of the stretch that reached it), so a periodic device re-arms
from its previous deadline and never drifts, and computes its state at the deadline.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable

NS_PER_INSN = 10  # a 100 MIPS virtual CPU
TSC_HZ = 1_000_000_000  # the TSC counts virtual nanoseconds (a 1 GHz time-stamp counter)
SOURCES = ("guest", "host")
HOST_MIN_SLICE = 10_000  # --clock host: the guest runs at least this many instructions per stretch


class Timer:
    """One deadline of one device. Armed at most once at a time."""

    __slots__ = ("_ticket", "callback", "clock", "deadline", "name")

    def __init__(self, clock: VirtualClock, callback: Callable[[int], None], name: str) -> None:
        self.clock = clock
        self.callback = callback  # called with the deadline it was armed for
        self.deadline: int | None = None
        self._ticket = 0
        self.name = name

    def arm(self, deadline_ns: int) -> None:
        """Fire at `deadline_ns` (virtual ns); a deadline already past fires at the next check."""
        self.clock._arm(self, deadline_ns)

    def arm_in(self, delay_ns: int) -> None:
        self.arm(self.clock.now() + max(0, delay_ns))

    def cancel(self) -> None:
        self.deadline = None
        self._ticket = 0  # entries left in the heap are stale and skipped

    @property
    def armed(self) -> bool:
        return self.deadline is not None


class VirtualClock:
    def __init__(self, source: str = "guest", ns_per_insn: int = NS_PER_INSN) -> None:
        if source not in SOURCES:
            raise ValueError(f"unknown clock source {source!r} (sources: {', '.join(SOURCES)})")
        if ns_per_insn <= 0:
            raise ValueError("ns_per_insn must be positive")
        self.source = source
        self.ns_per_insn = ns_per_insn
        self._guest_ns = 0  # guest source: time so far
        self._host_origin = time.monotonic_ns()
        # The engine running now: how many instructions it has executed that it has not yet
        # given to `advance` (a device read in the middle of a stretch, an IN from a polling
        # loop, sees the time of its own instruction). None between runs.
        self.unaccounted: Callable[[], int] | None = None
        # The engine running now, told when a device arms a timer due before the deadline its
        # stretch was bounded by (an OUT that programs the PIT, a store to the APIC's timer).
        self.deadline_moved: Callable[[], None] | None = None
        self._heap: list[tuple[int, int, Timer]] = []
        self._tickets = itertools.count(1)
        self.timers_fired = 0

    # ------------------------------------------------------------------ time

    def now(self) -> int:
        if self.source == "guest":
            if self.unaccounted is not None:
                return self._guest_ns + self.unaccounted() * self.ns_per_insn
            return self._guest_ns
        return time.monotonic_ns() - self._host_origin

    def advance(self, instructions: int) -> None:
        """The guest executed `instructions` more instructions; due timers fire."""
        if self.source == "guest":
            self._guest_ns += instructions * self.ns_per_insn
        self.run_due()

    def tsc(self) -> int:
        """The time-stamp counter: virtual nanoseconds at TSC_HZ."""
        return self.now() * TSC_HZ // 1_000_000_000

    # ------------------------------------------------------------------ timers

    def timer(self, callback: Callable[[int], None], name: str = "timer") -> Timer:
        return Timer(self, callback, name)

    def _arm(self, timer: Timer, deadline_ns: int) -> None:
        ticket = next(self._tickets)
        earliest = self.next_deadline()
        timer.deadline = deadline_ns
        timer._ticket = ticket
        heapq.heappush(self._heap, (deadline_ns, ticket, timer))
        if self.deadline_moved is not None and (earliest is None or deadline_ns < earliest):
            self.deadline_moved()  # a stretch bounded by the old deadline must end sooner

    def next_deadline(self) -> int | None:
        heap = self._heap
        while heap and heap[0][2]._ticket != heap[0][1]:
            heapq.heappop(heap)  # cancelled or re-armed since
        return heap[0][0] if heap else None

    def run_due(self) -> int:
        """Fire every timer whose deadline has come, in deadline order; returns how many fired."""
        fired = 0
        now = self.now()
        heap = self._heap
        while True:
            deadline = self.next_deadline()
            if deadline is None or deadline > now:
                break
            _, _, timer = heapq.heappop(heap)
            timer.deadline = None
            timer._ticket = 0
            fired += 1
            timer.callback(deadline)
        self.timers_fired += fired
        return fired

    def insns_until_deadline(self) -> int | None:
        """How many instructions the guest may run before the next timer is due (at least 1),
        or None when no timer is armed."""
        deadline = self.next_deadline()
        if deadline is None:
            return None
        left = deadline - self.now()
        if self.source == "host":
            # Host time runs on while ring1 works: a device whose deadlines come faster than
            # ring1 can serve them would otherwise leave the guest one instruction per stretch.
            return max(HOST_MIN_SLICE, -(-left // self.ns_per_insn))
        return max(1, -(-left // self.ns_per_insn))

    def skip_to_deadline(self) -> bool:
        """HLT: let time pass until the next timer is due and fire it. False when no timer is
        armed (nothing on the clock can ever wake the CPU)."""
        deadline = self.next_deadline()
        if deadline is None:
            return False
        if self.source == "guest":
            self._guest_ns = max(self._guest_ns, deadline)
        else:
            wait = deadline - self.now()
            if wait > 0:
                time.sleep(wait / 1e9)
        self.run_due()
        return True
