/* rom: a 64 KB system ROM for `ring1 run --bios build/guests/rom.bin`, started from reset as
   hardware starts: the reset vector at F000:FFF0 (the last 16 bytes) jumps to the start of
   the ROM, which reports POST codes on port 0x80 while it checks real mode, loads a GDT,
   enters protected mode with a far jump, checks a stack and a call there, says so on COM1,
   and exits through ring1's exit port. Linked at 0xF0000 (the ROM's low copy below 1 MB)
   and written out as a raw binary (Makefile). */
    .intel_syntax noprefix
    .equ POST, 0x80
    .equ COM1, 0x3F8
    .equ EXIT_PORT, 0xF4

    .text
    .code16
    .global _start
_start:
rom_base:
    cli
    mov al, 0x01                        // POST 01: the first instruction after the reset vector
    out POST, al
    mov ax, cs                          // F000, after the reset vector's far jump
    cmp ax, 0xF000
    jne fail16
    mov ax, 0xF000
    mov ds, ax
    mov ax, 0x0700                      // a real-mode stack at 0x7000 (physical)
    mov ss, ax
    mov sp, 0x1000
    push 0x1234
    pop bx
    cmp bx, 0x1234
    jne fail16
    mov al, 0x02                        // POST 02: real mode works
    out POST, al
    lgdt [gdt_ptr - rom_base]
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    .byte 0x66, 0xEA                    // jmp far 0x08:protected (32-bit offset)
    .long protected
    .word 0x08
fail16:
    mov al, 0xEE
    out POST, al
    mov al, 1
    out EXIT_PORT, al
    hlt

    .code32
protected:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov esp, 0x8000
    mov al, 0x03                        // POST 03: protected mode, flat segments
    out POST, al
    call print_message
    mov al, 0x04                        // POST 04: done
    out POST, al
    mov al, 0
    out EXIT_PORT, al
    hlt

print_message:
    mov esi, offset message
    mov ecx, offset message_len
    mov dx, COM1
1:  lodsb
    out dx, al
    loop 1b
    ret

message:
    .ascii "rom: reset vector, real mode, protected mode\n"
    .equ message_len, . - message

    .balign 8
gdt:
    .quad 0
    .quad 0x00CF9B000000FFFF            // 0x08: flat 32-bit code
    .quad 0x00CF93000000FFFF            // 0x10: flat 32-bit data
gdt_ptr:
    .word 23
    .long gdt

    .org 0xFFF0                         // the reset vector: F000:FFF0
    .code16
    .byte 0xEA                          // jmp far F000:_start
    .word _start - rom_base
    .word 0xF000
    .org 0x10000, 0xFF                  // 64 KB, the unused bytes erased as in a flash part
