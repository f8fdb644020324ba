; hello: the smallest ring1 guest. Prints one line on COM1 and exits with status 0.
; Only moves, a string load, OUT and LOOP: it runs on an interpreter with few semantics.
%include "multiboot.inc"

section .text
global _start
_start:
    print_message
    mov al, 0
    out EXIT_PORT, al
.hang:
    cli
    hlt
    jmp .hang

section .rodata
message:
    db "hello from a ring1 guest", 10
message_len equ $ - message
