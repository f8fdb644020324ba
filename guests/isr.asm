; Interrupt and exception entry stubs. Each pushes an error code (a zero where the CPU
; pushes none) and its vector, so every handler sees the same frame:
;   edi esi ebp esp ebx edx ecx eax (PUSHAD), vector, error code, eip, cs, eflags
; trap_dispatch(frame) may change the saved registers, EIP included.

%macro STUB_NOERR 1
isr%1:
    push dword 0
    push dword %1
    jmp isr_common
%endmacro

%macro STUB_ERR 1
isr%1:
    push dword %1
    jmp isr_common
%endmacro

section .text
extern trap_dispatch

%assign v 0
%rep 32
  %if v == 8 || (v >= 10 && v <= 14) || v == 17
    STUB_ERR v
  %else
    STUB_NOERR v
  %endif
  %assign v v + 1
%endrep
STUB_NOERR 128

isr_common:
    pushad
    cld
    push esp                        ; the frame
    call trap_dispatch
    add esp, 4
    popad
    add esp, 8                      ; vector and error code
    iretd

section .rodata
global isr_stubs
isr_stubs:                          ; the 32 exception stubs, then int 0x80
%assign v 0
%rep 32
    dd isr %+ v
  %assign v v + 1
%endrep
    dd isr128
