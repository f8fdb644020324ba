"""The MC146818 RTC/CMOS at the register level: time formats, status A-D, interrupts over
virtual time, the NMI mask bit and the CMOS bytes a BIOS fills."""

from __future__ import annotations

import datetime as dt

import pytest

from ring1.runtime.devices.clock import VirtualClock
from ring1.runtime.devices.irq import IrqLine
from ring1.runtime.devices.rtc import (
    B_24H,
    B_AIE,
    B_DM_BINARY,
    B_DSE,
    B_PIE,
    B_SET,
    B_UIE,
    C_AF,
    C_IRQF,
    C_PF,
    C_UF,
    REG_A,
    REG_B,
    REG_C,
    REG_CENTURY,
    REG_D,
    REG_DAY_OF_MONTH,
    REG_DAY_OF_WEEK,
    REG_HOURS,
    REG_HOURS_ALARM,
    REG_MINUTES,
    REG_MINUTES_ALARM,
    REG_MONTH,
    REG_SECONDS,
    REG_SECONDS_ALARM,
    REG_YEAR,
    RealTimeClock,
    civil_from_days,
    days_from_civil,
)

SECOND = 1_000_000_000
LEAP_DAY_EVE = dt.datetime(2024, 2, 29, 23, 59, 58)  # a Thursday


