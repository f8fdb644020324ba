; halt: stops the CPU for good (HLT with interrupts disabled) without writing the exit port.
%include "multiboot.inc"

section .text
global _start
_start:
    print_message
    cli
    hlt

section .rodata
message:
    db "halt: cli; hlt", 10
message_len equ $ - message
