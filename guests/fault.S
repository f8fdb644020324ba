/* fault: an exception nobody handles. The guest loads an empty IDT (limit 0) and runs UD2:
   #UD cannot be delivered (#GP), nor can the #GP, nor the double fault: a triple fault,
   which a real PC answers with a reset and ring1 with a diagnosis and a non-zero status. */
    .intel_syntax noprefix
#include "multiboot.inc"

    .text
    .balign 16
    .global _start
_start:
    print_message
    lidt [empty_idtr]
    ud2
    mov al, 0                           // never reached
    out EXIT_PORT, al

    .section .rodata
    .balign 4
message:
    .ascii "fault: ud2 with an empty IDT\n"
    .equ message_len, . - message
    .balign 4
empty_idtr:
    .word 0                             // limit 0: no gate fits
    .long 0
