"""Where a run's wall time goes, by cause: `ring1 run --stats`, `ring1 bench boot`.

A run alternates between the hardware (unicorn running translated code, the guest's own code
directly, or the whole guest under `bare`) and Python (the VMM's handlers, devices, the
interpreter), and handlers nest: a callout's OUT reaches a device, a continuation translates.
The ledger keeps a stack of causes and charges every interval of wall time to the cause on top
of it when the interval ends (exclusive time, as a profiler's "self" column), so the causes add
up to the run's wall time and nothing is counted twice. It also counts how often each cause was
entered: for a handler called from inside the hardware, that is its number of exits to Python.

The instrumented places call `enter(cause)` and `leave()` in a try/finally; `NO_LEDGER` is the
do-nothing ledger every component starts with, so uninstrumented runs pay one method call per
place and nothing else. Causes are short phrases ("translated code", "callout MOV_CR_R32",
"I/O COM1": a form's or a bus region's own name).
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Callable

# The hardware's own causes (the engine that runs it names which one applies).
TRANSLATED_CODE = "translated code"
DIRECT_EXECUTION = "direct execution"
GUEST_CODE = "guest code on unicorn"  # `bare`: all of the guest


class NoLedger:
    """Accounts nothing (the default)."""

    enabled = False

    def enter(self, cause: str) -> None:
        pass

    def leave(self) -> None:
        pass

    def relabel(self, cause: str) -> None:
        pass

    def cancel(self) -> None:
        pass


NO_LEDGER = NoLedger()


class TimeLedger(NoLedger):
    enabled = True

    def __init__(self, base: str = "ring1, other", clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._stack = [base]
        self._own = [0.0]  # per entry of the stack: the time charged to it so far
        self._mark = clock()
        self.seconds: dict[str, float] = {}
        self.entries: Counter[str] = Counter()

    def _charge(self) -> None:
        now = self._clock()
        top = self._stack[-1]
        self.seconds[top] = self.seconds.get(top, 0.0) + (now - self._mark)
        self._own[-1] += now - self._mark
        self._mark = now

    def enter(self, cause: str) -> None:
        self._charge()
        self._stack.append(cause)
        self._own.append(0.0)
        self.entries[cause] += 1

    def leave(self) -> None:
        self._charge()
        if len(self._stack) > 1:  # (the base cause stays)
            self._stack.pop()
            self._own.pop()

    def relabel(self, cause: str) -> None:
        """The handler on top found out what it is handling (a fault that was a hidden page
        fault): its entry, the time it spent so far (not what it called spent) and what it
        spends from here on go to `cause`."""
        if len(self._stack) == 1:
            return
        self._charge()
        old, own = self._stack[-1], self._own[-1]
        self.entries[old] -= 1
        self.seconds[old] -= own
        self._stack[-1] = cause
        self.entries[cause] += 1
        self.seconds[cause] = self.seconds.get(cause, 0.0) + own

    def cancel(self) -> None:
        """The handler on top declined after all (a fast path whose case it was not): it leaves,
        and its entry is taken back and its time given to the cause below it."""
        if len(self._stack) == 1:
            return
        self._charge()
        cause, own = self._stack.pop(), self._own.pop()
        self.entries[cause] -= 1
        self.seconds[cause] -= own
        self.seconds[self._stack[-1]] = self.seconds.get(self._stack[-1], 0.0) + own
        self._own[-1] += own

    @property
    def depth(self) -> int:
        return len(self._stack)

    def snapshot(self) -> dict[str, dict]:
        """The totals so far (the interval running now charged to its cause), largest first."""
        self._charge()
        order = sorted(self.seconds, key=lambda c: -self.seconds[c])
        return {
            "seconds": {c: round(self.seconds[c], 6) for c in order if self.seconds[c] > 0 or self.entries[c]},
            "entries": {c: self.entries[c] for c in order if self.entries[c]},
        }


def split_between(before: dict[str, dict], after: dict[str, dict]) -> dict[str, dict]:
    """What happened between two snapshots of one ledger (a phase of a run)."""
    seconds = {c: round(after["seconds"][c] - before["seconds"].get(c, 0.0), 6) for c in after["seconds"]}
    entries = {c: after["entries"][c] - before["entries"].get(c, 0) for c in after["entries"]}
    order = sorted(seconds, key=lambda c: -seconds[c])
    return {
        "seconds": {c: seconds[c] for c in order if seconds[c] > 0},
        "entries": {c: entries[c] for c in order if entries.get(c)},
    }


def timed(cause: str) -> Callable:
    """A method whose time goes to `cause` in its object's `ledger` (what it calls that enters a
    cause of its own is charged there)."""

    def wrap(method: Callable) -> Callable:
        @functools.wraps(method)
        def run(self, *args):
            ledger = self.ledger
            ledger.enter(cause)
            try:
                return method(self, *args)
            finally:
                ledger.leave()

        return run

    return wrap
