/* hello: the smallest ring1 guest. Prints one line on COM1 and exits with status 0.
   Only moves, a string load, OUT and LOOP: it runs on an interpreter with few semantics. */
    .intel_syntax noprefix
#include "multiboot.inc"

    .text
    .balign 16
    .global _start
_start:
    print_message
    mov al, 0
    out EXIT_PORT, al
_start.hang:
    cli
    hlt
    jmp _start.hang

    .section .rodata
    .balign 4
message:
    .ascii "hello from a ring1 guest\n"
    .equ message_len, . - message
