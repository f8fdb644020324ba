"""Unicorn as the physical CPU.

What this module relies on was measured (../shared/notes/unicorn-as-cpu.md) and each
point is covered by tests/test_physcpu.py:

- Guest memory is the PhysicalMemory buffer mapped with mem_map_ptr: the interpreter and
  unicorn see the same bytes. Unicorn does not notice writes made from Python, so code
  written that way must be dropped from its translation cache (`forget_code`).
- Exceptions and INT n never go through an IDT: they arrive at UC_HOOK_INTR with the vector
  only (EIP at the faulting instruction for faults, at the next one for INT n). Invalid
  opcodes arrive at UC_HOOK_INSN_INVALID.
- unicorn#1883: after a hooked exception the CPU's "exception in flight" latch stays set,
  so the next #GP/#PF/#DE is reported as #DF and the one after that as a triple fault.
  The latch lives in the saved context; `clear_exception_latch` saves the context, writes
  -1 into it and restores it. Its offset is found once per process by diffing two contexts
  taken around a known fault (`_latch_offset`), not hard-coded.
- Ctrl-C: while unicorn runs translated code it holds the main thread in C (`emu_start`),
  where Python's signal handlers never run, so a spinning guest would ignore SIGINT.
  `catch_interrupts` arms a handler and a watcher thread woken by the signal (through
  `signal.set_wakeup_fd`) that calls `emu_stop` on every CPU inside `emu_start`; the CPU's
  `emu_start` then raises KeyboardInterrupt, which every engine turns into the "interrupted"
  stop. The handler itself never raises inside a unicorn hook (an exception escaping a
  ctypes callback is printed, not propagated): there it only stops the CPU.
"""

from __future__ import annotations

import ctypes
import os
import signal
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from unicorn import (
    UC_ARCH_X86,
    UC_HOOK_INSN,
    UC_HOOK_INSN_INVALID,
    UC_HOOK_INTR,
    UC_MODE_16,
    UC_MODE_32,
    UC_PROT_ALL,
    Uc,
    UcError,
)
from unicorn import x86_const as X

from ring1.runtime.memory import PhysicalMemory

GPR_IDS = (
    X.UC_X86_REG_EAX,
    X.UC_X86_REG_ECX,
    X.UC_X86_REG_EDX,
    X.UC_X86_REG_EBX,
    X.UC_X86_REG_ESP,
    X.UC_X86_REG_EBP,
    X.UC_X86_REG_ESI,
    X.UC_X86_REG_EDI,
)
SEG_IDS = (X.UC_X86_REG_ES, X.UC_X86_REG_CS, X.UC_X86_REG_SS, X.UC_X86_REG_DS, X.UC_X86_REG_FS, X.UC_X86_REG_GS)
STATE_IDS = (*GPR_IDS, X.UC_X86_REG_EIP, X.UC_X86_REG_EFLAGS, *SEG_IDS)


@dataclass
class CpuEvent:
    vector: int
    eip: int  # EIP unicorn reports at the event
    cr2: int | None = None


class PhysicalCpu:
    """One unicorn x86 CPU over a PhysicalMemory."""

    def __init__(self, memory: PhysicalMemory, real_mode: bool = False, platform=None) -> None:
        self.memory = memory
        self.platform = platform
        self.uc = Uc(UC_ARCH_X86, UC_MODE_16 if real_mode else UC_MODE_32)
        # Every emu_start (the VMM calls uc.emu_start itself) goes through the Ctrl-C guard.
        self.uc.emu_start = _interruptible_start(self.uc)  # type: ignore[method-assign]
        self.uc.mem_map_ptr(0, memory.size, UC_PROT_ALL, memory.address)
        self.event: CpuEvent | None = None
        self.uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        self.uc.hook_add(UC_HOOK_INSN_INVALID, self._on_invalid)
        if platform is not None:
            # Port I/O goes to the same virtual platform the interpreter uses.
            self.uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, X.UC_X86_INS_IN)
            self.uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, X.UC_X86_INS_OUT)

    def _on_in(self, uc: Uc, port: int, size: int, _user) -> int:
        return self.platform.io_in(port, size)

    def _on_out(self, uc: Uc, port: int, size: int, value: int, _user) -> None:
        self.platform.io_out(port, size, value)

    def _on_interrupt(self, uc: Uc, vector: int, _user) -> None:
        eip = uc.reg_read(X.UC_X86_REG_EIP)
        cr2 = uc.reg_read(X.UC_X86_REG_CR2) if vector == 14 else None
        self.event = CpuEvent(vector, eip, cr2)
        uc.emu_stop()

    def _on_invalid(self, uc: Uc, _user) -> bool:
        self.event = CpuEvent(6, uc.reg_read(X.UC_X86_REG_EIP))
        uc.emu_stop()
        return True

    def read_state(self) -> list[int]:
        return list(self.uc.reg_read_batch(STATE_IDS))

    def run(self, begin: int, until: int, count: int = 0) -> CpuEvent | None:
        """Run from linear `begin` until linear `until`, `count` instructions or an event."""
        self.event = None
        self.uc.emu_start(begin, until, 0, count)
        return self.event

    def forget_code(self, begin: int, end: int) -> None:
        """Drop unicorn's translations of guest code that Python rewrote."""
        self.uc.ctl_remove_cache(begin, end)

    def clear_exception_latch(self) -> None:
        """Work around unicorn#1883: reset the 'exception in flight' latch after a hooked event."""
        offset = _latch_offset()
        ctx = self.uc.context_save()
        ptr = ctypes.cast(ctx.context, ctypes.POINTER(ctypes.c_ubyte * ctx.size)).contents
        struct.pack_into("<i", ptr, offset, -1)
        self.uc.context_restore(ctx)


