/* demo: a small kernel that runs at CPL 0 on ring1's virtual platform.

   It sets up its own GDT, IDT (interrupt and trap gates) and TSS, turns paging on,
   does some real work (primes, CRC-32, string routines, recursive and indirect calls),
   takes and handles exceptions on purpose (#DE, #UD, #GP, #PF, #BP, int 0x80), and then
   asks "am I virtualized?" the Red Pill way: with unprivileged instructions that never
   trap (SIDT, PUSHF/POPF, MOV from CS, SMSW, STR) and reveal privileged state.

   Every line it prints is the same on a real CPU and under a correct VMM; under naive
   trap-and-emulate (the kernel run at CPL 1) the redpill lines differ. The exit status
   is 0 when every self-check passed, else the number of failed checks. */

#include "lib.h"

#define SEL_KCODE 0x08
#define SEL_KDATA 0x10
#define SEL_UCODE 0x1B
#define SEL_UDATA 0x23
#define SEL_TSS 0x28
#define SEL_BAD 0x38 /* past the GDT's limit */

#define CR0_PE 0x00000001u
#define CR0_MP 0x00000002u
#define CR0_ET 0x00000010u
#define CR0_NE 0x00000020u
#define CR0_WP 0x00010000u
#define CR0_PG 0x80000000u
#define EFLAGS_IF 0x200u

#define DEMAND_PAGE 0x00500000u /* left not present: the first store maps it */

struct multiboot_info {
    uint32_t flags, mem_lower, mem_upper, boot_device, cmdline;
    uint32_t mods_count, mods_addr, syms[4], mmap_length, mmap_addr;
    uint32_t drives_length, drives_addr, config_table, boot_loader_name;
};

extern const uint32_t isr_stubs[33];
extern char stack_top[];
extern char __image_start[], __readonly_end[];

static struct descriptor gdt[6];
static struct descriptor idt[256];
static struct tss tss;
static uint32_t page_dir[1024] __attribute__((aligned(4096)));
static uint32_t page_tables[2][1024] __attribute__((aligned(4096)));

static int failures;
static volatile uint32_t recover_eip; /* where a handler resumes after an expected fault */
static volatile uint32_t fault_count[33];
static volatile uint32_t last_error, last_cr2, last_eip;

static void check(int ok, const char *what)
{
    if (!ok) {
        failures++;
        kprintf("  FAILED: %s\n", what);
    }
}

/* ---------------------------------------------------------------- descriptor tables */

static void setup_gdt(void)
{
    gdt[0] = segment_descriptor(0, 0, 0, 0);
    gdt[1] = segment_descriptor(0, 0xFFFFF, 0x9A, 0xC); /* 0x08 kernel code, 32-bit, 4 GB */
    gdt[2] = segment_descriptor(0, 0xFFFFF, 0x92, 0xC); /* 0x10 kernel data */
    gdt[3] = segment_descriptor(0, 0xFFFFF, 0xFA, 0xC); /* 0x18 user code (not used yet) */
    gdt[4] = segment_descriptor(0, 0xFFFFF, 0xF2, 0xC); /* 0x20 user data (not used yet) */
    gdt[5] = segment_descriptor((uint32_t)&tss, sizeof(tss) - 1, 0x89, 0x0); /* 0x28 32-bit TSS, available */

    struct table_register gdtr = {sizeof(gdt) - 1, (uint32_t)gdt};
    __asm__ volatile("lgdt %0" : : "m"(gdtr));
    /* Reload every segment register from the new table. */
    __asm__ volatile("ljmp %0, $1f\n"
                     "1:\n\t"
                     "movl %1, %%eax\n\t"
                     "movl %%eax, %%ds\n\t"
                     "movl %%eax, %%es\n\t"
                     "movl %%eax, %%fs\n\t"
                     "movl %%eax, %%gs\n\t"
                     "movl %%eax, %%ss"
                     :
                     : "i"(SEL_KCODE), "i"(SEL_KDATA)
                     : "eax", "memory");

    tss.ss0 = SEL_KDATA;
    tss.esp0 = (uint32_t)stack_top;
    tss.iomap = sizeof(tss); /* no I/O permission bitmap */
    __asm__ volatile("ltr %w0" : : "r"(SEL_TSS));
}

