/* procs: a small multi-process teaching kernel on ring1's PC platform.

   Paging on; every process runs at CPL 3 in its own page directory, in which the kernel's
   first 8 MB (identity-mapped: the image, then the page pool from 4 MB) are supervisor-only.
   One TSS, whose ESP0 each process switch points at the top of the next process's kernel
   stack; the frame an entry (procs_entry.S) builds there is the process's saved user state,
   and trap_dispatch switches processes by returning another one's frame.

   System calls through INT 0x80 (a DPL 3 interrupt gate: the kernel runs with interrupts off
   and is never preempted): exit, write, fork (copy-on-write: pages shared read-only until a
   write fault copies them), exec of the programs linked into the image (procs_user.c, one
   blob copied into the process), wait, pipe with read and write (blocking: a call that must
   wait marks the process blocked and rewinds its EIP to the INT 0x80, which runs again when a
   wakeup makes the process runnable), close, sbrk, getpid, yield, and two for the tests
   (kstat, vminfo). A round-robin scheduler preempts user code on the PIT's IRQ 0 at 1 kHz.
   A process that takes a fault the kernel cannot resolve (#PF outside its pages, #GP from a
   CLI or an IN at IOPL 0, ...) is killed; its parent's wait sees WAIT_KILLED | vector.

   The checks themselves run in user mode: init (procs_user.c) prints one line per check and
   its exit status, the number of failed checks, goes to the exit port. */

#include "lib.h"
#include "procs.h"

#define SEL_KCODE 0x08
#define SEL_KDATA 0x10
#define SEL_UCODE 0x1B
#define SEL_UDATA 0x23
#define SEL_TSS 0x28

#define CR0_MP 0x00000002u
#define CR0_NE 0x00000020u
#define CR0_WP 0x00010000u
#define CR0_PG 0x80000000u
#define EFLAGS_IF 0x200u

#define PIC_MASTER 0x20
#define PIC_SLAVE 0xA0
#define PIC_EOI 0x20
#define IRQ_BASE 0x20
#define PIT_CH0 0x40
#define PIT_MODE 0x43
#define PIT_HZ 1193182u
#define TIMER_HZ 1000u

#define PAGE 4096u
#define KERNEL_MAP_END 0x00800000u /* identity-mapped, supervisor-only, in every directory */
#define POOL_START 0x00400000u     /* page tables, directories and user pages come from here */
#define POOL_PAGES ((KERNEL_MAP_END - POOL_START) / PAGE)

#define NPROC 16
#define NFILE 8
#define NPIPE 8
#define PIPE_SIZE 64
#define KSTACK_SIZE 4096

/* The frame procs_entry.S builds; user_esp and user_ss only when the CPU came from CPL 3. */
struct trap_frame {
    uint32_t gs, fs, es, ds;
    uint32_t edi, esi, ebp, esp, ebx, edx, ecx, eax;
    uint32_t vector, error, eip, cs, eflags;
    uint32_t user_esp, user_ss;
};

enum proc_state { UNUSED, RUNNABLE, RUNNING, BLOCKED, ZOMBIE };

/* An open file: nothing, the console, or one end of a pipe. */
#define FILE_NONE 0
#define FILE_CONSOLE 1
#define FILE_PIPE_READ 0x100
#define FILE_PIPE_WRITE 0x200
#define FILE_KIND(f) ((f) & 0xF00)
#define FILE_PIPE(f) ((f) & 0xFF)

struct proc {
    enum proc_state state;
    int pid;
    struct proc *parent;
    const char *name;
    uint32_t *pd;             /* its page directory (physical = virtual below 8 MB) */
    uint32_t brk;             /* the end of its heap */
    struct trap_frame *frame; /* its saved state, at the top of kstack while it is in user mode */
    const void *wait_channel; /* what a BLOCKED process waits for */
    int files[NFILE];
    int exit_status;
    uint32_t preemptions;
    uint8_t kstack[KSTACK_SIZE] __attribute__((aligned(16)));
};

struct pipe {
    int readers, writers; /* open ends; 0 and 0: the pipe is free */
    uint32_t head, tail;  /* bytes read and written so far: tail - head are in buf */
    uint8_t buf[PIPE_SIZE];
};

extern const uint32_t exception_entries[32], irq_entries[16], syscall_entry;
extern const uint8_t user_blob[], user_blob_end[];
extern char __image_end[];
extern void idle_loop(void);
__attribute__((noreturn)) extern void trap_return(struct trap_frame *frame);

