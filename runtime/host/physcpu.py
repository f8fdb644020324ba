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
- Lazy flags lost at a fault (unicorn 2.1.4; upstream unicorn-engine/unicorn#2373 describes
  half of it): QEMU keeps the arithmetic flags as an operation and its operands (cc_op,
  cc_dst, cc_src) and computes them when something reads them. For SETcc to memory and
  RCL/RCR on memory its translator computes them into cc_src *before* the memory access;
  when that access faults, the CPU is rolled back to the instruction with cc_op as it was
  but cc_src already overwritten, so EFLAGS (read in the hook, and after a restart) is
  garbage. The flags the instruction saw are then in cc_src. Whether the translator did
  compute them depends, for some conditions, on where unicorn's translation block began,
  which nothing at the fault tells (`lazy_flags_verdict`). `restore_lost_flags` puts them
  back when the verdict is certain; cc_op and cc_src are read from the saved context at
  offsets found by calibration (`_lazy_flags_offsets`), like the latch.
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
    UC_HOOK_CODE,
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

from ring1.runtime.cpu.memory import PhysicalMemory
from ring1.runtime.host.counter import InstructionCounter
from ring1.runtime.ledger import GUEST_CODE, NO_LEDGER, NoLedger

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

    def __init__(
        self,
        memory: PhysicalMemory,
        real_mode: bool = False,
        platform=None,
        count_instructions: bool = False,
        open_bus: bool = False,
    ) -> None:
        self.memory = memory
        self.platform = platform
        self.uc = Uc(UC_ARCH_X86, UC_MODE_16 if real_mode else UC_MODE_32)
        # Every emu_start (the VMM calls uc.emu_start itself) goes through the Ctrl-C guard.
        self.uc.emu_start = _interruptible_start(self.uc)  # type: ignore[method-assign]
        self.uc.mem_map_ptr(0, memory.size, UC_PROT_ALL, memory.address)
        self.event: CpuEvent | None = None
        # One context kept for reading registers out of (save_context): unicorn's context_save
        # allocates a new one each time, four times the cost of saving into this one.
        self._context = self.uc.context_save()
        self._context_bytes = ctypes.cast(
            self._context.context, ctypes.POINTER(ctypes.c_ubyte * self._context.size)
        ).contents
        # Whether the last run counted instructions: unicorn counts with a code hook over
        # everything, which changes how it loses flags at a fault (lazy_flags_verdict).
        self.counting = False
        # With a virtual clock, every instruction is counted (host/counter.py), always: the
        # count is guest progress, and a code hook over everything loses flags at faults.
        self.counter = InstructionCounter(self.uc) if count_instructions else None
        self.counting = self.counter is not None
        # Called after every device access from guest code running on unicorn (an OUT that
        # unmasked a waiting interrupt must not wait for the next timer to be taken).
        self.after_device_access: Callable[[], None] | None = None
        # Whether the guest may make an I/O access (port, size) now, for engines that run code
        # whose checks unicorn skips (the VMM's direct execution); needs the counter.
        self.io_allowed: Callable[[int, int], bool] | None = None
        # Where the time spent inside emu_start goes (hooks into Python enter causes of their
        # own): the engine names what the hardware runs, the guest's code or the TC.
        self.ledger: NoLedger = NO_LEDGER
        self.running_as = GUEST_CODE
        self._rewind_to: int | None = None
        # Asked first about every exception (vector, EIP, CR2 of a #PF): True when it dealt with
        # it in place, the CPU's exception latch cleared (clear_exception_latch), and the CPU
        # goes on at EIP without leaving emu_start (the VMM's hidden page faults, for which a
        # stop and a restart cost more than the fill).
        self.handle_in_place: Callable[[int, int, int | None], bool] | None = None
        self._stop_hooks: dict[int, int] = {}  # address -> the code hook that stops there (stop_before)
        self.uc.emu_start = self._rewinding(self.uc.emu_start)  # type: ignore[method-assign]
        self.uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        self.uc.hook_add(UC_HOOK_INSN_INVALID, self._on_invalid)
        if platform is not None:
            # Device memory: each access is one call into the platform's MMIO (one exit).
            ranges = platform.mmio_ranges()
            for base, length in ranges:
                start, end = base & ~0xFFF, (base + length + 0xFFF) & ~0xFFF
                self.uc.mmio_map(start, end - start, self._on_mmio_read, start, self._on_mmio_write, start)
            if open_bus:
                self._map_open_bus([(0, memory.size), *((b & ~0xFFF, (b + n + 0xFFF) & ~0xFFF) for b, n in ranges)])
            # Port I/O goes to the same virtual platform the interpreter uses.
            self.uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, X.UC_X86_INS_IN)
            self.uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, X.UC_X86_INS_OUT)

    def _on_in(self, uc: Uc, port: int, size: int, _user) -> int:
        if self.io_allowed is not None and not self.io_allowed(port, size):
            self._refuse_io(uc)
            return uc.reg_read(X.UC_X86_REG_EAX) & ((1 << (8 * size)) - 1)  # EAX stays as it was
        value = self.platform.io_in(port, size)
        if self.after_device_access is not None:
            self.after_device_access()
        return value

    def _on_out(self, uc: Uc, port: int, size: int, value: int, _user) -> None:
        if self.io_allowed is not None and not self.io_allowed(port, size):
            self._refuse_io(uc)
            return
        self.platform.io_out(port, size, value)
        if self.after_device_access is not None:
            self.after_device_access()

    def _refuse_io(self, uc: Uc) -> None:
        """Unicorn runs IN and OUT at any privilege (it checks neither IOPL nor the TSS's bitmap):
        an access the guest may not make goes nowhere, the CPU stops before the next instruction
        (the counter), and EIP goes back to the IN or OUT, which then raises #GP(0) as reported
        (the interpreter re-runs it with the guest's checks)."""
        eip = uc.reg_read(X.UC_X86_REG_EIP)  # (in an I/O hook: the instruction's own address)
        self.event = CpuEvent(13, eip)
        self._rewind_to = eip
        self.counter.counts.limit = self.counter.counts.calls

    def _map_open_bus(self, taken: list[tuple[int, int]]) -> None:
        """The rest of the 4 GB physical space (`taken`: [start, end) of RAM and device pages)
        reads as all ones and ignores writes, as a PC's bus does where nothing answers (the
        platform's unclaimed MMIO: counted in --stats), instead of stopping unicorn. Linux reads
        there with paging off: its early C code's stack-protector canary (%fs:__stack_chk_guard
        at its virtual address) before paging is on."""
        at = 0
        for start, end in [*sorted(taken), (1 << 32, 1 << 32)]:
            if start > at:
                self.uc.mmio_map(at, start - at, self._on_mmio_read, at, self._on_mmio_write, at)
            at = max(at, end)

    def _on_mmio_read(self, uc: Uc, offset: int, size: int, base: int) -> int:
        value = self.platform.mmio_read(base + offset, size)
        if self.after_device_access is not None:
            self.after_device_access()
        return value

    def _on_mmio_write(self, uc: Uc, offset: int, size: int, value: int, base: int) -> None:
        self.platform.mmio_write(base + offset, size, value)
        if self.after_device_access is not None:
            self.after_device_access()

    def _rewinding(self, start: Callable[..., None]) -> Callable[..., None]:
        """emu_start, then EIP back to an I/O instruction refused in a hook (`_refuse_io`)."""

        def emu_start(begin: int, until: int, timeout: int = 0, count: int = 0) -> None:
            ledger = self.ledger
            ledger.enter(self.running_as)
            try:
                start(begin, until, timeout, count)
            finally:
                ledger.leave()
                if self.counter is not None:
                    self.counter.raise_hook_error()  # (a hook that rides on the counter's raised)
                if self._rewind_to is not None:
                    self.uc.reg_write(X.UC_X86_REG_EIP, self._rewind_to)
                    self._rewind_to = None

        return emu_start

    def answer_cpuid(self, leaf: Callable[[int, int, int], int], counted: Callable[[], None] | None = None) -> None:
        """CPUID run by unicorn answers with `leaf(leaf, subleaf, register index)` (ring1's CPU
        model: Machine.b_cpuid_leaf), as the interpreter's CPUID does, not with unicorn's own;
        `counted` is called for each (a statistic)."""

        def on_cpuid(uc: Uc, _user) -> int:
            self.ledger.enter("CPUID")
            try:
                return answer(uc)
            finally:
                self.ledger.leave()

        def answer(uc: Uc) -> int:
            eax, ecx = uc.reg_read(X.UC_X86_REG_EAX), uc.reg_read(X.UC_X86_REG_ECX)
            for which, rid in enumerate((X.UC_X86_REG_EAX, X.UC_X86_REG_EBX, X.UC_X86_REG_ECX, X.UC_X86_REG_EDX)):
                uc.reg_write(rid, leaf(eax, ecx, which))
            if counted is not None:
                counted()
            return 1  # the instruction's own effect is skipped

        self.uc.hook_add(UC_HOOK_INSN, on_cpuid, None, 1, 0, X.UC_X86_INS_CPUID)

    def _on_interrupt(self, uc: Uc, vector: int, _user) -> None:
        eip = uc.reg_read(X.UC_X86_REG_EIP)
        cr2 = uc.reg_read(X.UC_X86_REG_CR2) if vector == 14 else None
        if self.handle_in_place is not None and self.handle_in_place(vector, eip, cr2):
            return
        self.event = CpuEvent(vector, eip, cr2)
        uc.emu_stop()

    def _on_invalid(self, uc: Uc, _user) -> bool:
        self.event = CpuEvent(6, uc.reg_read(X.UC_X86_REG_EIP))
        uc.emu_stop()
        return True

    def read_state(self) -> list[int]:
        return list(self.uc.reg_read_batch(STATE_IDS))

    def run(self, begin: int, until: int, count: int = 0) -> CpuEvent | None:
        """Run from EIP `begin` (unicorn sets EIP to it: linear only with a flat CS) until linear
        `until`, `count` instructions or an event.
        Unicorn's emu_stop (every stop but the run's end) with paging on writes `until - 1` into
        CR2 (tests/test_physcpu.py): the guest's CR2 is put back after such a run, unless the
        run ended in a page fault, which set it."""
        self.event = None
        self.counting = count > 0 or self.counter is not None
        cr2 = self.uc.reg_read(X.UC_X86_REG_CR2)
        try:
            self.uc.emu_start(begin, until, 0, count)
        finally:
            if (self.event is None or self.event.vector != 14) and self.uc.reg_read(X.UC_X86_REG_CR2) != cr2:
                self.uc.reg_write(X.UC_X86_REG_CR2, cr2)
        return self.event

    def stop_before(self, addresses: set[int]) -> None:
        """Stop the CPU before it runs an instruction at any of `addresses` (EIPs), as a run's
        `until` does for one address: a code hook over each that stops the CPU there (the
        engines' stop addresses when there are several, e.g. a debugger's breakpoints).
        Unicorn looks for hooks when it translates, so its blocks at a new address are dropped."""
        hooks = self._stop_hooks
        for address in set(hooks) - addresses:
            self.uc.hook_del(hooks.pop(address))
        for address in addresses - set(hooks):
            hooks[address] = self.uc.hook_add(UC_HOOK_CODE, _stop_here, None, address, address)
            self.uc.ctl_remove_cache(address, address + 1)

    def forget_code(self, begin: int, end: int) -> None:
        """Drop unicorn's translations of guest code that Python rewrote."""
        self.uc.ctl_remove_cache(begin, end)

    def save_context(self) -> ctypes.Array:
        """The CPU's context as it is now, saved into this CPU's one context: its bytes, to read
        fields from (host.context.calibrate finds them) or write them before context_restore.
        Valid until the next call."""
        self.uc.context_update(self._context)
        return self._context_bytes

    def restore_keeping_fpu(self, ctx, saved: ctypes.Array | None = None) -> None:
        """context_restore a context saved earlier (the world switch's ring-0 start), keeping the
        x87, MMX and SSE state the CPU holds now, or held when `saved` (save_context's bytes)
        was taken: that state is the guest's, and nothing the VMM does between guest runs
        changes it."""
        from ring1.runtime.host.context import calibrate

        L = calibrate()
        raw = self.save_context() if saved is None else saved
        into = ctx.context if isinstance(ctx.context, int) else ctx.context.value
        ctypes.memmove(into + L.fpu_start, ctypes.addressof(raw) + L.fpu_start, L.fpu_end - L.fpu_start)
        self.uc.context_restore(ctx)

    def lazy_flags(self) -> tuple[int, int]:
        """QEMU's lazy-flags operation and its cc_src, from the saved context."""
        cc_op_at, cc_src_at = _lazy_flags_offsets()
        raw = self.save_context()
        return struct.unpack_from("<i", raw, cc_op_at)[0], struct.unpack_from("<Q", raw, cc_src_at)[0]

    def may_have_lost_flags(self, mnemonic: str, memory_operand: bool) -> bool:
        """Whether a fault in this instruction can have lost its flags (a cheap first test)."""
        return self.counting or (memory_operand and mnemonic in COMPUTE_FLAGS_BEFORE_ACCESS)

    def restore_lost_flags(self, mnemonic: str, memory_operand: bool, cc: int | None) -> bool:
        """After a fault (emu_start returned) in the instruction `mnemonic` (the spec's, e.g.
        "set{cc}" with its condition `cc`, or "rcl"): when unicorn certainly lost the arithmetic
        flags the instruction saw, write them back into EFLAGS, so that what reads EFLAGS now and
        the restarted instruction see them. Returns whether it did."""
        if not self.may_have_lost_flags(mnemonic, memory_operand):
            return False
        cc_op, cc_src = self.lazy_flags()
        if lazy_flags_verdict(mnemonic, cc, cc_op, code_hooked=self.counting) != LOST:
            return False
        hw = self.uc.reg_read(X.UC_X86_REG_EFLAGS)
        self.uc.reg_write(X.UC_X86_REG_EFLAGS, (hw & ~ARITH_FLAGS) | (cc_src & ARITH_FLAGS))
        return True

    def clear_exception_latch(self) -> ctypes.Array:
        """Work around unicorn#1883: reset the 'exception in flight' latch after a hooked event.
        Returns the bytes of the context it saved and restored (save_context: the registers as
        they are now, until the next save)."""
        offset = _latch_offset()
        raw = self.save_context()
        struct.pack_into("<i", raw, offset, -1)
        self.uc.context_restore(self._context)
        return raw