class Recorder:
    """An interrupt controller input: the times its pin rose."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.rises: list[int] = []

    def set_irq(self, pin: int, level: bool) -> None:
        if level:
            self.rises.append(self.clock.now())


def make(start: dt.datetime = LEAP_DAY_EVE, memory: int = 32 << 20) -> tuple[RealTimeClock, VirtualClock, IrqLine]:
    clock = VirtualClock(ns_per_insn=1)  # one instruction = 1 ns: tests place time exactly
    line = IrqLine("irq8")
    return RealTimeClock(clock, line, memory_size=memory, start=start), clock, line


def rd(rtc: RealTimeClock, index: int) -> int:
    rtc.write(0, 1, index)
    return rtc.read(1, 1)


def wr(rtc: RealTimeClock, index: int, value: int) -> None:
    rtc.write(0, 1, index)
    rtc.write(1, 1, value)


def time_bytes(rtc: RealTimeClock) -> list[int]:
    regs = (REG_CENTURY, REG_YEAR, REG_MONTH, REG_DAY_OF_MONTH, REG_DAY_OF_WEEK, REG_HOURS, REG_MINUTES, REG_SECONDS)
    return [rd(rtc, r) for r in regs]


def advance_to(clock: VirtualClock, ns: int) -> None:
    clock.advance(ns - clock.now())


def test_civil_day_arithmetic_matches_the_gregorian_calendar() -> None:
    dates = (dt.date(1970, 1, 1), dt.date(2000, 2, 29), dt.date(2100, 3, 1), dt.date(1, 1, 1), dt.date(9999, 12, 31))
    for date in dates:
        days = (date - dt.date(1970, 1, 1)).days
        assert days_from_civil(date.year, date.month, date.day) == days
        assert civil_from_days(days) == (date.year, date.month, date.day)


def test_power_on_registers_hold_the_start_time_in_bcd_24_hour() -> None:
    rtc, clock, _ = make()
    assert rd(rtc, REG_A) == 0x26 and rd(rtc, REG_B) == B_24H and rd(rtc, REG_D) == 0x80
    assert time_bytes(rtc) == [0x20, 0x24, 0x02, 0x29, 5, 0x23, 0x59, 0x58]  # Thursday = 5 (Sunday = 1)
    advance_to(clock, 2 * SECOND)
    assert time_bytes(rtc) == [0x20, 0x24, 0x03, 0x01, 6, 0x00, 0x00, 0x00]  # leap day over, Friday


def test_binary_mode_and_setting_the_time_with_set() -> None:
    rtc, clock, _ = make()
    wr(rtc, REG_B, B_SET | B_DM_BINARY | B_24H)
    for reg, value in ((REG_SECONDS, 59), (REG_MINUTES, 59), (REG_HOURS, 23), (REG_DAY_OF_MONTH, 31)):
        wr(rtc, reg, value)
    wr(rtc, REG_MONTH, 12)
    wr(rtc, REG_YEAR, 99)
    wr(rtc, REG_CENTURY, 20)
    wr(rtc, REG_DAY_OF_WEEK, 4)
    advance_to(clock, 5 * SECOND)
    assert rd(rtc, REG_SECONDS) == 59  # SET holds the time
    wr(rtc, REG_B, B_DM_BINARY | B_24H)
    advance_to(clock, 6 * SECOND)
    # 2099-12-31 23:59:59 + 1 s: the year wraps and the century follows.
    assert time_bytes(rtc) == [21, 0, 1, 1, 5, 0, 0, 0]


def test_2100_is_not_a_leap_year() -> None:
    rtc, clock, _ = make(dt.datetime(2100, 2, 28, 23, 59, 59))
    advance_to(clock, SECOND)
    assert [rd(rtc, REG_MONTH), rd(rtc, REG_DAY_OF_MONTH)] == [0x03, 0x01]


def test_12_hour_mode_keeps_pm_in_bit_7() -> None:
    rtc, clock, _ = make(dt.datetime(2024, 5, 1, 11, 59, 59))
    wr(rtc, REG_B, B_SET)  # BCD, 12-hour
    wr(rtc, REG_HOURS, 0x11)  # 11 AM
    wr(rtc, REG_B, 0)
    advance_to(clock, SECOND)
    assert rd(rtc, REG_HOURS) == 0x80 | 0x12  # 12 PM (noon)
    advance_to(clock, 3601 * SECOND)
    assert rd(rtc, REG_HOURS) == 0x80 | 0x01  # 1 PM
    wr(rtc, REG_HOURS, 0x80 | 0x11)
    wr(rtc, REG_MINUTES, 0x59)
    wr(rtc, REG_SECONDS, 0x59)
    advance_to(clock, 3602 * SECOND)
    assert [rd(rtc, REG_HOURS), rd(rtc, REG_DAY_OF_MONTH)] == [0x12, 0x02]  # 12 AM (midnight), next day


def test_changing_the_data_mode_does_not_convert_the_bytes() -> None:
    rtc, _, _ = make()
    wr(rtc, REG_B, B_DM_BINARY | B_24H)
    assert rd(rtc, REG_MINUTES) == 0x59  # the BCD byte, now read as the binary 89


def test_bytes_bcd_cannot_mean_read_back_until_the_update_takes_them_as_zero() -> None:
    rtc, clock, _ = make(dt.datetime(2024, 1, 1, 10, 20, 30))
    wr(rtc, REG_SECONDS, 0x5A)
    assert rd(rtc, REG_SECONDS) == 0x5A
    advance_to(clock, SECOND)
    assert rd(rtc, REG_SECONDS) == 0x01 and rd(rtc, REG_MINUTES) == 0x20


def test_uip_rises_244_us_before_each_update() -> None:
    rtc, clock, _ = make()
    advance_to(clock, SECOND - 244_141)
    assert rd(rtc, REG_A) & 0x80 == 0
    advance_to(clock, SECOND - 244_140)
    assert rd(rtc, REG_A) == 0x80 | 0x26
    assert rd(rtc, REG_SECONDS) == 0x58  # the update has not happened yet
    advance_to(clock, SECOND)
    assert rd(rtc, REG_A) == 0x26 and rd(rtc, REG_SECONDS) == 0x59
    advance_to(clock, 2 * SECOND - 100_000)
    wr(rtc, REG_B, B_SET | B_24H)
    assert rd(rtc, REG_A) == 0x26  # SET inhibits the update and clears UIP


def test_writing_a_ignores_uip() -> None:
    rtc, _, _ = make()
    wr(rtc, REG_A, 0xA6)
    assert rd(rtc, REG_A) == 0x26


@pytest.mark.parametrize(("rs", "hz"), [(3, 8192), (6, 1024), (1, 256), (2, 128), (15, 2)])
def test_periodic_interrupts_at_the_rate_rs_selects_without_drift(rs: int, hz: int) -> None:
    rtc, clock, line = make()
    rec = Recorder(clock)
    line.connect(rec, 8)
    wr(rtc, REG_A, 0x20 | rs)
    wr(rtc, REG_B, B_24H | B_PIE)
    while clock.skip_to_deadline() and clock.now() < 10 * SECOND:
        assert rd(rtc, REG_C) & (C_IRQF | C_PF) == C_IRQF | C_PF  # the handler acknowledges
        assert not line.level
    # 10 s of virtual time, counted exactly; every edge on the divider's own grid.
    assert len(rec.rises) == 10 * hz and rec.rises[-1] == 10 * SECOND
    origin = -SECOND // 2  # the divider left reset 0.5 s before the whole second of the start
    for t in rec.rises:
        ticks = (t - origin) * 32768 / SECOND
        assert abs(ticks - round(ticks)) * SECOND / 32768 < 1  # within 1 ns of a crystal edge
    assert all(abs((b - a) - SECOND / hz) < 1 for a, b in zip(rec.rises, rec.rises[1:], strict=False))


def test_periodic_flag_without_pie_is_polled_and_raises_nothing() -> None:
    rtc, clock, line = make()
    assert rd(rtc, REG_C) == 0
    advance_to(clock, 2_000_000)  # two 1024 Hz periods
    assert rd(rtc, REG_C) == C_PF and not line.level and line.raised == 0
    assert rd(rtc, REG_C) == 0  # reading C cleared it
    assert clock.next_deadline() is None  # no timer armed for a flag nobody enabled


def test_update_ended_interrupt_once_per_virtual_second() -> None:
    rtc, clock, line = make()
    rec = Recorder(clock)
    line.connect(rec, 8)
    wr(rtc, REG_B, B_24H | B_UIE)
    while clock.skip_to_deadline() and clock.now() < 10 * SECOND:
        assert rd(rtc, REG_C) & (C_IRQF | C_UF) == C_IRQF | C_UF
    assert rec.rises == [k * SECOND for k in range(1, 11)]
    assert rd(rtc, REG_SECONDS) == 0x08  # 23:59:58 + 10 s


def test_an_unacknowledged_interrupt_stays_one_level() -> None:
    rtc, clock, line = make()
    wr(rtc, REG_B, B_24H | B_PIE)
    advance_to(clock, SECOND)
    assert line.level and line.raised == 1  # no storm: the line stays up until C is read
    assert rd(rtc, REG_C) == C_IRQF | C_PF | C_UF
    assert not line.level


def test_irqf_follows_the_enables() -> None:
    rtc, clock, line = make()
    advance_to(clock, SECOND)
    assert not line.level
    wr(rtc, REG_B, B_24H | B_UIE)  # UF was already set: IRQF and the line rise at once
    assert line.level
    assert rtc.cmos_byte(REG_C) == C_IRQF | C_PF | C_UF and line.level  # a peek clears nothing
    assert rd(rtc, REG_C) == C_IRQF | C_PF | C_UF and not line.level


def test_alarm_interrupt_and_dont_care_bytes() -> None:
    rtc, clock, line = make(dt.datetime(2024, 6, 1, 8, 0, 0))
    wr(rtc, REG_HOURS_ALARM, 0x08)
    wr(rtc, REG_MINUTES_ALARM, 0x00)
    wr(rtc, REG_SECONDS_ALARM, 0x03)
    wr(rtc, REG_B, B_24H | B_AIE)
    rd(rtc, REG_C)
    advance_to(clock, 2 * SECOND)
    assert not line.level
    advance_to(clock, 3 * SECOND)
    assert line.level and rd(rtc, REG_C) == C_IRQF | C_AF | C_UF | C_PF
    # 0xC0-0xFF: any hour and minute, second 10 of every minute.
    wr(rtc, REG_HOURS_ALARM, 0xC0)
    wr(rtc, REG_MINUTES_ALARM, 0xFF)
    wr(rtc, REG_SECONDS_ALARM, 0x10)
    rec = Recorder(clock)
    line.connect(rec, 8)
    while clock.skip_to_deadline() and clock.now() <= 183 * SECOND:
        rd(rtc, REG_C)
    assert rec.rises == [10 * SECOND, 70 * SECOND, 130 * SECOND]


def test_alarm_flag_found_across_a_long_unobserved_stretch() -> None:
    rtc, clock, _ = make(dt.datetime(2024, 6, 1, 8, 0, 0))
    wr(rtc, REG_HOURS_ALARM, 0x21)
    wr(rtc, REG_MINUTES_ALARM, 0x30)
    wr(rtc, REG_SECONDS_ALARM, 0x00)
    advance_to(clock, 13 * 3600 * SECOND)
    assert rd(rtc, REG_C) & C_AF == 0  # 21:00: not yet
    advance_to(clock, (13 * 3600 + 1800) * SECOND)
    assert rd(rtc, REG_C) & C_AF == C_AF
    assert rd(rtc, REG_HOURS) == 0x21 and rd(rtc, REG_MINUTES) == 0x30


def test_status_c_and_d_are_read_only() -> None:
    rtc, clock, _ = make()
    advance_to(clock, SECOND)
    wr(rtc, REG_C, 0)
    wr(rtc, REG_D, 0)
    assert rd(rtc, REG_D) == 0x80
    assert rd(rtc, REG_C) == C_PF | C_UF


def test_set_clears_uie_and_stops_the_time() -> None:
    rtc, clock, _ = make()
    wr(rtc, REG_B, B_SET | B_UIE | B_24H)
    assert rd(rtc, REG_B) == B_SET | B_24H
    advance_to(clock, 3 * SECOND)
    assert rd(rtc, REG_SECONDS) == 0x58 and rd(rtc, REG_C) & C_UF == 0


def test_divider_reset_holds_the_clock_and_the_first_update_is_half_a_second_after() -> None:
    rtc, clock, _ = make()
    wr(rtc, REG_A, 0x76)  # DV = 111: divider in reset
    advance_to(clock, 5 * SECOND)
    assert rd(rtc, REG_SECONDS) == 0x58 and rd(rtc, REG_C) == 0
    wr(rtc, REG_A, 0x26)
    advance_to(clock, 5 * SECOND + SECOND // 2 - 1)
    assert rd(rtc, REG_SECONDS) == 0x58
    advance_to(clock, 5 * SECOND + SECOND // 2)
    assert rd(rtc, REG_SECONDS) == 0x59


def test_nmi_mask_bit_of_the_index_port() -> None:
    rtc, _, _ = make()
    assert not rtc.nmi_masked
    rtc.write(0, 1, 0x80 | REG_MONTH)
    assert rtc.nmi_masked and rtc.index == REG_MONTH and rtc.read(1, 1) == 0x02
    rtc.write(0, 1, REG_MONTH)
    assert not rtc.nmi_masked
    assert rtc.read(0, 1) == 0xFF  # the index port is write-only


@pytest.mark.parametrize(
    ("memory", "extended", "above_16m"),
    [(32 << 20, 31 * 1024, 256), (1 << 30, 0xFFFF, (1024 - 16) * 16), (8 << 20, 7 * 1024, 0)],
)
def test_cmos_memory_bytes_and_checksum(memory: int, extended: int, above_16m: int) -> None:
    rtc, _, _ = make(memory=memory)
    word = lambda lo: rd(rtc, lo) | rd(rtc, lo + 1) << 8  # noqa: E731
    assert word(0x15) == 640
    assert word(0x17) == extended and word(0x30) == extended
    assert word(0x34) == above_16m
    assert rd(rtc, 0x14) == 0x02  # an FPU, a VGA, no floppy
    checksum = sum(rd(rtc, i) for i in range(0x10, 0x2E))
    assert rd(rtc, 0x2E) << 8 | rd(rtc, 0x2F) == checksum  # big-endian, high byte first
    wr(rtc, 0x20, 0x5A)  # a guest's write: the chip does not keep the checksum
    assert rd(rtc, 0x2E) << 8 | rd(rtc, 0x2F) == checksum
    rtc.set_cmos_byte(0x21, 0x11)  # the BIOS's: it does
    assert rd(rtc, 0x2E) << 8 | rd(rtc, 0x2F) == checksum + 0x5A + 0x11


def test_ram_bytes_read_back() -> None:
    rtc, _, _ = make()
    for index in (0x0E, 0x3F, 0x7F):
        wr(rtc, index, index ^ 0xA5)
        assert rd(rtc, index) == index ^ 0xA5


def test_daylight_saving_updates_on_the_last_sundays_of_april_and_october() -> None:
    rtc, clock, _ = make(dt.datetime(2024, 4, 28, 1, 59, 58))  # the last Sunday of April 2024
    wr(rtc, REG_B, B_24H | B_DSE)
    advance_to(clock, 2 * SECOND)
    assert [rd(rtc, REG_HOURS), rd(rtc, REG_MINUTES), rd(rtc, REG_SECONDS)] == [0x03, 0x00, 0x00]

    rtc, clock, _ = make(dt.datetime(2024, 10, 27, 1, 59, 59))  # the last Sunday of October 2024
    wr(rtc, REG_B, B_24H | B_DSE)
    advance_to(clock, SECOND)
    assert [rd(rtc, REG_HOURS), rd(rtc, REG_MINUTES), rd(rtc, REG_SECONDS)] == [0x01, 0x00, 0x00]
    advance_to(clock, 3601 * SECOND)  # the repeated hour is not repeated again
    assert [rd(rtc, REG_HOURS), rd(rtc, REG_MINUTES), rd(rtc, REG_SECONDS)] == [0x02, 0x00, 0x00]
    assert rd(rtc, REG_DAY_OF_MONTH) == 0x27

    rtc, clock, _ = make(dt.datetime(2024, 4, 28, 1, 59, 58))
    advance_to(clock, 2 * SECOND)  # without DSE: an ordinary update
    assert rd(rtc, REG_HOURS) == 0x02


def test_default_start_is_the_hosts_utc_time() -> None:
    rtc = RealTimeClock(VirtualClock(), IrqLine("irq8"), memory_size=1 << 20)
    bcd = lambda reg: (rd(rtc, reg) >> 4) * 10 + (rd(rtc, reg) & 0x0F)  # noqa: E731
    year = bcd(REG_CENTURY) * 100 + bcd(REG_YEAR)
    seen = dt.datetime(year, bcd(REG_MONTH), bcd(REG_DAY_OF_MONTH), bcd(REG_HOURS), bcd(REG_MINUTES), bcd(REG_SECONDS))
    host = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    assert abs((host - seen).total_seconds()) < 5
    assert rd(rtc, REG_DAY_OF_WEEK) == seen.isoweekday() % 7 + 1  # Sunday = 1


def test_an_aware_start_time_is_taken_in_utc() -> None:
    rtc, _, _ = make(dt.datetime(2024, 3, 1, 1, 59, 58, tzinfo=dt.timezone(dt.timedelta(hours=2))))
    assert time_bytes(rtc) == [0x20, 0x24, 0x02, 0x29, 5, 0x23, 0x59, 0x58]
