/* What the procs kernel (procs.c) and its user programs (procs_user.c) share: the system call
   numbers, the kernel statistics a program may ask for, and the layout of the user image.

   The user programs are linked on their own at USER_BASE (procs_user.ld), flattened to a raw
   blob and included in the kernel image (procs_entry.S); exec copies the whole blob into a
   fresh address space and starts the named program's entry. The blob starts with a
   struct user_image, whose pointers are user addresses. */
#ifndef RING1_GUEST_PROCS_H
#define RING1_GUEST_PROCS_H

#include <stdint.h>

#define USER_BASE 0x40000000u      /* the image: code, data, bss; the heap follows */
#define USER_STACK_TOP 0x80000000u /* the stack grows down from here */
#define USER_STACK_PAGES 4
#define USER_IMAGE_MAGIC 0x50524F43u /* "PROC" */

/* System calls: INT 0x80 with the number in EAX, arguments in EBX, ECX, EDX; the result in
   EAX (negative for an error). */
#define SYS_EXIT 1   /* exit(status) */
#define SYS_WRITE 2  /* write(fd, buf, n): bytes written (a pipe may take fewer than n) */
#define SYS_FORK 3   /* fork(): the child's pid, 0 in the child */
#define SYS_EXEC 4   /* exec(name, arg): a program of the image, arg on its stack; -1 if none */
#define SYS_WAIT 5   /* wait(&status): a child's pid when it has ended; -1 without children */
#define SYS_PIPE 6   /* pipe(fds[2]): read end, write end */
#define SYS_READ 7   /* read(fd, buf, n): bytes read, 0 at the end of a pipe without writers */
#define SYS_CLOSE 8  /* close(fd) */
#define SYS_SBRK 9   /* sbrk(delta): the old break */
#define SYS_GETPID 10
#define SYS_YIELD 11
#define SYS_KSTAT 12  /* kstat(which): a kernel counter or value (KSTAT_*) */
#define SYS_VMINFO 13 /* vminfo(addr): the page-table entry mapping addr in the caller */

#define KSTAT_FREE_PAGES 1
#define KSTAT_COW_FAULTS 2
#define KSTAT_COW_COPIES 3
#define KSTAT_PIPE_BLOCKS 4  /* system calls that blocked on a pipe (full or empty) */
#define KSTAT_SWITCHES 5     /* times another process was chosen */
#define KSTAT_MY_PREEMPTIONS 6 /* timer interrupts that took the caller off the CPU in user mode */
#define KSTAT_IDT_BASE 7     /* what the kernel loaded: the red pill's references */
#define KSTAT_IDT_LIMIT 8
#define KSTAT_CR0 9
#define KSTAT_TR 10

/* A wait status: an exit's status, or KILLED | the exception's vector. */
#define WAIT_KILLED 0x100

/* Page-table entry bits, as vminfo returns them. */
#define PTE_P 0x001u
#define PTE_W 0x002u
#define PTE_U 0x004u
#define PTE_COW 0x200u /* an available bit: a copy-on-write page, read-only until written */

struct user_program {
    const char *name;
    void (*entry)(uint32_t arg);
};

struct user_image {
    uint32_t magic;
    uint32_t end; /* the first address past the bss */
    uint32_t count;
    struct user_program programs[12];
};

#endif