def _stop_here(uc: Uc, _address: int, _size: int, _user: object) -> None:
    uc.emu_stop()  # (from a code hook: before the instruction runs)


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


# ---------------------------------------------------------------- lazy flags at a fault

ARITH_FLAGS = 0x8D5  # OF SF ZF AF PF CF: the flags QEMU computes lazily

# QEMU's lazy-flags operations (target/i386/cpu.h, enum CCOp), as unicorn 2.1.4 numbers them;
# the families have a B, W, L and Q member. tests/test_physcpu.py checks the numbers.
CC_OP_EFLAGS = 1  # cc_src holds the flags themselves
CC_OP_SUB = range(14, 18)
CC_OP_LOGIC, CC_OP_INC, CC_OP_DEC = range(22, 26), range(26, 30), range(30, 34)
CC_OP_ADOX, CC_OP_ADCOX, CC_OP_CLR, CC_OP_POPCNT = 47, 48, 49, 50

LOST, KEPT, UNDECIDABLE = "lost", "kept", "undecidable"

# What unicorn computes the flags into cc_src for before its memory access (lazy_flags_verdict).
COMPUTE_FLAGS_BEFORE_ACCESS = frozenset({"set{cc}", "rcl", "rcr"})

# Unicorn's helpers for these write the flags they produce into cc_src before the instruction's
# store: when the store faults after the load succeeded (a page mapped read-only), the flags the
# instruction saw are gone from the CPU altogether (tests/test_physcpu.py).
CHANGE_FLAGS_BEFORE_STORE = frozenset({"rcl", "rcr"})


