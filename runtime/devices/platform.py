"""The virtual platform `ring1 run` gives a guest, assembled on the device bus
(ring1.runtime.devices.bus), with one virtual clock (devices/clock.py) and the ISA interrupt
lines (devices/irq.py):

  0xFEE00000            the local APIC (devices/lapic.py, MMIO; MSR 0x1B): the CPU's interrupt
                        controller, left by the "BIOS" in virtual-wire mode (LINT0 = ExtINT
                        from the 8259, LINT1 = NMI), with its timer;
  0xFEC00000            the I/O APIC (devices/ioapic.py, MMIO): 24 pins, ISA IRQ n on pin n
                        but IRQ 0 on pin 2, as the MP and ACPI tables say;
  0x20-0x21, 0xA0-0xA1  the 8259A pair (devices/pic.py);
  0x4D0-0x4D1           the ELCR (edge/level per IRQ);
  0x40-0x43             the 8254 PIT (devices/pit.py), channel 0 on IRQ 0;
  0x61                  system control port B: PIT channel 2's gate and output, the speaker;
  0x60, 0x64            the i8042 keyboard controller (devices/kbc.py), IRQ 1, reset (0xFE);
  0x92                  system control port A: fast A20 and reset;
  0x70-0x71             the MC146818 RTC and CMOS (devices/rtc.py), IRQ 8;
  0x1F0-0x1F7, 0x3F6    the primary IDE/ATA channel (devices/ata.py), IRQ 14, `--disk` images;
  0xCF8-0xCFF           PCI configuration mechanism #1 (devices/pci.py): 440FX host bridge,
                        PIIX3 ISA bridge and IDE function; 0xCF9 reset;
  0x510-0x511           QEMU's fw_cfg (devices/fwcfg.py): signature, RAM size, CPU count;
  0x600-0x60B           the ACPI PM1a event and control blocks and the PM timer
                        (devices/acpi.py), SCI on IRQ 9; S5 powers the machine off;
  0x3B0-0x3DF           the VGA's registers (devices/vga.py); its text screen is guest RAM
                        at 0xB8000, read when shown (--display text, --screenshot);
  0x3F8-0x3FF  COM1, a 16550A UART on IRQ 4 (devices/serial.py): the console;
  0x2F8-0x2FF  COM2, a 16550A UART on IRQ 3 (its output goes to the console too);
  0xF4         the exit port (devices/ports.py): a write ends the run with that exit status;
  0x80         POST codes (devices/ports.py): kept for diagnoses; reads float high. The
               `in`/`out` nanobenchmarks use it.

Every other port floats high on reads and ignores writes, as an empty ISA bus does. Every IN
and OUT is counted per port and direction, for `ring1 run --stats`.

The same platform serves every engine: the interpreter calls io_in/io_out from its IN and
OUT semantics, the VMM from its callouts or unicorn's I/O hooks; every engine advances the
clock by the instructions it runs and asks `interrupt_pending` / `acknowledge_interrupt` at
instruction boundaries (ring1.runtime.cpu.machine.Platform).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from ring1.runtime.boot import firmware as acpi_ports
from ring1.runtime.boot.bios_data import write_bios_data_area
from ring1.runtime.boot.firmware import FirmwareLayout, FirmwareTables, install_tables
from ring1.runtime.cpu.memory import PhysicalMemory
from ring1.runtime.devices.acpi import AcpiPm
from ring1.runtime.devices.ata import AtaChannel
from ring1.runtime.devices.bus import Bus
from ring1.runtime.devices.clock import VirtualClock
from ring1.runtime.devices.disk import DiskImage
from ring1.runtime.devices.fwcfg import FirmwareConfig
from ring1.runtime.devices.ioapic import IOAPIC_DEFAULT_BASE, IOAPIC_MMIO_LENGTH, IoApic
from ring1.runtime.devices.irq import IrqLine
from ring1.runtime.devices.kbc import A20Gate, KeyboardController, SystemControlPortA, SystemReset
from ring1.runtime.devices.lapic import APIC_DEFAULT_BASE, LAPIC_MMIO_LENGTH, LocalApic
from ring1.runtime.devices.pci import pc_pci_bus
from ring1.runtime.devices.pic import ELCR_PORT, MASTER_PORT, SLAVE_PORT, PicPair
from ring1.runtime.devices.pit import Pit
from ring1.runtime.devices.ports import ExitPort, GuestExit, PostPort
from ring1.runtime.devices.rom import Rom
from ring1.runtime.devices.rtc import RealTimeClock
from ring1.runtime.devices.serial import COM1_BASE, COM1_IRQ, COM2_BASE, COM2_IRQ, ConsoleSink, Serial16550
from ring1.runtime.devices.vga import PORT_BASE as VGA_PORTS
from ring1.runtime.devices.vga import PORT_COUNT as VGA_PORT_COUNT
from ring1.runtime.devices.vga import VgaText

COM1 = COM1_BASE
EXIT_PORT = 0xF4
POST_PORT = 0x80
ISA_IRQS = 16
APIC_BASE_MSR = 0x1B
DISPLAY_PERIOD_NS = 100_000_000  # --display text: at most ten redraws per virtual second

__all__ = ["COM1", "EXIT_PORT", "POST_PORT", "ConsoleSink", "GuestExit", "GuestPlatform"]


class GuestPlatform(Bus):
    """The PC: the interrupt controllers, the COM ports, the exit and POST ports, one clock."""

    def __init__(
        self,
        console: Callable[[bytes], None] | None = None,
        clock: VirtualClock | None = None,
        *,
        memory_size: int = 16 << 20,
        disks: Sequence[DiskImage] = (),
        rtc_start: datetime | None = None,
        post_port: int = POST_PORT,
    ) -> None:
        """`disks`: the primary IDE channel's master and slave (at most two), opened by the
        caller and closed by `close()`. `rtc_start`: the RTC's wall time at power-on (default
        the host's UTC time)."""
        super().__init__()
        if len(disks) > 2:
            raise ValueError("at most two disks: the primary IDE channel's master and slave")
        self.clock = clock if clock is not None else VirtualClock()
        self.memory_size = memory_size
        self.console = console if console is not None else ConsoleSink()
        self.pic = PicPair()
        self.map_ports("pic-master", MASTER_PORT, 2, self.pic.master)
        self.map_ports("pic-slave", SLAVE_PORT, 2, self.pic.slave)
        self.map_ports("elcr", ELCR_PORT, 2, self.pic.elcr)
        self.lapic = LocalApic(self.clock, pic=self.pic)
        self.lapic.firmware_virtual_wire()  # as a PC BIOS leaves it (a --bios ROM does it itself)
        self.ioapic = IoApic(self.lapic)
        self.map_mmio("LAPIC", APIC_DEFAULT_BASE, LAPIC_MMIO_LENGTH, self.lapic)
        self.map_mmio("IOAPIC", IOAPIC_DEFAULT_BASE, IOAPIC_MMIO_LENGTH, self.ioapic)
        # The ISA bus's interrupt request lines, each wired to the 8259 input of its number
        # and to the I/O APIC pin the firmware tables give (IRQ 0 on pin 2, the others on
        # their own number; pin 0 is the 8259's INTR in virtual-wire boards, left unconnected).
        self.irq = [IrqLine(f"IRQ{n}") for n in range(ISA_IRQS)]
        for n, line in enumerate(self.irq):
            line.connect(self.pic, n)
            if n != 2:
                line.connect(self.ioapic, 2 if n == 0 else n)
        self.com1 = Serial16550(self.console, irq=self.irq[COM1_IRQ], clock=self.clock, name="COM1")
        self.com2 = Serial16550(self.console, irq=self.irq[COM2_IRQ], clock=self.clock, name="COM2")
        self.pit = Pit(self.clock, self.irq[0])
        self.map_ports("PIT", 0x40, 4, self.pit.ports)
        self.map_ports("port B", 0x61, 1, self.pit.port_b)
        self.a20 = A20Gate()
        self.kbc = KeyboardController(self.irq[1], a20=self.a20)
        self.map_ports("i8042 data", 0x60, 1, self.kbc.data_port)
        self.map_ports("i8042 command", 0x64, 1, self.kbc.command_port)
        self.map_ports("port A", 0x92, 1, SystemControlPortA(self.a20))
        self.rtc = RealTimeClock(self.clock, self.irq[8], memory_size=memory_size, start=rtc_start)
        self.map_ports("RTC", 0x70, 2, self.rtc)
        self.ide = AtaChannel(self.irq[14], *disks)
        self.ide.map_on(self)
        self.pci = pc_pci_bus(self.ide, reset_system=self._pci_reset)
        self.map_ports("pci-config", 0xCF8, 8, self.pci, split=False)
        self.fw_cfg = FirmwareConfig(ram_size=memory_size)
        self.map_ports("fw_cfg", 0x510, 2, self.fw_cfg, split=False)
        self.acpi = AcpiPm(self.clock, self.irq[acpi_ports.SCI_IRQ])
        self.map_ports("PM1a_EVT", acpi_ports.PM1A_EVT_PORT, 4, self.acpi.event_block, split=False)
        self.map_ports("PM1a_CNT", acpi_ports.PM1A_CNT_PORT, 2, self.acpi.control_block, split=False)
        self.map_ports("PM_TMR", acpi_ports.PM_TMR_PORT, 4, self.acpi.timer_block, split=False)
        self.vga: VgaText | None = None  # made when guest memory exists (install_firmware)
        self.post = PostPort()
        self.map_ports("COM1", COM1_BASE, 8, self.com1)
        self.map_ports("COM2", COM2_BASE, 8, self.com2)
        self.map_ports("exit", EXIT_PORT, 1, ExitPort(EXIT_PORT), split=False)
        self.map_ports("POST", post_port, 1, self.post)

    # ------------------------------------------------------------ the CPU's interrupt controller

    def interrupt_pending(self) -> bool:
        return self.lapic.interrupt_pending()  # (the 8259 through LINT0, or with the APIC off)

    def acknowledge_interrupt(self) -> int:
        return self.lapic.acknowledge()

    def read_msr(self, index: int) -> int | None:
        return self.lapic.msr_read() if index == APIC_BASE_MSR else None

    def write_msr(self, index: int, value: int) -> bool:
        if index != APIC_BASE_MSR:
            return False
        self.lapic.msr_write(value)
        return True

    def apic_present(self) -> bool:
        return self.lapic.globally_enabled

    def install_firmware(self, memory: PhysicalMemory) -> FirmwareTables:
        """What a BIOS leaves in guest memory before a kernel boots: the BIOS data area (COM
        ports, base memory, the EBDA), the MP and ACPI tables; and the VGA, whose text screen
        is that memory. A boot loader then writes the kernel over it where they meet."""
        write_bios_data_area(memory, memory_size=self.memory_size, com_ports=(COM1_BASE, COM2_BASE))
        tables = install_tables(memory, self.memory_size, FirmwareLayout())
        self.vga = VgaText(self.clock, memory=memory)
        self.map_ports("VGA", VGA_PORTS, VGA_PORT_COUNT, self.vga)
        return tables

    def show_screen(self, write: Callable[[str], None], every_ns: int = DISPLAY_PERIOD_NS) -> None:
        """`--display text`: redraw the text screen through `write` (a terminal) every
        `every_ns` of virtual time when it changed."""
        last = [""]

        def redraw(deadline: int) -> None:
            if self.vga is not None:
                frame = self.vga.render_ansi()
                if frame != last[0]:
                    last[0] = frame
                    write(frame)
            timer.arm(deadline + every_ns)

        timer = self.clock.timer(redraw, "display")
        timer.arm(self.clock.now() + every_ns)

    def figures(self, stats) -> None:
        """This platform's part of `ring1 run --stats` (a RunStats)."""
        stats.add("virtual_time_ms", "virtual time", round(self.clock.now() / 1e6, 3), "ms")
        stats.add("interrupts_acknowledged", "interrupts acknowledged (8259)", self.pic.acknowledged_total)
        stats.add("interrupts_by_irq", "interrupts by IRQ", {k: v for k, v in self.pic.stats().items() if v})
        stats.add("timers_fired", "device timers fired", self.clock.timers_fired)
        unclaimed = self.unclaimed()
        stats.add("unclaimed", "first accesses to unclaimed ports and MMIO", unclaimed)
        if unclaimed:  # (dicts are JSON only: the text report gets one line)
            listed = ", ".join(f"{where} ({how})" for where, how in unclaimed.items())
            stats.add("unclaimed_text", "no device there (first access)", listed)
        if self.post.written:
            codes = " ".join(f"{c:02x}" for c in self.post.codes)
            unkept = self.post.written - len(self.post.codes)
            more = f" (+{unkept} more)" if unkept else ""
            stats.add("post_codes", "POST codes", codes + more)

    def map_rom(self, rom: bytes) -> None:
        """A system ROM's copy at the top of the 4 GB space (boot/bios.py), before a CPU
        maps the platform's MMIO."""
        self.map_mmio("ROM", (1 << 32) - len(rom), len(rom), Rom(rom))

    def _pci_reset(self, hard: bool) -> None:
        raise SystemReset("port 0xCF9, " + ("hard" if hard else "soft") + " reset")

    def close(self) -> None:
        """At the end of a run (however it ended): disk images flushed and closed."""
        self.ide.close()

    @property
    def post_code(self) -> int | None:
        return self.post.code

    def flush(self) -> None:
        flush = getattr(self.console, "flush", None)
        if flush is not None:
            flush()