static struct descriptor gdt[6];
static struct descriptor idt[256];
static struct tss tss;
static uint32_t kernel_pd[1024] __attribute__((aligned(4096)));
static uint32_t kernel_pt[KERNEL_MAP_END >> 22][1024] __attribute__((aligned(4096)));

static struct proc procs[NPROC];
static struct proc idle; /* not in the table: runs idle_loop at CPL 0 */
static struct proc *current;
static struct pipe pipes[NPIPE];
static const struct user_image *image;
static int next_pid = 1;

/* Counters the tests read through kstat. */
static uint32_t cow_faults, cow_copies, pipe_blocks, switches;

static uint16_t page_refs[POOL_PAGES];
static uint32_t free_stack[POOL_PAGES];
static uint32_t free_count;

__attribute__((noreturn)) static void panic(const char *what, uint32_t value)
{
    kprintf("kernel: PANIC: %s %08x\n", what, value);
    guest_exit(99);
}

static inline void load_cr3(uint32_t *pd)
{
    __asm__ volatile("movl %0, %%cr3" : : "r"(pd) : "memory");
}

static inline void invlpg(uint32_t va)
{
    __asm__ volatile("invlpg (%0)" : : "r"(va) : "memory");
}

static inline uint32_t read_cr0(void)
{
    uint32_t v;
    __asm__ volatile("movl %%cr0, %0" : "=r"(v));
    return v;
}

/* ---------------------------------------------------------------- descriptor tables */

/* An interrupt gate (IF cleared on entry): the kernel always runs with interrupts off. */
static struct descriptor interrupt_gate(uint32_t offset, uint8_t dpl)
{
    return gate_descriptor(offset, SEL_KCODE, 0xE, dpl);
}

static void setup_cpu_tables(void)
{
    gdt[0] = segment_descriptor(0, 0, 0, 0);
    gdt[1] = segment_descriptor(0, 0xFFFFF, 0x9A, 0xC); /* 0x08 kernel code */
    gdt[2] = segment_descriptor(0, 0xFFFFF, 0x92, 0xC); /* 0x10 kernel data */
    gdt[3] = segment_descriptor(0, 0xFFFFF, 0xFA, 0xC); /* 0x18 user code, DPL 3 */
    gdt[4] = segment_descriptor(0, 0xFFFFF, 0xF2, 0xC); /* 0x20 user data, DPL 3 */
    gdt[5] = segment_descriptor((uint32_t)&tss, sizeof(tss) - 1, 0x89, 0x0); /* 0x28 the TSS */
    load_gdt(gdt, sizeof(gdt) - 1);
    tss.ss0 = SEL_KDATA;
    tss.iomap = sizeof(tss); /* no I/O bitmap: IOPL 0 refuses every port to user code */
    __asm__ volatile("ltr %w0" : : "r"(SEL_TSS));

    for (int v = 0; v < 32; v++)
        idt[v] = interrupt_gate(exception_entries[v], 0);
    for (int irq = 0; irq < 16; irq++)
        idt[IRQ_BASE + irq] = interrupt_gate(irq_entries[irq], 0);
    idt[0x80] = interrupt_gate(syscall_entry, 3); /* the system call: user code may INT 0x80 */
    struct table_register idtr = {sizeof(idt) - 1, (uint32_t)idt};
    __asm__ volatile("lidt %0" : : "m"(idtr));
}

/* ---------------------------------------------------------------- the 8259s and the PIT */

static void setup_timer(void)
{
    /* ICW1-4: edge-triggered, cascaded, IRQ 0-7 at 0x20, IRQ 8-15 at 0x28, 8086 mode. */
    outb(PIC_MASTER, 0x11);
    outb(PIC_SLAVE, 0x11);
    outb(PIC_MASTER + 1, IRQ_BASE);
    outb(PIC_SLAVE + 1, IRQ_BASE + 8);
    outb(PIC_MASTER + 1, 0x04);
    outb(PIC_SLAVE + 1, 0x02);
    outb(PIC_MASTER + 1, 0x01);
    outb(PIC_SLAVE + 1, 0x01);
    outb(PIC_MASTER + 1, 0xFE); /* only IRQ 0, the timer */
    outb(PIC_SLAVE + 1, 0xFF);
    /* Channel 0, lobyte/hibyte, mode 2 (rate generator): IRQ 0 at TIMER_HZ. */
    uint32_t divisor = (PIT_HZ + TIMER_HZ / 2) / TIMER_HZ;
    outb(PIT_MODE, 0x34);
    outb(PIT_CH0, (uint8_t)divisor);
    outb(PIT_CH0, (uint8_t)(divisor >> 8));
}

