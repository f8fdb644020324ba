/* devtest: a device self-test kernel for ring1's PC platform.

   It drives the chips the way Linux's early boot code does and checks what it sees, one line
   per check on COM1 ("devtest: NAME ok: ..." or "devtest: NAME FAILED: ..."), then a summary;
   the exit status (port 0xF4) is the number of failed checks, 0 when all passed.

   In order: the 8259 pair remapped to vectors 0x20-0x2F (ICW1-4 as Linux's init_8259A); the
   8254's channel 0 at 100 Hz counted against two RTC seconds (the update-ended interrupt on
   IRQ 8, the wait spent in HLT), and its interrupts during a busy loop; the TSC calibrated against PIT channel 2 through port 0x61
   (Linux's pit_calibrate_tsc); the RTC's date and time; the ACPI RSDP, RSDT, FADT, MADT and
   DSDT and the MP floating pointer and configuration table, found where an OS scans and their
   checksums verified; the ACPI PM timer's rate against the TSC; the local APIC as a BIOS
   leaves it (CPUID bit, base MSR, ID, version, TPR/PPR, SVR, virtual-wire LINT0/LINT1), its
   timer one-shot and periodic timed by the PM timer, then masked; the RTC's periodic
   interrupt routed through the I/O APIC (pin 8, vector 0x48) with the 8259's IRQ 8 masked,
   then the 8259's route restored; the VGA text screen and the
   CRTC's cursor; PCI bus 0; the ATA master (when there is one: reset signature, IDENTIFY on
   IRQ 14, sector 0 shown, a pattern written by PIO and read back, the run counter in sector
   0 bumped); serial input echoed by the receive interrupt; then malformed use: an unknown
   ATA command, an LBA past the end, writes to read-only registers, an IRQ storm while IF=0,
   an interrupt never acknowledged with an EOI; last, everything masked but the RTC and one
   HLT that only its interrupt may end.

   Every figure printed is rounded or a pass/fail, never a raw TSC or instruction count, so
   the output is the same under every ring1 engine and from one run to the next (the disk's
   run counter aside, which is the point of it). */

#include "lib.h"

#define SEL_KCODE 0x08
#define SEL_KDATA 0x10

#define PIC_MASTER 0x20
#define PIC_SLAVE 0xA0
#define PIC_EOI 0x20
#define ELCR 0x4D0
#define IRQ_BASE 0x20 /* IRQ 0-7 at 0x20-0x27, IRQ 8-15 at 0x28-0x2F */

#define PIT_HZ 1193182u
#define PIT_CH0 0x40
#define PIT_CH2 0x42
#define PIT_MODE 0x43
#define PORT_B 0x61
#define HZ 100
#define PIT_LATCH ((PIT_HZ + HZ / 2) / HZ) /* 11932, as Linux's LATCH */

#define RTC_INDEX 0x70
#define RTC_DATA 0x71
#define RTC_A_UIP 0x80
#define RTC_B_UIE 0x10
#define RTC_B_BINARY 0x04
#define RTC_B_24H 0x02
#define RTC_C_UF 0x10
#define RTC_D_VRT 0x80

#define ATA_DATA 0x1F0
#define ATA_ERROR 0x1F1
#define ATA_COUNT 0x1F2
#define ATA_LBA0 0x1F3
#define ATA_LBA1 0x1F4
#define ATA_LBA2 0x1F5
#define ATA_DEVICE 0x1F6
#define ATA_STATUS 0x1F7 /* the command register on writes */
#define ATA_ALTSTATUS 0x3F6 /* device control on writes */
#define ATA_BSY 0x80
#define ATA_DRDY 0x40
#define ATA_DRQ 0x08
#define ATA_ERR 0x01
#define ATA_ER_IDNF 0x10
#define ATA_ER_ABRT 0x04
#define ATA_CTL_NIEN 0x02
#define ATA_CTL_SRST 0x04

#define PCI_ADDRESS 0xCF8
#define PCI_DATA 0xCFC

#define VGA_TEXT ((volatile uint16_t *)0xB8000)
#define CRTC_INDEX 0x3D4
#define CRTC_DATA 0x3D5

#define PM_TIMER_HZ 3579545u
#define PM_TIMER_DEFAULT_PORT 0x608

#define SECTOR_WORDS 256
#define RUN_SIGNATURE "ring1 devtest run "

/* The local APIC (a BIOS leaves it enabled in virtual-wire mode: the 8259 through LINT0) and
   the I/O APIC, at the addresses the MP and ACPI tables give. */
#define MSR_APIC_BASE 0x1B
#define APIC_BASE_BSP 0x100
#define APIC_BASE_ENABLE 0x800
#define CPUID_1_EDX_APIC (1u << 9)
#define LAPIC_BASE 0xFEE00000u
#define LAPIC_ID 0x020
#define LAPIC_VERSION 0x030
#define LAPIC_TPR 0x080
#define LAPIC_PPR 0x0A0
#define LAPIC_EOI 0x0B0
#define LAPIC_SVR 0x0F0
#define LAPIC_ISR 0x100 /* eight registers of 32 vectors, 16 bytes apart; the IRR likewise */
#define LAPIC_IRR 0x200
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_LVT_LINT0 0x350
#define LAPIC_LVT_LINT1 0x360
#define LAPIC_TIMER_INITIAL 0x380
#define LAPIC_TIMER_CURRENT 0x390
#define LAPIC_TIMER_DIVIDE 0x3E0
#define LAPIC_DIVIDE_16 0x3
#define LVT_MASKED 0x10000
#define LVT_TIMER_PERIODIC 0x20000
#define LVT_DELIVERY_MODE 0x700
#define LVT_EXTINT 0x700
#define LVT_NMI 0x400
#define APIC_BUS_HZ 100000000u
#define LAPIC_TIMER_VECTOR 0x40
#define IOAPIC_RTC_VECTOR 0x48
#define APIC_SPURIOUS_VECTOR 0xFF

#define IOAPIC_BASE 0xFEC00000u
#define IOAPIC_REGSEL 0x00
#define IOAPIC_WINDOW 0x10
#define IOAPIC_REG_ID 0x00
#define IOAPIC_REG_VERSION 0x01
#define IOAPIC_REDIRECTION(pin) (0x10 + 2 * (pin)) /* the low half; the high half follows */
#define IOAPIC_RTC_PIN 8
#define RTE_REMOTE_IRR 0x4000
#define RTE_MASKED 0x10000
#define RTC_A_RATE_1024HZ 0x06
#define RTC_B_PIE 0x40
#define RTC_C_PF 0x40

extern const uint32_t isr_stubs[33];
extern const uint32_t irq_stubs[16];
extern const uint32_t apic_stubs[3];

static struct descriptor gdt[3];
static struct descriptor idt[256];

static int checks, failures;

/* ---------------------------------------------------------------- port I/O and the TSC */

static inline void outw(uint16_t port, uint16_t value)
{
    __asm__ volatile("outw %0, %1" : : "a"(value), "Nd"(port));
}

