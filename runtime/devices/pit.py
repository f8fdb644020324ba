"""The 8254 programmable interval timer (ports 0x40-0x43) and system control port B (0x61).

What is modelled, after Intel's 8254 datasheet:

- Three 16-bit down counters clocked at PIT_HZ (1.193182 MHz). The CLK is a free-running
  oscillator: CLK edge number n falls at virtual time ceil(n * 1e9 / PIT_HZ) ns, so the edges
  by time t are `pit_ticks(t)`, on one grid for all channels. Nothing ticks: a counter's value
  and OUT at edge n are computed, exactly, from the state it had at its last programming event
  (a write, a gate change) and n, so the same run reads the same counts.
- The control word at 0x43: channel select, access mode (counter latch, LSB only, MSB only,
  LSB then MSB with the read and write flip-flops, which are separate), mode 0-5 (6 and 7 are
  2 and 3, and read back as written), BCD counting. Writing it stops the counter, resets the
  flip-flops, drops latches, sets OUT to its initial level (low in mode 0, high otherwise)
  and sets null count.
- The counter latch command and the read-back command (count and/or status of any channels;
  status first, then the count; a second latch before the first is read is ignored). The
  status byte: OUT, null count (a written count not yet in the counting element), RW, mode
  and BCD bits as last programmed.
- An initial count of 0 means 65536 (10000 in BCD). A new count is loaded on the CLK edge
  after it is written (so mode 0's OUT rises N+1 edges after the write), in modes 1 and 5 on
  the edge after a gate trigger; in modes 2 and 3 a count written while the counter runs is
  taken at the end of the current period (mode 2) or half-period (mode 3).
- The modes' OUT waveforms: 0 (interrupt on terminal count; the first byte of a two-byte
  count stops counting and drops OUT), 1 (retriggerable one-shot), 2 (rate generator: OUT low
  for the one edge the count is 1), 3 (square wave: the count goes down by two; odd counts
  stay high one edge longer), 4 and 5 (software and hardware triggered strobe). After the
  terminal count, modes 0, 1, 4 and 5 wrap and keep counting.
- Gates: channels 0 and 1 are tied high, as on a PC; channel 2's gate is bit 0 of port 0x61.
  Gate low stops counting in modes 0, 2, 3 and 4 (and forces OUT high in 2 and 3); a rising
  gate (re)starts modes 1, 2, 3 and 5 on the next edge.
- Channel 0's OUT drives IRQ 0 (level = OUT). One timer on the clock is armed for the next
  OUT edge only, its deadline the exact edge time, so a periodic mode never drifts; every edge
  is delivered in order, even when time jumped past several before the timer ran.
- Port 0x61 (system control port B): bits 0-3 read back as written (gate 2, speaker data,
  parity and channel check enables); bit 4 is the refresh request toggle, which flips every 18
  CLK edges (15.09 us, the refresh period channel 1 paced on the AT); bit 5 is OUT of channel
  2; bits 6 and 7 (parity and I/O channel check errors) read 0.

Not modelled: the speaker's sound; channel 1 driving DRAM refresh (its OUT goes nowhere);
the read-back command's reserved bit 0 (ignored). Degenerate inputs the datasheet calls
illegal get a defined behaviour: an initial count of 1 in modes 2 and 3 leaves the counter
stopped at 1 with OUT high, and non-BCD digits in a BCD count are taken at face value. A count
written in mode 0 with a one-byte access drops OUT at once, as the first byte of a two-byte
count does. Setting a mode other than 0 raises OUT at once, so the first control word after
power-on gives IRQ 0 a rising edge, as the chip would.

The power-on state is a quiet chip: every channel as if just set to mode 0, LSB-then-MSB,
binary, with no count (OUT low, nothing counting, no timer armed, so a HLT with nothing else
programmed can end the run); `program_like_bios()` gives the state a PC BIOS leaves instead
(channel 0 in mode 3 at 18.2 Hz, and so on).
"""

from __future__ import annotations

from dataclasses import dataclass

from ring1.runtime.devices.clock import VirtualClock
from ring1.runtime.devices.irq import IrqLine

PIT_HZ = 1_193_182  # the 8254's CLK input on a PC: 14.31818 MHz / 12
NS_PER_S = 1_000_000_000
PIT_PORT = 0x40  # counters 0-2 at 0x40-0x42, the control word at 0x43
PIT_PORTS = 4
PORT_B = 0x61