static void setup_idt(void)
{
    for (int v = 0; v < 32; v++) {
        /* Faults that must not be interrupted use interrupt gates; the rest trap gates. */
        int interrupt_gate = v == 8 || v == 13 || v == 14;
        idt[v] = gate_descriptor(isr_stubs[v], SEL_KCODE, interrupt_gate ? 0xE : 0xF, v == 3 ? 3 : 0);
    }
    idt[0x80] = gate_descriptor(isr_stubs[32], SEL_KCODE, 0xF, 3); /* the system call: a trap gate, DPL 3 */
    struct table_register idtr = {sizeof(idt) - 1, (uint32_t)idt};
    __asm__ volatile("lidt %0" : : "m"(idtr));
}

static void setup_paging(void)
{
    /* Identity-map the first 8 MB with 4 KB pages, except DEMAND_PAGE. */
    for (uint32_t t = 0; t < 2; t++) {
        for (uint32_t i = 0; i < 1024; i++)
            page_tables[t][i] = ((t * 1024 + i) << 12) | 0x3; /* present, writable */
        page_dir[t] = (uint32_t)page_tables[t] | 0x3;
    }
    page_tables[DEMAND_PAGE >> 22][(DEMAND_PAGE >> 12) & 0x3FF] = DEMAND_PAGE | 0x2;
    uint32_t cr0;
    __asm__ volatile("movl %0, %%cr3" : : "r"(page_dir) : "memory");
    __asm__ volatile("movl %%cr0, %0" : "=r"(cr0));
    cr0 |= CR0_PG | CR0_WP | CR0_MP | CR0_NE;
    __asm__ volatile("movl %0, %%cr0" : : "r"(cr0) : "memory");
}

/* ---------------------------------------------------------------- exceptions */

static const char *const vector_names[32] = {
    "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "#09", "#TS", "#NP", "#SS", "#GP", "#PF", "#15",
    "#MF", "#AC", "#MC", "#XM", "#20", "#21", "#22", "#23", "#24", "#25", "#26", "#27", "#28", "#29", "#30", "#31",
};

static uint32_t sys_call(uint32_t number, uint32_t a, uint32_t b)
{
    uint32_t result;
    __asm__ volatile("int $0x80" : "=a"(result) : "a"(number), "b"(a), "c"(b) : "memory");
    return result;
}

void trap_dispatch(struct frame *f)
{
    if (f->vector == 0x80) {
        fault_count[32]++;
        switch (f->eax) {
        case 1: /* write(buffer, length) */
            console_write((const char *)f->ebx, f->ecx);
            f->eax = f->ecx;
            break;
        case 2: /* add(a, b) */
            f->eax = f->ebx + f->ecx;
            break;
        case 3: /* the caller's CS and whether IF was set */
            f->eax = f->cs | (f->eflags & EFLAGS_IF);
            break;
        default:
            f->eax = (uint32_t)-1;
            break;
        }
        return;
    }
    fault_count[f->vector & 31]++;
    last_error = f->error;
    last_eip = f->eip;
    if (f->vector == 14) {
        uint32_t cr2;
        __asm__ volatile("movl %%cr2, %0" : "=r"(cr2));
        last_cr2 = cr2;
        if ((cr2 & ~0xFFFu) == DEMAND_PAGE && !(f->error & 1)) {
            page_tables[cr2 >> 22][(cr2 >> 12) & 0x3FF] |= 0x1; /* map it, then retry the access */
            __asm__ volatile("invlpg (%0)" : : "r"(cr2) : "memory");
            return;
        }
    }
    if (f->vector == 3) /* a trap: EIP is already past the INT3 */
        return;
    if (recover_eip) {
        f->eip = recover_eip;
        recover_eip = 0;
        return;
    }
    kprintf("unexpected exception %s (vector %u) error %x at eip %08x\n", vector_names[f->vector & 31],
            f->vector, f->error, f->eip);
    guest_exit(100 + (uint8_t)f->vector);
}

/* Each probe arms recover_eip at its label, runs one faulting instruction and lands there. */

