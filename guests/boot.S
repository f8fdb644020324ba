/* Entry point of the C guests: a stack, a clean EFLAGS, then kmain(magic, info).
   kmain's return value is the exit status, written to the exit port. */
    .intel_syntax noprefix
#include "multiboot.inc"

    .bss
    .balign 16
stack_bottom:
    .skip 16384
    .global stack_top
stack_top:

    .text
    .balign 16
    .global _start
    .extern kmain
_start:
    mov esp, offset stack_top
    push 0
    popfd                               // IF, DF and the rest clear
    push ebx                            // the Multiboot information structure
    push eax                            // the magic value the loader left
    call kmain
    out EXIT_PORT, al
_start.hang:
    cli
    hlt
    jmp _start.hang