/* ---------------------------------------------------------------- physical pages */

/* The reference count of a pool page: how many page-table entries (or kernel structures) hold it. */
static uint16_t *page_refcount(uint32_t pa)
{
    if (pa < POOL_START || pa >= KERNEL_MAP_END || pa & (PAGE - 1))
        panic("not a pool page:", pa);
    return &page_refs[(pa - POOL_START) / PAGE];
}

/* A zeroed page of the pool, or 0 when none is left. */
static uint32_t page_alloc(void)
{
    if (free_count == 0)
        return 0;
    uint32_t pa = free_stack[--free_count];
    memset((void *)pa, 0, PAGE); /* identity-mapped: the physical address is the kernel's pointer */
    *page_refcount(pa) = 1;
    return pa;
}

static void page_hold(uint32_t pa)
{
    ++*page_refcount(pa);
}

static void page_release(uint32_t pa)
{
    uint16_t *refs = page_refcount(pa);
    if (*refs == 0)
        panic("page released twice:", pa);
    if (--*refs == 0)
        free_stack[free_count++] = pa;
}

static void setup_paging(void)
{
    if ((uint32_t)__image_end > POOL_START)
        panic("the image runs into the page pool at", (uint32_t)__image_end);
    for (uint32_t t = 0; t < KERNEL_MAP_END >> 22; t++) {
        for (uint32_t i = 0; i < 1024; i++)
            kernel_pt[t][i] = ((t << 22) + (i << 12)) | PTE_P | PTE_W; /* supervisor only */
        kernel_pd[t] = (uint32_t)kernel_pt[t] | PTE_P | PTE_W;
    }
    /* Pages are handed out from the top of the pool down, one stack: the order is fixed. */
    for (uint32_t i = 0; i < POOL_PAGES; i++)
        free_stack[free_count++] = POOL_START + i * PAGE;
    load_cr3(kernel_pd);
    __asm__ volatile("movl %0, %%cr0" : : "r"(read_cr0() | CR0_PG | CR0_WP | CR0_MP | CR0_NE) : "memory");
}

/* ---------------------------------------------------------------- address spaces */

static int user_address(uint32_t va)
{
    return va >= USER_BASE && va < USER_STACK_TOP;
}

/* A new directory: the kernel's tables (supervisor-only), no user pages. */
static uint32_t *pd_create(void)
{
    uint32_t *pd = (uint32_t *)page_alloc();
    if (pd)
        for (uint32_t t = 0; t < KERNEL_MAP_END >> 22; t++)
            pd[t] = kernel_pd[t];
    return pd;
}

/* The entry for `va` in `pd`; with `create`, a missing page table is made. 0 if none. */
static uint32_t *pte_of(uint32_t *pd, uint32_t va, int create)
{
    uint32_t *pde = &pd[va >> 22];
    if (!(*pde & PTE_P)) {
        if (!create)
            return 0;
        uint32_t pt = page_alloc();
        if (!pt)
            return 0;
        *pde = pt | PTE_P | PTE_W | PTE_U;
    }
    return &((uint32_t *)(*pde & ~0xFFFu))[(va >> 12) & 0x3FF];
}

/* Maps a fresh zeroed user page at va; 0 when memory ran out. */
static int map_new_page(uint32_t *pd, uint32_t va)
{
    uint32_t *pte = pte_of(pd, va, 1);
    if (!pte)
        return 0;
    uint32_t pa = page_alloc();
    if (!pa)
        return 0;
    *pte = pa | PTE_P | PTE_W | PTE_U;
    return 1;
}

static void unmap_page(uint32_t *pd, uint32_t va)
{
    uint32_t *pte = pte_of(pd, va, 0);
    if (pte && (*pte & PTE_P)) {
        page_release(*pte & ~0xFFFu);
        *pte = 0;
        invlpg(va);
    }
}

/* Every user page and page table of `pd`, then `pd` itself. */
static void pd_destroy(uint32_t *pd)
{
    for (uint32_t t = USER_BASE >> 22; t < USER_STACK_TOP >> 22; t++) {
        if (!(pd[t] & PTE_P))
            continue;
        uint32_t *pt = (uint32_t *)(pd[t] & ~0xFFFu);
        for (uint32_t i = 0; i < 1024; i++)
            if (pt[i] & PTE_P)
                page_release(pt[i] & ~0xFFFu);
        page_release((uint32_t)pt);
    }
    page_release((uint32_t)pd);
}

