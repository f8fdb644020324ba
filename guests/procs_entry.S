/* The procs kernel's way in and out of ring 0, its idle loop, and the user programs' image.

   Every entry (the 32 exceptions, IRQ 0-15 at 0x20-0x2F, the system call at 0x80) builds one
   frame on the kernel stack the CPU switched to (the TSS's ESP0 from user mode):
     gs fs es ds, edi esi ebp esp ebx edx ecx eax (PUSHAD), vector, error code,
     eip cs eflags (the CPU's), and from user mode esp ss
   then loads the kernel's data selectors and calls trap_dispatch(frame), which returns the
   frame to resume: the same one, or another process's, which is how the kernel switches
   processes (each process's frame sits at the top of its own kernel stack). */
    .intel_syntax noprefix

#define SEL_KDATA 0x10

#define EXCEPTIONS 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, \
    16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31
#define IRQS 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47

/* The CPU pushes an error code for #DF, #TS, #NP, #SS, #GP, #PF and #AC; the others get a 0. */
.macro stub vector
entry\vector:
    .if !(\vector == 8 || (\vector >= 10 && \vector <= 14) || \vector == 17)
    push 0
    .endif
    push \vector
    jmp entry_common
.endm

    .text
    .balign 16
    .irp vector, EXCEPTIONS
    stub \vector
    .endr
    .irp vector, IRQS
    stub \vector
    .endr
    stub 128

entry_common:
    pushad
    push ds
    push es
    push fs
    push gs
    mov ax, SEL_KDATA
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    cld
    push esp                            // the frame
    call trap_dispatch
    add esp, 4
    mov esp, eax                        // the frame to resume

/* trap_return(frame): leave the kernel through `frame` (the first entry into user mode). */
    .global trap_return
trap_return_from_frame:
    pop gs
    pop fs
    pop es
    pop ds
    popad
    add esp, 8                          // vector and error code
    iretd

trap_return:
    mov esp, [esp + 4]
    jmp trap_return_from_frame

/* The idle process: runs at CPL 0 when no process can, and sleeps until an interrupt. */
    .global idle_loop
idle_loop:
    sti
    hlt
    jmp idle_loop

    .section .rodata
    .balign 4
    .global exception_entries
exception_entries:
    .irp vector, EXCEPTIONS
    .long entry\vector
    .endr
    .global irq_entries
irq_entries:
    .irp vector, IRQS
    .long entry\vector
    .endr
    .global syscall_entry
syscall_entry:
    .long entry128

/* The user programs, linked at USER_BASE (procs_user.ld) and flattened. */
    .balign 4096
    .global user_blob, user_blob_end
user_blob:
    .incbin "procs_user.bin"
user_blob_end:
