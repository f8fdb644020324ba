/* realmode: a 64 KB system ROM for `ring1 run --bios build/guests/realmode.bin` that stays in
   real mode from reset to exit, so that under `bt` its code is translated as 16-bit code
   (issue 13, item 4). It reports POST codes on port 0x80 and one line per check on COM1:
   calls and a recursion on its stack, a checksum loop, string instructions, segment
   arithmetic, #DE and INT 0x60 through its own IVT, code copied to RAM, run, rewritten and
   run again, a short jump whose target wraps past 64 KB to the start of the segment, and
   the PIT's interrupt through the 8259 and the IVT, waited for in HLT.
   Linked at 0xF0000 (the ROM's low copy) and written out as a raw binary (Makefile). */
    .intel_syntax noprefix
    .equ POST, 0x80
    .equ COM1, 0x3F8
    .equ EXIT_PORT, 0xF4
    .equ ROM_SEG, 0xF000
    .equ RAM_SEG, 0x1000                // scratch data at 0x10000
    .equ CODE_SEG, 0x2000               // code copied to RAM at 0x20000
    .equ WRAP_JUMP, 0xFFE0              // where the wrapping jump is (below the reset vector)
    .equ TICKS, 0x0500                  // 0000:0500, the timer interrupt's count
    .equ PIC1, 0x20
    .equ PIT, 0x40

#define OFF(label) ((label) - rom_base)          /* as an address in CS = F000 */
#define IMM(label) offset ((label) - rom_base)  /* as an immediate */

    .text
    .code16
    .global _start
_start:
rom_base:
    jmp main

    .org 0x10
// Reached from the jump at WRAP_JUMP, whose target (IP + 2 + 0x2E) wraps to 0x0010.
wrap_target:
    mov ax, 0x5757
    jmp after_wrap

main:
    cli
    mov al, 0x01                        // POST 01: real mode, from the reset vector
    out POST, al
    xor ax, ax
    mov ss, ax
    mov sp, 0x7000
    mov ax, cs
    mov ds, ax                          // DS = CS: the messages
    xor ax, ax
    mov es, ax                          // the IVT
    mov word ptr es:[0 * 4], IMM(de_handler)
    mov word ptr es:[0 * 4 + 2], ROM_SEG
    mov word ptr es:[0x60 * 4], IMM(int60_handler)
    mov word ptr es:[0x60 * 4 + 2], ROM_SEG
    mov si, IMM(msg_hello)
    call puts

    // A checksum of the ROM's first KB (a loop of LODSW), and fib(12) by recursion.
    mov al, 0x02
    out POST, al
    xor si, si
    mov cx, 0x200
    xor bx, bx
1:  lodsw
    add bx, ax
    rol bx, 1
    loop 1b
    mov si, IMM(msg_sum)
    call puts
    mov ax, bx
    call print_hex16
    mov si, IMM(msg_fib)
    call puts
    push 12
    call fib
    add sp, 2
    call print_hex16
    mov si, IMM(msg_nl)
    call puts

    // String instructions: a message copied to RAM, compared, printed from there; a fill
    // and a scan.
    mov al, 0x03
    out POST, al
    mov ax, RAM_SEG
    mov es, ax
    cld
    mov si, IMM(msg_copy)
    xor di, di
    mov cx, offset msg_copy_len
    rep movsb
    mov si, IMM(msg_copy)
    xor di, di
    mov cx, offset msg_copy_len
    repe cmpsb
    jne fail
    mov di, 0x100
    mov ax, 0x4241                      // "AB"
    mov cx, 8
    rep stosw
    mov di, 0x100
    mov al, 0x41
    mov cx, 16
    repne scasb
    cmp di, 0x101                       // the first 'A' (0x41) is the first byte
    jne fail
    push ds
    push es
    pop ds
    xor si, si
    call puts                           // the copy, from RAM
    pop ds

    // Segment arithmetic: one byte through two segment:offset pairs, a far pointer loaded by
    // LES, and an offset that wraps at 64 KB.
    mov al, 0x04
    out POST, al
    mov ax, RAM_SEG
    mov es, ax
    mov byte ptr es:[0x0123], 0x5A
    mov ax, RAM_SEG + 0x12
    mov fs, ax
    cmp byte ptr fs:[0x0003], 0x5A
    jne fail
    les di, [OFF(far_pointer)]
    mov ax, es
    cmp ax, RAM_SEG + 0x12
    jne fail
    cmp byte ptr es:[di], 0x5A
    jne fail
    mov bx, 0xFFF0
    add bx, 0x23                        // 0x0013, the carry out of 16 bits dropped
    jnc fail
    cmp byte ptr es:[bx - 0x10], 0x5A
    jne fail
    mov si, IMM(msg_segments)
    call puts

    // A fault and a software interrupt, both through the IVT.
    mov al, 0x05
    out POST, al
    xor dx, dx
    mov ax, 100
    mov cl, 0
    div cl                              // #DE: the handler sets DX and skips the DIV
    cmp dx, 0xDEAD
    jne fail
    xor ax, ax
    int 0x60
    cmp ax, 0x6060
    jne fail
    mov si, IMM(msg_interrupts)
    call puts

    // Code in RAM: copied, called, its immediate rewritten, called again (a write to code
    // that has run, translated under bt).
    mov al, 0x06
    out POST, al
    mov ax, CODE_SEG
    mov es, ax
    mov si, IMM(ram_routine)
    xor di, di
    mov cx, offset ram_routine_len
    rep movsb
    mov cx, 3