/* fork's copy: the child's directory shares every user page with the parent's, both read-only
   and marked copy-on-write; the first write in either copies it (or, for the last holder,
   just makes it writable again). */
static uint32_t *pd_share(uint32_t *parent)
{
    uint32_t *child = pd_create();
    if (!child)
        return 0;
    for (uint32_t t = USER_BASE >> 22; t < USER_STACK_TOP >> 22; t++) {
        if (!(parent[t] & PTE_P))
            continue;
        uint32_t *from = (uint32_t *)(parent[t] & ~0xFFFu);
        uint32_t *to = (uint32_t *)page_alloc();
        if (!to) {
            pd_destroy(child);
            return 0;
        }
        child[t] = (uint32_t)to | PTE_P | PTE_W | PTE_U;
        for (uint32_t i = 0; i < 1024; i++) {
            if (!(from[i] & PTE_P))
                continue;
            if (from[i] & (PTE_W | PTE_COW))
                from[i] = (from[i] & ~PTE_W) | PTE_COW;
            to[i] = from[i];
            page_hold(from[i] & ~0xFFFu);
        }
    }
    load_cr3(parent); /* the parent's pages just turned read-only: flush its TLB */
    return child;
}

/* A write fault on a copy-on-write page: copy it, unless nobody else holds it. */
static int resolve_cow(uint32_t *pd, uint32_t va)
{
    uint32_t *pte = pte_of(pd, va, 0);
    if (!pte || !(*pte & PTE_P) || !(*pte & PTE_COW))
        return 0;
    cow_faults++;
    uint32_t pa = *pte & ~0xFFFu;
    if (*page_refcount(pa) > 1) {
        uint32_t copy = page_alloc();
        if (!copy)
            return 0;
        memcpy((void *)copy, (const void *)pa, PAGE);
        page_release(pa);
        pa = copy;
        cow_copies++;
    }
    *pte = pa | PTE_P | PTE_W | PTE_U;
    invlpg(va & ~0xFFFu);
    return 1;
}

/* Whether the current process may hand the kernel [va, va + n): mapped user pages, and with
   `write`, writable ones (a copy-on-write page is resolved now, as the user's own write would
   be, and counted as a COW fault: the kernel writes with CR0.WP set, so it must not find one). */
static int user_range_ok(uint32_t va, uint32_t n, int write)
{
    if (n == 0)
        return 1;
    if (!user_address(va) || va + n < va || !user_address(va + n - 1))
        return 0;
    for (uint32_t page = va & ~0xFFFu; page <= ((va + n - 1) & ~0xFFFu); page += PAGE) {
        uint32_t *pte = pte_of(current->pd, page, 0);
        if (!pte || !(*pte & PTE_P) || !(*pte & PTE_U))
            return 0;
        if (write && !(*pte & PTE_W) && !resolve_cow(current->pd, page))
            return 0;
    }
    return 1;
}

/* The NUL-terminated user string at va, if it is mapped and shorter than max. */
static int user_string_ok(uint32_t va, uint32_t max)
{
    for (uint32_t i = 0; i < max; i++) {
        if (!user_range_ok(va + i, 1, 0))
            return 0;
        if (*(const char *)(va + i) == 0)
            return 1;
    }
    return 0;
}

/* ---------------------------------------------------------------- processes */

static struct trap_frame *top_frame(struct proc *p)
{
    return (struct trap_frame *)(p->kstack + KSTACK_SIZE) - 1;
}

static struct proc *proc_alloc(void)
{
    for (int i = 0; i < NPROC; i++)
        if (procs[i].state == UNUSED) {
            struct proc *p = &procs[i];
            memset(p, 0, offsetof(struct proc, kstack));
            p->pid = next_pid++;
            p->frame = top_frame(p);
            return p;
        }
    return 0;
}

static const struct user_program *find_program(const char *name)
{
    for (uint32_t i = 0; i < image->count; i++) {
        const struct user_program *prog = &image->programs[i];
        const char *prog_name = (const char *)(user_blob + ((uint32_t)prog->name - USER_BASE));
        if (kstrcmp(prog_name, name) == 0)
            return prog;
    }
    return 0;
}

/* A new address space holding the user image (its bss zeroed) and a stack; 0 if no memory. */
static uint32_t *load_image(void)
{
    uint32_t *pd = pd_create();
    if (!pd)
        return 0;
    uint32_t blob_size = (uint32_t)(user_blob_end - user_blob);
    for (uint32_t va = USER_BASE; va < image->end; va += PAGE) {
        if (!map_new_page(pd, va)) {
            pd_destroy(pd);
            return 0;
        }
        uint32_t offset = va - USER_BASE;
        if (offset < blob_size) {
            uint32_t n = blob_size - offset < PAGE ? blob_size - offset : PAGE;
            memcpy((void *)(*pte_of(pd, va, 0) & ~0xFFFu), user_blob + offset, n);
        }
    }
    for (uint32_t i = 1; i <= USER_STACK_PAGES; i++)
        if (!map_new_page(pd, USER_STACK_TOP - i * PAGE)) {
            pd_destroy(pd);
            return 0;
        }
    return pd;
}

/* Points `frame` at the program's entry, at CPL 3, with `arg` on a fresh stack. The address
   space `pd` must be loaded (the kernel writes the argument through it). */
static void start_program(struct proc *p, struct trap_frame *frame, const struct user_program *prog, uint32_t arg)
{
    const char *name = (const char *)(user_blob + ((uint32_t)prog->name - USER_BASE));
    uint32_t *stack = (uint32_t *)(USER_STACK_TOP - 16);
    stack[0] = 0; /* the return address: none */
    stack[1] = arg;
    memset(frame, 0, sizeof(*frame));
    frame->gs = frame->fs = frame->es = frame->ds = SEL_UDATA;
    frame->eip = (uint32_t)prog->entry;
    frame->cs = SEL_UCODE;
    frame->eflags = EFLAGS_IF | 0x2; /* IOPL 0 */
    frame->user_esp = (uint32_t)stack;
    frame->user_ss = SEL_UDATA;
    p->name = name;
    p->brk = (image->end + PAGE - 1) & ~(PAGE - 1);
}

/* Makes `p` the running process: its kernel stack in the TSS, its address space in CR3. */
static struct trap_frame *switch_to(struct proc *p)
{
    if (p != current)
        switches++;
    current = p;
    if (p->state == RUNNABLE)
        p->state = RUNNING;
    tss.esp0 = (uint32_t)(p->kstack + KSTACK_SIZE);
    load_cr3(p == &idle ? kernel_pd : p->pd);
    return p->frame;
}

/* Round robin: the next runnable process after the current one (the current one last), or
   the idle loop. */
static struct proc *pick_next(void)
{
    int start = current >= procs && current < procs + NPROC ? (int)(current - procs) + 1 : 0;
    for (int k = 0; k < NPROC; k++) {
        struct proc *p = &procs[(start + k) % NPROC];
        if (p->state == RUNNABLE || p->state == RUNNING)
            return p;
    }
    return &idle;
}

static void wakeup(const void *channel)
{
    for (int i = 0; i < NPROC; i++)
        if (procs[i].state == BLOCKED && procs[i].wait_channel == channel) {
            procs[i].state = RUNNABLE;
            procs[i].wait_channel = 0;
        }
}

/* The system call in `frame` cannot finish yet: run it again once `channel` is woken. */
static void block_and_restart(struct trap_frame *frame, const void *channel)
{
    frame->eip -= 2; /* back onto the INT 0x80 (CD 80) */
    current->state = BLOCKED;
    current->wait_channel = channel;
}

static void file_close(int file)
{
    if (FILE_KIND(file) == FILE_PIPE_READ || FILE_KIND(file) == FILE_PIPE_WRITE) {
        struct pipe *pipe = &pipes[FILE_PIPE(file)];
        if (FILE_KIND(file) == FILE_PIPE_READ)
            pipe->readers--;
        else
            pipe->writers--;
        wakeup(pipe); /* a reader may now see the end, a writer the missing reader */
    }
}

static void file_hold(int file)
{
    if (FILE_KIND(file) == FILE_PIPE_READ)
        pipes[FILE_PIPE(file)].readers++;
    else if (FILE_KIND(file) == FILE_PIPE_WRITE)
        pipes[FILE_PIPE(file)].writers++;
}

/* Ends the current process: its files closed, its memory freed, its children given to init,
   its parent woken. The process stays a zombie until its parent's wait. */