static uint32_t probe_divide(uint32_t dividend, uint32_t divisor)
{
    uint32_t quotient = dividend;
    __asm__ volatile("movl $1f, %[rec]\n\t"
                     "xorl %%edx, %%edx\n\t"
                     "divl %[d]\n"
                     "1:"
                     : "+a"(quotient), [rec] "+m"(recover_eip)
                     : [d] "c"(divisor)
                     : "edx", "memory", "cc");
    return quotient;
}

static void probe_ud2(void)
{
    __asm__ volatile("movl $1f, %[rec]\n\t"
                     "ud2\n"
                     "1:"
                     : [rec] "+m"(recover_eip)
                     :
                     : "memory");
}

static void probe_bad_selector(void)
{
    __asm__ volatile("movl $1f, %[rec]\n\t"
                     "movl %[sel], %%eax\n\t"
                     "movl %%eax, %%fs\n"
                     "1:\n\t"
                     "movl %[ok], %%eax\n\t"
                     "movl %%eax, %%fs"
                     : [rec] "+m"(recover_eip)
                     : [sel] "i"(SEL_BAD), [ok] "i"(SEL_KDATA)
                     : "eax", "memory");
}

static void test_exceptions(void)
{
    kputs("exceptions:\n");

    uint32_t q = probe_divide(100, 7);
    kprintf("  div 100/7 = %u\n", q);
    check(q == 14 && fault_count[0] == 0, "100/7");
    probe_divide(1234, 0);
    kprintf("  div by zero: %s caught by the kernel's handler, %u time(s)\n", vector_names[0], fault_count[0]);
    check(fault_count[0] == 1, "#DE handled once");

    probe_ud2();
    kprintf("  ud2: %s caught, %u time(s)\n", vector_names[6], fault_count[6]);
    check(fault_count[6] == 1, "#UD handled once");

    probe_bad_selector();
    kprintf("  mov fs, 0x%x: %s error code 0x%x\n", SEL_BAD, vector_names[13], last_error);
    check(fault_count[13] == 1 && last_error == SEL_BAD, "#GP with the selector as error code");

    __asm__ volatile("int3" ::: "memory");
    kprintf("  int3: %s trap, resumed after it\n", vector_names[3]);
    check(fault_count[3] == 1, "#BP handled once");

    volatile uint32_t *p = (volatile uint32_t *)DEMAND_PAGE;
    *p = 0xC0FFEE;
    uint32_t back = *p;
    kprintf("  store to 0x%08x: %s error 0x%x cr2 0x%08x, mapped on demand; read back 0x%x\n", DEMAND_PAGE,
            vector_names[14], last_error, last_cr2, back);
    check(fault_count[14] == 1 && last_error == 0x2 && last_cr2 == DEMAND_PAGE && back == 0xC0FFEE,
          "#PF on the demand page");

    static const char msg[] = "  int 0x80: write() from the kernel's own system call\n";
    uint32_t written = sys_call(1, (uint32_t)msg, sizeof(msg) - 1);
    uint32_t sum = sys_call(2, 40, 2);
    uint32_t caller = sys_call(3, 0, 0);
    kprintf("  int 0x80: wrote %u bytes; add(40, 2) = %u; caller cs 0x%x\n", written, sum, caller & 0xFFFF);
    check(written == sizeof(msg) - 1 && sum == 42 && (caller & 0xFFFF) == SEL_KCODE && fault_count[32] == 3,
          "int 0x80 round trips");
}

/* ---------------------------------------------------------------- work */

#define SIEVE_N 5000
static uint8_t composite[SIEVE_N];

static void test_primes(void)
{
    uint32_t count = 0, largest = 0;
    memset(composite, 0, sizeof(composite));
    for (uint32_t i = 2; i * i < SIEVE_N; i++)
        if (!composite[i])
            for (uint32_t j = i * i; j < SIEVE_N; j += i)
                composite[j] = 1;
    for (uint32_t i = 2; i < SIEVE_N; i++)
        if (!composite[i]) {
            count++;
            largest = i;
        }
    kprintf("primes: %u below %u, the largest %u\n", count, SIEVE_N, largest);
    check(count == 669 && largest == 4999, "prime count");
}

static uint32_t crc_table[256];

