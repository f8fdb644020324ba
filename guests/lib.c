#include "lib.h"

#include "format.h"

int serial_init(void)
{
    outb(COM1 + 1, 0x00);       /* IER: no interrupts */
    outb(COM1 + 3, 0x80);       /* LCR: DLAB, to set the divisor */
    outb(COM1 + 0, 0x01);       /* divisor 1: 115200 baud */
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03);       /* LCR: 8 data bits, no parity, one stop bit */
    outb(COM1 + 2, 0xC7);       /* FCR: FIFOs on and cleared */
    outb(COM1 + 4, 0x03);       /* MCR: DTR, RTS */
    outb(COM1 + 7, 0x5A);       /* scratch register */
    return inb(COM1 + 7) == 0x5A;
}

void console_putc(char c)
{
    while (!(inb(COM1 + 5) & 0x20))     /* LSR: wait for the transmitter holding register */
        ;
    outb(COM1, (uint8_t)c);
}

void console_write(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        console_putc(s[i]);
}

void kputs(const char *s)
{
    while (*s)
        console_putc(*s++);
}

static void console_put(void *ctx, char c)
{
    (void)ctx;
    console_putc(c);
}

/* %s %c %d %u %x %%, with an optional 0 flag and width: %08x, %4u (guests/format.c). */
void kvprintf(const char *fmt, va_list ap)
{
    vformat(console_put, 0, fmt, ap);
}

void kprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    kvprintf(fmt, ap);
    va_end(ap);
}

void guest_exit(uint8_t status)
{
    outb(EXIT_PORT, status);
    for (;;)
        __asm__ volatile("cli; hlt");
}

size_t kstrlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

int kstrcmp(const char *a, const char *b)
{
    while (*a && *a == *b) {
        a++;
        b++;
    }
    return (unsigned char)*a - (unsigned char)*b;
}

char *kstrcpy(char *dst, const char *src)
{
    char *d = dst;
    while ((*d++ = *src++))
        ;
    return dst;
}

void kreverse(char *s)
{
    size_t n = kstrlen(s);
    for (size_t i = 0; i < n / 2; i++) {
        char t = s[i];
        s[i] = s[n - 1 - i];
        s[n - 1 - i] = t;
    }
}

/* ---------------------------------------------------------------- descriptor tables */

struct descriptor segment_descriptor(uint32_t base, uint32_t limit, uint8_t access, uint8_t flags)
{
    struct descriptor d;
    d.lo = (limit & 0xFFFF) | (base << 16);
    d.hi = ((base >> 16) & 0xFF) | ((uint32_t)access << 8) | (limit & 0xF0000) | ((uint32_t)flags << 20) |
           (base & 0xFF000000);
    return d;
}

struct descriptor gate_descriptor(uint32_t offset, uint16_t selector, uint8_t type, uint8_t dpl)
{
    struct descriptor d;
    d.lo = (offset & 0xFFFF) | ((uint32_t)selector << 16);
    d.hi = (offset & 0xFFFF0000) | ((uint32_t)(0x80 | dpl << 5 | type) << 8);
    return d;
}

void load_gdt(const struct descriptor *gdt, uint16_t limit)
{
    struct table_register gdtr = {limit, (uint32_t)gdt};
    __asm__ volatile("lgdt %0\n\t"
                     "ljmp %1, $1f\n"
                     "1:\n\t"
                     "movl %2, %%eax\n\t"
                     "movl %%eax, %%ds\n\t"
                     "movl %%eax, %%es\n\t"
                     "movl %%eax, %%fs\n\t"
                     "movl %%eax, %%gs\n\t"
                     "movl %%eax, %%ss"
                     :
                     : "m"(gdtr), "i"(KERNEL_CODE_SELECTOR), "i"(KERNEL_DATA_SELECTOR)
                     : "eax", "memory");
}
