"""The local APIC of the one virtual CPU: an xAPIC as the Intel SDM (vol. 3, "Advanced
Programmable Interrupt Controller") describes it, in its memory-mapped form.

What is modelled
- The register page (4 KB, normally at 0xFEE00000; the platform maps it and the device sees
  offsets): ID, version (0x00050014: an integrated xAPIC, version 14h, six LVT entries), TPR,
  APR and PPR (computed from TPR, ISR and IRR by the SDM's formulas), EOI, RRD (reads 0), LDR,
  DFR, SVR (spurious vector, software enable, focus bit), ISR/TMR/IRR (8 registers of 32 bits
  each), ESR (write, then read: a write latches the errors seen since the previous write),
  ICR, the LVT (timer, thermal, performance counters, LINT0, LINT1, error), and the timer's
  initial count, current count and divide configuration.
- Register accesses: the SDM wants 32-bit loads and stores at the start of each 16-byte slot.
  Narrower reads within the first four bytes return those bytes of the register (Bochs does
  the same); bytes 4-15 of a slot read as zero. Writes other than a 32-bit store (or the low
  half of a 64-bit one) at the start of a slot are dropped, as QEMU does (the SDM calls them
  undefined). An access to a reserved slot reads 0 and sets "illegal register address" in
  the ESR. Writes to read-only registers are ignored.
- The timer counts down at APIC_BUS_HZ (100 MHz, one count per 10 ns at divide-by-1) divided by
  the divide configuration, on the platform's VirtualClock: the current count is computed from
  virtual time, expiries are clock timers at exact deadlines (periodic deadlines are computed
  from the start of the count, so they never drift; missed periods collapse into one
  interrupt, as they would in the IRR). Writing the initial count (re)starts it, writing 0
  stops it; a change of divisor or of mode takes effect at the next count, the count in
  progress going on. One-shot and periodic modes; no TSC-deadline mode (bit 18 is reserved).
- Interrupt acceptance: fixed interrupts (from the LVT, from self-IPIs, from the I/O APIC) set
  their IRR bit and TMR bit (edge or level); the CPU is interrupted when the highest IRR
  vector's priority class is above the PPR's; acknowledge() moves it to the ISR; EOI clears
  the highest ISR bit and, if that vector's TMR bit is set, broadcasts the EOI to the
  listeners (the I/O APIC) and clears the level-triggered LINT's remote IRR. Vectors 0-15 are
  illegal: never set in the IRR, "received illegal vector" in the ESR instead. Errors raise
  the LVT error interrupt.
- LINT0 and LINT1 are the two pins of IrqSink.set_irq (pins 0 and 1), with polarity, fixed
  edge and level (remote IRR until EOI) and NMI delivery. LINT0 in ExtINT mode is the virtual
  wire to the 8259: the APIC asks the given PIC whether it has a request and, at acknowledge
  time, for its vector (ExtINT ignores the priority logic and bypasses IRR/ISR).
- NMIs (LINT0/1 in NMI mode, NMI messages, NMI IPIs to oneself) are recorded: `nmi_pending`,
  taken by the engine with take_nmi().
- Software disable (SVR bit 8 clear, the reset state): all LVT mask bits are set and cannot be
  cleared, so LINT0 passes nothing from the 8259 either; fixed and ExtINT messages that
  arrive are dropped; what is already in the IRR and ISR stays and is still dispensed; NMIs
  are still accepted. A PC BIOS leaves the APIC enabled in virtual-wire mode:
  firmware_virtual_wire() puts it there for boots without a BIOS.
- The IA32_APIC_BASE MSR (0x1B): msr_read()/msr_write(). Reserved bits raise #GP. Clearing the
  global enable bit makes the CPU a processor without an APIC: the register page is gone from
  the bus (reads float high, writes are dropped), LINT0 becomes the INTR pin (the CPU asks the
  8259 directly: cpu_controller(), and interrupt_pending()/acknowledge() forward to the PIC),
  LINT1 the NMI pin, and the APIC returns to its reset state; setting it again (FSB-era parts
  allow that) starts from that reset state.
- ICR: fixed (and lowest-priority) IPIs to oneself through the "self" or "all including self"
  shorthand or to one's own physical or logical destination, NMI to oneself; the delivery
  status is back to idle by the time software can read it. INIT, SIPI and SMI, and anything
  sent to other destinations, go out to a bus with no other CPU on it and are lost, as on a
  one-processor board (a P4-class xAPIC reports no error for that). Combinations the SDM
  lists as invalid (a non-fixed mode with the self shorthands) send nothing.

Not modelled: other processors, lowest-priority arbitration among several APICs (APR is
computed, nothing uses it), SMI and INIT delivery to this CPU (INIT, SMI and start-up
messages are ignored), the thermal and performance-counter interrupt sources (their LVT
entries exist and read back), x2APIC, TSC-deadline mode, EOI-broadcast suppression, moving
the register page when the MSR's base changes (the platform is told through `on_relocate`).
"""