static uint32_t crc32(const void *data, uint32_t n)
{
    const uint8_t *p = data;
    uint32_t crc = 0xFFFFFFFF;
    while (n--)
        crc = crc_table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

static void test_checksum(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320 ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
    uint32_t check_value = crc32("123456789", 9);
    kprintf("checksum: crc32(\"123456789\") = %08x\n", check_value);
    check(check_value == 0xCBF43926, "crc32 check value");
    uint32_t size = (uint32_t)(__readonly_end - __image_start);
    uint32_t first = crc32(__image_start, size), second = crc32(__image_start, size);
    kprintf("checksum: kernel code and rodata, %u bytes at %08x: crc32 %s on a second pass\n", size,
            (uint32_t)__image_start, first == second ? "the same" : "DIFFERENT");
    check(first == second, "the kernel's code does not change");
}

static void test_strings(void)
{
    char buf[48];
    kstrcpy(buf, "ring1 virtual machine");
    size_t n = kstrlen(buf);
    kreverse(buf);
    kprintf("strings: length %u, reversed \"%s\"\n", (uint32_t)n, buf);
    check(n == 21 && kstrcmp(buf, "enihcam lautriv 1gnir") == 0, "reverse");
    char copy[48];
    memcpy(copy, buf, n + 1);
    memmove(copy + 2, copy, 5);
    kprintf("strings: memmove overlapping \"%s\", compare %d\n", copy, kstrcmp(copy, buf) > 0 ? 1 : -1);
    check(kstrcmp(copy, "enenihc lautriv 1gnir") == 0 && memcmp(copy, buf, 2) == 0, "memmove");
}

static uint32_t fib(uint32_t n)
{
    return n < 2 ? n : fib(n - 1) + fib(n - 2);
}

static int ascending(uint32_t a, uint32_t b)
{
    return a < b ? -1 : a > b;
}

static int descending(uint32_t a, uint32_t b)
{
    return ascending(b, a);
}

static void insertion_sort(uint32_t *v, int n, int (*cmp)(uint32_t, uint32_t))
{
    for (int i = 1; i < n; i++) {
        uint32_t x = v[i];
        int j = i - 1;
        while (j >= 0 && cmp(v[j], x) > 0) {
            v[j + 1] = v[j];
            j--;
        }
        v[j + 1] = x;
    }
}

static void test_calls(void)
{
    uint32_t f = fib(15);
    kprintf("calls: fib(15) = %u, recursively\n", f);
    check(f == 610, "fib(15)");

    uint32_t v[40], seed = 12345;
    for (int i = 0; i < 40; i++) {
        seed = seed * 1103515245 + 12345;
        v[i] = (seed >> 16) & 0x7FFF;
    }
    int (*const order[2])(uint32_t, uint32_t) = {ascending, descending};
    int sorted = 1;
    for (int k = 0; k < 2; k++) {
        insertion_sort(v, 40, order[k]);
        for (int i = 1; i < 40; i++)
            sorted &= order[k](v[i - 1], v[i]) <= 0;
    }
    kprintf("calls: 40 numbers sorted up and down through function pointers: %s, max %u\n",
            sorted ? "ok" : "WRONG", v[0]);
    check(sorted, "sorting");
}

/* ---------------------------------------------------------------- the red pill */

/* Each check prints one line, "redpill NAME: what it saw -> same" (or "-> DIFFERS"), so
   the output of two runs compares line by line. */
static int redpill_result(int same, char *which, const char *name)
{
    kputs(same ? " -> same\n" : " -> DIFFERS\n");
    if (!same) {
        kstrcpy(which + kstrlen(which), " ");
        kstrcpy(which + kstrlen(which), name);
    }
    return !same;
}

static void redpill(void)
{
    int betrayed = 0;
    char which[40] = "";
    kputs("redpill: am I virtualized? five unprivileged instructions that never trap\n");

    struct table_register idtr;
    __asm__ volatile("sidt %0" : "=m"(idtr));
    kprintf("redpill sidt: IDTR base %08x limit %04x, the kernel loaded base %08x limit %04x", idtr.base,
            idtr.limit, (uint32_t)idt, (uint32_t)sizeof(idt) - 1);
    betrayed += redpill_result(idtr.base == (uint32_t)idt && idtr.limit == sizeof(idt) - 1, which, "sidt");

    /* At CPL 0, POPF changes IF; at CPL 1 (trap-and-emulate) it silently leaves it set. */
    uint32_t before, after;
    __asm__ volatile("sti\n\t"
                     "pushfl\n\t"
                     "popl %0\n\t"
                     "movl %0, %1\n\t"
                     "andl $~0x200, %1\n\t"
                     "pushl %1\n\t"
                     "popfl\n\t"
                     "pushfl\n\t"
                     "popl %1\n\t"
                     "cli"
                     : "=&r"(before), "=&r"(after)
                     :
                     : "memory", "cc");
    kprintf("redpill popf: IF %u after sti, %u after popf with IF clear (expected 1, 0)", (before >> 9) & 1,
            (after >> 9) & 1);
    betrayed += redpill_result((before & EFLAGS_IF) && !(after & EFLAGS_IF), which, "popf");

    uint32_t cs;
    __asm__ volatile("movl %%cs, %0" : "=r"(cs));
    cs &= 0xFFFF;
    kprintf("redpill cs: CS %04x, RPL %u (the kernel's CS %04x, RPL 0)", cs, cs & 3, SEL_KCODE);
    betrayed += redpill_result(cs == SEL_KCODE, which, "cs");

    uint32_t msw, cr0;
    __asm__ volatile("smsw %0" : "=r"(msw));
    __asm__ volatile("movl %%cr0, %0" : "=r"(cr0));
    kprintf("redpill smsw: MSW %04x, the kernel set CR0 %08x (low half %04x)", msw & 0xFFFF, cr0, cr0 & 0xFFFF);
    betrayed += redpill_result((msw & 0xFFFF) == (cr0 & 0xFFFF), which, "smsw");

    uint32_t tr = 0;
    __asm__ volatile("str %w0" : "+r"(tr));
    kprintf("redpill str: TR %04x, the kernel loaded %04x", tr & 0xFFFF, SEL_TSS);
    betrayed += redpill_result((tr & 0xFFFF) == SEL_TSS, which, "str");

    if (betrayed)
        kprintf("redpill verdict: virtualized (%u of 5 checks betray a VMM:%s)\n", betrayed, which);
    else
        kputs("redpill verdict: not virtualized (5 of 5 checks match bare metal)\n");
}

/* ---------------------------------------------------------------- main */

int kmain(uint32_t magic, const struct multiboot_info *info)
{
    int uart = serial_init();
    outb(0x21, 0xFF); /* mask both 8259s: the red pill enables interrupts for a moment */
    outb(0xA1, 0xFF);
    outb(POST_PORT, 0x01);
    kputs("ring1 demo kernel\n");
    kprintf("serial: 16550 at %x, scratch register %s\n", COM1, uart ? "ok" : "MISSING");
    check(magic == 0x2BADB002, "Multiboot magic in EAX");
    kprintf("multiboot: magic %08x, flags %08x\n", magic, info->flags);
    if (info->flags & 0x1)
        kprintf("multiboot: memory %u KB low, %u KB above 1 MB\n", info->mem_lower, info->mem_upper);
    if (info->flags & 0x200)
        kprintf("multiboot: boot loader \"%s\"\n", (const char *)info->boot_loader_name);
    check(info->flags & 0x1, "memory sizes");

    setup_gdt();
    setup_idt();
    kprintf("cpu: GDT at %08x, IDT at %08x (256 gates), TSS at %08x, TR %04x\n", (uint32_t)gdt, (uint32_t)idt,
            (uint32_t)&tss, SEL_TSS);
    setup_paging();
    uint32_t cr0;
    __asm__ volatile("movl %%cr0, %0" : "=r"(cr0));
    kprintf("cpu: paging on, CR0 %08x, 8 MB identity-mapped\n", cr0);
    check((cr0 & (CR0_PG | CR0_PE)) == (CR0_PG | CR0_PE), "paging on");
    outb(POST_PORT, 0x02);

    test_primes();
    test_checksum();
    test_strings();
    test_calls();
    outb(POST_PORT, 0x03);
    test_exceptions();
    outb(POST_PORT, 0x04);
    redpill();

    if (failures)
        kprintf("demo: %u self-check(s) FAILED\n", failures);
    else
        kputs("demo: all self-checks passed\n");
    return failures;
}
