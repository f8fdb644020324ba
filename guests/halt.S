/* halt: stops the CPU for good (HLT with interrupts disabled) without writing the exit port. */
    .intel_syntax noprefix
#include "multiboot.inc"

    .text
    .balign 16
    .global _start
_start:
    print_message
    cli
    hlt

    .section .rodata
    .balign 4
message:
    .ascii "halt: cli; hlt\n"
    .equ message_len, . - message