from __future__ import annotations

from collections.abc import Callable

from ring1.runtime.cpu.events import Fault
from ring1.runtime.devices.clock import VirtualClock
from ring1.runtime.devices.irq import InterruptController, NoInterrupts

APIC_DEFAULT_BASE = 0xFEE00000
LAPIC_MMIO_LENGTH = 0x1000
APIC_BUS_HZ = 100_000_000  # the timer's input clock (a 100 MHz front-side bus)
NS_PER_S = 1_000_000_000

APIC_VERSION = 0x14  # an integrated xAPIC (Pentium 4 / Xeon class), as QEMU and KVM present
LVT_COUNT = 6  # timer, thermal, performance counters, LINT0, LINT1, error
VERSION_REGISTER = (LVT_COUNT - 1) << 16 | APIC_VERSION  # 0x00050014

MSR_APIC_BASE = 0x1B
MSR_BSP = 1 << 8
MSR_GLOBAL_ENABLE = 1 << 11
MAX_PHYS_ADDR_BITS = 32  # the CPU reports neither PAE nor CPUID 80000008h: physical addresses are 32-bit
MSR_BASE_MASK = ((1 << MAX_PHYS_ADDR_BITS) - 1) & ~0xFFF
MSR_WRITABLE = MSR_BASE_MASK | MSR_BSP | MSR_GLOBAL_ENABLE  # the BSP flag is read-only but may be written back

# Register offsets in the page (each register is the first 32 bits of a 16-byte slot).
REG_ID = 0x020
REG_VERSION = 0x030
REG_TPR = 0x080
REG_APR = 0x090
REG_PPR = 0x0A0
REG_EOI = 0x0B0
REG_RRD = 0x0C0
REG_LDR = 0x0D0
REG_DFR = 0x0E0
REG_SVR = 0x0F0
REG_ISR = 0x100  # ISR0..ISR7 at 0x100-0x170
REG_TMR = 0x180  # TMR0..TMR7 at 0x180-0x1F0
REG_IRR = 0x200  # IRR0..IRR7 at 0x200-0x270
REG_ESR = 0x280
REG_ICR_LOW = 0x300
REG_ICR_HIGH = 0x310
REG_LVT_TIMER = 0x320
REG_LVT_THERMAL = 0x330
REG_LVT_PERF = 0x340
REG_LVT_LINT0 = 0x350
REG_LVT_LINT1 = 0x360
REG_LVT_ERROR = 0x370
REG_TIMER_INITIAL = 0x380
REG_TIMER_CURRENT = 0x390
REG_TIMER_DIVIDE = 0x3E0

