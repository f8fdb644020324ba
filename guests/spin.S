/* spin: loops for ever; only an instruction budget (ring1 run --max-insns) ends it. */
    .intel_syntax noprefix
#include "multiboot.inc"

    .text
    .balign 16
    .global _start
_start:
    mov dx, COM1
    mov al, '.'
    out dx, al
_start.forever:
    jmp _start.forever
