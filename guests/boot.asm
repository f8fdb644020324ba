; Entry point of the C guests: a stack, a clean EFLAGS, then kmain(magic, info).
; kmain's return value is the exit status, written to the exit port.
%include "multiboot.inc"

section .bss
align 16
stack_bottom:
    resb 16384
global stack_top
stack_top:

section .text
global _start
extern kmain
_start:
    mov esp, stack_top
    push dword 0
    popfd                           ; IF, DF and the rest clear
    push ebx                        ; the Multiboot information structure
    push eax                        ; the magic value the loader left
    call kmain
    out EXIT_PORT, al
.hang:
    cli
    hlt
    jmp .hang