def changes_flags_before_store(mnemonic: str | None, memory_operand: bool) -> bool:
    """Whether unicorn writes this instruction's new flags before its store, which can fault
    after them (CHANGE_FLAGS_BEFORE_STORE, memory operands only)."""
    return memory_operand and mnemonic in CHANGE_FLAGS_BEFORE_STORE


def lazy_flags_verdict(mnemonic: str, cc: int | None, cc_op: int, code_hooked: bool = False) -> str:
    """Whether unicorn lost the flags a faulting `mnemonic` with a memory operand saw, given the
    lazy operation `cc_op` found at the fault: LOST (they are in cc_src), KEPT (EFLAGS is right)
    or UNDECIDABLE. From unicorn 2.1.4's target/i386/translate.c: gen_compute_eflags, which
    overwrites cc_src, runs before the memory access in gen_rotc_rm_T1 (RCL, RCR) and in
    gen_prepare_cc (SETcc) for the conditions that need all the flags; ADC, SBB, CMOVcc,
    PUSHF, the BT family and the string instructions access memory first or never compute
    into cc_src. Which conditions need all the flags depends on whether the operation was
    known when the instruction was translated (an earlier instruction of the same
    translation block set the flags) or not (the block began after the last one): for
    Z and S after arithmetic, and BE, L, LE after SUB/CMP, the first computes nothing and
    the second loses the flags, and the state at the fault is the same either way
    (tests/test_physcpu.py shows two such programs). With a code hook over the instruction
    (`code_hooked`: emu_start's count is one), unicorn computes the flags into cc_src before
    every instruction, so any instruction that faults has lost them."""
    if cc_op in (CC_OP_EFLAGS, CC_OP_CLR):
        return KEPT  # cc_src is the flags (EFLAGS), or the flags ignore it (CLR)
    if code_hooked:
        return LOST
    if mnemonic in ("rcl", "rcr"):
        return LOST
    if mnemonic != "set{cc}" or cc is None:
        return KEPT
    test = cc >> 1  # O B Z BE S P L LE
    if test == 1:  # B: QEMU computes CF alone, into a temporary
        return KEPT
    if test == 5:  # P: always computed
        return LOST
    if test == 0:  # O: computed, unless the operation keeps OF apart
        return UNDECIDABLE if cc_op in (CC_OP_ADOX, CC_OP_ADCOX, CC_OP_POPCNT) else LOST
    if test in (2, 4):  # Z, S: computed only when the operation was not known
        if cc_op in CC_OP_LOGIC or cc_op in CC_OP_INC or cc_op in CC_OP_DEC:
            return KEPT  # recomputing from the overwritten cc_src gives the same flags
        return UNDECIDABLE
    # BE, L, LE: computed, unless a known SUB (CMP) answers them from its operands
    return UNDECIDABLE if cc_op in CC_OP_SUB else LOST


