/* The freestanding library of the C guests: port I/O, the serial console, the exit
   port, a small printf and the string routines the compiler may call. */
#ifndef RING1_GUEST_LIB_H
#define RING1_GUEST_LIB_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "mem.h"

#define COM1 0x3F8
#define EXIT_PORT 0xF4
#define POST_PORT 0x80

static inline void outb(uint16_t port, uint8_t value)
{
    __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
    uint8_t value;
    __asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}

/* Serial console (COM1, a 16550). serial_init returns 1 if the UART's scratch register
   holds what was written to it. */
int serial_init(void);
void console_putc(char c);
void console_write(const char *s, size_t n);
void kputs(const char *s);
void kprintf(const char *fmt, ...);
void kvprintf(const char *fmt, va_list ap);

/* Ends the run: ring1's exit port, then HLT with interrupts off. */
__attribute__((noreturn)) void guest_exit(uint8_t status);

size_t kstrlen(const char *s);
int kstrcmp(const char *a, const char *b);
char *kstrcpy(char *dst, const char *src);
void kreverse(char *s);

/* What isr.S pushes before it calls the C handler (PUSHAD, then the vector and the error
   code, then the CPU's frame), a GDT/IDT entry, and the operand of LGDT/LIDT. */
struct frame {
    uint32_t edi, esi, ebp, esp, ebx, edx, ecx, eax;
    uint32_t vector, error, eip, cs, eflags;
};

struct descriptor {
    uint32_t lo, hi;
};

/* A 32-bit task-state segment, as the CPU reads and writes it (a task switch saves the old
   task's registers in it; a privilege change reads esp0/ss0). */
struct tss {
    uint32_t link, esp0, ss0, esp1, ss1, esp2, ss2, cr3, eip, eflags;
    uint32_t eax, ecx, edx, ebx, esp, ebp, esi, edi;
    uint32_t es, cs, ss, ds, fs, gs, ldt;
    uint16_t trap, iomap;
};

struct __attribute__((packed)) table_register {
    uint16_t limit;
    uint32_t base;
};

/* Descriptors as the CPU reads them: a code/data/system segment (access byte, G/D flags
   nibble) and a gate (type 0xE interrupt, 0xF trap). load_gdt loads a GDT and reloads CS with
   KERNEL_CODE_SELECTOR and the data segments with KERNEL_DATA_SELECTOR, which it must hold. */
#define KERNEL_CODE_SELECTOR 0x08
#define KERNEL_DATA_SELECTOR 0x10
struct descriptor segment_descriptor(uint32_t base, uint32_t limit, uint8_t access, uint8_t flags);
struct descriptor gate_descriptor(uint32_t offset, uint16_t selector, uint8_t type, uint8_t dpl);
void load_gdt(const struct descriptor *gdt, uint16_t limit);

#endif
