"""External interrupts and virtual time in every engine, with a minimal interrupt source.

The platform here has one periodic timer on the virtual clock that raises a request line
(latched, as an edge-triggered controller input does) and a controller whose acknowledge
returns vector 0x20 and clears the request. The chips of the PC (devices/) plug into the same
interface; these tests pin what the engines do with it: interrupts taken at instruction
boundaries when IF allows, not inside the interrupt shadow, HLT sleeping until the next
deadline, runs that end when nothing can wake the CPU, and the same interrupt points run
after run.
"""

from __future__ import annotations

import pytest

from ring1.runtime import engines
from ring1.runtime.cpu import descriptors
from ring1.runtime.devices.bus import Bus
from ring1.runtime.devices.clock import VirtualClock
from ring1.runtime.isa.assembler import assemble
from ring1.runtime.tools import fresh_machine
from ring1.runtime.tools.fresh_machine import FreshSpec
from ring1.runtime.tools.snippet import interp_machine

VECTOR = 0x20
HANDLER = 0x9000
COUNT = 0x10000  # the DATA window: the handler's counter
MODES = ("interp", "bare", "bt", "trap")


class TickPlatform(Bus):
    """A timer every `period_ns` of virtual time latching a request for VECTOR."""

    def __init__(self, period_ns: int, ticks: int | None = None) -> None:
        super().__init__()
        self.clock = VirtualClock()
        self.requested = False
        self.acknowledged = 0
        self.left = ticks
        self.period = period_ns
        self.timer = self.clock.timer(self._tick, "tick")
        self.timer.arm(period_ns)

    def _tick(self, deadline: int) -> None:
        self.requested = True
        if self.left is not None:
            self.left -= 1
            if self.left == 0:
                return
        self.timer.arm(deadline + self.period)

    def interrupt_pending(self) -> bool:
        return self.requested

    def acknowledge_interrupt(self) -> int:
        self.requested = False
        self.acknowledged += 1
        return VECTOR


HANDLER_CODE = f"""
    inc dword ptr [{COUNT:#x}]
    mov eax, [{COUNT + 4:#x}]
    mov [{COUNT + 8:#x}], eax      # the main loop's progress when the interrupt came
    iretd
"""


def _run(mode: str, main: str, platform: TickPlatform, max_insns: int = 2_000_000):
    code = assemble(main, fresh_machine.CODE).code
    engine = engines.create(mode, fresh_machine.MEMORY_SIZE, platform)
    m = engine.machine
    interp_machine(FreshSpec(code=code), m)
    m.mem.write(HANDLER, assemble(HANDLER_CODE, HANDLER).code)
    gate = descriptors.gate(HANDLER, fresh_machine.SEL_CODE0, descriptors.GATE_INTERRUPT32)
    m.mem.write(fresh_machine.IDT + VECTOR * 8, gate)
    engine.stop_addresses = {fresh_machine.CODE + len(code)}
    engine.start()
    outcome = engine.run(max_insns)
    return engine, outcome


def _count(engine) -> int:
    return engine.machine.mem.read32(COUNT)


SPIN = f"""
    sti
1:  inc dword ptr [{COUNT + 4:#x}]
    cmp dword ptr [{COUNT:#x}], 5
    jb 1b
    cli
"""


@pytest.mark.parametrize("mode", MODES)
def test_a_spinning_guest_takes_timer_interrupts(mode: str) -> None:
    platform = TickPlatform(period_ns=20_000)  # every 2,000 instructions at 10 ns each
    engine, outcome = _run(mode, SPIN, platform)
    assert outcome.reason == "stop-address", outcome
    assert _count(engine) == 5 == platform.acknowledged
    progress = engine.machine.mem.read32(COUNT + 4)
    assert 5 * 2_000 // 4 <= progress <= 6 * 2_000  # about four instructions per iteration


@pytest.mark.parametrize("mode", MODES)
def test_interrupt_points_are_the_same_run_after_run(mode: str) -> None:
    first, _ = _run(mode, SPIN, TickPlatform(period_ns=20_000))
    second, _ = _run(mode, SPIN, TickPlatform(period_ns=20_000))
    assert first.machine.mem.read32(COUNT + 8) == second.machine.mem.read32(COUNT + 8)


@pytest.mark.parametrize("mode", MODES)
def test_with_if_clear_nothing_is_taken(mode: str) -> None:
    main = """
    cli
    mov ecx, 20000
1:  loop 1b
    """
    platform = TickPlatform(period_ns=20_000)
    engine, outcome = _run(mode, main, platform)
    assert outcome.reason == "stop-address"
    assert _count(engine) == 0 and platform.acknowledged == 0
    assert platform.requested  # the request waits for the guest


