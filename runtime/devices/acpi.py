"""The ACPI fixed hardware: the PM1a event and control blocks and the PM timer (ACPI 1.0b, 4.7).

What an OS finds through the FADT (boot/firmware.py writes it with the ports and lengths
below) and drives directly, with no AML:

  PM1a event block, 4 bytes: PM1_STS (offset 0, 16 bits, write 1 to clear) and PM1_EN
      (offset 2). A status bit whose enable bit is set asserts the SCI, a level-triggered line
      (IRQ 9, as the MADT and the MP table declare it: active high, level), until the OS
      clears the status bit. Status bits modelled: TMR_STS (the PM timer's most significant
      bit changed), PWRBTN_STS (`press_power_button()`), WAK_STS (never set: nothing sleeps).
  PM1a control block, 2 bytes: SCI_EN reads 1 and cannot be cleared (the FADT's SMI_CMD is
      0: the machine is always in ACPI mode, there is no legacy mode to go back to), BM_RLD
      reads back, GBL_RLS is write-only (there is no SMI handler to tell), SLP_TYP reads back.
      Writing SLP_EN with the SLP_TYP of \\_S5 (the DSDT's package, SLP_TYP_S5) powers the
      machine off: PowerOff, a VMStop of kind "poweroff" (a clean stop, exit status 0). SLP_EN
      with another SLP_TYP is counted in `ignored_sleeps` and does nothing: the DSDT declares
      no other sleep state, so an OS that follows it never asks for one.
  PM timer block, 4 bytes, read-only: a free-running counter at 3.579545 MHz from power-on,
      24 bits wide (or 32 with `timer_32bit`, which the FADT announces with TMR_VAL_EXT),
      computed from the virtual clock on each read (ticks = ns * 3579545 // 10**9), so it is
      exact, monotonic and costs nothing while nobody reads it. Bits above the width read 0.

Each block is its own bus device (`event_block`, `control_block`, `timer_block`), mapped with
`split=False`: it takes 8-, 16- and 32-bit accesses whole, as the ACPI register widths ask
(the timer is read with one 32-bit IN, never as four bytes from different instants). Bytes of
an access that fall past the end of a block read as all ones and are dropped on writes, as
the empty ISA bus does.

Not modelled: PM1b blocks, PM2 control, GPE blocks, the RTC and PCI-Express wake events,
bus-master status, sleep states other than S5 (S1-S4), the global lock's SMI handshake.
"""

from __future__ import annotations

from collections.abc import Callable

from ring1.runtime.cpu.events import VMStop
from ring1.runtime.devices.clock import VirtualClock
from ring1.runtime.devices.irq import IrqLine

PM_TIMER_HZ = 3_579_545
SCI_IRQ = 9  # the ISA IRQ of the SCI (FADT SCI_INT); level-triggered, active high (MADT override)

# Block lengths, as the FADT gives them (PM1_EVT_LEN, PM1_CNT_LEN, PM_TMR_LEN).
PM1_EVT_LEN, PM1_CNT_LEN, PM_TMR_LEN = 4, 2, 4

# PM1_STS / PM1_EN bits (ACPI 1.0b tables 4-10 and 4-11).
TMR_STS = 1 << 0
BM_STS = 1 << 4
GBL_STS = 1 << 5
PWRBTN_STS = 1 << 8
SLPBTN_STS = 1 << 9
RTC_STS = 1 << 10
WAK_STS = 1 << 15
TMR_EN, GBL_EN, PWRBTN_EN, SLPBTN_EN, RTC_EN = TMR_STS, GBL_STS, PWRBTN_STS, SLPBTN_STS, RTC_STS
PM1_EN_BITS = TMR_EN | GBL_EN | PWRBTN_EN | SLPBTN_EN | RTC_EN  # the enable bits that exist

# PM1_CNT bits (ACPI 1.0b table 4-12).
SCI_EN = 1 << 0
BM_RLD = 1 << 1
GBL_RLS = 1 << 2
SLP_TYP_SHIFT = 10
SLP_TYP_MASK = 0b111 << SLP_TYP_SHIFT
SLP_EN = 1 << 13

# The SLP_TYP value of S5 (soft off). The DSDT's \_S5 package carries it (boot/firmware.py); the
# control block powers off when SLP_EN is written with it. Any 3-bit value would do: a
# non-zero one means a stray write of zeros with SLP_EN does not switch the machine off.
SLP_TYP_S5 = 5


class PowerOff(VMStop):
    """The guest put the machine in S5 (soft off) through PM1a_CNT: a clean end of the run."""

    def __init__(self, slp_typ: int) -> None:
        super().__init__("poweroff", f"the guest powered the machine off (ACPI S5, SLP_TYP {slp_typ})")
        self.slp_typ = slp_typ
        self.status = 0  # the run's exit status: a power-off is a normal end


class _Block:
    """One fixed-hardware block as a bus device: little-endian byte lanes over registers.

    `image()` gives the block's bytes as they read now; `store(offset, data_bytes)` receives
    the bytes written, with their offsets in the block, all in one call per access."""

    def __init__(self, length: int, image: Callable[[], bytes], store: Callable[[dict[int, int]], None]) -> None:
        self.length = length
        self._image = image
        self._store = store

    def read(self, offset: int, size: int) -> int:
        data = self._image()  # one snapshot per access: the timer is read at one instant
        value = 0
        for i in range(size):
            at = offset + i
            byte = data[at] if 0 <= at < self.length else 0xFF
            value |= byte << (8 * i)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        lanes = {offset + i: value >> (8 * i) & 0xFF for i in range(size) if 0 <= offset + i < self.length}
        if lanes:
            self._store(lanes)