# Control word fields (port 0x43).
SELECT_READ_BACK = 3
ACCESS_LATCH, ACCESS_LSB, ACCESS_MSB, ACCESS_LSB_MSB = 0, 1, 2, 3
READ_BACK_NO_COUNT = 0x20  # read-back bits are active low
READ_BACK_NO_STATUS = 0x10
# Status byte (read-back).
STATUS_OUT = 0x80
STATUS_NULL_COUNT = 0x40

# Port 0x61.
PORT_B_GATE2 = 0x01
PORT_B_SPEAKER_DATA = 0x02
PORT_B_WRITABLE = 0x0F
PORT_B_REFRESH = 0x10
PORT_B_OUT2 = 0x20
REFRESH_TICKS = 18  # the refresh request toggles once per 18 CLK edges (15.09 us)


def pit_ticks(ns: int) -> int:
    """The number of CLK edges by virtual time `ns` (edge n is the n-th; edge 0 at power-on)."""
    return ns * PIT_HZ // NS_PER_S


def tick_time(tick: int) -> int:
    """The virtual time of CLK edge `tick`: the first ns at which pit_ticks() reaches it."""
    return -(-tick * NS_PER_S // PIT_HZ)


def to_bcd(value: int) -> int:
    return int(str(value % 10000), 16)


def from_bcd(value: int) -> int:
    """Four BCD digits to their number; a non-decimal digit counts at face value (the chip's
    counter would count through it in its own way)."""
    return sum(((value >> (4 * i)) & 0xF) * 10**i for i in range(4))


@dataclass(slots=True)
class CountState:
    """A counter's counting element and OUT just after CLK edge `tick`."""

    tick: int
    ce: int = 0  # the counting element; the loaded value N is kept as N (65536, not 0)
    out: bool = False
    running: bool = False  # the counting element holds a loaded count and counts (gate permitting)
    armed: bool = False  # modes 0, 1, 4, 5: the terminal count of this load is still ahead
    half: int = 0  # mode 3: the N whose half-periods are running (its parity decides their lengths)
    null_count: bool = True  # a count was written (or the mode set) and is not yet in the element
    load_tick: int | None = None  # the edge at which the count register goes into the element

    def copy(self) -> CountState:
        return CountState(
            self.tick, self.ce, self.out, self.running, self.armed, self.half, self.null_count, self.load_tick
        )


class PitChannel:
    """One counter of the 8254: its programming, its latches and flip-flops, and its count.

    The count is kept as the state at the last programming event (`base`); `state_at(tick)`
    computes any later edge's state from it, jumping over stretches of plain counting (and
    over whole periods in modes 2 and 3) rather than stepping edge by edge. The latest state
    computed is kept too (`_latest`), so that a polling guest's next read starts from it:
    until the next programming event, every state follows from either."""

    def __init__(self, index: int, gate: bool) -> None:
        self.index = index
        self.gate = gate
        self.programmed_mode = 0  # the mode bits as written (6 and 7 read back as such)
        self.mode = 0
        self.access = ACCESS_LSB_MSB
        self.bcd = False
        self.count_register: int | None = None  # the initial count N (1..modulus), None before one is written
        self.write_lsb: int | None = None  # LSB-then-MSB: the LSB written, waiting for its MSB
        self.read_msb_next = False  # LSB-then-MSB: the next read returns the MSB
        self.latched_count: int | None = None
        self.latched_status: int | None = None
        self.base = CountState(tick=0)

    @property
    def base(self) -> CountState:
        """The state at the last programming event; never changed once set."""
        return self._base

    @base.setter
    def base(self, state: CountState) -> None:
        self._base = self._latest = state

    @property
    def modulus(self) -> int:
        return 10000 if self.bcd else 0x10000

    # ------------------------------------------------------------ the count over time

    def state_at(self, tick: int) -> CountState:
        """The state just after edge `tick` (not before the last programming event), the
        caller's to change."""
        return self._peek(tick).copy()

    def _peek(self, tick: int) -> CountState:
        """The state just after edge `tick`, to be read only."""
        latest = self._latest
        if latest.tick == tick:
            return latest
        state = (latest if latest.tick < tick else self._base).copy()
        self._advance(state, tick)
        if state.tick > latest.tick:
            self._latest = state
        return state

    def out_at(self, tick: int) -> bool:
        return self._peek(tick).out

    def count_at(self, tick: int) -> int:
        """The counting element as the chip presents it: 16 bits, BCD-coded in BCD mode."""
        value = self._peek(tick).ce % self.modulus
        return to_bcd(value) if self.bcd else value

    def status_at(self, tick: int) -> int:
        state = self._peek(tick)
        return (
            (STATUS_OUT if state.out else 0)
            | (STATUS_NULL_COUNT if state.null_count else 0)
            | self.access << 4
            | self.programmed_mode << 1
            | int(self.bcd)
        )

    def next_out_change(self, tick: int) -> int | None:
        """The first edge after `tick` at which OUT changes, if no one programs the channel
        meanwhile; None if OUT stays as it is."""
        state = self.state_at(tick)
        level = state.out
        # A change comes within a few events: loads, a mode 3 odd count's extra edge and
        # count register transfers are the only events that leave OUT as it is.
        for _ in range(8):
            event = self._next_event(state)
            if event is None:
                return None
            self._advance(state, event)
            if state.out != level:
                return event
        return None

    def _counting(self, state: CountState) -> bool:
        if not state.running:
            return False
        return True if self.mode in (1, 5) else self.gate

    def _next_event(self, state: CountState) -> int | None:
        """The next edge at which something other than plain counting happens."""
        event = self._mode_event(state)
        if state.load_tick is not None and (event is None or state.load_tick <= event):
            return state.load_tick
        return event

    def _mode_event(self, state: CountState) -> int | None:
        mode = self.mode
        if mode in (4, 5) and not state.out:
            return state.tick + 1  # the strobe lasts one edge
        if not self._counting(state):
            return None
        if mode == 2:
            # The edge the count reaches 1 (OUT falls), then the reload edge (OUT rises).
            return state.tick + max(1, state.ce - 1)
        if mode == 3:
            # The half-period ends on the edge the count would reach 0 (or, for an odd count
            # in its high half, one edge after it did).
            return state.tick + max(1, state.ce // 2)
        if state.armed:
            return state.tick + (state.ce or self.modulus)  # the terminal count
        return None

    def _count_plainly(self, state: CountState, edges: int) -> None:
        if edges <= 0 or not self._counting(state):
            return
        if self.mode == 3:
            state.ce -= 2 * edges
        elif self.mode == 2:
            state.ce -= edges
        else:
            state.ce = (state.ce - edges) % self.modulus

    def _advance(self, state: CountState, tick: int) -> None:
        while state.tick < tick:
            if self.mode in (2, 3) and state.load_tick is None and not state.null_count and self._counting(state):
                # A steady rate generator or square wave repeats every N edges.
                period = self.count_register or 1
                state.tick += (tick - state.tick) // period * period
                if state.tick == tick:
                    return
            event = self._next_event(state)
            if event is None or event > tick:
                self._count_plainly(state, tick - state.tick)
                state.tick = tick
                return
            self._count_plainly(state, event - 1 - state.tick)
            state.tick = event
            self._event(state)

    def _event(self, state: CountState) -> None:
        """What happens on the event edge `state.tick`, in place of plain counting."""
        mode = self.mode
        if state.load_tick == state.tick:
            self._load(state)
            return
        if mode == 2:
            if state.ce <= 1:
                self._reload(state)
                state.out = True
            else:
                state.ce = 1
                state.out = False
        elif mode == 3:
            if state.ce == 0:  # an odd count's extra edge at the end of the high half
                state.out = False
                self._reload(state)
            elif state.out and state.half & 1:
                state.ce = 0
            else:
                state.out = not state.out
                self._reload(state)
        elif mode in (4, 5) and not state.out:
            state.out = True  # the strobe ends
            if self._counting(state):
                state.ce = (state.ce - 1) % self.modulus
        else:  # the terminal count of modes 0, 1, 4, 5
            state.ce = 0
            state.armed = False
            state.out = mode in (0, 1)

    def _load(self, state: CountState) -> None:
        """The count register goes into the counting element (after a write or a trigger)."""
        state.load_tick = None
        state.null_count = False
        count = self.count_register
        if count is None:
            return
        state.running = True
        state.armed = True
        if self.mode in (2, 3):
            state.out = True
            self._reload(state)
        else:
            state.ce = count
            state.out = self.mode in (4, 5)  # modes 0 and 1: low until the terminal count

    def _reload(self, state: CountState) -> None:
        """Modes 2 and 3: the count register starts the next period (or half-period)."""
        count = self.count_register or 1
        state.null_count = False
        if count == 1:  # illegal in these modes: the counter stops at 1, OUT high
            state.running = False
            state.ce = 1
            state.out = True
            return
        state.half = count
        state.ce = count - (count & 1) if self.mode == 3 else count

    # ------------------------------------------------------------ programming events

    def program(self, tick: int, access: int, mode_bits: int, bcd: bool) -> None:
        """A control word for this channel."""
        state = self.state_at(tick)  # counted under the old programming up to now
        self.programmed_mode = mode_bits
        self.mode = mode_bits & 3 if mode_bits >= 6 else mode_bits
        self.access = access
        self.bcd = bcd
        self.count_register = None
        self.write_lsb = None
        self.read_msb_next = False
        self.latched_count = None
        self.latched_status = None
        state.running = False
        state.armed = False
        state.load_tick = None
        state.null_count = True
        state.out = self.mode != 0
        self.base = state

    def write_count_byte(self, tick: int, value: int) -> None:
        if self.access == ACCESS_LSB:
            self._set_count(tick, value)
        elif self.access == ACCESS_MSB:
            self._set_count(tick, value << 8)
        elif self.write_lsb is None:
            self.write_lsb = value
            if self.mode == 0:
                # The first byte of a new count stops mode 0's counting and drops OUT.
                state = self.state_at(tick)
                state.running = False
                state.load_tick = None
                state.out = False
                self.base = state
        else:
            lsb, self.write_lsb = self.write_lsb, None
            self._set_count(tick, value << 8 | lsb)

    def _set_count(self, tick: int, raw: int) -> None:
        state = self.state_at(tick)  # counted with the old count register up to now
        self.count_register = (from_bcd(raw) if self.bcd else raw) % self.modulus or self.modulus
        state.null_count = True
        if self.mode in (0, 4) or (self.mode in (2, 3) and not state.running):
            state.load_tick = tick + 1
            if self.mode == 0:
                state.out = False
        # Modes 1 and 5 wait for a gate trigger; a running mode 2 or 3 takes the new count
        # at the end of its current period.
        self.base = state

    def set_gate(self, tick: int, level: bool) -> None:
        if level == self.gate:
            return
        state = self.state_at(tick)
        self.gate = level
        if level and self.mode in (1, 2, 3, 5) and self.count_register is not None:
            state.load_tick = tick + 1  # a trigger: the count is (re)loaded on the next edge
        if not level and self.mode in (2, 3):
            state.out = True
        self.base = state

    # ------------------------------------------------------------ latches and reads

    def latch_count(self, tick: int) -> None:
        if self.latched_count is None:  # a second latch before the read is ignored
            self.latched_count = self.count_at(tick)

    def latch_status(self, tick: int) -> None:
        if self.latched_status is None:
            self.latched_status = self.status_at(tick)

    def read_byte(self, tick: int) -> int:
        if self.latched_status is not None:
            status, self.latched_status = self.latched_status, None
            return status
        latched = self.latched_count is not None
        value = self.latched_count if self.latched_count is not None else self.count_at(tick)
        if self.access == ACCESS_LSB:
            byte, done = value & 0xFF, True
        elif self.access == ACCESS_MSB:
            byte, done = value >> 8, True
        else:
            byte = value >> 8 if self.read_msb_next else value & 0xFF
            done = self.read_msb_next
            self.read_msb_next = not self.read_msb_next
        if latched and done:
            self.latched_count = None
        return byte


class Pit:
    """The 8254 with channel 0 on IRQ 0; `ports` goes on the bus at 0x40 (4 ports), `port_b`
    at 0x61 (1 port). Every count is read from `clock`."""

    def __init__(self, clock: VirtualClock, irq0: IrqLine) -> None:
        self.clock = clock
        self.irq0 = irq0
        self._irq0_timer = clock.timer(self._irq0_due, "pit-ch0")
        self._irq0_edge: int | None = None  # the next OUT edge of channel 0 not yet delivered
        self.channels: list[PitChannel] = []
        self.ports = PitPorts(self)
        self.port_b = SystemControlPortB(self)
        self.reset()

    def reset(self) -> None:
        """Power-on: every channel as just set to mode 0 with no count; channel 2's gate low."""
        tick = self._now_tick()
        self.channels = [PitChannel(index, gate=index != 2) for index in range(3)]
        for channel in self.channels:
            channel.base = CountState(tick=tick)
        self.port_b.bits = 0
        self._irq0_edge = None
        self._irq0_changed(tick)

    def program_like_bios(self) -> None:
        """The state a PC BIOS leaves: channel 0 in mode 3 with count 65536 (IRQ 0 at 18.2 Hz),
        channel 1 in mode 2 with count 18 (the refresh rate), channel 2 in mode 3 with count
        0x533 (the 896 Hz beep), its gate off."""
        for control, count in ((0x36, 0), (0x54, 18), (0xB6, 0x533)):
            channel = control >> 6
            self.write_port(3, control)
            self.write_port(channel, count & 0xFF)
            if control >> 4 & 3 == ACCESS_LSB_MSB:
                self.write_port(channel, count >> 8)

    def _now_tick(self) -> int:
        return pit_ticks(self.clock.now())

    # ------------------------------------------------------------ what other devices see

    def out(self, index: int) -> bool:
        """OUT of channel `index` now."""
        return self.channels[index].out_at(self._now_tick())

    def set_gate(self, index: int, level: bool) -> None:
        tick = self._now_tick()
        self._before_change(index, tick)
        self.channels[index].set_gate(tick, level)
        self._after_change(index, tick)

    def refresh_toggle(self) -> bool:
        return bool(self._now_tick() // REFRESH_TICKS & 1)

    # ------------------------------------------------------------ IRQ 0

    def _before_change(self, index: int, tick: int) -> None:
        if index == 0:
            self._deliver_irq0_edges(tick)  # edges due before the change happened first

    def _after_change(self, index: int, tick: int) -> None:
        if index == 0:
            self._irq0_changed(tick)

    def _irq0_changed(self, tick: int) -> None:
        channel = self.channels[0]
        self.irq0.set(channel.out_at(tick))
        self._irq0_edge = channel.next_out_change(tick)
        self._arm_irq0()

    def _deliver_irq0_edges(self, tick: int) -> None:
        channel = self.channels[0]
        while self._irq0_edge is not None and self._irq0_edge <= tick:
            edge = self._irq0_edge
            self.irq0.set(channel.out_at(edge))
            self._irq0_edge = channel.next_out_change(edge)
        self._arm_irq0()

    def _arm_irq0(self) -> None:
        if self._irq0_edge is None:
            self._irq0_timer.cancel()
        else:
            self._irq0_timer.arm(tick_time(self._irq0_edge))

    def _irq0_due(self, deadline: int) -> None:
        # The deadline is an exact edge time, so the edge count derived from it is exact and
        # the next deadline comes from the edge grid, not from when this callback ran.
        self._deliver_irq0_edges(pit_ticks(deadline))

    # ------------------------------------------------------------ ports 0x40-0x43

    def read_port(self, offset: int) -> int:
        if offset == 3:
            return 0xFF  # the control word register is write-only: the data bus floats
        return self.channels[offset].read_byte(self._now_tick())

    def write_port(self, offset: int, value: int) -> None:
        value &= 0xFF
        tick = self._now_tick()
        if offset < 3:
            self._before_change(offset, tick)
            self.channels[offset].write_count_byte(tick, value)
            self._after_change(offset, tick)
            return
        select, access = value >> 6, value >> 4 & 3
        if select == SELECT_READ_BACK:
            for index, channel in enumerate(self.channels):
                if not value & (2 << index):
                    continue
                if not value & READ_BACK_NO_STATUS:
                    channel.latch_status(tick)
                if not value & READ_BACK_NO_COUNT:
                    channel.latch_count(tick)
        elif access == ACCESS_LATCH:
            self.channels[select].latch_count(tick)
        else:
            self._before_change(select, tick)
            self.channels[select].program(tick, access, value >> 1 & 7, bool(value & 1))
            self._after_change(select, tick)


class PitPorts:
    """The 8254 on the bus: counters 0-2 at offsets 0-2, the control word at offset 3."""

    def __init__(self, pit: Pit) -> None:
        self.pit = pit

    def read(self, offset: int, size: int) -> int:
        return self.pit.read_port(offset & 3)

    def write(self, offset: int, size: int, value: int) -> None:
        self.pit.write_port(offset & 3, value)


class SystemControlPortB:
    """Port 0x61: channel 2's gate and the speaker enable (read back with the parity and
    channel check enables), the refresh toggle, and channel 2's OUT."""

    def __init__(self, pit: Pit) -> None:
        self.pit = pit
        self.bits = 0  # bits 0-3 as last written

    @property
    def speaker_on(self) -> bool:
        """The speaker sounds channel 2's OUT when both the gate and the data bit are set."""
        return self.bits & (PORT_B_GATE2 | PORT_B_SPEAKER_DATA) == PORT_B_GATE2 | PORT_B_SPEAKER_DATA

    def read(self, offset: int, size: int) -> int:
        value = self.bits
        if self.pit.refresh_toggle():
            value |= PORT_B_REFRESH
        if self.pit.out(2):
            value |= PORT_B_OUT2
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        self.bits = value & PORT_B_WRITABLE
        self.pit.set_gate(2, bool(value & PORT_B_GATE2))
