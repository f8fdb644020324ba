"""`bare` mode: the guest on unicorn at its own CPL, the VMM out of the way.

The guest runs with its own descriptor tables, page tables and privilege level. Unicorn
never delivers an exception or interrupt through the IDT (it hands the vector to a hook),
so this mode adds a minimal deliverer that does what the CPU would and nothing else:
it moves the CPU state into the generated interpreter (which shares guest memory), runs the
spec's own `deliver` proc there, and moves the result back. It is the reference for
correctness and for the overhead ratios of the other modes.

Unicorn reports neither error codes nor whether a vector came from `INT n` or from a fault.
A software interrupt leaves EIP after an INT instruction whose vector is the one reported;
anything else is a fault at EIP, and the interpreter re-runs that instruction: faults are
precise, so it raises the same fault with its error code (and CR2) and changes nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from unicorn import x86_const as X

from ring1.generated.forms import FORMS
from ring1.runtime.cpu.events import Fault, GuestEvent, Trap, VMStop
from ring1.runtime.cpu.machine import EVENT_EXCEPTION, Machine, Platform
from ring1.runtime.cpu.memory import PhysicalMemory
from ring1.runtime.cpu.state import SS
from ring1.runtime.engines import delegate
from ring1.runtime.host.context import read_into_machine, soft_interrupt_before, write_from_machine
from ring1.runtime.host.physcpu import GPR_IDS, PhysicalCpu, UcError
from ring1.runtime.isa.decoder import decode
from ring1.runtime.ledger import NO_LEDGER, NoLedger, timed

NOWHERE = 0xFFFFFFFF  # an `until` address guest code never reaches: runs end on events
PAGING_IDS = (X.UC_X86_REG_CR0, X.UC_X86_REG_CR3, X.UC_X86_REG_CR4)
EFLAGS_VM = 0x20000


@dataclass
class BareStop:
    reason: str  # "halt", "limit", "vmstop", "stop-address", "event" (with stop_on_event)
    vmstop: VMStop | None = None
    event: GuestEvent | None = None


class BareMachine:
    def __init__(self, memory: int | PhysicalMemory, platform: Platform | None = None) -> None:
        self.mem = memory if isinstance(memory, PhysicalMemory) else PhysicalMemory(memory)
        self.platform = platform or Platform()
        self.interp = Machine(self.mem, self.platform)  # the deliverer, on the same memory
        self.clock = self.platform.clock
        self.cpu = PhysicalCpu(
            self.mem, platform=self.platform, count_instructions=self.clock is not None, open_bus=True
        )
        self.interp.takes_interrupts = False  # bare takes them itself (_take_interrupt)
        if self.clock is not None:
            self.cpu.after_device_access = self._after_device_access
            # RDTSC, RDMSR and WRMSR cannot be hooked: the counter stops before them and the
            # interpreter runs them (the virtual TSC, the platform's MSRs such as the APIC's).
            self.cpu.counter.stop_before_unhookable(self.mem.address, self.mem.size)
            self.cpu.io_allowed = self._io_allowed  # unicorn checks neither IOPL nor the bitmap
        # CPUID answers with ring1's CPU model (cpu/cpuid.py and the platform's APIC), as in
        # every other mode, not with unicorn's own. (RDMSR and WRMSR cannot be hooked: with a
        # clock the counter stops before them, above; without one they run on unicorn's MSRs.)
        self.cpu.answer_cpuid(self.interp.b_cpuid_leaf)
        self.events: dict[int, int] = {}
        self.event_time = 0.0
        self.ledger: NoLedger = NO_LEDGER  # where the run's wall time goes (`ring1 run --stats`)
        self.stop_addresses: set[int] = set()
        self.stop_on_event = False  # report the first guest event instead of delivering it

    # ------------------------------------------------------------ state

    def load_from_interp(self) -> None:
        """Put the interpreter's whole CPU state (as a boot loader left it) into unicorn."""
        uc, S = self.cpu.uc, self.interp.state
        uc.reg_write(X.UC_X86_REG_CR0, S.cr[0])
        uc.reg_write(X.UC_X86_REG_CR3, S.cr[3])
        uc.reg_write(X.UC_X86_REG_CR4, S.cr[4])
        uc.reg_write(X.UC_X86_REG_GDTR, (0, S.gdtr_base, S.gdtr_limit, 0))
        uc.reg_write(X.UC_X86_REG_IDTR, (0, S.idtr_base, S.idtr_limit, 0))
        if S.tr & ~3:
            uc.reg_write(X.UC_X86_REG_TR, (S.tr, S.tr_base, S.tr_limit, S.tr_attr << 8))
        if S.mode == 0:
            for s, rid in enumerate(
                (X.UC_X86_REG_ES, X.UC_X86_REG_CS, X.UC_X86_REG_SS, X.UC_X86_REG_DS, X.UC_X86_REG_FS, X.UC_X86_REG_GS)
            ):
                uc.reg_write(rid, S.sel[s])
            write_from_machine(uc, self.interp, segments=False, fpu=True)
        else:
            write_from_machine(uc, self.interp, fpu=True)

    def linear_eip(self) -> int:
        uc = self.cpu.uc
        return (self.interp.state.base[1] + uc.reg_read(X.UC_X86_REG_EIP)) & 0xFFFFFFFF

    # ------------------------------------------------------------ running

    def run(self, max_insns: int | None = None) -> BareStop:
        uc = self.cpu.uc
        S = self.interp.state
        if max_insns == 0:  # unicorn's count=0 would mean "no limit"
            read_into_machine(uc, self.interp, fpu=True)
            return BareStop("limit")
        clock, counter = self.clock, self.cpu.counter
        # One stop address is the runs' `until`; several stop by code hooks (a debugger's).
        self.cpu.stop_before(set(self.stop_addresses) if len(self.stop_addresses) > 1 else set())
        while True:
            eip = uc.reg_read(X.UC_X86_REG_EIP)
            if (S.base[1] + eip) & 0xFFFFFFFF in self.stop_addresses:
                read_into_machine(uc, self.interp, fpu=True)  # (the loop may have come round after unicorn ran)
                return BareStop("stop-address")
            if clock is not None and self.platform.interrupt_pending():
                try:
                    self._take_interrupt()
                except VMStop as stop:
                    return BareStop("vmstop", stop)
                eip = uc.reg_read(X.UC_X86_REG_EIP)
            # Unicorn's emu_start takes `begin` as the EIP to start at (an offset in CS, which
            # only a flat CS makes linear) and `until` as a linear address.
            begin = eip
            until = self._until()
            if counter is not None:
                if counter.hit_limit or counter.stopped_before_unhookable:
                    # The counter stopped the last run: unicorn may have left its exception
                    # latch set (unicorn#1883; seen as a #DF, then a silent shutdown, under a
                    # timer every ~1,000 instructions with user processes).
                    self.cpu.clear_exception_latch()
                # An interrupt waiting while IF is clear: stop as soon as the guest sets IF.
                counter.start(clock.insns_until_deadline(), watch_if=self.platform.interrupt_pending())
                counter.set_paging(*uc.reg_read_batch(PAGING_IDS))
                counter.bind(clock, tsc_offset=S.tsc)  # (RDTSC answered in the counter's hook)
            try:
                try:
                    ev = self.cpu.run(begin, until, count=max_insns or 0)  # (CR2 kept: PhysicalCpu.run)
                finally:
                    if counter is not None:
                        self._account_time()
            except VMStop as stop:  # the exit port, raised inside unicorn's I/O hook
                return BareStop("vmstop", stop)
            except UcError as err:
                read_into_machine(uc, self.interp, fpu=True)
                return BareStop("vmstop", VMStop("unicorn", f"unicorn stopped: {err}"))
            if ev is None:
                if counter is not None and counter.stopped_before_unhookable:
                    try:
                        self._emulate_one()
                    except VMStop as stop:
                        return BareStop("vmstop", stop)
                    continue
                if counter is not None and counter.hit_limit:
                    continue  # a timer is due: its interrupt, if any, is taken at the top
                read_into_machine(uc, self.interp, fpu=True)
                if S.eip + S.base[1] in self.stop_addresses:
                    return BareStop("stop-address")
                if self._after_hlt():
                    try:
                        if clock is not None and S.eflags & 0x200 and self._sleep():
                            continue  # the interrupt is taken at the top
                    except VMStop as stop:  # a device's timer stopped the machine (Ctrl-A x)
                        return BareStop("vmstop", stop)
                    S.halted = True
                    return BareStop("halt")
                if max_insns is None:
                    # Unicorn stopped with no event, no budget and no limit of ours (seen with
                    # user processes under a timer every ~1,000 instructions: it then refuses
                    # to run on at all): a clean stop with a diagnosis, not a budget that was
                    # never given.
                    return BareStop("vmstop", VMStop("unicorn", "unicorn stopped with no event and would not run on"))
                return BareStop("limit")
            if self.stop_on_event:
                read_into_machine(uc, self.interp, fpu=True)
                try:
                    return BareStop("event", event=self.classify(ev.vector))
                except VMStop as stop:
                    return BareStop("vmstop", stop)
            try:
                self.deliver(ev.vector)
            except VMStop as stop:
                return BareStop("vmstop", stop)

    def _sleep(self) -> bool:
        """HLT with IF set: time passes, timer after timer, until an interrupt is pending (True)
        or nothing is left that could raise one (False). A timer whose line is masked does not
        end the HLT."""
        while not self.platform.interrupt_pending():
            if not self.clock.skip_to_deadline():
                return False
        return True

    def _until(self) -> int:
        """The `until` of every emu_start: unicorn compiles it into the blocks it translates, so
        a run with another one would leave blocks that run past a stop address."""
        return min(self.stop_addresses) if len(self.stop_addresses) == 1 else NOWHERE

    def _account_time(self) -> None:
        """After a run on unicorn: the instructions it executed advance the virtual clock."""
        linear = (self.interp.state.base[1] + self.cpu.uc.reg_read(X.UC_X86_REG_EIP)) & 0xFFFFFFFF
        self.cpu.counter.account(self.clock, linear)

    @timed("instructions unicorn cannot run (RDMSR, WRMSR...)")
    def _emulate_one(self) -> None:
        """The interpreter runs the instruction unicorn stopped before (RDTSC, RDMSR, WRMSR, RDPMC),
        with the same state, and delivers what it raises."""
        uc, m = self.cpu.uc, self.interp
        read_into_machine(uc, m)
        tables = task_state(m.state)
        r = m.step()
        if r.vmstop is not None:
            raise r.vmstop
        if r.event is not None:
            self.events[r.event.vector] = self.events.get(r.event.vector, 0) + 1
            m.deliver_event(r.event)
        self._back_to_unicorn(tables)

    def _io_allowed(self, port: int, size: int) -> bool:
        """IN and OUT as the CPU allows them (unicorn allows all): at CPL <= IOPL outside v86,
        else as the TSS's I/O bitmap says (the interpreter reads it from the state now)."""
        uc = self.cpu.uc
        cpl = uc.reg_read(X.UC_X86_REG_CS) & 3
        if cpl == 0:
            return True  # (the kernel's I/O: one register read; v86 code runs at CPL 3)
        eflags = uc.reg_read(X.UC_X86_REG_EFLAGS)
        if not eflags & EFLAGS_VM and cpl <= (eflags >> 12) & 3:
            return True
        read_into_machine(uc, self.interp)
        return bool(self.interp.b_io_bitmap_allows(port, size * 8))

    def _after_device_access(self) -> None:
        """A device access may have raised INTR (an OUT that unmasked a waiting line): stop
        before the next instruction that runs with IF set, to take it there."""
        if self.platform.interrupt_pending():
            self.cpu.counter.counts.watch_if = 1

    @timed("interrupts delivered")
    def _take_interrupt(self) -> None:
        """INTR is up: if the guest's IF allows and no interrupt shadow is open, deliver it.
        A run cut by the clock may have stopped right after an instruction that opens the
        shadow (STI, MOV SS, POP SS: FormInfo.interrupt_shadow); then one more instruction runs
        first, as on the CPU."""
        uc = self.cpu.uc
        if not uc.reg_read(X.UC_X86_REG_EFLAGS) & 0x200:
            return
        counter = self.cpu.counter
        if counter.hit_limit and self._opens_shadow(counter.previous_address):
            counter.start(1)
            try:
                ev = self.cpu.run(uc.reg_read(X.UC_X86_REG_EIP), self._until())  # (an EIP: PhysicalCpu.run)
            finally:
                self._account_time()
            if ev is not None:
                self.deliver(ev.vector)  # the shadowed instruction faulted: that comes first
                return
            if not uc.reg_read(X.UC_X86_REG_EFLAGS) & 0x200 or not self.platform.interrupt_pending():
                return
        started = time.perf_counter()
        read_into_machine(uc, self.interp)
        tables = task_state(self.interp.state)
        vector = self.interp.take_interrupt()
        self.events[vector] = self.events.get(vector, 0) + 1
        self._back_to_unicorn(tables)
        self.event_time += time.perf_counter() - started

    def _opens_shadow(self, linear: int) -> bool:
        m = self.interp
        try:
            code = m.mem.read(m.translate(linear, False, False), 15)
        except Fault:
            return False
        d = decode(code, linear, bool(m.state.code32))
        return d.form is not None and FORMS[d.form].interrupt_shadow

    def _after_hlt(self) -> bool:
        S = self.interp.state
        try:
            code = self.interp.mem.read(self.interp.translate((S.base[1] + S.eip - 1) & 0xFFFFFFFF, False, False), 1)
        except Fault:
            return False
        return code == b"\xf4"

    def classify(self, vector: int) -> GuestEvent:
        """The event unicorn reported as `vector`, with what unicorn does not say."""
        soft = soft_interrupt_before(self.interp, vector) or self._single_step(vector)
        return soft if soft is not None else self._fault_at_eip(vector)

    def _single_step(self, vector: int) -> GuestEvent | None:
        """A #DB unicorn raised after an instruction run with TF set: a trap, EIP already past
        it (unicorn sets DR6.BS). Told apart from a breakpoint's #DB by DR7: with no breakpoint
        and no general detect enabled, a #DB that is not ICEBP (a software interrupt, found
        before this) is a single step. Else None."""
        if vector != 1 or self.cpu.uc.reg_read(X.UC_X86_REG_DR7) & 0x20FF:
            return None
        self.interp.state.dr[6] |= 0x4000  # BS, as the hardware's DR6 has it
        return Trap(1, EVENT_EXCEPTION)

    def _fault_at_eip(self, vector: int) -> GuestEvent:
        """Not a software interrupt: a fault at EIP, which the interpreter, running that
        instruction, raises precisely."""
        m, S = self.interp, self.interp.state
        r = m.step()
        if r.event is not None and isinstance(r.event, Fault) and r.event.vector == vector:
            return r.event
        if r.event is not None and isinstance(r.event, Fault) and vector == 8:
            return Fault(8, 0)
        what = "nothing" if r.event is None else str(r.event)
        raise VMStop(
            "disagreement", f"unicorn raised vector {vector} at eip {S.eip:#x}; the spec's semantics give {what}"
        )

    def _restore_lost_flags(self) -> bool:
        """Unicorn may have lost the flags the faulting instruction saw (physcpu.restore_lost_flags:
        SETcc and RCL/RCR on memory, any instruction when the run counts): the frame the guest's
        handler gets, and the instruction it restarts, must have them. Not after INT n (the
        caller asks only about faults)."""
        m = self.interp
        try:
            # Decoded into the one-instruction block that classifying the fault runs next.
            d = m.instruction_at(m.state.eip)
        except Fault:
            return False
        mnemonic = FORMS[d.form].mnemonics.get(None, "") if d.form else ""
        memory = len(d.variant) > 2 and d.variant[2] == "mem"
        if not self.cpu.may_have_lost_flags(mnemonic, memory):
            return False
        return self.cpu.restore_lost_flags(mnemonic, memory, d.variant[3] if len(d.variant) > 3 else None)

    @timed("exceptions delivered")
    def deliver(self, vector: int) -> None:
        started = time.perf_counter()
        uc = self.cpu.uc
        m = self.interp
        read_into_machine(uc, m)
        # INT n or a single-step trap: EIP is past the instruction; the flags are as it left them.
        soft = soft_interrupt_before(m, vector) or self._single_step(vector)
        if soft is None and self._restore_lost_flags():
            read_into_machine(uc, m)  # the same EIP and code: still not a software interrupt
        ev = soft if soft is not None else self._fault_at_eip(vector)  # re-running a #PF sets CR2
        self.events[ev.vector] = self.events.get(ev.vector, 0) + 1
        S = m.state
        hardware = (m.eflags(), S.sel[SS])  # what unicorn holds until write_from_machine
        tables = task_state(S)
        m.deliver_event(ev)
        self._back_to_unicorn(tables, sse=False, hardware=hardware)  # delivery changes no SSE state
        self.event_time += time.perf_counter() - started

    def _back_to_unicorn(self, tables: tuple, **how) -> None:
        """After the interpreter ran an instruction or delivered an event: unicorn gets the
        virtual CPU back (write_from_machine, with `how`), the new task's tables first when a
        task gate or the instruction switched tasks (`tables`: task_state before; spec/tasks.r1)."""
        uc, S = self.cpu.uc, self.interp.state
        self.cpu.clear_exception_latch()
        if task_state(S) != tables:
            write_task_state(uc, S)
        write_from_machine(uc, self.interp, **how)