def _register_write(lanes: dict[int, int], offset: int, width: int) -> tuple[int, int]:
    """The value and byte mask a write put on the register at `offset` (`width` bytes)."""
    value = mask = 0
    for i in range(width):
        if offset + i in lanes:
            value |= lanes[offset + i] << (8 * i)
            mask |= 0xFF << (8 * i)
    return value, mask


class AcpiPm:
    """The PM1a event and control blocks and the PM timer of one machine.

    `clock` is the platform's VirtualClock (the timer reads it, TMR_STS is timed on it);
    `sci` is the SCI's IrqLine, which the platform connects to ISA IRQ 9 (8259 and I/O APIC
    pin 9)."""

    def __init__(self, clock: VirtualClock, sci: IrqLine, *, timer_32bit: bool = False) -> None:
        self.clock = clock
        self.sci = sci
        self.timer_bits = 32 if timer_32bit else 24
        self._timer_mask = (1 << self.timer_bits) - 1
        self._msb_period = 1 << (self.timer_bits - 1)  # ticks between two changes of the MSB
        self.pm1_sts = 0
        self.pm1_en = 0
        self.pm1_cnt = SCI_EN
        self.ignored_sleeps = 0  # SLP_EN written with a SLP_TYP other than S5's
        self._msb_changes_seen = 0  # MSB changes already folded into TMR_STS
        self._tmr_timer = clock.timer(self._on_msb_change, "ACPI PM timer carry")
        self.event_block = _Block(PM1_EVT_LEN, self._event_image, self._event_store)
        self.control_block = _Block(PM1_CNT_LEN, self._control_image, self._control_store)
        self.timer_block = _Block(PM_TMR_LEN, self._timer_image, self._timer_store)

    # ------------------------------------------------------------------ the PM timer

    def ticks(self) -> int:
        """PM timer ticks since power-on (unbounded; the register shows the low bits)."""
        return self.clock.now() * PM_TIMER_HZ // 1_000_000_000

    def timer_value(self) -> int:
        return self.ticks() & self._timer_mask

    def _msb_changes(self) -> int:
        return self.ticks() // self._msb_period

    def _next_msb_change_ns(self) -> int:
        """The first virtual ns at which the counter's MSB changes again."""
        target_ticks = (self._msb_changes() + 1) * self._msb_period
        # smallest ns with ns * HZ // 1e9 >= target: ceil(target * 1e9 / HZ)
        return -(-target_ticks * 1_000_000_000 // PM_TIMER_HZ)

    def _sync_timer_status(self) -> None:
        """Fold MSB changes that happened since the last look into TMR_STS (the latch is
        set by the hardware as the bit changes; computing it when looked at is equivalent)."""
        changes = self._msb_changes()
        if changes != self._msb_changes_seen:
            self._msb_changes_seen = changes
            self.pm1_sts |= TMR_STS

    def _on_msb_change(self, deadline: int) -> None:
        self._sync_timer_status()
        self._update_sci()
        self._arm_carry_timer()

    def _arm_carry_timer(self) -> None:
        # The clock is needed only to raise the SCI on time; while TMR_EN is clear the status
        # bit is computed when read.
        if self.pm1_en & TMR_EN:
            self._tmr_timer.arm(self._next_msb_change_ns())
        else:
            self._tmr_timer.cancel()

    def _timer_image(self) -> bytes:
        return self.timer_value().to_bytes(4, "little")

    def _timer_store(self, lanes: dict[int, int]) -> None:
        pass  # read-only

    # ------------------------------------------------------------------ PM1 event

    def _update_sci(self) -> None:
        # SCI_EN is always set: every enabled event goes to the SCI (none to an SMI).
        self.sci.set(bool(self.pm1_sts & self.pm1_en & PM1_EN_BITS))

    def _event_image(self) -> bytes:
        self._sync_timer_status()
        return self.pm1_sts.to_bytes(2, "little") + self.pm1_en.to_bytes(2, "little")

    def _event_store(self, lanes: dict[int, int]) -> None:
        clear, clear_mask = _register_write(lanes, 0, 2)
        if clear_mask:
            # A change of the MSB before this write is in the latch the OS clears, not a new one.
            self._sync_timer_status()
            self.pm1_sts &= ~(clear & clear_mask)
        enable, enable_mask = _register_write(lanes, 2, 2)
        if enable_mask:
            self.pm1_en = (self.pm1_en & ~enable_mask | enable & enable_mask) & PM1_EN_BITS
            self._sync_timer_status()
            self._arm_carry_timer()
        self._update_sci()

    def press_power_button(self) -> None:
        """The fixed power button: PWRBTN_STS, an SCI if PWRBTN_EN (an OS then shuts down)."""
        self.pm1_sts |= PWRBTN_STS
        self._update_sci()

    # ------------------------------------------------------------------ PM1 control

    def _control_image(self) -> bytes:
        return (self.pm1_cnt & (SCI_EN | BM_RLD | SLP_TYP_MASK)).to_bytes(2, "little")

    def _control_store(self, lanes: dict[int, int]) -> None:
        value, mask = _register_write(lanes, 0, 2)
        kept = BM_RLD | SLP_TYP_MASK  # the read-write bits
        self.pm1_cnt = (self.pm1_cnt & ~(kept & mask)) | (value & kept & mask) | SCI_EN
        if value & mask & SLP_EN:
            slp_typ = (self.pm1_cnt & SLP_TYP_MASK) >> SLP_TYP_SHIFT
            if slp_typ == SLP_TYP_S5:
                raise PowerOff(slp_typ)
            self.ignored_sleeps += 1
