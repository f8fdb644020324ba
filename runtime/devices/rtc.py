"""The MC146818 real-time clock and its CMOS RAM, at ports 0x70 (index) and 0x71 (data).

Modelled, as the Motorola MC146818A datasheet describes the chip on a PC board:

- The 128 bytes behind the index port: the time, calendar and alarm bytes (0x00-0x09), status
  registers A-D (0x0A-0x0D) and battery-backed RAM (0x0E-0x7F), with the century byte at 0x32.
  Bit 7 of the index port is not the chip's: on a PC it masks NMI (kept, `nmi_masked`). The
  index port reads 0xFF (write-only on PC chipsets).
- Time in BCD or binary (status B DM) and 12- or 24-hour form (status B 24/12, bit 7 of the hour
  = PM). The chip keeps the bytes as written and interprets them at each update with the
  format in force then, so changing DM without rewriting the time reads back nonsense, as on
  the chip. Every byte reads back as written until the next update, which takes a field out
  of range (the datasheet: "unpredictable") as that field's minimum and counts on from it.
- The divider (status A DV): 010 runs the 32.768 kHz time base; 11x holds the divider in reset
  (no updates, no periodic edges) and the first update comes 500 ms after its release; other
  values (other crystals, factory tests) stop the clock here, having no 32 kHz meaning.
- The update cycle once a second: UIP (status A bit 7) rises 244 us (8 crystal cycles) before
  it; the update itself is instantaneous here (the chip takes 1984 us, during which UIP stays
  high; a driver that waits for UIP to fall sees the same order of events). SET inhibits
  updates, clears UIP and clears UIE. The day of week is the chip's own counter (1-7, 1 =
  Sunday). The century byte is incremented when the year wraps from 99 to 00, as the PC
  chipset RTCs do (the original MC146818 left 0x32 to the BIOS); leap years are Gregorian.
  DSE: the MC146818A's daylight-saving updates on the last Sunday in April (01:59:59 to
  03:00:00) and October (01:59:59 to 01:00:00, once), Sunday being the chip's own weekday.
- Status C flags PF (periodic: the tap of the divider that RS selects), AF (the alarm bytes
  match after an update; 0xC0-0xFF is "don't care"), UF (update ended), set whatever the
  enables say; IRQF and the IRQ line (IRQ 8) are the OR of each flag with its enable, a level
  that stays up until the guest reads C (reading clears every flag and lowers the line). C and
  D are read-only (writes do nothing); D reads VRT (valid RAM and time) always.

Time: the calendar advances with the VirtualClock, from a start time given to the constructor
(default: the host's UTC time). Flags are computed when the guest looks, from the virtual time;
a timer is armed only for an enabled interrupt (PIE; UIE or AIE), at the exact deadline of the
next edge or update, computed from the divider's origin so periodic interrupts never drift.

CMOS RAM as a BIOS fills it (IBM AT layout): equipment byte 0x14, base memory 0x15/0x16 (KB),
extended memory above 1 MB 0x17/0x18 and 0x30/0x31 (KB, at most 0xFFFF), memory above 16 MB
0x34/0x35 (64 KB units), and the checksum of 0x10-0x2D at 0x2E (high byte) / 0x2F. The chip
does not keep the checksum: guest writes leave it alone; `set_cmos_byte` (the BIOS) updates it.

Not modelled: the square-wave output pin (SQWE is kept; nothing is wired to it on a PC), the
RESET pin, the extended 128-byte bank some chipsets have at 0x72/0x73, the 1984 us update.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from ring1.runtime.devices.clock import VirtualClock
from ring1.runtime.devices.irq import IrqLine

INDEX_PORT, DATA_PORT = 0, 1  # offsets in the 2-port region at 0x70
CMOS_SIZE = 128
NVRAM_FIRST = 0x0E  # past the clock and status registers: general-purpose battery-backed RAM
NMI_MASK = 0x80  # index port bit 7: NMI disabled (the PC's, not the chip's)

REG_SECONDS, REG_SECONDS_ALARM = 0x00, 0x01
REG_MINUTES, REG_MINUTES_ALARM = 0x02, 0x03
REG_HOURS, REG_HOURS_ALARM = 0x04, 0x05
REG_DAY_OF_WEEK, REG_DAY_OF_MONTH, REG_MONTH, REG_YEAR = 0x06, 0x07, 0x08, 0x09
REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
REG_CENTURY = 0x32
TIME_REGISTERS = frozenset(
    (REG_SECONDS, REG_MINUTES, REG_HOURS, REG_DAY_OF_WEEK, REG_DAY_OF_MONTH, REG_MONTH, REG_YEAR, REG_CENTURY)
)

A_UIP = 0x80
A_DV = 0x70
A_RS = 0x0F
DV_32KHZ = 0x20  # DV = 010: the 32.768 kHz time base, dividers running
B_SET, B_PIE, B_AIE, B_UIE, B_SQWE, B_DM_BINARY, B_24H, B_DSE = 0x80, 0x40, 0x20, 0x10, 0x08, 0x04, 0x02, 0x01
C_IRQF, C_PF, C_AF, C_UF = 0x80, 0x40, 0x20, 0x10
D_VRT = 0x80
HOUR_PM = 0x80
ALARM_DONT_CARE = 0xC0

# CMOS bytes a BIOS fills.
CMOS_EQUIPMENT = 0x14
CMOS_BASE_MEMORY = 0x15  # and 0x16
CMOS_EXTENDED_MEMORY = 0x17  # and 0x18
CMOS_CHECKSUM_FIRST, CMOS_CHECKSUM_LAST = 0x10, 0x2D
CMOS_CHECKSUM = 0x2E  # high byte; 0x2F the low byte
CMOS_EXTENDED_MEMORY_POST = 0x30  # and 0x31
CMOS_MEMORY_ABOVE_16M = 0x34  # and 0x35, in 64 KB units
EQUIPMENT_FPU = 0x02  # bits 5-4 = 00: an EGA/VGA display (its own BIOS); no floppy drive (bit 0)

POWER_ON_A = DV_32KHZ | 0x06  # 32.768 kHz, RS = 0110 (1024 Hz): what a PC BIOS leaves
POWER_ON_B = B_24H  # BCD, 24-hour, no interrupts

CRYSTAL_HZ = 32_768
NS_PER_SECOND = 1_000_000_000
SECONDS_PER_DAY = 86_400
UIP_LEAD_NS = 8 * NS_PER_SECOND // CRYSTAL_HZ  # 244 us: UIP rises 8 crystal cycles before an update
FIRST_UPDATE_NS = NS_PER_SECOND // 2  # after the divider leaves reset


def days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (any year, negative ones too)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * ((month + 9) % 12) + 2) // 5 + day - 1  # counted from March 1st
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146_097 + day_of_era - 719_468


def civil_from_days(days: int) -> tuple[int, int, int]:
    """The inverse of days_from_civil: (year, month, day)."""
    days += 719_468
    era = days // 146_097
    day_of_era = days - era * 146_097
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36_524 - day_of_era // 146_096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    march_month = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * march_month + 2) // 5 + 1
    month = march_month + 3 if march_month < 10 else march_month - 9
    return year_of_era + era * 400 + (month <= 2), month, day


def days_in_month(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _next_match(now: tuple[int, int, int], hours: list[int], minutes: list[int], seconds: list[int]) -> int:
    """Seconds of the day (possibly the next day, + 86400) of the first (h, m, s) of the sorted
    candidate lists strictly after `now`."""
    h, m, s = now
    for hh in hours:
        if hh < h:
            continue
        for mm in minutes:
            if hh == h and mm < m:
                continue
            for ss in seconds:
                if hh == h and mm == m and ss <= s:
                    continue
                return hh * 3600 + mm * 60 + ss
    return SECONDS_PER_DAY + hours[0] * 3600 + minutes[0] * 60 + seconds[0]


class RealTimeClock:
    """The MC146818 on the bus as a 2-port region (index, data) at 0x70, driving IRQ 8."""

    def __init__(
        self,
        clock: VirtualClock,
        irq: IrqLine,
        *,
        memory_size: int,
        start: datetime | None = None,
        fpu: bool = True,
    ) -> None:
        """`memory_size`: guest RAM in bytes (below 4 GB), for the BIOS's CMOS bytes. `start`:
        the wall time at virtual time now (naive = UTC); default the host's UTC time."""
        self.clock = clock
        self.irq = irq
        self._ram = bytearray(CMOS_SIZE)
        self._index = 0
        self._nmi_masked = False
        self._flags = 0  # PF | AF | UF, as status C shows them (IRQF is derived)
        self._ram[REG_A] = POWER_ON_A
        self._ram[REG_B] = POWER_ON_B
        # The divider: time `origin` (virtual ns) is when it left reset; update k comes at
        # origin + 500 ms + k s; the periodic flag rises every `_period_ticks` crystal cycles.
        self._origin: int | None = None
        self._updates_done = 0  # updates up to now, counted from the origin
        self._edges_done = 0  # periodic edges up to now, at the current rate
        self._dst_fell_on: int | None = None  # the day (days since 1970) of the last fall-back
        self._periodic_timer = clock.timer(self._timer_fired, "rtc-periodic")
        self._update_timer = clock.timer(self._timer_fired, "rtc-update")

        if start is None:
            start = datetime.fromtimestamp(time.time(), UTC)
        elif start.tzinfo is not None:
            start = start.astimezone(UTC)
        fraction_ns = start.microsecond * 1000
        # Update 0 fell at the start of the current second, so the next one is a second later.
        now = clock.now()
        self._origin = now - fraction_ns - FIRST_UPDATE_NS
        self._updates_done = self._updates_due(now)
        self._edges_done = self._edges_due(now)
        days = days_from_civil(start.year, start.month, start.day)
        weekday = (days + 4) % 7  # 1970-01-01 was a Thursday; 0 = Sunday
        self._store_time(days * SECONDS_PER_DAY + start.hour * 3600 + start.minute * 60 + start.second, weekday + 1)
        self._fill_bios_bytes(memory_size, fpu)

    # ------------------------------------------------------------------ the bus

    def read(self, offset: int, size: int) -> int:
        if offset == INDEX_PORT:
            return 0xFF  # the index register is write-only
        return self._read_register(self._index)

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == INDEX_PORT:
            self._index = value & 0x7F
            self._nmi_masked = bool(value & NMI_MASK)
        else:
            self._write_register(self._index, value)

    @property
    def nmi_masked(self) -> bool:
        """Bit 7 of the last index written: NMI disabled."""
        return self._nmi_masked

    @property
    def index(self) -> int:
        return self._index

    # ------------------------------------------------------------------ the BIOS's side

    def cmos_byte(self, index: int) -> int:
        """A CMOS byte as the guest would read it, without a read's effect (C is not cleared)."""
        index &= 0x7F
        self._sync()
        if index == REG_A:
            return self._ram[REG_A] | (A_UIP if self._update_imminent() else 0)
        if index == REG_C:
            return self._flags | (C_IRQF if self._irqf() else 0)
        if index == REG_D:
            return D_VRT
        return self._ram[index]

    def set_cmos_byte(self, index: int, value: int) -> None:
        """Write a CMOS byte as a BIOS setup does: the checksum follows bytes 0x10-0x2D."""
        self._ram[index & 0x7F] = value & 0xFF
        if CMOS_CHECKSUM_FIRST <= index <= CMOS_CHECKSUM_LAST:
            self._update_checksum()

    def nvram(self) -> bytes:
        """The battery-backed RAM (bytes 0x0E-0x7F): what survives a reset or power-off."""
        return bytes(self._ram[NVRAM_FIRST:CMOS_SIZE])

    def restore_nvram(self, data: bytes) -> None:
        """After a reset (`ring1 run --reboot`): the battery-backed RAM as it was."""
        self._ram[NVRAM_FIRST : NVRAM_FIRST + len(data)] = data[: CMOS_SIZE - NVRAM_FIRST]

    def _fill_bios_bytes(self, memory_size: int, fpu: bool) -> None:
        kb = max(0, memory_size) // 1024
        base_kb = min(kb, 640)
        extended_kb = min(max(0, kb - 1024), 0xFFFF)
        above_16m = min(max(0, memory_size - (16 << 20)) // (64 << 10), 0xFFFF)
        self._ram[CMOS_EQUIPMENT] = EQUIPMENT_FPU if fpu else 0
        self._ram[CMOS_BASE_MEMORY : CMOS_BASE_MEMORY + 2] = base_kb.to_bytes(2, "little")
        self._ram[CMOS_EXTENDED_MEMORY : CMOS_EXTENDED_MEMORY + 2] = extended_kb.to_bytes(2, "little")
        self._ram[CMOS_EXTENDED_MEMORY_POST : CMOS_EXTENDED_MEMORY_POST + 2] = extended_kb.to_bytes(2, "little")
        self._ram[CMOS_MEMORY_ABOVE_16M : CMOS_MEMORY_ABOVE_16M + 2] = above_16m.to_bytes(2, "little")
        self._update_checksum()

    def _update_checksum(self) -> None:
        total = sum(self._ram[CMOS_CHECKSUM_FIRST : CMOS_CHECKSUM_LAST + 1]) & 0xFFFF
        self._ram[CMOS_CHECKSUM : CMOS_CHECKSUM + 2] = total.to_bytes(2, "big")

    # ------------------------------------------------------------------ registers

    def _read_register(self, index: int) -> int:
        if index in TIME_REGISTERS or index in (REG_A, REG_C):
            self._sync()
        if index == REG_A:
            return self._ram[REG_A] | (A_UIP if self._update_imminent() else 0)
        if index == REG_C:
            value = self._flags | (C_IRQF if self._irqf() else 0)
            self._flags = 0
            self.irq.set(False)
            self._rearm()
            return value
        if index == REG_D:
            return D_VRT
        return self._ram[index]

    def _write_register(self, index: int, value: int) -> None:
        if index in (REG_C, REG_D):
            return  # read-only
        self._sync()
        if index == REG_A:
            self._write_a(value & ~A_UIP)
        elif index == REG_B:
            if value & B_SET:
                value &= ~B_UIE  # SET clears UIE (and aborts the update that UIP announced)
            self._ram[REG_B] = value
        else:
            self._ram[index] = value
        self.irq.set(self._irqf())
        self._rearm()

    def _write_a(self, value: int) -> None:
        was_running = self._origin is not None
        self._ram[REG_A] = value
        if value & A_DV != DV_32KHZ:
            self._origin = None  # divider in reset (11x) or not on a 32 kHz time base
            return
        now = self.clock.now()
        if not was_running:
            # Out of reset: the divider chain starts now, the first update 500 ms later.
            self._origin = now
            self._updates_done = 0
        self._edges_done = self._edges_due(now)  # a new rate starts counting from here

    # ------------------------------------------------------------------ the divider

    def _period_ticks(self) -> int:
        """Crystal cycles between periodic edges, 0 when RS selects none."""
        rs = self._ram[REG_A] & A_RS
        if rs == 0:
            return 0
        if rs < 3:
            rs += 7  # RS 1 and 2 on a 32 kHz base give the 256 Hz and 128 Hz of RS 8 and 9
        return 1 << (rs - 1)

    def _updates_due(self, now: int) -> int:
        assert self._origin is not None
        elapsed = now - self._origin - FIRST_UPDATE_NS
        return elapsed // NS_PER_SECOND + 1 if elapsed >= 0 else 0

    def _update_time(self, k: int) -> int:
        assert self._origin is not None
        return self._origin + FIRST_UPDATE_NS + k * NS_PER_SECOND

    def _edges_due(self, now: int) -> int:
        period = self._period_ticks()
        if self._origin is None or period == 0:
            return 0
        return (now - self._origin) * CRYSTAL_HZ // NS_PER_SECOND // period

    def _edge_time(self, n: int) -> int:
        assert self._origin is not None
        return self._origin - (-n * self._period_ticks() * NS_PER_SECOND // CRYSTAL_HZ)  # ceiling

    def _update_imminent(self) -> bool:
        if self._origin is None or self._ram[REG_B] & B_SET:
            return False
        return self.clock.now() >= self._update_time(self._updates_done) - UIP_LEAD_NS

    def _sync(self) -> None:
        """Bring the calendar and the flags up to the virtual time now."""
        if self._origin is None:
            return
        now = self.clock.now()
        due = self._updates_due(now)
        if due > self._updates_done:
            updates = due - self._updates_done
            self._updates_done = due
            if not self._ram[REG_B] & B_SET:
                self._run_updates(updates)
        edges = self._edges_due(now)
        if edges > self._edges_done:
            self._edges_done = edges
            self._flags |= C_PF

    # ------------------------------------------------------------------ interrupts

    def _irqf(self) -> bool:
        # Each flag of C sits at the bit of its enable in B (PF/PIE 6, AF/AIE 5, UF/UIE 4).
        return bool(self._flags & self._ram[REG_B] & (C_PF | C_AF | C_UF))

    def _timer_fired(self, deadline: int) -> None:
        self._sync()
        self.irq.set(self._irqf())
        self._rearm()

    def _rearm(self) -> None:
        """Arm a timer only for what can interrupt: the next periodic edge if PIE, the next
        update if UIE or AIE. Flags nobody enabled are computed when the guest reads C."""
        b = self._ram[REG_B]
        periodic = None
        update = None
        if self._origin is not None:
            if b & B_PIE and self._period_ticks():
                periodic = self._edge_time(self._edges_done + 1)
            if b & (B_UIE | B_AIE) and not b & B_SET:
                update = self._update_time(self._updates_done)
        for timer, deadline in ((self._periodic_timer, periodic), (self._update_timer, update)):
            if deadline is None:
                if timer.armed:
                    timer.cancel()
            elif timer.deadline != deadline:
                timer.arm(deadline)

    # ------------------------------------------------------------------ the calendar

    def _binary(self) -> bool:
        return bool(self._ram[REG_B] & B_DM_BINARY)

    def _decode(self, byte: int) -> int | None:
        """A time byte's value in the current data mode; None for a byte BCD cannot mean."""
        if self._binary():
            return byte
        if byte & 0x0F > 9 or byte >> 4 > 9:
            return None
        return (byte >> 4) * 10 + (byte & 0x0F)

    def _encode(self, value: int) -> int:
        return value if self._binary() else (value // 10) << 4 | value % 10

    def _decode_hour(self, byte: int) -> int | None:
        if self._ram[REG_B] & B_24H:
            hour = self._decode(byte)
            return hour if hour is not None and hour < 24 else None
        hour12 = self._decode(byte & ~HOUR_PM)
        if hour12 is None or not 1 <= hour12 <= 12:
            return None
        return hour12 % 12 + (12 if byte & HOUR_PM else 0)

    def _encode_hour(self, hour: int) -> int:
        if self._ram[REG_B] & B_24H:
            return self._encode(hour)
        return self._encode(hour % 12 or 12) | (HOUR_PM if hour >= 12 else 0)

    def _load_time(self) -> tuple[int, int]:
        """(seconds since 1970 of the registers' date and time, the chip's weekday offset),
        each field out of range taken at its minimum (the chip's "unpredictable")."""
        ram = self._ram

        def field(index: int, low: int, high: int) -> int:
            value = self._decode(ram[index])
            return value if value is not None and low <= value <= high else low

        second = field(REG_SECONDS, 0, 59)
        minute = field(REG_MINUTES, 0, 59)
        hour = self._decode_hour(ram[REG_HOURS]) or 0
        month = field(REG_MONTH, 1, 12)
        year = field(REG_CENTURY, 0, 99) * 100 + field(REG_YEAR, 0, 99)
        day = field(REG_DAY_OF_MONTH, 1, 31)
        if day > days_in_month(year, month):
            day = 1
        weekday = field(REG_DAY_OF_WEEK, 1, 7)
        days = days_from_civil(year, month, day)
        return days * SECONDS_PER_DAY + hour * 3600 + minute * 60 + second, (weekday - 1 - days) % 7

    def _store_time(self, seconds: int, weekday: int) -> None:
        """Write the registers for `seconds` since 1970, the day of week register `weekday`."""
        days, second_of_day = divmod(seconds, SECONDS_PER_DAY)
        year, month, day = civil_from_days(days)
        ram = self._ram
        ram[REG_SECONDS] = self._encode(second_of_day % 60)
        ram[REG_MINUTES] = self._encode(second_of_day // 60 % 60)
        ram[REG_HOURS] = self._encode_hour(second_of_day // 3600)
        ram[REG_DAY_OF_WEEK] = self._encode(weekday)
        ram[REG_DAY_OF_MONTH] = self._encode(day)
        ram[REG_MONTH] = self._encode(month)
        ram[REG_YEAR] = self._encode(year % 100)
        ram[REG_CENTURY] = self._encode(year // 100 % 100)

    def _run_updates(self, count: int) -> None:
        """`count` update cycles: the time advances a second each, UF rises, AF if the alarm
        bytes matched after any of them, and DSE's two special updates happen on their day."""
        seconds, weekday_offset = self._load_time()
        alarm = self._alarm_candidates()
        alarmed = False
        while count:
            event = self._next_dst_event(seconds, weekday_offset) if self._ram[REG_B] & B_DSE else None
            if event is None or event[0] > count:
                alarmed = alarmed or self._alarm_within(seconds, count, alarm)
                seconds += count
                break
            steps, landing, day = event
            alarmed = alarmed or self._alarm_within(seconds, steps - 1, alarm)
            if landing < seconds + steps:
                self._dst_fell_on = day  # the hour repeats once: the second 01:59:59 goes on
            seconds = landing
            alarmed = alarmed or self._alarm_within(landing - 1, 1, alarm)
            count -= steps
        self._store_time(seconds, (seconds // SECONDS_PER_DAY + weekday_offset) % 7 + 1)
        self._flags |= C_UF | (C_AF if alarmed else 0)

    def _alarm_candidates(self) -> tuple[list[int], list[int], list[int]] | None:
        """The hours, minutes and seconds the alarm bytes accept (None: never)."""
        ram = self._ram

        def accepted(index: int, limit: int) -> list[int]:
            byte = ram[index]
            if byte & ALARM_DONT_CARE == ALARM_DONT_CARE:
                return list(range(limit))
            value = self._decode_hour(byte) if index == REG_HOURS_ALARM else self._decode(byte)
            return [value] if value is not None and value < limit else []

        hours = accepted(REG_HOURS_ALARM, 24)
        minutes = accepted(REG_MINUTES_ALARM, 60)
        seconds = accepted(REG_SECONDS_ALARM, 60)
        if not (hours and minutes and seconds):
            return None
        return hours, minutes, seconds

    @staticmethod
    def _alarm_within(seconds: int, count: int, alarm: tuple[list[int], list[int], list[int]] | None) -> bool:
        """Does the time after one of the next `count` updates from `seconds` match the alarm?"""
        if alarm is None or count <= 0:
            return False
        second_of_day = seconds % SECONDS_PER_DAY
        now = (second_of_day // 3600, second_of_day // 60 % 60, second_of_day % 60)
        return _next_match(now, *alarm) - second_of_day <= count

    def _next_dst_event(self, seconds: int, weekday_offset: int) -> tuple[int, int, int] | None:
        """The next of DSE's special updates after `seconds`: (how many updates from now, the
        time it lands on, its day). The chip finds "the last Sunday" with its own weekday
        counter: a Sunday dated 24-30 April (spring forward) or 25-31 October (fall back, once)."""
        days = seconds // SECONDS_PER_DAY
        for day in range(days, days + 400):  # the next April and October are within a year
            if (day + weekday_offset) % 7 != 0:
                continue
            _, month, date = civil_from_days(day)
            at = day * SECONDS_PER_DAY + 2 * 3600  # the update that would make 02:00:00
            if at <= seconds:
                continue
            if month == 4 and date >= 24:
                return at - seconds, at + 3600, day
            if month == 10 and date >= 25 and day != self._dst_fell_on:
                return at - seconds, at - 3600, day
        return None