# LVT entries, in register order (entry i is at REG_LVT_TIMER + 0x10 * i).
LVT_TIMER, LVT_THERMAL, LVT_PERF, LVT_LINT0, LVT_LINT1, LVT_ERROR = range(LVT_COUNT)
LVT_VECTOR = 0xFF
LVT_DELIVERY_STATUS = 1 << 12
LVT_ACTIVE_LOW = 1 << 13
LVT_REMOTE_IRR = 1 << 14
LVT_LEVEL = 1 << 15
LVT_MASKED = 1 << 16
LVT_TIMER_PERIODIC = 1 << 17
LVT_RESET = LVT_MASKED
# What software can set in each entry (delivery status and remote IRR are read-only; the
# timer and error entries have no delivery mode field: they are always fixed).
LVT_WRITABLE = (
    0x000300FF,  # timer: vector, mask, periodic
    0x000107FF,  # thermal: vector, delivery mode, mask
    0x000107FF,  # performance counters
    0x0001A7FF,  # LINT0: vector, delivery mode, polarity, trigger mode, mask
    0x0001A7FF,  # LINT1
    0x000100FF,  # error: vector, mask
)

# Delivery modes (LVT, ICR, I/O APIC redirection entries).
DM_FIXED, DM_LOWEST, DM_SMI, DM_NMI, DM_INIT, DM_STARTUP, DM_EXTINT = 0, 1, 2, 4, 5, 6, 7

SVR_VECTOR = 0xFF
SVR_ENABLE = 1 << 8
SVR_FOCUS_DISABLED = 1 << 9
SVR_WRITABLE = 0x3FF
SVR_RESET = 0xFF

DFR_FLAT, DFR_CLUSTER = 0xF, 0x0

# Error status register bits.
ESR_SEND_CHECKSUM = 1 << 0  # the ESR bits 0-3 belong to the 3-wire APIC bus: never set here
ESR_RECEIVE_CHECKSUM = 1 << 1
ESR_SEND_ACCEPT = 1 << 2
ESR_RECEIVE_ACCEPT = 1 << 3
ESR_REDIRECTABLE_IPI = 1 << 4
ESR_SEND_ILLEGAL_VECTOR = 1 << 5
ESR_RECEIVE_ILLEGAL_VECTOR = 1 << 6
ESR_ILLEGAL_REGISTER = 1 << 7

# Interrupt command register.
ICR_LOW_WRITABLE = 0x000CCFFF  # vector, delivery mode, destination mode, level, trigger, shorthand
ICR_LOGICAL = 1 << 11
ICR_DELIVERY_STATUS = 1 << 12
ICR_HIGH_WRITABLE = 0xFF000000
SHORTHAND_NONE, SHORTHAND_SELF, SHORTHAND_ALL, SHORTHAND_OTHERS = 0, 1, 2, 3

DIVIDE_WRITABLE = 0xB  # bits 0, 1 and 3

BROADCAST = 0xFF  # the xAPIC's physical and logical "all processors" destination
LINT0_PIN, LINT1_PIN = 0, 1
M32 = 0xFFFFFFFF


def divisor_of(divide_config: int) -> int:
    """The timer's divisor for a divide configuration register value (bits 0, 1 and 3)."""
    code = (divide_config & 3) | (divide_config >> 1) & 4
    return 1 if code == 7 else 2 << code