def task_state(S) -> tuple:
    """What a task switch the interpreter made (an event through a task gate: spec/tasks.r1)
    changes besides the registers write_from_machine gives unicorn."""
    return (S.tr, S.tr_base, S.tr_limit, S.tr_attr, S.ldtr, S.ldtr_base, S.ldtr_limit, S.ldtr_attr, S.cr[0], S.cr[3])


def write_task_state(uc, S) -> None:
    """Give unicorn the new task's CR0 (TS), CR3, TR and LDTR, before its segment registers are
    reloaded (a selector may be the new LDT's, and the tables are read through the new CR3)."""
    uc.reg_write(X.UC_X86_REG_CR0, S.cr[0])
    uc.reg_write(X.UC_X86_REG_CR3, S.cr[3])
    uc.reg_write(X.UC_X86_REG_TR, (S.tr, S.tr_base, S.tr_limit, S.tr_attr << 8))
    uc.reg_write(X.UC_X86_REG_LDTR, (S.ldtr, S.ldtr_base, S.ldtr_limit, S.ldtr_attr << 8))


__all__ = ["EVENT_EXCEPTION", "BareEngine", "BareMachine", "BareStop"]


class BareEngine:
    """The `bare` mode behind the engine interface (ring1.runtime.engines)."""

    def __init__(self, mode: str, memory_size: int, platform: Platform | None = None) -> None:
        self.mode = mode
        self.bare = BareMachine(memory_size, platform)
        self.machine = self.bare.interp

    stop_addresses = delegate("bare", "stop_addresses")
    stop_on_event = delegate("bare", "stop_on_event")

    def start(self) -> None:
        self.bare.load_from_interp()

    def set_registers(self, eip: int, regs: dict[int, int]) -> None:
        """Only EIP and the GPRs go to unicorn (rewriting CR0 or CR3 would drop its translations)."""
        uc = self.bare.cpu.uc
        uc.reg_write(X.UC_X86_REG_EIP, eip)
        for i, value in regs.items():
            uc.reg_write(GPR_IDS[i], value)

    def run(self, max_insns: int | None = None):
        from ring1.runtime.engines import Outcome

        try:
            r = self.bare.run(max_insns)
        except KeyboardInterrupt:
            read_into_machine(self.bare.cpu.uc, self.machine, fpu=True)
            return Outcome("interrupted")
        return Outcome(r.reason, r.event, r.vmstop)

    def counters(self) -> dict[str, int]:
        return {"events_delivered": sum(self.bare.events.values())}

    def attach_ledger(self, ledger: NoLedger) -> None:
        self.bare.ledger = self.bare.cpu.ledger = ledger

    def figures(self, stats, elapsed: float) -> None:
        bm = self.bare
        stats.add("wall_time_s", "wall time", round(elapsed, 6), "s")
        stats.add("events_delivered", "exceptions and interrupts delivered", sum(bm.events.values()))
        stats.add("event_time_s", "time delivering them (in Python)", round(bm.event_time, 6), "s")
        stats.add("io_operations", "I/O operations", bm.platform.io_total())
        stats.add("events_by_vector", "events by vector", dict(sorted(bm.events.items())))

    def stop(self, outcome, max_insns: int | None):
        from ring1.runtime import engines
        return engines.engine_stop(self.machine, outcome.reason, outcome.vmstop, max_insns, "bare engine")