static void proc_exit(int status)
{
    struct proc *p = current;
    if (p->pid == 1) {
        kprintf("kernel: init exited with status %d\n", status);
        guest_exit((uint8_t)status);
    }
    for (int fd = 0; fd < NFILE; fd++) {
        file_close(p->files[fd]);
        p->files[fd] = FILE_NONE;
    }
    load_cr3(kernel_pd);
    pd_destroy(p->pd);
    p->pd = 0;
    for (int i = 0; i < NPROC; i++)
        if (procs[i].parent == p) {
            procs[i].parent = &procs[0];
            if (procs[i].state == ZOMBIE)
                wakeup(&procs[0]);
        }
    p->exit_status = status;
    p->state = ZOMBIE;
    wakeup(p->parent);
}

/* ---------------------------------------------------------------- system calls */

static int32_t sys_write(int fd, uint32_t buf, uint32_t n, struct trap_frame *frame)
{
    if (fd < 0 || fd >= NFILE || !user_range_ok(buf, n, 0))
        return -1;
    int file = current->files[fd];
    if (file == FILE_CONSOLE) {
        console_write((const char *)buf, n);
        return (int32_t)n;
    }
    if (FILE_KIND(file) != FILE_PIPE_WRITE)
        return -1;
    struct pipe *pipe = &pipes[FILE_PIPE(file)];
    if (pipe->readers == 0)
        return -1;
    uint32_t room = PIPE_SIZE - (pipe->tail - pipe->head);
    if (n > 0 && room == 0) {
        pipe_blocks++;
        block_and_restart(frame, pipe);
        return 0;
    }
    uint32_t done = n < room ? n : room;
    for (uint32_t i = 0; i < done; i++)
        pipe->buf[pipe->tail++ % PIPE_SIZE] = ((const uint8_t *)buf)[i];
    wakeup(pipe);
    return (int32_t)done;
}

static int32_t sys_read(int fd, uint32_t buf, uint32_t n, struct trap_frame *frame)
{
    if (fd < 0 || fd >= NFILE || !user_range_ok(buf, n, 1))
        return -1;
    int file = current->files[fd];
    if (file == FILE_CONSOLE)
        return 0; /* no console input */
    if (FILE_KIND(file) != FILE_PIPE_READ)
        return -1;
    struct pipe *pipe = &pipes[FILE_PIPE(file)];
    uint32_t ready = pipe->tail - pipe->head;
    if (n > 0 && ready == 0) {
        if (pipe->writers == 0)
            return 0; /* the end */
        pipe_blocks++;
        block_and_restart(frame, pipe);
        return 0;
    }
    uint32_t done = n < ready ? n : ready;
    for (uint32_t i = 0; i < done; i++)
        ((uint8_t *)buf)[i] = pipe->buf[pipe->head++ % PIPE_SIZE];
    wakeup(pipe);
    return (int32_t)done;
}

static int32_t sys_pipe(uint32_t fds_va)
{
    if (!user_range_ok(fds_va, 8, 1))
        return -1;
    int slot = -1;
    for (int i = 0; i < NPIPE && slot < 0; i++)
        if (pipes[i].readers == 0 && pipes[i].writers == 0)
            slot = i;
    int fd_read = -1, fd_write = -1;
    for (int fd = 0; fd < NFILE; fd++)
        if (current->files[fd] == FILE_NONE) {
            if (fd_read < 0)
                fd_read = fd;
            else if (fd_write < 0)
                fd_write = fd;
        }
    if (slot < 0 || fd_write < 0)
        return -1;
    memset(&pipes[slot], 0, sizeof(pipes[slot]));
    pipes[slot].readers = pipes[slot].writers = 1;
    current->files[fd_read] = FILE_PIPE_READ | slot;
    current->files[fd_write] = FILE_PIPE_WRITE | slot;
    ((int32_t *)fds_va)[0] = fd_read;
    ((int32_t *)fds_va)[1] = fd_write;
    return 0;
}

static int32_t sys_fork(struct trap_frame *frame)
{
    struct proc *child = proc_alloc();
    if (!child)
        return -1;
    child->pd = pd_share(current->pd);
    if (!child->pd) {
        child->state = UNUSED;
        return -1;
    }
    child->parent = current;
    child->name = current->name;
    child->brk = current->brk;
    for (int fd = 0; fd < NFILE; fd++) {
        child->files[fd] = current->files[fd];
        file_hold(child->files[fd]);
    }
    *child->frame = *frame;
    child->frame->eax = 0;
    child->state = RUNNABLE;
    return child->pid;
}