static inline uint16_t inw(uint16_t port)
{
    uint16_t value;
    __asm__ volatile("inw %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}

static inline void outl(uint16_t port, uint32_t value)
{
    __asm__ volatile("outl %0, %1" : : "a"(value), "Nd"(port));
}

static inline uint32_t inl(uint16_t port)
{
    uint32_t value;
    __asm__ volatile("inl %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}

static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return (uint64_t)hi << 32 | lo;
}

static inline void cli(void)
{
    __asm__ volatile("cli" ::: "memory");
}

static inline void sti(void)
{
    __asm__ volatile("sti" ::: "memory");
}

/* n / d for a quotient that fits 32 bits (the high half of n below d): one DIV, no libgcc. */
static uint32_t div64_32(uint64_t n, uint32_t d)
{
    uint32_t lo = (uint32_t)n, hi = (uint32_t)(n >> 32);
    __asm__("divl %2" : "+a"(lo), "+d"(hi) : "rm"(d) : "cc");
    return lo;
}

/* ---------------------------------------------------------------- reporting */

/* One line per check: "devtest: NAME ok: details" or "devtest: NAME FAILED: details". */
static void report(int ok, const char *name, const char *fmt, ...)
{
    checks++;
    if (!ok)
        failures++;
    kprintf("devtest: %s %s: ", name, ok ? "ok" : "FAILED");
    va_list ap;
    va_start(ap, fmt);
    kvprintf(fmt, ap);
    va_end(ap);
    console_putc('\n');
}

/* ---------------------------------------------------------------- descriptor tables */

static struct descriptor interrupt_gate(uint32_t offset)
{
    return gate_descriptor(offset, SEL_KCODE, 0xE, 0); /* a 32-bit interrupt gate: IF cleared */
}

static void setup_cpu_tables(void)
{
    gdt[0] = segment_descriptor(0, 0, 0, 0);
    gdt[1] = segment_descriptor(0, 0xFFFFF, 0x9A, 0xC);
    gdt[2] = segment_descriptor(0, 0xFFFFF, 0x92, 0xC);
    load_gdt(gdt, sizeof(gdt) - 1);
    for (int v = 0; v < 32; v++)
        idt[v] = interrupt_gate(isr_stubs[v]);
    for (int irq = 0; irq < 16; irq++)
        idt[IRQ_BASE + irq] = interrupt_gate(irq_stubs[irq]);
    idt[LAPIC_TIMER_VECTOR] = interrupt_gate(apic_stubs[0]);
    idt[IOAPIC_RTC_VECTOR] = interrupt_gate(apic_stubs[1]);
    idt[APIC_SPURIOUS_VECTOR] = interrupt_gate(apic_stubs[2]);
    struct table_register idtr = {sizeof(idt) - 1, (uint32_t)idt};
    __asm__ volatile("lidt %0" : : "m"(idtr));
}

/* ---------------------------------------------------------------- the 8259 pair */

static uint8_t pic_read_isr(uint16_t pic)
{
    outb(pic, 0x0B); /* OCW3: read the ISR */
    uint8_t isr = inb(pic);
    outb(pic, 0x0A); /* back to the IRR, the power-on choice */
    return isr;
}

static uint8_t pic_read_irr(uint16_t pic)
{
    outb(pic, 0x0A);
    return inb(pic);
}

static void pic_set_masks(uint8_t master, uint8_t slave)
{
    outb(PIC_MASTER + 1, master);
    outb(PIC_SLAVE + 1, slave);
}

static void pic_eoi(unsigned irq)
{
    if (irq >= 8)
        outb(PIC_SLAVE, PIC_EOI);
    outb(PIC_MASTER, PIC_EOI);
}

/* ---------------------------------------------------------------- interrupt handlers */

static volatile uint32_t irq_count[16];
static volatile uint32_t spurious_count;
static volatile int pit_withhold_eoi; /* the never-EOI experiment: IRQ 0 is left in service */
static volatile uint32_t rtc_updates;
static volatile uint8_t ata_irq_status;

static volatile int echo_state; /* 0 off, 1 waiting for the first byte, 2 echoing, 3 newline seen */
static volatile uint32_t echo_bytes;

static uint8_t rtc_read(uint8_t reg)
{
    outb(RTC_INDEX, reg);
    return inb(RTC_DATA);
}

static void rtc_write(uint8_t reg, uint8_t value)
{
    outb(RTC_INDEX, reg);
    outb(RTC_DATA, value);
}

static void serial_receive(void)
{
    (void)inb(COM1 + 2); /* IIR: which condition (received data or the character timeout) */
    while (inb(COM1 + 5) & 0x01) { /* LSR.DR: drain the FIFO, so INTR falls before the EOI */
        char c = (char)inb(COM1);
        if (echo_state == 1) {
            kputs("devtest: serial echo: ");
            echo_state = 2;
        }
        if (echo_state != 2)
            continue;
        echo_bytes++;
        if (c == '\n') {
            console_putc('\n');
            echo_state = 3;
        } else {
            console_putc(c >= 0x20 && c < 0x7F ? c : '.');
        }
    }
}

static void irq_handler(unsigned irq)
{
    /* IR7 of either chip with no ISR bit is the 8259's default vector for a request that went
       away before the acknowledge: no EOI for it (but the master's IR2 for a slave's). */
    if (irq == 7 && !(pic_read_isr(PIC_MASTER) & 0x80)) {
        spurious_count++;
        return;
    }
    if (irq == 15 && !(pic_read_isr(PIC_SLAVE) & 0x80)) {
        spurious_count++;
        outb(PIC_MASTER, PIC_EOI);
        return;
    }
    irq_count[irq]++;
    switch (irq) {
    case 0:
        if (pit_withhold_eoi)
            return;
        break;
    case 4:
        serial_receive();
        break;
    case 8:
        if (rtc_read(0x0C) & RTC_C_UF) /* reading C lowers the line */
            rtc_updates++;
        break;
    case 14:
        ata_irq_status = inb(ATA_STATUS); /* reading Status clears INTRQ */
        break;
    }
    pic_eoi(irq);
}

static void apic_interrupt(unsigned vector);

void trap_dispatch(struct frame *f)
{
    if (f->vector >= IRQ_BASE && f->vector < IRQ_BASE + 16) {
        irq_handler(f->vector - IRQ_BASE);
        return;
    }
    if (f->vector == LAPIC_TIMER_VECTOR || f->vector == IOAPIC_RTC_VECTOR || f->vector == APIC_SPURIOUS_VECTOR) {
        apic_interrupt(f->vector);
        return;
    }
    kprintf("devtest: unexpected exception %u error %x at eip %08x\n", f->vector, f->error, f->eip);
    guest_exit(100 + (uint8_t)f->vector);
}

/* Sleeps in HLT with interrupts on until *counter reaches target, or max_ticks PIT ticks pass.
   CLI around the test and STI; HLT (the STI's one-instruction shadow) leave no window where an
   interrupt is taken between the test and the HLT. Returns with IF set. */
static int wait_for(volatile uint32_t *counter, uint32_t target, uint32_t max_ticks)
{
    uint32_t start = irq_count[0];
    cli();
    while (*counter < target && irq_count[0] - start < max_ticks)
        __asm__ volatile("sti; hlt; cli" ::: "memory");
    sti();
    return *counter >= target;
}

/* Spins (no HLT) for at least `ns` of TSC time. */
static void spin_ns(uint32_t ns)
{
    uint64_t start = rdtsc();
    while ((uint32_t)(rdtsc() - start) < ns)
        ;
}

/* ---------------------------------------------------------------- the checks */

static void check_pic(void)
{
    /* ICW1-4 as Linux's init_8259A: edge triggered, cascade, ICW4; vectors 0x20 and 0x28;
       the slave on the master's IR2; 8086 mode, normal EOI. */
    pic_set_masks(0xFF, 0xFF);
    outb(PIC_MASTER, 0x11);
    outb(PIC_MASTER + 1, IRQ_BASE);
    outb(PIC_MASTER + 1, 0x04);
    outb(PIC_MASTER + 1, 0x01);
    outb(PIC_SLAVE, 0x11);
    outb(PIC_SLAVE + 1, IRQ_BASE + 8);
    outb(PIC_SLAVE + 1, 0x02);
    outb(PIC_SLAVE + 1, 0x01);
    /* ICW1 clears the IMR: everything is unmasked until OCW1 says otherwise. */
    uint8_t imr_after_init = inb(PIC_MASTER + 1);
    pic_set_masks(0xA5, 0x5A);
    uint8_t master = inb(PIC_MASTER + 1), slave = inb(PIC_SLAVE + 1);
    pic_set_masks(0xFF, 0xFF);
    uint8_t isr = pic_read_isr(PIC_MASTER) | pic_read_isr(PIC_SLAVE);
    report(imr_after_init == 0 && master == 0xA5 && slave == 0x5A && isr == 0, "pic",
           "remapped to vectors 0x20/0x28, IMR %02x/%02x read back, nothing in service", master, slave);
}

static void pit_channel0(uint8_t mode, uint16_t count)
{
    outb(PIT_MODE, 0x30 | mode << 1); /* channel 0, LSB then MSB, binary */
    outb(PIT_CH0, count & 0xFF);
    outb(PIT_CH0, count >> 8);
}

/* Channel 0 at 100 Hz (mode 2, Linux's LATCH), counted between RTC update-ended interrupts. */
static void check_timer(void)
{
    pit_channel0(2, PIT_LATCH);
    rtc_write(0x0B, rtc_read(0x0B) | RTC_B_UIE);
    (void)rtc_read(0x0C);
    pic_set_masks((uint8_t)~0x05, (uint8_t)~0x01); /* IRQ 0, the cascade, IRQ 8 */
    sti();
    int synced = wait_for(&rtc_updates, rtc_updates + 1, 150); /* to a second's edge */
    uint32_t ticks_before = irq_count[0], updates = rtc_updates;
    int counted = wait_for(&rtc_updates, updates + 2, 300);
    uint32_t ticks = irq_count[0] - ticks_before;
    report(synced && counted && ticks >= 190 && ticks <= 210, "timer",
           "about %u PIT ticks at %u Hz in 2 RTC seconds (190-210 expected), in HLT", (ticks + 5) / 10 * 10, HZ);
}

/* Linux's calibrate_delay waits for jiffies in a busy loop with IF=1: timer interrupts must
   come on time while the CPU spins with no I/O and no HLT, also when the PIT is programmed
   while no timer of its was due (channel 0 stopped, the next deadline the RTC's second):
   channel 0 at 1 kHz, the control word's OUT rise the first edge. */
static void check_busy_wait(void)
{
    outb(PIT_MODE, 0x30); /* channel 0 stopped: no edge to come */
    wait_for(&rtc_updates, rtc_updates + 1, 0xFFFFFFFF); /* in HLT, to the RTC's update */
    uint32_t before = irq_count[0];
    pit_channel0(2, (PIT_HZ + 500) / 1000);
    uint32_t spins = 0;
    while (irq_count[0] - before < 4 && spins < 500000) /* 3 ms: well under 500000 spins */
        spins++;
    uint32_t ticks = irq_count[0] - before;
    pit_channel0(2, PIT_LATCH);
    report(ticks >= 4, "busy-wait", "%u PIT interrupts at 1 kHz during a spin with IF=1 (no HLT, no I/O)",
           ticks >= 4 ? 4 : ticks);
}

/* Linux's pit_calibrate_tsc: PIT channel 2 in mode 0 for 10 ms, its OUT polled through port
   0x61, the TSC read on every poll. */
static void check_tsc(void)
{
    const uint32_t ms = 10, latch = PIT_HZ / (1000 / ms);
    cli();
    outb(PORT_B, (inb(PORT_B) & ~0x02) | 0x01); /* gate 2 high, speaker off */
    outb(PIT_MODE, 0xB0);                         /* channel 2, LSB then MSB, mode 0 */
    outb(PIT_CH2, latch & 0xFF);
    outb(PIT_CH2, latch >> 8);
    uint64_t t1, t2, tsc;
    t1 = t2 = tsc = rdtsc();
    uint32_t polls = 0, delta_min = 0xFFFFFFFF, delta_max = 0;
    while (!(inb(PORT_B) & 0x20)) {
        t2 = rdtsc();
        uint32_t delta = (uint32_t)(t2 - tsc);
        tsc = t2;
        if (delta < delta_min)
            delta_min = delta;
        if (delta > delta_max)
            delta_max = delta;
        polls++;
    }
    sti();
    outb(PORT_B, inb(PORT_B) & ~0x03);
    uint32_t khz = (uint32_t)(t2 - t1) / ms;
    uint32_t mhz = (khz + 500) / 1000;
    /* Linux rejects a calibration with fewer than 1000 polls or one poll 10 times another. */
    int steady = polls >= 1000 && delta_max <= 10 * delta_min;
    report(steady && khz >= 990000 && khz <= 1010000, "tsc", "%u MHz against PIT channel 2 over %u ms (1000 +- 1%%)%s",
           mhz, ms, steady ? "" : ", the polls unsteady");
}

static uint8_t from_bcd(uint8_t v)
{
    return (v >> 4) * 10 + (v & 0x0F);
}

static void check_rtc(void)
{
    uint8_t regs[10], again[10], century;
    do { /* as Linux's mc146818_get_time: outside an update, and the same twice */
        while (rtc_read(0x0A) & RTC_A_UIP)
            ;
        for (int i = 0; i < 10; i++)
            regs[i] = rtc_read((uint8_t)i);
        century = rtc_read(0x32);
        for (int i = 0; i < 10; i++)
            again[i] = rtc_read((uint8_t)i);
    } while (memcmp(regs, again, sizeof(regs)) != 0);
    uint8_t b = rtc_read(0x0B), d = rtc_read(0x0D);
    int binary = b & RTC_B_BINARY, h24 = b & RTC_B_24H;
    uint8_t pm = 0;
    if (!h24) {
        pm = regs[4] & 0x80;
        regs[4] &= 0x7F;
    }
    if (!binary) {
        for (int i = 0; i < 10; i++)
            regs[i] = from_bcd(regs[i]);
        century = from_bcd(century);
    }
    uint32_t sec = regs[0], min = regs[2], hour = regs[4], day = regs[7], month = regs[8];
    uint32_t year = century * 100u + regs[9];
    if (!h24)
        hour = hour % 12 + (pm ? 12 : 0);
    static const uint8_t month_days[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int sane = sec < 60 && min < 60 && hour < 24 && month >= 1 && month <= 12 && day >= 1 &&
               day <= month_days[month - 1] && year >= 2000 && year < 2100 &&
               regs[6] >= 1 && regs[6] <= 7 && (d & RTC_D_VRT);
    report(sane, "rtc", "%04u-%02u-%02u %02u:%02u:%02u, %s, %s clock, valid RAM and time", year, month, day, hour,
           min, sec, binary ? "binary" : "BCD", h24 ? "24-hour" : "12-hour");
}

/* ---------------------------------------------------------------- firmware tables */

static uint8_t byte_sum(const volatile uint8_t *p, uint32_t n)
{
    uint8_t sum = 0;
    while (n--)
        sum += *p++;
    return sum;
}

static int signature_is(const volatile uint8_t *p, const char *sig)
{
    for (uint32_t i = 0; sig[i]; i++)
        if (p[i] != (uint8_t)sig[i])
            return 0;
    return 1;
}

/* Physical memory the firmware wrote (identity-mapped, no paging). The empty asm hides the
   constant address from GCC, which takes the BIOS data area's low addresses for null pointers. */
static uint32_t read32(uint32_t address)
{
    __asm__("" : "+r"(address));
    return *(const volatile uint32_t *)address;
}

static uint16_t read16(uint32_t address)
{
    __asm__("" : "+r"(address));
    return *(const volatile uint16_t *)address;
}

/* The first 16-byte aligned `sig` in [start, start + length) whose first `sum_length` bytes
   (or the 16-byte units its byte at `units_at` says) sum to zero; 0 if none. */
static uint32_t scan(uint32_t start, uint32_t length, const char *sig, uint32_t sum_length, int units_at)
{
    for (uint32_t p = start; p < start + length; p += 16) {
        const volatile uint8_t *q = (const volatile uint8_t *)p;
        if (!signature_is(q, sig))
            continue;
        uint32_t n = units_at >= 0 ? q[units_at] * 16u : sum_length;
        if (byte_sum(q, n) == 0)
            return p;
    }
    return 0;
}

static uint16_t pm_timer_port = PM_TIMER_DEFAULT_PORT;

/* An ACPI table's header: signature, length; its bytes sum to 0. */
static int acpi_table_ok(uint32_t address, const char *sig)
{
    const volatile uint8_t *t = (const volatile uint8_t *)address;
    uint32_t length = read32(address + 4);
    return address && signature_is(t, sig) && length >= 36 && length < 0x10000 && byte_sum(t, length) == 0;
}

static void check_acpi(void)
{
    uint32_t ebda = (uint32_t)read16(0x40E) << 4;
    uint32_t rsdp = ebda ? scan(ebda, 1024, "RSD PTR ", 20, -1) : 0;
    if (!rsdp)
        rsdp = scan(0xE0000, 0x20000, "RSD PTR ", 20, -1);
    int ok = rsdp != 0;
    uint32_t rsdt = 0, entries = 0, madt_entries = 0;
    int fadt = 0, madt = 0, dsdt = 0, facs = 0;
    if (ok) {
        rsdt = read32(rsdp + 16);
        ok = acpi_table_ok(rsdt, "RSDT");
    }
    if (ok) {
        entries = (read32(rsdt + 4) - 36) / 4;
        for (uint32_t i = 0; i < entries; i++) {
            uint32_t table = read32(rsdt + 36 + 4 * i);
            if (acpi_table_ok(table, "FACP")) {
                fadt = 1;
                uint32_t facs_address = read32(table + 36), dsdt_address = read32(table + 40);
                facs = signature_is((const volatile uint8_t *)facs_address, "FACS");
                dsdt = acpi_table_ok(dsdt_address, "DSDT");
                uint32_t pm_tmr_blk = read32(table + 76);
                if (pm_tmr_blk && pm_tmr_blk < 0x10000)
                    pm_timer_port = (uint16_t)pm_tmr_blk;
            } else if (acpi_table_ok(table, "APIC")) {
                madt = 1;
                uint32_t end = table + read32(table + 4);
                for (uint32_t p = table + 44; p + 2 <= end && *(volatile uint8_t *)(p + 1) >= 2;
                     p += *(volatile uint8_t *)(p + 1))
                    madt_entries++;
            } else {
                ok = 0; /* a table whose checksum or signature is wrong */
            }
        }
    }
    ok = ok && fadt && madt && dsdt && facs;
    report(ok, "acpi",
           "RSDP at %05x, RSDT at %08x with %u tables: FADT (DSDT, FACS, PM timer at port %x), MADT (%u entries); "
           "checksums good",
           rsdp, rsdt, entries, pm_timer_port, madt_entries);
}

static void check_mp(void)
{
    uint32_t ebda = (uint32_t)read16(0x40E) << 4;
    uint32_t base_end = (uint32_t)read16(0x413) * 1024;
    uint32_t mpf = ebda ? scan(ebda, 1024, "_MP_", 0, 8) : 0;
    if (!mpf)
        mpf = scan(base_end - 1024, 1024, "_MP_", 0, 8);
    if (!mpf)
        mpf = scan(0xF0000, 0x10000, "_MP_", 0, 8);
    uint32_t config = mpf ? read32(mpf + 4) : 0;
    uint32_t counts[5] = {0, 0, 0, 0, 0};
    int ok = mpf && config && signature_is((const volatile uint8_t *)config, "PCMP");
    if (ok) {
        uint32_t length = read16(config + 4), count = read16(config + 34);
        ok = byte_sum((const volatile uint8_t *)config, length) == 0;
        uint32_t p = config + 44;
        for (uint32_t i = 0; ok && i < count && p < config + length; i++) {
            uint8_t type = *(volatile uint8_t *)p;
            if (type > 4) {
                ok = 0;
                break;
            }
            counts[type]++;
            p += type == 0 ? 20 : 8;
        }
    }
    report(ok && counts[0] >= 1 && counts[2] >= 1, "mp",
           "floating pointer at %05x, configuration table at %05x: %u processor, %u buses, %u I/O APIC, "
           "%u I/O and %u local interrupt entries; checksums good",
           mpf, config, counts[0], counts[1], counts[2], counts[3], counts[4]);
}

/* The PM timer's rate against the TSC (1 GHz), over three PIT ticks spent in HLT. */
static void check_pm_timer(void)
{
    uint64_t tsc0 = rdtsc();
    uint32_t pm0 = inl(pm_timer_port);
    wait_for(&irq_count[0], irq_count[0] + 3, 10);
    uint64_t tsc1 = rdtsc();
    uint32_t pm1 = inl(pm_timer_port);
    uint32_t ticks = (pm1 - pm0) & 0xFFFFFF, ns = (uint32_t)(tsc1 - tsc0);
    uint32_t hz = ns ? div64_32((uint64_t)ticks * 1000000000u, ns) : 0;
    uint32_t tolerance = PM_TIMER_HZ / 200; /* 0.5% */
    uint32_t centi_mhz = (hz + 5000) / 10000;
    report(hz + tolerance >= PM_TIMER_HZ && hz <= PM_TIMER_HZ + tolerance, "pm-timer",
           "port %x runs at %u.%02u MHz against the TSC (3.579545 expected)", pm_timer_port, centi_mhz / 100,
           centi_mhz % 100);
}

/* ---------------------------------------------------------------- the local APIC and the I/O APIC */

static uint32_t lapic_read(uint32_t reg)
{
    return *(volatile uint32_t *)(LAPIC_BASE + reg);
}

static void lapic_write(uint32_t reg, uint32_t value)
{
    *(volatile uint32_t *)(LAPIC_BASE + reg) = value;
}

/* Whether `vector` is set in the APIC's ISR or IRR (`bank` LAPIC_ISR or LAPIC_IRR). */
static int lapic_vector_bit(uint32_t bank, uint32_t vector)
{
    return (lapic_read(bank + 0x10 * (vector / 32)) >> (vector % 32)) & 1;
}

static uint32_t ioapic_read(uint32_t reg)
{
    *(volatile uint32_t *)(IOAPIC_BASE + IOAPIC_REGSEL) = reg;
    return *(volatile uint32_t *)(IOAPIC_BASE + IOAPIC_WINDOW);
}

static void ioapic_write(uint32_t reg, uint32_t value)
{
    *(volatile uint32_t *)(IOAPIC_BASE + IOAPIC_REGSEL) = reg;
    *(volatile uint32_t *)(IOAPIC_BASE + IOAPIC_WINDOW) = value;
}

static inline uint64_t rdmsr(uint32_t index)
{
    uint32_t lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(index));
    return (uint64_t)hi << 32 | lo;
}

static uint32_t cpuid_1_edx(void)
{
    uint32_t a = 1, b, c = 0, d;
    __asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
    return d;
}

static uint32_t pm_now(void)
{
    return inl(pm_timer_port) & 0xFFFFFF;
}

/* Microseconds between two PM timer readings less than its 4.7 s wrap apart. */
static uint32_t pm_us(uint32_t from, uint32_t to)
{
    return div64_32((uint64_t)((to - from) & 0xFFFFFF) * 1000000u, PM_TIMER_HZ);
}

/* Whether `us` is within 1% of `expected`. */
static int within_1pct(uint32_t us, uint32_t expected)
{
    return us * 100 >= expected * 99 && us * 100 <= expected * 101;
}

/* The APIC vectors' interrupts: how many came, and the PM timer at each of the first ones. */
#define APIC_STAMPS 64
static volatile uint32_t lapic_timer_count, ioapic_rtc_count, apic_spurious_count;
static volatile uint32_t apic_stamp[APIC_STAMPS];

static void apic_stamp_at(volatile uint32_t *count)
{
    if (*count < APIC_STAMPS)
        apic_stamp[*count] = pm_now();
    (*count)++;
}

static void apic_interrupt(unsigned vector)
{
    switch (vector) {
    case LAPIC_TIMER_VECTOR:
        apic_stamp_at(&lapic_timer_count);
        break;
    case IOAPIC_RTC_VECTOR:
        if (rtc_read(0x0C) & RTC_C_PF) /* reading C lowers the line: the next edge is a new one */
            apic_stamp_at(&ioapic_rtc_count);
        break;
    default: /* the spurious vector: nothing in service, no EOI (SDM) */
        apic_spurious_count++;
        return;
    }
    lapic_write(LAPIC_EOI, 0);
}

/* What a BIOS leaves for a kernel (Linux's verify_local_APIC and the virtual-wire setup it
   inherits): the CPUID bit, the base MSR, the registers' reset and firmware values. */
static void check_lapic(void)
{
    int cpuid_apic = (cpuid_1_edx() & CPUID_1_EDX_APIC) != 0;
    uint32_t msr = (uint32_t)rdmsr(MSR_APIC_BASE);
    uint32_t id = lapic_read(LAPIC_ID) >> 24, version = lapic_read(LAPIC_VERSION);
    uint32_t lvts = ((version >> 16) & 0xFF) + 1;
    uint32_t tpr = lapic_read(LAPIC_TPR) & 0xFF, ppr = lapic_read(LAPIC_PPR) & 0xFF;
    uint32_t svr = lapic_read(LAPIC_SVR) & 0x3FF;
    uint32_t lint0 = lapic_read(LAPIC_LVT_LINT0), lint1 = lapic_read(LAPIC_LVT_LINT1);
    int virtual_wire = (lint0 & (LVT_MASKED | LVT_DELIVERY_MODE)) == LVT_EXTINT &&
                       (lint1 & (LVT_MASKED | LVT_DELIVERY_MODE)) == LVT_NMI;
    /* The TPR is read-write; the PPR follows it (nothing in service). */
    lapic_write(LAPIC_TPR, 0x20);
    uint32_t tpr_set = lapic_read(LAPIC_TPR) & 0xFF, ppr_set = lapic_read(LAPIC_PPR) & 0xFF;
    lapic_write(LAPIC_TPR, 0);
    int priorities =
        tpr == 0 && ppr == 0 && tpr_set == 0x20 && ppr_set == 0x20 && (lapic_read(LAPIC_TPR) & 0xFF) == 0;
    report(cpuid_apic && msr == (LAPIC_BASE | APIC_BASE_ENABLE | APIC_BASE_BSP) && id == 0 &&
               (version & 0xFF) == 0x14 && lvts == 6 && priorities && svr == (0x100 | APIC_SPURIOUS_VECTOR) &&
               virtual_wire,
           "lapic",
           "CPUID.1:EDX.APIC %s, MSR 1b = %08x, ID %u, version %02x with %u LVT entries, TPR/PPR %02x/%02x "
           "(%02x/%02x after a TPR write), SVR %03x, LINT0 %s, LINT1 %s",
           cpuid_apic ? "set" : "CLEAR", msr, id, version & 0xFF, lvts, tpr, ppr, tpr_set, ppr_set, svr,
           (lint0 & (LVT_MASKED | LVT_DELIVERY_MODE)) == LVT_EXTINT ? "ExtINT" : "NOT ExtINT",
           (lint1 & (LVT_MASKED | LVT_DELIVERY_MODE)) == LVT_NMI ? "NMI" : "NOT NMI");
}

/* The timer at divide 16 (6.25 MHz from the 100 MHz bus): one-shot for 10 ms, then periodic
   at 1 ms, both timed by the PM timer; then masked and stopped. The 8259's PIT interrupts come
   through LINT0 meanwhile (the wait's timeout). */
static void check_lapic_timer(void)
{
    const uint32_t hz = APIC_BUS_HZ / 16, one_shot = hz / 100, period = hz / 1000, periods = 50;
    lapic_write(LAPIC_TIMER_DIVIDE, LAPIC_DIVIDE_16);
    lapic_write(LAPIC_LVT_TIMER, LAPIC_TIMER_VECTOR);
    cli();
    lapic_timer_count = 0;
    uint32_t start = pm_now();
    lapic_write(LAPIC_TIMER_INITIAL, one_shot);
    uint32_t running = lapic_read(LAPIC_TIMER_CURRENT);
    wait_for(&lapic_timer_count, 1, 10);
    wait_for(&irq_count[0], irq_count[0] + 3, 10); /* 30 ms more: a one-shot fires once */
    cli();
    uint32_t fired = lapic_timer_count, after = lapic_read(LAPIC_TIMER_CURRENT);
    uint32_t one_shot_us = fired ? pm_us(start, apic_stamp[0]) : 0;
    int one_shot_clear = !lapic_vector_bit(LAPIC_ISR, LAPIC_TIMER_VECTOR) &&
                         !lapic_vector_bit(LAPIC_IRR, LAPIC_TIMER_VECTOR);
    int one_shot_ok = fired == 1 && after == 0 && running > 0 && running <= one_shot &&
                      within_1pct(one_shot_us, 10000) && one_shot_clear;

    lapic_timer_count = 0;
    lapic_write(LAPIC_LVT_TIMER, LVT_TIMER_PERIODIC | LAPIC_TIMER_VECTOR);
    lapic_write(LAPIC_TIMER_INITIAL, period);
    wait_for(&lapic_timer_count, periods + 1, 20);
    cli();
    uint32_t counted = lapic_timer_count, reloaded = lapic_read(LAPIC_TIMER_CURRENT);
    uint32_t periodic_us = counted > periods ? pm_us(apic_stamp[0], apic_stamp[periods]) : 0;
    lapic_write(LAPIC_LVT_TIMER, LVT_MASKED | LVT_TIMER_PERIODIC | LAPIC_TIMER_VECTOR);
    uint32_t at_mask = lapic_timer_count;
    wait_for(&irq_count[0], irq_count[0] + 2, 10); /* 20 ms masked: no interrupt */
    cli();
    uint32_t while_masked = lapic_timer_count - at_mask;
    lapic_write(LAPIC_TIMER_INITIAL, 0); /* stopped */
    uint32_t stopped = lapic_read(LAPIC_TIMER_CURRENT);
    int periodic_clear = !lapic_vector_bit(LAPIC_ISR, LAPIC_TIMER_VECTOR);
    sti();
    int periodic_ok = counted > periods && reloaded > 0 && reloaded <= period &&
                      within_1pct(periodic_us, 1000 * periods) && while_masked == 0 && stopped == 0 && periodic_clear;
    int divide = (lapic_read(LAPIC_TIMER_DIVIDE) & 0xB) == LAPIC_DIVIDE_16;
    report(one_shot_ok && periodic_ok && divide, "lapic-timer",
           "one-shot: %u counts at divide 16, %u interrupt on vector %02x after %u ms by the PM timer, current count "
           "%u after; periodic: %u periods of %u counts in %u ms (%u expected, +-1%%), none while masked; EOIs to the "
           "APIC left its ISR %s",
           one_shot, fired, LAPIC_TIMER_VECTOR, (one_shot_us + 500) / 1000, after, periods, period,
           (periodic_us + 500) / 1000, periods, one_shot_clear && periodic_clear ? "clear" : "NOT CLEAR");
}

/* The RTC's periodic interrupt (1024 Hz) routed through I/O APIC pin 8 to the local APIC at
   vector 0x48, fixed, edge, physical destination 0, with IRQ 8 masked at the 8259; then the
   entry masked again and the 8259's route restored. */
static void check_ioapic(void)
{
    const uint32_t periods = 16, low_half = IOAPIC_REDIRECTION(IOAPIC_RTC_PIN);
    uint32_t id = (ioapic_read(IOAPIC_REG_ID) >> 24) & 0xF, version = ioapic_read(IOAPIC_REG_VERSION);
    uint32_t pins = ((version >> 16) & 0xFF) + 1;
    int masked_at_boot = (ioapic_read(low_half) & RTE_MASKED) != 0;

    cli();
    uint8_t slave_imr = inb(PIC_SLAVE + 1), rtc_a = rtc_read(0x0A), rtc_b = rtc_read(0x0B);
    outb(PIC_SLAVE + 1, slave_imr | 0x01); /* IRQ 8 masked at the 8259 */
    rtc_write(0x0A, (rtc_a & 0xF0) | RTC_A_RATE_1024HZ);
    rtc_write(0x0B, (rtc_b | RTC_B_PIE) & ~RTC_B_UIE);
    (void)rtc_read(0x0C);
    ioapic_write(low_half + 1, 0u << 24);       /* destination: APIC ID 0 */
    ioapic_write(low_half, IOAPIC_RTC_VECTOR); /* fixed, physical, active high, edge, unmasked */
    uint32_t programmed = ioapic_read(low_half), destination = ioapic_read(low_half + 1);
    uint32_t via_8259 = irq_count[8];
    ioapic_rtc_count = 0;
    wait_for(&ioapic_rtc_count, periods + 1, 10);
    cli();
    ioapic_write(low_half, RTE_MASKED | IOAPIC_RTC_VECTOR);
    uint32_t counted = ioapic_rtc_count, not_via_8259 = irq_count[8] == via_8259;
    uint32_t rate_us = counted > periods ? pm_us(apic_stamp[0], apic_stamp[periods]) : 0;
    rtc_write(0x0B, rtc_b);
    (void)rtc_read(0x0C);
    rtc_write(0x0A, rtc_a);
    uint32_t masked = ioapic_read(low_half);
    int clear = !lapic_vector_bit(LAPIC_ISR, IOAPIC_RTC_VECTOR) && !lapic_vector_bit(LAPIC_IRR, IOAPIC_RTC_VECTOR);
    /* The 8259 latched the RTC's edges with IRQ 8 masked; unmasked, that request comes through
       the 8259 at vector 0x28 again. */
    int latched = pic_read_irr(PIC_SLAVE) & 0x01;
    outb(PIC_SLAVE + 1, slave_imr);
    __asm__ volatile("sti; nop; nop; cli" ::: "memory");
    uint32_t restored = irq_count[8] - via_8259;
    sti();
    int ok = id == 1 && version == 0x00170011 && pins == 24 && masked_at_boot && programmed == IOAPIC_RTC_VECTOR &&
             destination == 0 && counted > periods && not_via_8259 && within_1pct(rate_us, 15625) &&
             (masked & (RTE_MASKED | RTE_REMOTE_IRR)) == RTE_MASKED && clear && latched && restored == 1;
    report(ok, "ioapic",
           "ID %u, version %08x (%u pins), pin %u masked at boot; pin %u to vector %02x (fixed, edge, APIC 0): %u RTC "
           "periodic interrupts, %u periods in %u.%u ms (15.6 expected, +-1%%), %s IRQ 8 from the 8259; masked again, "
           "LAPIC ISR %s; the 8259's latched IRQ 8 then came at vector %02x",
           id, version, pins, IOAPIC_RTC_PIN, IOAPIC_RTC_PIN, IOAPIC_RTC_VECTOR, counted, periods,
           (rate_us + 50) / 1000, (rate_us + 50) / 100 % 10, not_via_8259 ? "no" : "AN", clear ? "clear" : "NOT CLEAR",
           IRQ_BASE + 8);
}

/* ---------------------------------------------------------------- VGA */

static uint8_t crtc_read(uint8_t reg)
{
    outb(CRTC_INDEX, reg);
    return inb(CRTC_DATA);
}

static void crtc_write(uint8_t reg, uint8_t value)
{
    outb(CRTC_INDEX, reg);
    outb(CRTC_DATA, value);
}

static uint32_t vga_row;

/* Writes a line on the text screen at the next row and puts the cursor after it. */
static uint16_t vga_line(const char *s, uint8_t attribute)
{
    uint16_t position = (uint16_t)(vga_row++ * 80);
    uint16_t i = 0;
    for (; s[i]; i++)
        VGA_TEXT[position + i] = (uint16_t)attribute << 8 | (uint8_t)s[i];
    for (uint16_t j = i; j < 80; j++)
        VGA_TEXT[position + j] = (uint16_t)attribute << 8 | ' ';
    position += i;
    crtc_write(0x0E, position >> 8);
    crtc_write(0x0F, position & 0xFF);
    return position;
}

static void check_vga(void)
{
    for (int i = 0; i < 80 * 25; i++)
        VGA_TEXT[i] = 0x0720; /* grey on black blanks */
    static const char text[] = "ring1 devtest: hello from the VGA text screen";
    uint16_t cursor = vga_line(text, 0x1F);
    uint16_t read_cursor = (uint16_t)(crtc_read(0x0E) << 8 | crtc_read(0x0F));
    int same = 1;
    for (uint32_t i = 0; text[i]; i++)
        same &= VGA_TEXT[i] == (0x1F00 | (uint8_t)text[i]);
    uint8_t misc = inb(0x3CC);
    uint16_t start = (uint16_t)(crtc_read(0x0C) << 8 | crtc_read(0x0D));
    report(same && read_cursor == cursor && (misc & 0x01) && start == 0, "vga",
           "a line at 0xB8000, the cursor moved to row %u column %u through the CRTC and read back", cursor / 80,
           cursor % 80);
}

/* ---------------------------------------------------------------- PCI */

static uint32_t pci_address(uint32_t dev, uint32_t fn, uint32_t reg)
{
    return 0x80000000u | dev << 11 | fn << 8 | (reg & 0xFC);
}

static uint32_t pci_read(uint32_t dev, uint32_t fn, uint32_t reg)
{
    outl(PCI_ADDRESS, pci_address(dev, fn, reg));
    return inl(PCI_DATA);
}

static void pci_write(uint32_t dev, uint32_t fn, uint32_t reg, uint32_t value)
{
    outl(PCI_ADDRESS, pci_address(dev, fn, reg));
    outl(PCI_DATA, value);
}

static void check_pci(void)
{
    /* Linux's pci_check_type1: a byte write at 0xCFB, then CONFIG_ADDRESS holds a dword. */
    outb(0xCFB, 0x01);
    uint32_t saved = inl(PCI_ADDRESS);
    outl(PCI_ADDRESS, 0x80000000u);
    int type1 = inl(PCI_ADDRESS) == 0x80000000u;
    outl(PCI_ADDRESS, saved);
    uint32_t functions = 0;
    int host_bridge = 0;
    for (uint32_t dev = 0; type1 && dev < 32; dev++) {
        for (uint32_t fn = 0; fn < 8; fn++) {
            uint32_t id = pci_read(dev, fn, 0x00);
            if ((id & 0xFFFF) == 0xFFFF) {
                if (fn == 0)
                    break;
                continue;
            }
            uint32_t class = pci_read(dev, fn, 0x08) >> 16;
            uint8_t header = (uint8_t)(pci_read(dev, fn, 0x0C) >> 16);
            kprintf("devtest: pci 00:%02x.%u %04x:%04x class %04x\n", dev, fn, id & 0xFFFF, id >> 16, class);
            functions++;
            host_bridge |= dev == 0 && fn == 0 && class == 0x0600;
            if (fn == 0 && !(header & 0x80))
                break; /* a single-function device */
        }
    }
    report(type1 && host_bridge, "pci", "configuration mechanism #1, %u functions on bus 0, a host bridge at 00:00.0",
           functions);
}

/* ---------------------------------------------------------------- ATA */

static uint16_t sector[SECTOR_WORDS];
static uint32_t ata_sectors;

static int ata_wait_not_busy(void)
{
    for (uint32_t i = 0; i < 100000; i++)
        if (!(inb(ATA_ALTSTATUS) & ATA_BSY))
            return 1;
    return 0;
}

/* Issues a command to the master with LBA28 addressing; returns IRQ 14's count before it. */
static uint32_t ata_issue(uint8_t command, uint32_t lba, uint8_t count)
{
    ata_wait_not_busy();
    outb(ATA_DEVICE, 0xE0 | ((lba >> 24) & 0x0F));
    outb(ATA_COUNT, count);
    outb(ATA_LBA0, lba & 0xFF);
    outb(ATA_LBA1, (lba >> 8) & 0xFF);
    outb(ATA_LBA2, (lba >> 16) & 0xFF);
    uint32_t before = irq_count[14];
    outb(ATA_STATUS, command);
    return before;
}

/* Waits for the command's n-th interrupt; the status its handler read, or 0xFF if none came. */
static uint8_t ata_wait_irq(uint32_t before, uint32_t n)
{
    if (!wait_for(&irq_count[14], before + n, 100))
        return 0xFF;
    return ata_irq_status;
}

/* One sector through the data register with REP INSW / REP OUTSW, as drivers move PIO data
   (an interrupt may come between two iterations; the CPU resumes the REP where it stopped). */
static void ata_read_data(uint16_t *buffer)
{
    uint32_t words = SECTOR_WORDS;
    __asm__ volatile("cld; rep insw" : "+D"(buffer), "+c"(words) : "d"(ATA_DATA) : "memory");
}

static void ata_write_data(const uint16_t *buffer)
{
    uint32_t words = SECTOR_WORDS;
    __asm__ volatile("cld; rep outsw" : "+S"(buffer), "+c"(words) : "d"(ATA_DATA) : "memory");
}

/* READ SECTORS: an interrupt per sector, then its data. */
static int ata_read(uint32_t lba, uint32_t count, uint16_t *buffer)
{
    uint32_t before = ata_issue(0x20, lba, (uint8_t)count);
    for (uint32_t i = 0; i < count; i++) {
        uint8_t status = ata_wait_irq(before, i + 1);
        if ((status & (ATA_ERR | ATA_DRQ | ATA_BSY)) != ATA_DRQ)
            return 0;
        ata_read_data(buffer + i * SECTOR_WORDS);
    }
    return !(inb(ATA_ALTSTATUS) & (ATA_ERR | ATA_DRQ | ATA_BSY));
}

/* WRITE SECTORS: the first block on DRQ, each next one after its interrupt, the last
   interrupt when the command ends. */
static int ata_write(uint32_t lba, uint32_t count, const uint16_t *buffer)
{
    uint32_t before = ata_issue(0x30, lba, (uint8_t)count);
    ata_wait_not_busy();
    for (uint32_t i = 0; i < count; i++) {
        if ((inb(ATA_ALTSTATUS) & (ATA_ERR | ATA_DRQ | ATA_BSY)) != ATA_DRQ)
            return 0;
        ata_write_data(buffer + i * SECTOR_WORDS);
        uint8_t status = ata_wait_irq(before, i + 1);
        if (status & (ATA_ERR | ATA_BSY))
            return 0;
    }
    return !(inb(ATA_ALTSTATUS) & (ATA_ERR | ATA_DRQ | ATA_BSY));
}

static int ata_flush(void)
{
    uint8_t status = ata_wait_irq(ata_issue(0xE7, 0, 0), 1);
    return (status & (ATA_ERR | ATA_BSY | ATA_DRQ)) == 0;
}

static uint8_t pattern_byte(uint32_t lba, uint32_t i)
{
    return (uint8_t)((lba * 31 + i * 7) ^ 0x5A);
}

static void fill_pattern(uint16_t *buffer, uint32_t lba, uint32_t count)
{
    uint8_t *bytes = (uint8_t *)buffer;
    for (uint32_t s = 0; s < count; s++)
        for (uint32_t i = 0; i < 512; i++)
            bytes[s * 512 + i] = pattern_byte(lba + s, i);
}

static void copy_ata_string(char *dst, const uint16_t *words, uint32_t nwords)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < nwords; i++) { /* the first character of a pair is the high byte */
        dst[n++] = (char)(words[i] >> 8);
        dst[n++] = (char)(words[i] & 0xFF);
    }
    while (n && dst[n - 1] == ' ')
        n--;
    dst[n] = 0;
}

static uint32_t parse_run_number(const uint8_t *bytes)
{
    const char *sig = RUN_SIGNATURE;
    uint32_t i = 0;
    for (; sig[i]; i++)
        if (bytes[i] != (uint8_t)sig[i])
            return 0;
    uint32_t n = 0;
    for (; bytes[i] >= '0' && bytes[i] <= '9' && i < 40; i++)
        n = n * 10 + (bytes[i] - '0');
    return n;
}

static void print_first_bytes(const uint8_t *bytes)
{
    kputs("devtest: ata sector 0:");
    for (int i = 0; i < 16; i++)
        kprintf(" %02x", bytes[i]);
    kputs(" \"");
    for (int i = 0; i < 24; i++)
        console_putc(bytes[i] >= 0x20 && bytes[i] < 0x7F ? (char)bytes[i] : '.');
    kputs("\"\n");
}

static uint16_t buffer2[2 * SECTOR_WORDS];

static int ata_probe(void)
{
    outb(ATA_DEVICE, 0xA0);
    for (int i = 0; i < 4; i++)
        (void)inb(ATA_ALTSTATUS); /* the 400 ns a device select asks for */
    /* Linux's ata_devchk: the sector count and LBA low registers hold what is written. */
    outb(ATA_COUNT, 0x55);
    outb(ATA_LBA0, 0xAA);
    outb(ATA_COUNT, 0xAA);
    outb(ATA_LBA0, 0x55);
    outb(ATA_COUNT, 0x55);
    outb(ATA_LBA0, 0xAA);
    return inb(ATA_COUNT) == 0x55 && inb(ATA_LBA0) == 0xAA;
}

static void check_ata(void)
{
    if (!ata_probe()) {
        kputs("devtest: ata: no master on the primary channel (no --disk), skipped\n");
        return;
    }
    outb(PIC_SLAVE + 1, inb(PIC_SLAVE + 1) & ~0x40); /* IRQ 14: the slave's IR6 */
    /* Software reset: the ATA signature, then interrupts on (nIEN clear). */
    outb(ATA_ALTSTATUS, ATA_CTL_SRST | ATA_CTL_NIEN);
    spin_ns(5000);
    outb(ATA_ALTSTATUS, ATA_CTL_NIEN);
    int ready = ata_wait_not_busy();
    int signature = inb(ATA_COUNT) == 1 && inb(ATA_LBA0) == 1 && inb(ATA_LBA1) == 0 && inb(ATA_LBA2) == 0 &&
                    inb(ATA_ERROR) == 0x01;
    outb(ATA_ALTSTATUS, 0x00);
    report(ready && signature, "ata-reset", "soft reset, the ATA signature 01/01/00/00, diagnostics passed");

    uint32_t before = ata_issue(0xEC, 0, 0);
    uint8_t status = ata_wait_irq(before, 1);
    int identified = (status & (ATA_ERR | ATA_DRQ | ATA_BSY)) == ATA_DRQ;
    char model[41] = "";
    if (identified) {
        ata_read_data(sector);
        copy_ata_string(model, sector + 27, 20);
        ata_sectors = sector[60] | (uint32_t)sector[61] << 16;
        uint8_t integrity = byte_sum((const uint8_t *)sector, 512);
        identified = (sector[255] & 0xFF) == 0xA5 && integrity == 0 && ata_sectors > 3;
    }
    report(identified, "ata-identify", "IDENTIFY on IRQ 14: \"%s\", %u sectors (%u KB), integrity word good", model,
           ata_sectors, ata_sectors / 2);
    if (!identified)
        return;

    int read0 = ata_read(0, 1, sector);
    print_first_bytes((const uint8_t *)sector);
    uint32_t run = read0 ? parse_run_number((const uint8_t *)sector) + 1 : 0;
    int earlier = ata_read(1, 2, buffer2);
    for (uint32_t i = 0; earlier && i < 1024; i++)
        earlier = ((uint8_t *)buffer2)[i] == pattern_byte(1 + i / 512, i % 512);
    kprintf("devtest: ata sectors 1-2: %s\n", earlier ? "the pattern of an earlier run" : "no pattern yet");

    fill_pattern(buffer2, 1, 2);
    int written = ata_write(1, 2, buffer2);
    memset(buffer2, 0, sizeof(buffer2));
    int read_back = ata_read(1, 2, buffer2);
    int same = 1;
    for (uint32_t i = 0; i < 1024; i++)
        same &= ((uint8_t *)buffer2)[i] == pattern_byte(1 + i / 512, i % 512);
    report(read0 && written && read_back && same, "ata-pio",
           "sector 0 read; sectors 1-2 written by PIO (an interrupt per sector) and read back the same");

    memset(sector, 0, sizeof(sector));
    char *text = (char *)sector;
    kstrcpy(text, RUN_SIGNATURE);
    char digits[12];
    uint32_t n = 0, v = run;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    uint32_t at = kstrlen(text);
    while (n)
        text[at++] = digits[--n];
    int counted = ata_write(0, 1, sector) && ata_flush();
    memset(sector, 0, sizeof(sector));
    counted = counted && ata_read(0, 1, sector) && parse_run_number((const uint8_t *)sector) == run;
    report(counted, "ata-run-counter", "sector 0 now says \"%s%u\", flushed", RUN_SIGNATURE, run);

    /* Malformed use: an opcode no ATA command has, and a sector past the end. */
    status = ata_wait_irq(ata_issue(0x02, 0, 1), 1);
    uint8_t error = inb(ATA_ERROR);
    report((status & (ATA_ERR | ATA_BSY | ATA_DRQ)) == ATA_ERR && (error & ATA_ER_ABRT), "ata-bad-command",
           "opcode 02h aborted: status %02x error %02x (ERR, ABRT)", status, error);
    status = ata_wait_irq(ata_issue(0x20, ata_sectors, 1), 1);
    error = inb(ATA_ERROR);
    report((status & (ATA_ERR | ATA_BSY | ATA_DRQ)) == ATA_ERR && (error & (ATA_ER_IDNF | ATA_ER_ABRT)),
           "ata-bad-lba", "READ SECTORS at LBA %u (the end): status %02x error %02x (IDNF)", ata_sectors, status,
           error);
    /* The drive still works after both. */
    int works = ata_read(0, 1, sector) && parse_run_number((const uint8_t *)sector) == run;
    report(works, "ata-after-errors", "sector 0 reads back after the errors");
}

/* ---------------------------------------------------------------- serial input */

static void check_serial(void)
{
    echo_state = 1;
    echo_bytes = 0;
    outb(COM1 + 4, 0x0B);                               /* MCR: DTR, RTS, OUT2 (the IRQ buffer) */
    outb(PIC_MASTER + 1, inb(PIC_MASTER + 1) & ~0x10); /* IRQ 4 */
    outb(COM1 + 1, 0x01);                               /* IER: received data available */
    /* Bytes fed from --serial-input are in the FIFO already, or arrive a character time apart;
       20 PIT ticks (200 ms) with none means there is no input. */
    wait_for(&echo_bytes, 1, 20);
    if (echo_bytes)
        wait_for((volatile uint32_t *)&echo_state, 3, 200);
    outb(COM1 + 1, 0x00);
    outb(PIC_MASTER + 1, inb(PIC_MASTER + 1) | 0x10);
    int state = echo_state;
    echo_state = 0;
    if (!echo_bytes) {
        kputs("devtest: serial: no input (--serial-input), echo skipped\n");
        return;
    }
    if (state != 3)
        console_putc('\n');
    report(state == 3, "serial", "%u bytes echoed from the receive interrupt, up to the newline", echo_bytes);
}

/* ---------------------------------------------------------------- malformed use */

static void check_read_only(void)
{
    /* PCI: the host bridge's vendor and device ID and class code ignore writes. */
    uint32_t id = pci_read(0, 0, 0x00), class = pci_read(0, 0, 0x08);
    pci_write(0, 0, 0x00, 0x12345678);
    pci_write(0, 0, 0x08, 0xFFFFFFFF);
    int pci = pci_read(0, 0, 0x00) == id && pci_read(0, 0, 0x08) == class;
    /* RTC: status D is read-only (VRT stays set). */
    rtc_write(0x0D, 0x00);
    int rtc = rtc_read(0x0D) == RTC_D_VRT;
    /* The PM timer runs on through a write. */
    uint32_t before = inl(pm_timer_port) & 0xFFFFFF;
    outl(pm_timer_port, 0);
    uint32_t after = inl(pm_timer_port) & 0xFFFFFF;
    int pm = ((after - before) & 0xFFFFFF) < 1000;
    /* ELCR: IRQ 0, 1, 2 (and 8, 13) are edge only, their bits read 0. */
    uint8_t elcr = inb(ELCR), elcr_slave = inb(ELCR + 1);
    outb(ELCR, 0x07);
    outb(ELCR + 1, 0x21);
    int edge = (inb(ELCR) & 0x07) == 0 && (inb(ELCR + 1) & 0x21) == 0;
    outb(ELCR, elcr);
    outb(ELCR + 1, elcr_slave);
    /* Port 0x61: bit 5 is channel 2's OUT (high since the calibration's terminal count), not
       a latch: writing the opposite there changes nothing. */
    uint8_t port_b_before = inb(PORT_B);
    outb(PORT_B, (port_b_before & 0x0C) | (~port_b_before & 0x20));
    int port_b = ((inb(PORT_B) ^ port_b_before) & 0x20) == 0;
    outb(PORT_B, port_b_before & 0x0C);
    report(pci && rtc && pm && edge && port_b, "read-only",
           "PCI IDs %s, RTC status D %s, PM timer %s, ELCR edge-only bits %s, port 0x61 OUT2 %s",
           pci ? "kept" : "CHANGED", rtc ? "kept" : "CHANGED", pm ? "kept counting" : "DISTURBED",
           edge ? "stay 0" : "CHANGED", port_b ? "kept" : "CHANGED");
}

/* Many PIT edges while IF=0 leave one request in the IRR: one interrupt, not one per edge. */
static void check_irq_storm(void)
{
    pic_set_masks((uint8_t)~0x01, 0xFF); /* IRQ 0 only */
    cli();
    uint32_t before = irq_count[0];
    pit_channel0(2, 12); /* an edge every ~10 us */
    spin_ns(200000);     /* some 20 edges */
    int latched = pic_read_irr(PIC_MASTER) & 0x01;
    outb(PIT_MODE, 0x30); /* channel 0 in mode 0 with no count: OUT low, no more edges */
    __asm__ volatile("sti; nop; nop; cli" ::: "memory");
    uint32_t delivered = irq_count[0] - before;
    sti();
    spin_ns(50000);
    uint32_t later = irq_count[0] - before;
    int cleared = !(pic_read_irr(PIC_MASTER) & 0x01) && !(pic_read_isr(PIC_MASTER) & 0x01);
    report(latched && delivered == 1 && later == 1 && cleared, "irq-storm",
           "about 20 PIT edges while IF=0: IRR %s, %u interrupt in the STI window, %u in all, IRR and ISR %s",
           latched ? "latched" : "EMPTY", delivered, later, cleared ? "clear" : "NOT CLEAR");
}

/* An IRQ 0 handler that never EOIs: IRQ 0 stays in service and no further one is delivered
   until the EOI comes. */
static void check_no_eoi(void)
{
    pic_set_masks((uint8_t)~0x01, 0xFF);
    uint32_t before = irq_count[0];
    pit_withhold_eoi = 1;
    pit_channel0(2, 12);
    spin_ns(200000); /* IF=1: the first edge is taken, the next ones wait */
    cli();
    uint32_t withheld = irq_count[0] - before;
    int in_service = pic_read_isr(PIC_MASTER) & 0x01, requested = pic_read_irr(PIC_MASTER) & 0x01;
    outb(PIT_MODE, 0x30); /* stop the edges: the IRR keeps the one request */
    pit_withhold_eoi = 0;
    outb(PIC_MASTER, PIC_EOI); /* the EOI the handler left out */
    __asm__ volatile("sti; nop; nop; cli" ::: "memory");
    uint32_t after_eoi = irq_count[0] - before;
    sti();
    report(withheld == 1 && in_service && requested && after_eoi == 2, "no-eoi",
           "%u interrupt while IRQ 0 stayed in service (ISR %u, IRR %u), %u more in the STI window after the EOI",
           withheld, in_service, requested, after_eoi - withheld);
}

/* Everything masked but the RTC: one HLT that only the RTC's update interrupt may end (the PIT
   keeps running at 100 Hz, masked). */
static void check_last_interrupt(void)
{
    pit_channel0(2, PIT_LATCH);
    pic_set_masks((uint8_t)~0x04, (uint8_t)~0x01);
    cli();
    (void)rtc_read(0x0C);
    uint32_t ticks = irq_count[0], updates = rtc_updates, spurious = spurious_count;
    __asm__ volatile("sti; hlt; cli" ::: "memory");
    uint32_t woken_by_rtc = rtc_updates - updates, pit = irq_count[0] - ticks;
    pic_set_masks(0xFF, 0xFF);
    rtc_write(0x0B, rtc_read(0x0B) & ~RTC_B_UIE);
    sti();
    report(woken_by_rtc == 1 && pit == 0 && spurious == spurious_count, "masked-hlt",
           "all masked but IRQ 8: HLT ended by %u RTC interrupt, %u PIT interrupts", woken_by_rtc, pit);
}

/* ---------------------------------------------------------------- main */

int kmain(uint32_t magic, const void *info)
{
    (void)info;
    int uart = serial_init();
    kputs("devtest: ring1 device self-test\n");
    report(uart && magic == 0x2BADB002, "boot", "Multiboot magic, COM1 16550 scratch register");
    setup_cpu_tables();
    check_pic();
    check_timer();
    check_busy_wait();
    check_tsc();
    check_rtc();
    check_acpi();
    check_mp();
    check_pm_timer();
    check_lapic();
    check_lapic_timer();
    check_ioapic();
    check_vga();
    check_pci();
    check_ata();
    check_serial();
    check_read_only();
    check_irq_storm();
    check_no_eoi();
    check_last_interrupt();
    if (spurious_count)
        kprintf("devtest: %u spurious IRQ 7/15\n", spurious_count);
    if (failures) {
        kprintf("devtest: %u of %u checks FAILED\n", failures, checks);
        vga_line("ring1 devtest: some checks FAILED", 0x4F);
    } else {
        kprintf("devtest: all %u checks passed\n", checks);
        vga_line("ring1 devtest: all checks passed", 0x2F);
    }
    return failures;
}