@pytest.mark.parametrize("mode", MODES)
def test_hlt_sleeps_until_the_next_interrupt(mode: str) -> None:
    main = """
    sti
    hlt
    hlt
    hlt
    cli
    """
    platform = TickPlatform(period_ns=50_000_000)  # 5 M instructions: never reached by running
    engine, outcome = _run(mode, main, platform)
    assert outcome.reason == "stop-address", outcome
    assert _count(engine) == 3
    assert platform.clock.now() >= 3 * 50_000_000


@pytest.mark.parametrize("mode", MODES)
def test_hlt_that_nothing_can_wake_stops_the_run(mode: str) -> None:
    main = """
    sti
    hlt
    hlt
    cli
    """
    platform = TickPlatform(period_ns=50_000, ticks=1)
    engine, outcome = _run(mode, main, platform)
    assert outcome.reason == "halt"
    assert _count(engine) == 1


@pytest.mark.parametrize("mode", MODES)
def test_sti_shadow_delays_the_interrupt_by_one_instruction(mode: str) -> None:
    # The request is up before STI; the instruction after STI still runs first: it records
    # that it ran, and the handler sees the record.
    main = f"""
    mov ecx, 3000
1:  loop 1b
    sti
    mov dword ptr [{COUNT + 4:#x}], 7
    cli
    """
    platform = TickPlatform(period_ns=10_000, ticks=1)
    engine, outcome = _run(mode, main, platform)
    assert outcome.reason == "stop-address"
    assert _count(engine) == 1
    assert engine.machine.mem.read32(COUNT + 8) == 7


class MaskPlatform(TickPlatform):
    """The request latches but only reaches the CPU once the guest unmasks it (an OUT to
    port 0x21 with bit 0 clear), as an 8259's IMR does."""

    def __init__(self) -> None:
        super().__init__(period_ns=10_000, ticks=1)
        self.masked = True

    def interrupt_pending(self) -> bool:
        return self.requested and not self.masked

    def io_out(self, port: int, size: int, value: int) -> None:
        super().io_out(port, size, value)
        if port == 0x21:
            self.masked = bool(value & 1)


@pytest.mark.parametrize("mode", MODES)
def test_an_out_that_unmasks_a_waiting_request_takes_it_at_once(mode: str) -> None:
    main = f"""
    sti
    mov ecx, 3000
1:  loop 1b
    xor eax, eax
    out 0x21, al
    mov dword ptr [{COUNT + 4:#x}], 7
    cli
    """
    platform = MaskPlatform()
    engine, outcome = _run(mode, main, platform)
    assert outcome.reason == "stop-address"
    assert _count(engine) == 1
    assert engine.machine.mem.read32(COUNT + 8) == 0  # taken right after the OUT, before the store


class ArmingPlatform(TickPlatform):
    """A far timer armed at start; an OUT to port 0x40 arms a near one (as programming a PIT
    does in the middle of a stretch bounded by the far deadline)."""

    def __init__(self) -> None:
        super().__init__(period_ns=1_000_000_000, ticks=1)  # 100 M instructions away

    def io_out(self, port: int, size: int, value: int) -> None:
        super().io_out(port, size, value)
        if port == 0x40:
            self.timer.arm(self.clock.now() + 20_000)  # 2,000 instructions from the OUT


@pytest.mark.parametrize("mode", MODES)
def test_a_timer_armed_during_a_stretch_fires_on_time(mode: str) -> None:
    main = f"""
    sti
    out 0x40, al
1:  inc dword ptr [{COUNT + 4:#x}]
    cmp dword ptr [{COUNT:#x}], 1
    jb 1b
    cli
    """
    platform = ArmingPlatform()
    engine, outcome = _run(mode, main, platform)
    assert outcome.reason == "stop-address", outcome
    assert _count(engine) == 1
    assert 2_000 // 4 <= engine.machine.mem.read32(COUNT + 8) <= 2_000  # about four instructions an iteration


@pytest.mark.parametrize("mode", MODES)
def test_rdtsc_reads_the_virtual_clock(mode: str) -> None:
    # Two RDTSCs around a 1,000-iteration LOOP: the TSC counts virtual nanoseconds (TSC_HZ),
    # which the guest's instructions advance, never the host's cycles (bare included: unicorn
    # cannot hook RDTSC, so the counter stops before it and the interpreter reads the clock).
    main = f"""
    rdtsc
    mov esi, eax
    mov ecx, 1000
1:  loop 1b
    rdtsc
    sub eax, esi
    mov [{COUNT + 8:#x}], eax
    """
    platform = TickPlatform(period_ns=10**12)  # a clock, no interrupt in reach
    engine, outcome = _run(mode, main, platform)
    assert outcome.reason == "stop-address", outcome
    delta = engine.machine.mem.read32(COUNT + 8)
    assert delta % 10 == 0 and 1_000 * 10 <= delta <= 3 * 1_000 * 10 + 100  # 10 ns an instruction


