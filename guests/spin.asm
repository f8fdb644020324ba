; spin: loops for ever; only an instruction budget (ring1 run --max-insns) ends it.
%include "multiboot.inc"

section .text
global _start
_start:
    mov dx, COM1
    mov al, '.'
    out dx, al
.forever:
    jmp .forever
