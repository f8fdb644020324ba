; halt: stops the CPU for good (HLT with interrupts disabled) without writing the exit port.
%include "multiboot.inc"

section .text
global _start
_start:
    cld
    mov esi, message
    mov ecx, message_len
    mov dx, COM1
.next:
    lodsb
    out dx, al
    loop .next
    cli
    hlt

section .rodata
message:
    db "halt: cli; hlt", 10
message_len equ $ - message