1:  .byte 0x9A                        // call far CODE_SEG:0
    .word 0, CODE_SEG
    cmp ax, 0x1111
    jne fail
    loop 1b
    mov word ptr es:[1], 0x2222         // the MOV AX's immediate
    mov cx, 3
1:  .byte 0x9A                        // call far CODE_SEG:0
    .word 0, CODE_SEG
    cmp ax, 0x2222
    jne fail
    loop 1b
    mov si, IMM(msg_smc)
    call puts

    // A short jump near the top of the segment whose target wraps to its start.
    mov al, 0x07
    out POST, al
    xor ax, ax
    jmp rom_base + WRAP_JUMP
after_wrap:
    cmp ax, 0x5757
    jne fail
    mov si, IMM(msg_wrap)
    call puts

    // The PIT's channel 0 at 1 kHz on IRQ 0, the 8259 set up to vector 8 (as a BIOS does),
    // waited for in HLT with IF set until five ticks were counted by the handler.
    mov al, 0x08
    out POST, al
    xor ax, ax
    mov es, ax
    mov word ptr es:[8 * 4], IMM(timer_handler)
    mov word ptr es:[8 * 4 + 2], ROM_SEG
    mov word ptr es:[TICKS], 0
    mov al, 0x11                        // ICW1: edge, cascade, ICW4
    out PIC1, al
    mov al, 0x08                        // ICW2: IRQ 0-7 at vectors 8-15
    out PIC1 + 1, al
    mov al, 0x04                        // ICW3: the slave on IRQ 2
    out PIC1 + 1, al
    mov al, 0x01                        // ICW4: 8086 mode
    out PIC1 + 1, al
    mov al, 0xFE                        // only IRQ 0
    out PIC1 + 1, al
    mov al, 0x34                        // channel 0, low then high byte, mode 2
    out PIT + 3, al
    mov ax, 1193                        // 1.193182 MHz / 1193: 1 kHz
    out PIT, al
    mov al, ah
    out PIT, al
    sti
1:  hlt
    cmp word ptr es:[TICKS], 5
    jb 1b
    cli
    mov si, IMM(msg_timer)
    call puts

    mov al, 0x0F                        // POST 0F: done
    out POST, al
    mov si, IMM(msg_ok)
    call puts
    mov al, 0
    out EXIT_PORT, al
    hlt

fail:
    mov al, 0xEE
    out POST, al
    mov si, IMM(msg_fail)
    call puts
    mov al, 1
    out EXIT_PORT, al
    hlt

// DS:SI: a NUL-terminated string, to COM1.
puts:
    push ax
    push dx
    mov dx, COM1
1:  lodsb
    test al, al
    jz 2f
    out dx, al
    jmp 1b
2:  pop dx
    pop ax
    ret

// AX in four hex digits, to COM1.
print_hex16:
    push ax
    push bx
    push cx
    push dx
    mov bx, ax
    mov dx, COM1
    mov cx, 4
1:  rol bx, 4
    mov al, bl
    and al, 0x0F
    add al, '0'
    cmp al, '9'
    jbe 2f
    add al, 'A' - '0' - 10
2:  out dx, al
    loop 1b
    pop dx
    pop cx
    pop bx
    pop ax
    ret

// fib(n), n on the stack: AX.
fib:
    push bp
    mov bp, sp
    push bx
    mov ax, [bp + 4]
    cmp ax, 2
    jb 1f
    dec ax
    push ax
    call fib
    mov bx, ax
    pop ax
    dec ax
    push ax
    call fib
    add sp, 2
    add ax, bx
1:  pop bx
    pop bp
    ret

de_handler:
    push bp
    mov bp, sp
    add word ptr [bp + 2], 2            // past the 2-byte DIV that faulted
    mov dx, 0xDEAD
    pop bp
    iret

int60_handler:
    mov ax, 0x6060
    iret

timer_handler:
    push ax
    push ds
    xor ax, ax
    mov ds, ax
    inc word ptr [TICKS]
    mov al, 0x20                        // EOI
    out PIC1, al
    pop ds
    pop ax
    iret

// Copied to CODE_SEG:0 and called far.
ram_routine:
    mov ax, 0x1111
    retf
    .equ ram_routine_len, . - ram_routine

far_pointer:
    .word 0x0003, RAM_SEG + 0x12

msg_hello:      .asciz "realmode: reset vector, real mode\n"
msg_sum:        .asciz "realmode: checksum "
msg_fib:        .asciz ", fib(12) "
msg_nl:         .asciz "\n"
msg_copy:       .asciz "realmode: string instructions\n"
    .equ msg_copy_len, . - msg_copy
msg_segments:   .asciz "realmode: segment arithmetic\n"
msg_interrupts: .asciz "realmode: #DE and INT 0x60 through the IVT\n"
msg_smc:        .asciz "realmode: code in RAM rewritten and run again\n"
msg_wrap:       .asciz "realmode: a jump that wraps at 64 KB\n"
msg_timer:      .asciz "realmode: five timer interrupts through the 8259 and the IVT, in HLT\n"
msg_ok:         .asciz "realmode: ok\n"
msg_fail:       .asciz "realmode: FAILED\n"

    .org WRAP_JUMP
    .byte 0xEB, 0x10000 + OFF(wrap_target) - (WRAP_JUMP + 2)   // jmp short, to IP 0x0010

    .org 0xFFF0                         // the reset vector: F000:FFF0
    .byte 0xEA                          // jmp far F000:_start
    .word OFF(_start)
    .word ROM_SEG
    .org 0x10000, 0xFF                  // 64 KB, the unused bytes erased as in a flash part
