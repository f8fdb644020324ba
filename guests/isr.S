/* Interrupt and exception entry stubs. Each pushes an error code (a zero where the CPU
   pushes none) and its vector, so every handler sees the same frame:
     edi esi ebp esp ebx edx ecx eax (PUSHAD), vector, error code, eip, cs, eflags
   trap_dispatch(frame) may change the saved registers, EIP included. */
    .intel_syntax noprefix

/* The 32 exceptions, then the system call (int 0x80). */
#define VECTORS 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, \
    16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 128
/* The 16 ISA interrupt requests at vectors 0x20-0x2F, where a kernel remaps the 8259s. */
#define IRQ_VECTORS 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47
/* Vectors the local APIC delivers: 0x40 and 0x48 (its timer and an I/O APIC route, as devtest
   programs them) and 0xFF (the spurious-interrupt vector a BIOS leaves in the SVR). */
#define APIC_VECTORS 64, 72, 255

/* isr<vector>: the exceptions for which the CPU pushes an error code (#DF, #TS, #NP, #SS,
   #GP, #PF, #AC) push only the vector; the others push a zero first. */
.macro stub vector
isr\vector:
    .if !(\vector == 8 || (\vector >= 10 && \vector <= 14) || \vector == 17)
    push 0
    .endif
    push \vector
    jmp isr_common
.endm

    .text
    .balign 16
    .extern trap_dispatch
    .irp vector, VECTORS
    stub \vector
    .endr
    .irp vector, IRQ_VECTORS
    stub \vector
    .endr
    .irp vector, APIC_VECTORS
    stub \vector
    .endr

isr_common:
    pushad
    cld
    push esp                            // the frame
    call trap_dispatch
    add esp, 4
    popad
    add esp, 8                          // vector and error code
    iretd

    .section .rodata
    .balign 4
    .global isr_stubs
isr_stubs:                              // the 32 exception stubs, then int 0x80
    .irp vector, VECTORS
    .long isr\vector
    .endr

    .global irq_stubs
irq_stubs:                              // IRQ 0-15 at vectors 0x20-0x2F (no error code)
    .irp vector, IRQ_VECTORS
    .long isr\vector
    .endr

    .global apic_stubs
apic_stubs:                             // vectors 0x40, 0x48, 0xFF (no error code)
    .irp vector, APIC_VECTORS
    .long isr\vector
    .endr