static int32_t sys_exec(uint32_t name_va, uint32_t arg, struct trap_frame *frame)
{
    if (!user_string_ok(name_va, 32))
        return -1;
    const struct user_program *prog = find_program((const char *)name_va);
    if (!prog)
        return -1;
    uint32_t *pd = load_image();
    if (!pd)
        return -1;
    uint32_t *old = current->pd;
    current->pd = pd;
    load_cr3(pd);
    pd_destroy(old);
    start_program(current, frame, prog, arg);
    return (int32_t)frame->eax;
}

static int32_t sys_wait(uint32_t status_va, struct trap_frame *frame)
{
    if (status_va && !user_range_ok(status_va, 4, 1))
        return -1;
    int children = 0;
    for (int i = 0; i < NPROC; i++) {
        struct proc *p = &procs[i];
        if (p->state == UNUSED || p->parent != current)
            continue;
        children++;
        if (p->state == ZOMBIE) {
            if (status_va)
                *(int32_t *)status_va = p->exit_status;
            p->state = UNUSED;
            p->parent = 0;
            return p->pid;
        }
    }
    if (!children)
        return -1;
    block_and_restart(frame, current);
    return 0;
}

static int32_t sys_sbrk(int32_t delta)
{
    uint32_t old = current->brk, new = old + (uint32_t)delta;
    if (new < ((image->end + PAGE - 1) & ~(PAGE - 1)) || new > USER_STACK_TOP - (USER_STACK_PAGES + 1) * PAGE)
        return -1;
    uint32_t old_end = (old + PAGE - 1) & ~(PAGE - 1), new_end = (new + PAGE - 1) & ~(PAGE - 1);
    for (uint32_t va = old_end; va < new_end; va += PAGE)
        if (!map_new_page(current->pd, va)) {
            for (uint32_t undo = old_end; undo < va; undo += PAGE)
                unmap_page(current->pd, undo);
            return -1;
        }
    for (uint32_t va = new_end; va < old_end; va += PAGE)
        unmap_page(current->pd, va);
    current->brk = new;
    return (int32_t)old;
}

static uint32_t kstat(uint32_t which)
{
    switch (which) {
    case KSTAT_FREE_PAGES:
        return free_count;
    case KSTAT_COW_FAULTS:
        return cow_faults;
    case KSTAT_COW_COPIES:
        return cow_copies;
    case KSTAT_PIPE_BLOCKS:
        return pipe_blocks;
    case KSTAT_SWITCHES:
        return switches;
    case KSTAT_MY_PREEMPTIONS:
        return current->preemptions;
    case KSTAT_IDT_BASE:
        return (uint32_t)idt;
    case KSTAT_IDT_LIMIT:
        return sizeof(idt) - 1;
    case KSTAT_CR0:
        return read_cr0();
    case KSTAT_TR:
        return SEL_TSS;
    }
    return (uint32_t)-1;
}

static void syscall(struct trap_frame *f)
{
    int32_t result = -1;
    switch (f->eax) {
    case SYS_EXIT:
        proc_exit((int)(f->ebx & 0xFF));
        return;
    case SYS_WRITE:
        result = sys_write((int)f->ebx, f->ecx, f->edx, f);
        break;
    case SYS_FORK:
        result = sys_fork(f);
        break;
    case SYS_EXEC:
        result = sys_exec(f->ebx, f->ecx, f);
        break;
    case SYS_WAIT:
        result = sys_wait(f->ebx, f);
        break;
    case SYS_PIPE:
        result = sys_pipe(f->ebx);
        break;
    case SYS_READ:
        result = sys_read((int)f->ebx, f->ecx, f->edx, f);
        break;
    case SYS_CLOSE:
        if ((int)f->ebx >= 0 && (int)f->ebx < NFILE && current->files[f->ebx] != FILE_NONE) {
            file_close(current->files[f->ebx]);
            current->files[f->ebx] = FILE_NONE;
            result = 0;
        }
        break;
    case SYS_SBRK:
        result = sys_sbrk((int32_t)f->ebx);
        break;
    case SYS_GETPID:
        result = current->pid;
        break;
    case SYS_YIELD:
        current->state = RUNNABLE;
        result = 0;
        break;
    case SYS_KSTAT:
        result = (int32_t)kstat(f->ebx);
        break;
    case SYS_VMINFO: {
        uint32_t *pte = user_address(f->ebx) ? pte_of(current->pd, f->ebx, 0) : 0;
        result = pte ? (int32_t)*pte : 0;
        break;
    }
    }
    if (current->state != BLOCKED)
        f->eax = (uint32_t)result;
}