@cache
def _lazy_flags_offsets() -> tuple[int, int]:
    """Find cc_op and cc_src in unicorn's saved context: writing EFLAGS sets cc_src to its
    arithmetic flags and cc_op to CC_OP_EFLAGS; running SUB EAX, ECX leaves cc_op CC_OP_SUBL."""
    cpu = _flat_cpu()
    uc = cpu.uc
    uc.reg_write(X.UC_X86_REG_EFLAGS, 0x2 | ARITH_FLAGS)
    all_set = _raw(uc.context_save())
    uc.reg_write(X.UC_X86_REG_EFLAGS, 0x2)
    none_set = _raw(uc.context_save())
    cpu.memory.write(0x1000, b"\x29\xc8")  # sub eax, ecx
    cpu.run(0x1000, 0x1002)
    after_sub = _raw(uc.context_save())
    size = min(len(all_set), len(none_set), len(after_sub))
    cc_src = [
        off
        for off in range(0, size - 7, 8)
        if struct.unpack_from("<Q", all_set, off)[0] == ARITH_FLAGS and struct.unpack_from("<Q", none_set, off)[0] == 0
    ]
    cc_op = [
        off
        for off in range(0, size - 3, 4)
        if struct.unpack_from("<i", none_set, off)[0] == CC_OP_EFLAGS
        and struct.unpack_from("<i", after_sub, off)[0] == CC_OP_SUB[2]
    ]
    if len(cc_src) != 1 or len(cc_op) != 1:
        raise RuntimeError("could not find unicorn's lazy flags (cc_op, cc_src) in its context")
    return cc_op[0], cc_src[0]


def _flat_cpu() -> PhysicalCpu:
    """A CPU at CPL 0 over 64 KB, flat 32-bit segments (code 0x08, data 0x10), ESP 0x8000."""
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
    return cpu


@cache
def _latch_offset() -> int:
    """Find the latch in unicorn's saved context: the int that goes from -1 to 13 across a #GP."""
    cpu = _flat_cpu()
    mem, uc = cpu.memory, cpu.uc
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


__all__ = [
    "ARITH_FLAGS",
    "CHANGE_FLAGS_BEFORE_STORE",
    "STATE_IDS",
    "CpuEvent",
    "PhysicalCpu",
    "UcError",
    "catch_interrupts",
    "changes_flags_before_store",
    "interrupt_requested",
    "lazy_flags_verdict",
]