class LocalApic:
    """The BSP's local APIC: an MMIO bus device, the CPU's InterruptController and an IrqSink
    for its LINT0/LINT1 pins.

    `clock` runs the timer; `pic` is the 8259 (its InterruptController) wired to LINT0, asked
    for ExtINT vectors and seen directly by the CPU when the APIC is globally disabled."""

    def __init__(
        self,
        clock: VirtualClock,
        *,
        apic_id: int = 0,
        pic: InterruptController | None = None,
        bus_hz: int = APIC_BUS_HZ,
        bsp: bool = True,
    ) -> None:
        if bus_hz <= 0:
            raise ValueError("the APIC bus frequency must be positive")
        self.clock = clock
        self.pic = pic
        self.bus_hz = bus_hz
        self.initial_id = apic_id & 0xFF
        self.msr = APIC_DEFAULT_BASE | MSR_GLOBAL_ENABLE | (MSR_BSP if bsp else 0)
        # Hooks for the platform and the engines.
        self.on_request: Callable[[], None] | None = None  # an interrupt or NMI may be pending now
        self.on_relocate: Callable[[int], None] | None = None  # the MSR moved the page (new base)
        self._eoi_listeners: list[Callable[[int], None]] = []
        self._timer = clock.timer(self._timer_expired, "lapic-timer")
        self.nmi_pending = False
        self.nmis = 0  # NMIs recorded, for statistics
        self._lint_level = [False, False]  # the LINT0/LINT1 pins' electrical levels
        self.reset()

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        """Power-up (or hardware reset) state of the APIC registers (SDM "Local APIC State After
        Power-Up or Reset"); the MSR is the caller's business."""
        self.apic_id = self.initial_id
        self.tpr = 0
        self.ldr = 0
        self.dfr = M32
        self.svr = SVR_RESET
        self.irr = 0  # 256-bit maps, bit n for vector n
        self.isr = 0
        self.tmr = 0
        self.esr = 0  # what ESR reads: latched by the last write
        self._errors = 0  # errors seen since that write
        self.icr_low = 0
        self.icr_high = 0
        self.lvt = [LVT_RESET] * LVT_COUNT
        self.timer_initial = 0
        self.timer_divide = 0
        self._timer.cancel()
        self._timer_running = False
        self._anchor_ns = 0  # the count was _anchor_count at this time (a count boundary)
        self._anchor_count = 0
        self._extint_latched = False  # an ExtINT message (from the I/O APIC) waits for INTA
        self._signalling_error = False

    def firmware_virtual_wire(self) -> None:
        """The state a PC BIOS leaves the BSP's APIC in (SeaBIOS's SMP setup; the MP
        specification's virtual-wire mode): software-enabled, LINT0 passing the 8259 as ExtINT,
        LINT1 as NMI. For boots that skip the BIOS (Multiboot)."""
        self.write(REG_SVR, 4, self.svr | SVR_ENABLE)
        self.write(REG_LVT_LINT0, 4, LVT_LEVEL | DM_EXTINT << 8)
        self.write(REG_LVT_LINT1, 4, LVT_LEVEL | DM_NMI << 8)

    @property
    def globally_enabled(self) -> bool:
        return bool(self.msr & MSR_GLOBAL_ENABLE)

    @property
    def software_enabled(self) -> bool:
        return bool(self.svr & SVR_ENABLE)

    @property
    def base_address(self) -> int:
        return self.msr & MSR_BASE_MASK

    def add_eoi_listener(self, listener: Callable[[int], None]) -> None:
        """`listener(vector)` hears each EOI of a level-triggered vector (the EOI message the
        local APIC broadcasts to the I/O APICs)."""
        self._eoi_listeners.append(listener)

    def _request(self) -> None:
        if self.on_request is not None:
            self.on_request()

    # ------------------------------------------------------------------ the MSR

    def msr_read(self) -> int:
        """RDMSR of IA32_APIC_BASE."""
        return self.msr

    def msr_write(self, value: int) -> None:
        """WRMSR of IA32_APIC_BASE: #GP (a Fault) for reserved bits, x2APIC included."""
        if value & ~MSR_WRITABLE:
            raise Fault(13, 0)
        was_enabled, old_base = self.globally_enabled, self.base_address
        self.msr = (value & (MSR_BASE_MASK | MSR_GLOBAL_ENABLE)) | (self.msr & MSR_BSP)
        if was_enabled != self.globally_enabled:
            # Disabling loses the APIC's programming (SDM: it "may return to the state after
            # power-up"); enabling again starts from that state.
            self.reset()
            self._request()  # the CPU's interrupt source changed (APIC <-> 8259)
        if self.base_address != old_base and self.on_relocate is not None:
            self.on_relocate(self.base_address)

    def cpu_controller(self) -> InterruptController:
        """The controller the CPU asks for interrupts now: this APIC, or the 8259 directly while
        the APIC is globally disabled (LINT0 is then the processor's INTR pin). The APIC also
        forwards to the 8259 itself in that state, so always asking the APIC is equally right."""
        if self.globally_enabled:
            return self
        return self.pic if self.pic is not None else NoInterrupts()

    # ------------------------------------------------------------------ MMIO

    def read(self, offset: int, size: int) -> int:
        if not self.globally_enabled:
            return (1 << (8 * size)) - 1  # no APIC on the bus: it floats
        byte = offset & 0xF
        if byte >= 4:
            return 0  # bytes 4-15 of a slot hold nothing
        value = self._read_register(offset & 0xFF0)
        return (value >> (8 * byte)) & ((1 << (8 * size)) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        if not self.globally_enabled or offset & 0xF or size < 4:
            return
        self._write_register(offset & 0xFF0, value & M32)

    def _read_register(self, reg: int) -> int:
        if REG_ISR <= reg < REG_ESR:
            bitmap = (self.isr, self.tmr, self.irr)[(reg - REG_ISR) >> 7]
            return bitmap >> (((reg >> 4) & 7) * 32) & M32
        if REG_LVT_TIMER <= reg <= REG_LVT_ERROR:
            return self.lvt[(reg - REG_LVT_TIMER) >> 4]
        if reg == REG_ID:
            return self.apic_id << 24
        if reg == REG_VERSION:
            return VERSION_REGISTER
        if reg == REG_TPR:
            return self.tpr
        if reg == REG_APR:
            return self.apr()
        if reg == REG_PPR:
            return self.ppr()
        if reg in (REG_EOI, REG_RRD):
            return 0  # EOI is write-only; remote read is a P6/APIC-bus feature that never completes
        if reg == REG_LDR:
            return self.ldr
        if reg == REG_DFR:
            return self.dfr
        if reg == REG_SVR:
            return self.svr
        if reg == REG_ESR:
            return self.esr
        if reg == REG_ICR_LOW:
            return self.icr_low  # the delivery status bit reads idle: the IPI has gone
        if reg == REG_ICR_HIGH:
            return self.icr_high
        if reg == REG_TIMER_INITIAL:
            return self.timer_initial
        if reg == REG_TIMER_CURRENT:
            return self.timer_current()
        if reg == REG_TIMER_DIVIDE:
            return self.timer_divide
        self._signal_error(ESR_ILLEGAL_REGISTER)
        return 0

    def _write_register(self, reg: int, value: int) -> None:
        if REG_LVT_TIMER <= reg <= REG_LVT_ERROR:
            self._write_lvt((reg - REG_LVT_TIMER) >> 4, value)
        elif reg == REG_ID:
            self.apic_id = value >> 24
        elif reg == REG_TPR:
            self.tpr = value & 0xFF
            self._request()  # a lower TPR may uncover a pending interrupt
        elif reg == REG_EOI:
            self.end_of_interrupt()
        elif reg == REG_LDR:
            self.ldr = value & 0xFF000000
        elif reg == REG_DFR:
            self.dfr = value | 0x0FFFFFFF  # only the model field is writable; the rest reads 1s
        elif reg == REG_SVR:
            self._write_svr(value)
        elif reg == REG_ESR:
            self.esr, self._errors = self._errors, 0
        elif reg == REG_ICR_LOW:
            self.icr_low = value & ICR_LOW_WRITABLE
            self._send_ipi()
        elif reg == REG_ICR_HIGH:
            self.icr_high = value & ICR_HIGH_WRITABLE
        elif reg == REG_TIMER_INITIAL:
            self._start_timer(value)
        elif reg == REG_TIMER_DIVIDE:
            rebased = self._rebase_timer()  # the count in progress goes on at the new rate
            self.timer_divide = value & DIVIDE_WRITABLE
            if rebased:
                self._arm_timer()
        elif reg in (REG_VERSION, REG_APR, REG_PPR, REG_RRD, REG_TIMER_CURRENT) or REG_ISR <= reg < REG_ESR:
            pass  # read-only registers ignore writes
        else:
            self._signal_error(ESR_ILLEGAL_REGISTER)

    def _write_svr(self, value: int) -> None:
        self.svr = value & SVR_WRITABLE
        if not self.software_enabled:
            # Software disable masks every LVT entry (and keeps them masked while it lasts).
            self.lvt = [entry | LVT_MASKED for entry in self.lvt]
        self._request()

    def _write_lvt(self, index: int, value: int) -> None:
        old = self.lvt[index]
        entry = (old & ~LVT_WRITABLE[index]) | (value & LVT_WRITABLE[index])
        if not self.software_enabled:
            entry |= LVT_MASKED
        self.lvt[index] = entry
        if index == LVT_TIMER and (old ^ entry) & LVT_TIMER_PERIODIC:
            # A mode change does not restart the count: the count in progress finishes in the
            # new mode. Re-anchor it so the count reads on from where it is.
            self.lvt[index] = old
            rebased = self._rebase_timer()
            self.lvt[index] = entry
            if rebased:
                self._arm_timer()
        elif index in (LVT_LINT0, LVT_LINT1):
            self._lint_changed(index - LVT_LINT0, rising=False)  # an unmasked level input delivers now
            self._request()  # LINT0 may now pass (or stop passing) the 8259

    # ------------------------------------------------------------------ priorities

    def ppr(self) -> int:
        """Processor priority: TPR unless an in-service vector's class is higher."""
        isrv = max(self.isr.bit_length() - 1, 0)
        if self.tpr >> 4 >= isrv >> 4:
            return self.tpr
        return isrv & 0xF0

    def apr(self) -> int:
        """Arbitration priority (SDM "Arbitration Priority Register")."""
        irrv = max(self.irr.bit_length() - 1, 0)
        isrv = max(self.isr.bit_length() - 1, 0)
        tpr_class = self.tpr >> 4
        if tpr_class >= irrv >> 4 and tpr_class > isrv >> 4:
            return self.tpr
        return max(tpr_class & (isrv >> 4), irrv >> 4) << 4

    def _deliverable_vector(self) -> int | None:
        vector = self.irr.bit_length() - 1
        if vector >= 0 and vector >> 4 > self.ppr() >> 4:
            return vector
        return None

    # ------------------------------------------------------------------ the CPU's side

    def _extint_pending(self) -> bool:
        if self._extint_latched:
            return True
        lint0 = self.lvt[LVT_LINT0]
        return (
            self.pic is not None
            and not lint0 & LVT_MASKED
            and (lint0 >> 8) & 7 == DM_EXTINT
            and self.pic.interrupt_pending()
        )

    def interrupt_pending(self) -> bool:
        if not self.globally_enabled:
            return self.pic is not None and self.pic.interrupt_pending()
        return self._extint_pending() or self._deliverable_vector() is not None

    def acknowledge(self) -> int:
        """The INTA cycle: an ExtINT's vector from the 8259, else the highest deliverable IRR
        vector moved into service, else the spurious vector (ISR untouched)."""
        if not self.globally_enabled:
            return self.pic.acknowledge() if self.pic is not None else self.svr & SVR_VECTOR
        if self._extint_pending():
            self._extint_latched = False
            if self.pic is not None:
                return self.pic.acknowledge()
            return self.svr & SVR_VECTOR
        vector = self._deliverable_vector()
        if vector is None:
            return self.svr & SVR_VECTOR
        bit = 1 << vector
        self.irr &= ~bit
        self.isr |= bit
        return vector

    def take_nmi(self) -> bool:
        """The engine takes the recorded NMI (True if there was one)."""
        pending, self.nmi_pending = self.nmi_pending, False
        return pending

    def end_of_interrupt(self) -> None:
        """An EOI: the highest in-service vector is done."""
        if not self.isr:
            return
        vector = self.isr.bit_length() - 1
        bit = 1 << vector
        self.isr &= ~bit
        if self.tmr & bit:
            for index in (LVT_LINT0, LVT_LINT1):
                entry = self.lvt[index]
                if entry & LVT_REMOTE_IRR and entry & LVT_VECTOR == vector:
                    self.lvt[index] = entry & ~LVT_REMOTE_IRR
                    self._lint_changed(index - LVT_LINT0, rising=False)  # still asserted: again
            for listener in self._eoi_listeners:
                listener(vector)
        self._request()

    # ------------------------------------------------------------------ accepting interrupts

    def _accept_fixed(self, vector: int, level_triggered: bool) -> bool:
        if vector < 16:
            self._signal_error(ESR_RECEIVE_ILLEGAL_VECTOR)
            return False
        bit = 1 << vector
        self.irr |= bit
        if level_triggered:
            self.tmr |= bit
        else:
            self.tmr &= ~bit
        self._request()
        return True

    def _raise_nmi(self) -> None:
        self.nmi_pending = True
        self.nmis += 1
        self._request()

    def matches_destination(self, destination: int, logical: bool) -> bool:
        """Is this APIC among the destinations of a message (physical APIC ID, or logical:
        flat or cluster model against the LDR; 0xFF is everyone)?"""
        destination &= 0xFF
        if destination == BROADCAST:
            return True
        if not logical:
            return destination == self.apic_id
        ldr = self.ldr >> 24
        model = self.dfr >> 28
        if model == DFR_FLAT:
            return bool(destination & ldr)
        if model == DFR_CLUSTER:
            return destination >> 4 == ldr >> 4 and bool(destination & ldr & 0xF)
        return False  # a reserved model matches nothing

    def receive_message(self, vector: int, delivery_mode: int, level_triggered: bool = False) -> bool:
        """An interrupt message for this APIC (from the I/O APIC or an IPI); True if accepted."""
        if not self.globally_enabled:
            return False
        if delivery_mode in (DM_FIXED, DM_LOWEST):
            if not self.software_enabled:
                return False  # a software-disabled APIC drops fixed interrupts that arrive
            return self._accept_fixed(vector & 0xFF, level_triggered)
        if delivery_mode == DM_NMI:
            self._raise_nmi()
            return True
        if delivery_mode == DM_EXTINT:
            if not self.software_enabled:
                return False
            self._extint_latched = True
            self._request()
            return True
        return False  # SMI, INIT and start-up are not modelled

    def _deliver_local(self, index: int) -> None:
        """A local source (timer, error, LINT) fires through its LVT entry."""
        entry = self.lvt[index]
        if entry & LVT_MASKED:
            return
        mode = DM_FIXED if index in (LVT_TIMER, LVT_ERROR) else (entry >> 8) & 7
        if mode == DM_FIXED:
            self._accept_fixed(entry & LVT_VECTOR, level_triggered=False)
        elif mode == DM_NMI:
            self._raise_nmi()
        # ExtINT is polled from the 8259; SMI, INIT and the reserved modes deliver nothing here.

    def _signal_error(self, bits: int) -> None:
        self._errors |= bits
        if self._signalling_error:
            return  # an error while raising the error interrupt (its own illegal vector)
        self._signalling_error = True
        self._deliver_local(LVT_ERROR)
        self._signalling_error = False

    # ------------------------------------------------------------------ LINT0/LINT1 pins

    def set_irq(self, pin: int, level: bool) -> None:
        """IrqSink: the LINT0 (pin 0) or LINT1 (pin 1) pin goes to an electrical level."""
        if pin not in (LINT0_PIN, LINT1_PIN):
            return
        index = LVT_LINT0 + pin
        was = self._lint_asserted(index)
        self._lint_level[pin] = bool(level)
        if not self.globally_enabled:
            # Without the APIC the pins are the processor's INTR (the 8259, asked directly)
            # and NMI inputs.
            if pin == LINT1_PIN and level and not was:
                self._raise_nmi()
            return
        self._lint_changed(pin, rising=self._lint_asserted(index) and not was)

    def _lint_asserted(self, index: int) -> bool:
        level = self._lint_level[index - LVT_LINT0]
        return level != bool(self.lvt[index] & LVT_ACTIVE_LOW)

    def _lint_changed(self, pin: int, rising: bool) -> None:
        index = LVT_LINT0 + pin
        entry = self.lvt[index]
        if entry & LVT_MASKED:
            return
        mode = (entry >> 8) & 7
        asserted = self._lint_asserted(index)
        if mode == DM_FIXED:
            if entry & LVT_LEVEL:
                # Level: delivered while asserted, once per EOI (the remote IRR flag).
                if asserted and not entry & LVT_REMOTE_IRR and self._accept_fixed(entry & LVT_VECTOR, True):
                    self.lvt[index] |= LVT_REMOTE_IRR
            elif rising:
                self._accept_fixed(entry & LVT_VECTOR, level_triggered=False)
        elif mode == DM_NMI and rising:
            self._raise_nmi()  # NMI is always edge-triggered

    # ------------------------------------------------------------------ ICR

    def _send_ipi(self) -> None:
        low = self.icr_low
        vector, mode, shorthand = low & 0xFF, (low >> 8) & 7, (low >> 18) & 3
        if mode in (DM_FIXED, DM_LOWEST) and vector < 16:
            self._signal_error(ESR_SEND_ILLEGAL_VECTOR)
            return
        if shorthand in (SHORTHAND_SELF, SHORTHAND_ALL):
            if mode != DM_FIXED:
                return  # the SDM's invalid combinations: nothing is sent
            to_self = True
        elif shorthand == SHORTHAND_OTHERS:
            to_self = False
        else:
            to_self = self.matches_destination(self.icr_high >> 24, bool(low & ICR_LOGICAL))
        if to_self:
            # IPIs are edge-triggered (the level bit only matters for the P6's INIT de-assert).
            self.receive_message(vector, mode, level_triggered=False)

    # ------------------------------------------------------------------ the timer

    def _ticks_ns(self, ticks: int) -> int:
        """Virtual ns that `ticks` counts take at the current divisor (rounded up)."""
        return -(-ticks * divisor_of(self.timer_divide) * NS_PER_S // self.bus_hz)

    def _ticks_in(self, ns: int) -> int:
        """Whole counts in `ns` virtual ns at the current divisor."""
        return ns * self.bus_hz // (divisor_of(self.timer_divide) * NS_PER_S)

    def timer_current(self) -> int:
        """The current count register, from virtual time."""
        if not self._timer_running:
            return 0
        ticks = self._ticks_in(self.clock.now() - self._anchor_ns)
        if ticks < self._anchor_count:
            return self._anchor_count - ticks
        if self.lvt[LVT_TIMER] & LVT_TIMER_PERIODIC:
            return self.timer_initial - (ticks - self._anchor_count) % self.timer_initial
        return 0  # one-shot, at zero: the expiry is due

    def _start_timer(self, initial: int) -> None:
        self.timer_initial = initial
        self._timer.cancel()
        self._timer_running = initial != 0  # writing 0 stops the timer
        self._anchor_ns = self.clock.now()
        self._anchor_count = initial
        self._arm_timer()

    def _rebase_timer(self) -> bool:
        """Re-anchor a running count at its last count boundary, before a change of rate or
        mode (the count read just before and just after the change is the same). False when
        there is nothing to re-anchor."""
        if not self._timer_running:
            return False
        count = self.timer_current()
        if count == 0:
            return False  # a one-shot expiry is due: its timer fires as armed
        ticks = self._ticks_in(self.clock.now() - self._anchor_ns)
        self._anchor_ns += self._ticks_ns(ticks)
        self._anchor_count = count
        return True

    def _arm_timer(self) -> None:
        """Arm the clock timer for the next expiry after now (count reaching zero)."""
        if not self._timer_running:
            return
        ticks = self._ticks_in(self.clock.now() - self._anchor_ns)
        if ticks < self._anchor_count:
            expiry = self._anchor_count
        elif self.lvt[LVT_TIMER] & LVT_TIMER_PERIODIC:
            periods = (ticks - self._anchor_count) // self.timer_initial + 1
            expiry = self._anchor_count + periods * self.timer_initial
        else:
            expiry = self._anchor_count  # one-shot at zero, not yet handled: fire now
        self._timer.arm(self._anchor_ns + self._ticks_ns(expiry))

    def _timer_expired(self, deadline: int) -> None:
        if not self._timer_running:
            return
        if not self.lvt[LVT_TIMER] & LVT_TIMER_PERIODIC:
            self._timer_running = False  # one-shot: the count stays at zero
        self._deliver_local(LVT_TIMER)
        self._arm_timer()  # periodic: the next expiry counted from the start, missed ones collapsed