/* ---------------------------------------------------------------- traps */

static const char *const vector_names[32] = {
    "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "#09", "#TS", "#NP", "#SS", "#GP", "#PF", "#15",
    "#MF", "#AC", "#MC", "#XM", "#20", "#21", "#22", "#23", "#24", "#25", "#26", "#27", "#28", "#29", "#30", "#31",
};

static void exception(struct trap_frame *f)
{
    uint32_t cr2 = 0;
    if (f->vector == 14)
        __asm__ volatile("movl %%cr2, %0" : "=r"(cr2));
    if (!(f->cs & 3)) {
        kprintf("kernel: %s in the kernel, error %x, cr2 %08x, eip %08x\n", vector_names[f->vector], f->error, cr2,
                f->eip);
        guest_exit(98);
    }
    /* A write to a present copy-on-write page of the process: the fault it is meant to take. */
    if (f->vector == 14 && (f->error & 7) == 7 && user_address(cr2) && resolve_cow(current->pd, cr2))
        return;
    if (f->vector == 14)
        kprintf("kernel: pid %d (%s) killed: #PF %s %08x (error %x: %s), eip %08x\n", current->pid, current->name,
                f->error & 2 ? "writing" : "reading", cr2, f->error,
                f->error & 1 ? "protection, present page" : "not present", f->eip);
    else
        kprintf("kernel: pid %d (%s) killed: %s error %x, eip %08x\n", current->pid, current->name,
                vector_names[f->vector], f->error, f->eip);
    proc_exit(WAIT_KILLED | (int)f->vector);
}

static void timer_interrupt(struct trap_frame *f)
{
    outb(PIC_MASTER, PIC_EOI);
    if (f->cs & 3) {
        /* Preempted in user mode: to the back of the round robin. */
        current->preemptions++;
        current->state = RUNNABLE;
    }
}

struct trap_frame *trap_dispatch(struct trap_frame *f)
{
    current->frame = f;
    if (f->vector == 0x80)
        syscall(f);
    else if (f->vector == IRQ_BASE)
        timer_interrupt(f);
    else if (f->vector > IRQ_BASE && f->vector < IRQ_BASE + 16) {
        /* Masked lines: only a spurious IRQ 7 or 15 can come, which takes no EOI on its own
           chip (IRQ 15's cascade on the master does). */
        if (f->vector == IRQ_BASE + 15)
            outb(PIC_MASTER, PIC_EOI);
    } else if (f->vector < 32)
        exception(f);
    if (current == &idle)
        idle.state = RUNNABLE; /* the idle loop gives way to any process that can run */
    if (current->state == RUNNING)
        return f;
    return switch_to(pick_next());
}

/* ---------------------------------------------------------------- boot */

int kmain(uint32_t magic)
{
    serial_init();
    kputs("procs: a multi-process kernel, processes at CPL 3\n");
    if (magic != 0x2BADB002)
        panic("not booted by Multiboot: magic", magic);
    setup_cpu_tables();
    setup_paging();
    image = (const struct user_image *)user_blob;
    if (image->magic != USER_IMAGE_MAGIC)
        panic("the user image's magic is wrong:", image->magic);
    kprintf("kernel: paging on, CR0 %08x; %u pages free; %u user programs in the image\n", read_cr0(), free_count,
            image->count);

    idle.state = RUNNABLE;
    idle.name = "idle";
    struct trap_frame *idle_frame = (struct trap_frame *)(idle.kstack + KSTACK_SIZE - 8) - 1; /* no esp, ss */
    idle_frame->gs = idle_frame->fs = idle_frame->es = idle_frame->ds = SEL_KDATA;
    idle_frame->eip = (uint32_t)idle_loop;
    idle_frame->cs = SEL_KCODE;
    idle_frame->eflags = EFLAGS_IF | 0x2;
    idle.frame = idle_frame;

    struct proc *init = proc_alloc();
    init->pd = load_image();
    const struct user_program *prog = find_program("init");
    if (!init->pd || !prog)
        panic("cannot start init:", (uint32_t)init->pd);
    init->files[0] = init->files[1] = init->files[2] = FILE_CONSOLE;
    load_cr3(init->pd);
    start_program(init, init->frame, prog, 0);
    init->state = RUNNABLE;
    current = init;
    setup_timer();
    trap_return(switch_to(init));
}