# ---------------------------------------------------------------- Ctrl-C


class _Interrupts:
    """Process-wide: whether Ctrl-C was pressed, and the CPUs now inside emu_start."""

    def __init__(self) -> None:
        self.requested = False
        self.running: list[Uc] = []  # a stack: a hook may (in principle) start another CPU
        self.armed = False


INTERRUPTS = _Interrupts()
RESTOP_SECONDS = 0.02  # how often the watcher repeats emu_stop until the CPU has left emu_start


def _interruptible_start(uc: Uc) -> Callable[..., None]:
    plain_start = uc.emu_start

    def emu_start(begin: int, until: int, timeout: int = 0, count: int = 0) -> None:
        state = INTERRUPTS
        # Listed before the check: a watcher that sets `requested` after the check finds
        # this CPU in `running` and keeps stopping it until it is out of emu_start.
        state.running.append(uc)
        try:
            if state.requested:  # pressed between two runs: do not start another
                raise KeyboardInterrupt
            plain_start(begin, until, timeout, count)
        finally:
            state.running.pop()
        if state.requested:
            raise KeyboardInterrupt

    return emu_start


def _stop_running_cpus() -> None:
    for uc in list(INTERRUPTS.running):
        uc.emu_stop()


def _on_sigint(_signum: int, _frame: object) -> None:
    INTERRUPTS.requested = True
    if INTERRUPTS.running:
        # We are inside a unicorn hook (Python code under emu_start): stop the CPU; its
        # emu_start raises KeyboardInterrupt once it returns.
        _stop_running_cpus()
        return
    raise KeyboardInterrupt


def _watch(read_fd: int) -> None:
    """Woken by the C-level signal handler's write to the wakeup fd, even while the main
    thread is inside emu_start. emu_stop is repeated until the CPU has left emu_start:
    a stop that lands just before unicorn starts running is reset by uc_emu_start."""
    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            return
        if not data:
            return
        if signal.SIGINT not in data:
            continue
        INTERRUPTS.requested = True
        while INTERRUPTS.running:
            _stop_running_cpus()
            time.sleep(RESTOP_SECONDS)


def catch_interrupts() -> None:
    """Make Ctrl-C stop a run promptly, as a KeyboardInterrupt out of the engine, whether the
    guest runs in Python (the interpreter) or in unicorn. Main thread only; idempotent."""
    if INTERRUPTS.armed:
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)  # set_wakeup_fd requires it
    signal.signal(signal.SIGINT, _on_sigint)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    threading.Thread(target=_watch, args=(read_fd,), name="ring1-ctrl-c", daemon=True).start()
    INTERRUPTS.armed = True


def interrupt_requested() -> bool:
    return INTERRUPTS.requested


@cache
def _latch_offset() -> int:
    """Find the latch in unicorn's saved context: the int that goes from -1 to 13 across a #GP."""
    mem = PhysicalMemory(0x10000)
    cpu = PhysicalCpu(mem)
    uc = cpu.uc
    gdt = (
        bytes(8)
        + struct.pack("<HHBBBB", 0xFFFF, 0, 0, 0x9A, 0xCF, 0)
        + struct.pack("<HHBBBB", 0xFFFF, 0, 0, 0x92, 0xCF, 0)
    )
    mem.write(0x100, gdt)
    uc.reg_write(X.UC_X86_REG_GDTR, (0, 0x100, len(gdt) - 1, 0))
    uc.reg_write(X.UC_X86_REG_CR0, 0x11)
    uc.reg_write(X.UC_X86_REG_CS, 0x08)
    uc.reg_write(X.UC_X86_REG_SS, 0x10)
    uc.reg_write(X.UC_X86_REG_DS, 0x10)
    uc.reg_write(X.UC_X86_REG_ESP, 0x8000)
    mem.write(0x1000, b"\x8e\xd8")  # mov ds, ax with ax = 0x7 (an LDT selector, no LDT): #GP
    uc.reg_write(X.UC_X86_REG_EAX, 0x7)
    before = _raw(uc.context_save())
    cpu.run(0x1000, 0x1002)
    if cpu.event is None or cpu.event.vector != 13:
        raise RuntimeError("unicorn did not raise #GP while calibrating the exception latch")
    after = _raw(uc.context_save())
    for off in range(0, min(len(before), len(after)) - 3, 4):
        if struct.unpack_from("<i", before, off)[0] == -1 and struct.unpack_from("<i", after, off)[0] == 13:
            return off
    raise RuntimeError("could not find unicorn's exception latch in its context (unicorn#1883 workaround)")


def _raw(ctx) -> bytes:
    return ctypes.string_at(ctx.context, ctx.size)


__all__ = ["STATE_IDS", "CpuEvent", "PhysicalCpu", "UcError", "catch_interrupts", "interrupt_requested"]
