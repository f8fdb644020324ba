"""Counting the instructions unicorn executes: the virtual clock's measure of guest progress.

`emu_start(count=N)` counts in C too, but a run that ends early (an I/O exit, a fault, a
callout) does not say how many instructions ran, and a run cut at N may end inside a
sequence that must not be interrupted. So ring1 installs its own UC_HOOK_CODE callback,
compiled from counter.c by the machine's C compiler once and cached, which counts every
instruction, remembers the addresses of the last two, and stops the CPU at a limit (and, for
`bare`, before RDTSC, RDMSR and WRMSR, which unicorn cannot hook, so that Python emulates them
from the virtual clock and the platform's MSRs). Python
reads and writes its counters in shared memory: no Python call per instruction (about the
cost of `count=N`, 100+ M instructions/s against several hundred M without a hook).

The callback runs before its instruction. When the CPU stops at the address of the last call
(a fault, the limit, a stop requested by another hook before the next instruction), that
instruction has not run: `settle(linear_pc)` takes its call back, so `executed` is exact
(tests/test_physcpu.py pins each way a run can end). A code hook changes how unicorn loses
lazy flags at a fault: physcpu.PhysicalCpu.counting says so to its flag repairs.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from unicorn import UC_HOOK_CODE, Uc
from unicorn.unicorn_py3.unicorn import uclib
from unicorn.x86_const import (
    UC_X86_REG_CR0,
    UC_X86_REG_CR3,
    UC_X86_REG_CR4,
    UC_X86_REG_EAX,
    UC_X86_REG_EDX,
    UC_X86_REG_EFLAGS,
    UC_X86_REG_EIP,
)

from ring1.runtime.devices.clock import TSC_HZ

if TYPE_CHECKING:
    from ring1.runtime.devices.clock import VirtualClock

SOURCE = Path(__file__).with_name("counter.c")
NO_LIMIT = (1 << 63) - 1


class CounterUnavailable(RuntimeError):
    """The counting hook could not be built (no C compiler)."""


RANGES = 8  # RING1_RANGES: code hooks that ride on the counter's
_CODE_HOOK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p)
CodeHook = Callable[[Uc, int, int, object], None]  # unicorn's code hook signature


class _Counts(ctypes.Structure):
    _fields_ = [
        ("calls", ctypes.c_uint64),
        ("limit", ctypes.c_uint64),
        ("last", ctypes.c_uint64),
        ("prev", ctypes.c_uint64),
        ("stop", ctypes.c_void_p),
        ("reg_read", ctypes.c_void_p),
        ("eflags_id", ctypes.c_int32),
        ("watch_if", ctypes.c_int32),
        ("saw_if", ctypes.c_int32),
        ("paging", ctypes.c_int32),
        ("pse", ctypes.c_int32),
        ("cr3", ctypes.c_uint32),
        ("ram", ctypes.c_void_p),
        ("ram_size", ctypes.c_uint64),
        ("saw_unhookable", ctypes.c_int32),
        ("cr_ids", ctypes.c_int32 * 3),
        ("reread_paging", ctypes.c_int32),
        ("reg_write", ctypes.c_void_p),
        ("tsc_base", ctypes.c_uint64),
        ("ns_per_insn", ctypes.c_uint64),
        ("emulate_rdtsc", ctypes.c_int32),
        ("rdtsc_ids", ctypes.c_int32 * 3),
        ("tc", ctypes.c_void_p),
        ("tc_linear", ctypes.c_uint64),
        ("tc_size", ctypes.c_uint64),
        ("nranges", ctypes.c_int32),
        ("range_lo", ctypes.c_uint64 * RANGES),
        ("range_hi", ctypes.c_uint64 * RANGES),
        ("range_fn", ctypes.c_void_p),
    ]


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "ring1")


@cache
def _library() -> ctypes.CDLL:
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    target = _cache_dir() / f"counter-{digest}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        compiler = os.environ.get("CC", "gcc")
        with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so", delete=False) as tmp:
            partial = Path(tmp.name)
        try:
            r = subprocess.run(
                [compiler, "-O2", "-shared", "-fPIC", "-o", str(partial), str(SOURCE)], capture_output=True, text=True
            )
        except OSError as err:
            partial.unlink(missing_ok=True)
            raise CounterUnavailable(f"cannot build the instruction counter: {compiler}: {err.strerror}") from None
        if r.returncode != 0:
            partial.unlink(missing_ok=True)
            raise CounterUnavailable(f"cannot build the instruction counter: {r.stderr.strip()}")
        os.replace(partial, target)  # atomic: parallel test workers never load half a file
    return ctypes.CDLL(str(target))


class InstructionCounter:
    """Counts what one unicorn CPU executes, from the moment it is installed."""

    def __init__(self, uc: Uc) -> None:
        lib = _library()
        self.uc = uc
        self.counts = _Counts(
            0,
            NO_LIMIT,
            0,
            0,
            ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p),
            ctypes.cast(uclib.uc_reg_read, ctypes.c_void_p),
            UC_X86_REG_EFLAGS,
            0,
            0,
            0,
            0,
            0,
            None,
            0,
            0,
            (ctypes.c_int32 * 3)(UC_X86_REG_CR0, UC_X86_REG_CR3, UC_X86_REG_CR4),
            0,
            ctypes.cast(uclib.uc_reg_write, ctypes.c_void_p),
            0,
            0,
            0,
            (ctypes.c_int32 * 3)(UC_X86_REG_EAX, UC_X86_REG_EDX, UC_X86_REG_EIP),
        )
        self._handle = ctypes.c_size_t()
        self._callback = ctypes.cast(lib.ring1_count, ctypes.c_void_p)
        status = uclib.uc_hook_add(
            uc._uch,
            ctypes.byref(self._handle),
            UC_HOOK_CODE,
            self._callback,
            ctypes.cast(ctypes.pointer(self.counts), ctypes.c_void_p),
            ctypes.c_uint64(1),
            ctypes.c_uint64(0),  # begin > end: every address
        )
        if status != 0:
            raise CounterUnavailable(f"unicorn refused the counting hook (error {status})")
        self._calls_at_start = 0
        self._given_to_clock = 0  # instructions already given to the clock (`account`)
        self._range_hooks: list[CodeHook] = []
        self._range_trampoline = _CODE_HOOK(self._on_range)  # (kept alive while C holds it)
        self.counts.range_fn = ctypes.cast(self._range_trampoline, ctypes.c_void_p)
        self.hook_error: BaseException | None = None

    def hook_ranges(self, hooks: list[tuple[int, int, CodeHook]]) -> None:
        """Code hooks, each over [begin, end] (inclusive), called by the counter's own hook as
        unicorn would call them (after the instruction is counted, only if it runs now), in
        place of unicorn code hooks: each of those costs every instruction unicorn runs. An
        exception out of one stops the CPU and is raised by `raise_hook_error` (as unicorn's
        binding does with its hooks). Replaces the previous set."""
        if len(hooks) > RANGES:
            raise ValueError(f"at most {RANGES} ranges")
        c = self.counts
        c.nranges = 0
        for i, (begin, end, _fn) in enumerate(hooks):
            c.range_lo[i], c.range_hi[i] = begin, end
        self._range_hooks = [fn for _b, _e, fn in hooks]
        c.nranges = len(hooks)

    def _on_range(self, _handle: int, address: int, size: int, index: int | None) -> None:
        try:
            self._range_hooks[index or 0](self.uc, address, size, None)
        except BaseException as err:  # (out of a ctypes callback an exception would be lost)
            if self.hook_error is None:
                self.hook_error = err
            self.uc.emu_stop()

    def raise_hook_error(self) -> None:
        """After emu_start: what a range hook raised, if anything."""
        err, self.hook_error = self.hook_error, None
        if err is not None:
            raise err

    @property
    def executed(self) -> int:
        return self.counts.calls

    def start(self, limit: int | None = None, watch_if: bool = False, keep_limit: bool = False) -> None:
        """Before an emu_start: stop once `limit` more instructions have run (None: no limit),
        and with `watch_if` before the first instruction that would run with IF set (an
        interrupt is waiting for the guest to enable interrupts: a C register read per
        instruction, only then). `keep_limit`: the run restarts an instruction (after a
        hidden fault) and the limit set before still holds."""
        c = self.counts
        self._calls_at_start = c.calls
        if not keep_limit:
            c.limit = NO_LIMIT if limit is None else c.calls + max(0, limit)
        c.watch_if = int(watch_if)
        c.saw_if = 0
        c.saw_unhookable = 0

    def settle(self, linear_pc: int) -> None:
        """After an emu_start, with the CPU's linear PC: forget the last call if its instruction
        did not run (the CPU stopped before it)."""
        c = self.counts
        if c.calls > self._calls_at_start and c.last == linear_pc:
            c.calls -= 1
        self._calls_at_start = c.calls
        c.watch_if = 0

    def uncount(self, linear_pc: int) -> None:
        """The instruction at `linear_pc` was counted, faulted, and runs again from the fault's
        hook without leaving emu_start (a hidden page fault handled in place): it is counted
        once, when it completes."""
        c = self.counts
        if c.calls > self._calls_at_start and c.last == linear_pc:
            c.calls -= 1
            c.last = c.prev

    # ------------------------------------------------------------ the clock it drives

    def bind(self, clock: VirtualClock, tsc_offset: int | None = None) -> None:
        """While the CPU runs: the clock asks how far it got (a device read in the middle of a
        run sees the time of its own instruction), and a timer armed earlier than the run's
        bound (an OUT that programs the PIT) shortens the run. With `tsc_offset` (the virtual
        CPU's, from WRMSR to the TSC) RDTSC is answered by the hook itself on a guest clock:
        the value the interpreter would read (a Python exit per RDTSC made a guest's TSC
        busy-wait cost one exit per iteration)."""
        c = self.counts
        c.emulate_rdtsc = int(tsc_offset is not None and clock.source == "guest" and TSC_HZ == 1_000_000_000)
        if c.emulate_rdtsc:
            assert tsc_offset is not None and clock.unaccounted is None
            c.ns_per_insn = clock.ns_per_insn
            c.tsc_base = (clock.now() - self._given_to_clock * clock.ns_per_insn + tsc_offset) & ((1 << 64) - 1)
        clock.unaccounted = self._unaccounted
        clock.deadline_moved = lambda: self._shorten_to(clock)

    def account(self, clock: VirtualClock, linear_pc: int) -> int:
        """After the run (the CPU's linear PC now): its instructions advance the clock. Returns
        how many it gave the clock (run since the last account)."""
        clock.unaccounted = None
        clock.deadline_moved = None
        self.settle(linear_pc)
        ran = self.counts.calls - self._given_to_clock
        clock.advance(ran)
        self._given_to_clock = self.counts.calls
        return ran

    def _unaccounted(self) -> int:
        # From a hook: the current instruction's call is counted but the instruction has not run.
        return max(0, self.counts.calls - 1 - self._given_to_clock)

    def _shorten_to(self, clock: VirtualClock) -> None:
        left = clock.insns_until_deadline()
        if left is not None:
            c = self.counts
            c.limit = min(c.limit, c.calls + left)

    def stop_before_unhookable(self, ram_address: int, ram_size: int) -> None:
        """Also stop before RDTSC, RDMSR and WRMSR (unicorn has no hook for them), looking at
        the instruction bytes in guest RAM (a buffer at `ram_address`); `set_paging` says how
        linear addresses reach it."""
        self.counts.ram = ram_address
        self.counts.ram_size = ram_size

    def answer_rdtsc_in(self, host_address: int, linear: int, size: int) -> None:
        """Translated code: RDTSC at a linear address in [linear, linear + size), whose bytes are
        in host memory at `host_address` (the TC), is answered on the virtual clock by the hook
        (with `bind`'s tsc_offset), without an exit."""
        c = self.counts
        c.tc, c.tc_linear, c.tc_size = host_address, linear, size

    def set_paging(self, cr0: int, cr3: int, cr4: int) -> None:
        c = self.counts
        c.paging, c.pse, c.cr3 = int(bool(cr0 & 0x80000000)), int(bool(cr4 & 0x10)), cr3 & 0xFFFFFFFF

    @property
    def stopped_before_unhookable(self) -> bool:
        return bool(self.counts.saw_unhookable)

    @property
    def hit_limit(self) -> bool:
        """The last run ended at the limit or at IF set (`settle` done)."""
        return self.counts.calls >= self.counts.limit or bool(self.counts.saw_if)

    @property
    def previous_address(self) -> int:
        """After a stop at the limit: the linear address of the last instruction that ran."""
        return self.counts.prev

    def remove(self) -> None:
        uclib.uc_hook_del(self.uc._uch, self._handle)