USER_HANDLER = f"""
    mov [{COUNT + 12:#x}], esp      # where the CPU switched to: the TSS's ring-0 stack
    mov eax, [esp + 4]
    mov [{COUNT + 16:#x}], eax      # the interrupted CS (the user's, RPL 3)
    inc dword ptr [{COUNT:#x}]
    iretd
"""


@pytest.mark.parametrize("mode", MODES)
def test_an_interrupt_in_user_mode_switches_to_the_ring_0_stack_and_back(mode: str) -> None:
    # User code (CPL 3, IF=1) spins; the timer's interrupt gate takes it to the CPL 0 handler
    # on the TSS's stack (ESP0) with the user's SS:ESP, EFLAGS, CS:EIP pushed, and IRETD goes
    # back to CPL 3. Under bt the user code runs directly on the hardware.
    main = f"""
    push {fresh_machine.SEL_DATA3}           # the kernel IRETs to user mode, as an OS starts a process
    push {fresh_machine.STACK_TOP}
    push 0x202
    push {fresh_machine.SEL_CODE3}
    push offset user
    iretd
user:
    mov ax, {fresh_machine.SEL_DATA3}
    mov ds, ax
1:  inc dword ptr [{COUNT + 4:#x}]
    cmp dword ptr [{COUNT:#x}], 3
    jb 1b
    """
    code = assemble(main, fresh_machine.CODE).code
    platform = TickPlatform(period_ns=20_000)
    engine = engines.create(mode, fresh_machine.MEMORY_SIZE, platform)
    m = engine.machine
    interp_machine(FreshSpec(code=code, regs={"esp": fresh_machine.STACK_TOP - 0x100}), m)
    m.mem.write(HANDLER, assemble(USER_HANDLER, HANDLER).code)
    gate = descriptors.gate(HANDLER, fresh_machine.SEL_CODE0, descriptors.GATE_INTERRUPT32)
    m.mem.write(fresh_machine.IDT + VECTOR * 8, gate)
    engine.stop_addresses = {fresh_machine.CODE + len(code)}
    engine.start()
    outcome = engine.run(2_000_000)
    assert outcome.reason == "stop-address", outcome
    assert _count(engine) == 3
    assert m.mem.read32(COUNT + 12) == fresh_machine.STACK0_TOP - 20  # SS ESP EFLAGS CS EIP
    assert m.mem.read32(COUNT + 16) == fresh_machine.SEL_CODE3
    assert m.state.cpl == 3 and m.regs[4] == fresh_machine.STACK_TOP


@pytest.mark.parametrize("port_io", ["in al, 0x80", "out 0x80, al", "mov dx, 0x80\nin eax, dx"])
def test_user_code_run_directly_gets_gp_for_a_port_it_may_not_touch(port_io: str) -> None:
    # Unicorn runs IN and OUT at any privilege; the VMM checks the guest's IOPL and TSS bitmap
    # for code it runs directly: user code at CPL 3 with IOPL 0 (the fresh machine's TSS has no
    # bitmap) gets #GP(0) at the instruction, and the port sees nothing.
    main = f"""
    push {fresh_machine.SEL_DATA3}
    push {fresh_machine.STACK_TOP}
    push 0x2
    push {fresh_machine.SEL_CODE3}
    push offset user
    iretd
user:
    mov eax, 0x11223344
io: {port_io}
    nop
    """
    assembled = assemble(main, fresh_machine.CODE)
    platform = TickPlatform(period_ns=10**12)
    engine = engines.create("bt", fresh_machine.MEMORY_SIZE, platform)
    interp_machine(FreshSpec(code=assembled.code, regs={"esp": fresh_machine.STACK_TOP - 0x100}), engine.machine)
    engine.stop_on_event = True
    engine.stop_addresses = {fresh_machine.CODE + len(assembled.code)}
    engine.start()
    outcome = engine.run(1000)
    m = engine.machine
    at = assembled.labels["io"] + (4 if port_io.startswith("mov dx") else 0)
    assert outcome.reason == "event" and outcome.event.vector == 13 and outcome.event.error_code == 0, outcome
    assert m.state.eip == at and m.state.cpl == 3
    assert m.regs[0] == 0x11223344  # IN left EAX alone
    assert platform.io_counts == {}  # the port never saw the access
