/* The user programs of the procs kernel: linked on their own at USER_BASE (procs_user.ld),
   run at CPL 3 in their own address spaces, and talking to the kernel only through INT 0x80.

   init is the test driver: each check runs in child processes it forks (and execs) and prints
   one line, "procs: NAME ok: what it saw" (or FAILED); then a summary, and init's exit status
   (the number of failed checks) ends the run. Every line is the same whatever the timer's
   interrupts hit: what depends on timing (who ran first, how often a pipe blocked) is only
   ever printed as a yes/no threshold a correct kernel always meets. */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "format.h"
#include "mem.h"

#include "procs.h"

/* ---------------------------------------------------------------- system calls */

static inline int32_t syscall3(uint32_t number, uint32_t a, uint32_t b, uint32_t c)
{
    int32_t result;
    __asm__ volatile("int $0x80" : "=a"(result) : "a"(number), "b"(a), "c"(b), "d"(c) : "memory");
    return result;
}

__attribute__((noreturn)) static void sys_exit(int status)
{
    syscall3(SYS_EXIT, (uint32_t)status, 0, 0);
    for (;;)
        ;
}

static int32_t sys_write(int fd, const void *buf, uint32_t n)
{
    return syscall3(SYS_WRITE, (uint32_t)fd, (uint32_t)buf, n);
}

static int32_t sys_read(int fd, void *buf, uint32_t n)
{
    return syscall3(SYS_READ, (uint32_t)fd, (uint32_t)buf, n);
}

static int32_t sys_fork(void) { return syscall3(SYS_FORK, 0, 0, 0); }
static int32_t sys_exec(const char *name, uint32_t arg) { return syscall3(SYS_EXEC, (uint32_t)name, arg, 0); }
static int32_t sys_wait(int32_t *status) { return syscall3(SYS_WAIT, (uint32_t)status, 0, 0); }
static int32_t sys_pipe(int32_t fds[2]) { return syscall3(SYS_PIPE, (uint32_t)fds, 0, 0); }
static int32_t sys_close(int fd) { return syscall3(SYS_CLOSE, (uint32_t)fd, 0, 0); }
static uint32_t sys_sbrk(int32_t delta) { return (uint32_t)syscall3(SYS_SBRK, (uint32_t)delta, 0, 0); }
static int32_t sys_getpid(void) { return syscall3(SYS_GETPID, 0, 0, 0); }
static int32_t sys_yield(void) { return syscall3(SYS_YIELD, 0, 0, 0); }
static uint32_t sys_kstat(uint32_t which) { return (uint32_t)syscall3(SYS_KSTAT, which, 0, 0); }
static uint32_t sys_vminfo(const volatile void *addr) { return (uint32_t)syscall3(SYS_VMINFO, (uint32_t)addr, 0, 0); }

/* ---------------------------------------------------------------- a small libc (and mem.c) */

/* Everything a pipe takes, in as many writes as it needs (a full pipe takes fewer bytes). */
static int write_all(int fd, const void *buf, uint32_t n)
{
    const char *p = buf;
    while (n) {
        int32_t done = sys_write(fd, p, n);
        if (done <= 0)
            return -1;
        p += done;
        n -= (uint32_t)done;
    }
    return 0;
}

struct out {
    char buf[200];
    uint32_t n;
};

static void out_char(struct out *o, char c)
{
    if (o->n < sizeof(o->buf))
        o->buf[o->n++] = c;
}

static void out_put(void *ctx, char c)
{
    out_char((struct out *)ctx, c);
}

/* printf (guests/format.c) into one buffer, written with one system call, so that a line is
   never split between processes. */
static void uvprintf(const char *fmt, va_list ap)
{
    struct out o;
    o.n = 0;
    vformat(out_put, &o, fmt, ap);
    write_all(1, o.buf, o.n);
}

static void uprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    uvprintf(fmt, ap);
    va_end(ap);
}

/* ---------------------------------------------------------------- small programs */

/* hello: exec'd by init's exec check; the argument is its exit status. */
static void prog_hello(uint32_t arg)
{
    uprintf("hello: pid %d, exec'd with argument %u\n", sys_getpid(), arg);
    sys_exit((int)arg);
}

/* segv: a write init's wait must see it killed for. arg 0: into the kernel's image (mapped,
   supervisor-only); arg 1: to an address nobody mapped. */
static void prog_segv(uint32_t arg)
{
    volatile uint32_t *target = (volatile uint32_t *)(arg == 0 ? 0x00100000u : 0x60000000u);
    *target = 0xDEAD;
    uprintf("segv: the write to %08x went through\n", (uint32_t)target);
    sys_exit(0);
}

/* gp: an instruction IOPL 0 forbids at CPL 3. arg 0: CLI; arg 1: IN from port 0x80. */
static void prog_gp(uint32_t arg)
{
    if (arg == 0)
        __asm__ volatile("cli" ::: "memory");
    else {
        uint8_t value;
        __asm__ volatile("inb $0x80, %0" : "=a"(value) : : "memory");
    }
    uprintf("gp: the privileged instruction ran at CPL 3\n");
    sys_exit(0);
}

/* spin: a CPU-bound process. Its argument is a letter and the write end of a pipe (letter |
   fd << 8): six times it counts 20,000 steps, then writes its letter. Its exit status is how
   often the timer took it off the CPU. */
static void prog_spin(uint32_t arg)
{
    char letter = (char)(arg & 0xFF);
    int fd = (int)(arg >> 8);
    volatile uint32_t counter = 0;
    for (int round = 0; round < 6; round++) {
        for (uint32_t i = 0; i < 20000; i++)
            counter++;
        write_all(fd, &letter, 1);
    }
    uint32_t preempted = sys_kstat(KSTAT_MY_PREEMPTIONS);
    sys_exit(preempted > 200 ? 200 : (int)preempted);
}

/* ---------------------------------------------------------------- the red pill at CPL 3 */

struct __attribute__((packed)) table_register {
    uint16_t limit;
    uint32_t base;
};

static int redpill_line(int same)
{
    uprintf(" -> %s\n", same ? "same" : "DIFFERS");
    return !same;
}

/* The demo's five checks, from user mode: what bare metal shows a process. SIDT, SMSW and STR
   are not privileged (no CR4.UMIP); POPF at CPL 3 with IOPL 0 leaves IF alone, without a
   fault; CS carries RPL 3. The exit status is the number of lines that differ. */
static void prog_redpill(uint32_t arg)
{
    (void)arg;
    int differ = 0;

    struct table_register idtr;
    __asm__ volatile("sidt %0" : "=m"(idtr));
    uint32_t idt_base = sys_kstat(KSTAT_IDT_BASE), idt_limit = sys_kstat(KSTAT_IDT_LIMIT);
    uprintf("redpill sidt: IDTR base %08x limit %04x at CPL 3, the kernel loaded base %08x limit %04x", idtr.base,
            idtr.limit, idt_base, idt_limit);
    differ += redpill_line(idtr.base == idt_base && idtr.limit == idt_limit);

    uint32_t before, after;
    __asm__ volatile("pushfl\n\t"
                     "popl %0\n\t"
                     "movl %0, %1\n\t"
                     "andl $~0x200, %1\n\t"
                     "pushl %1\n\t"
                     "popfl\n\t"
                     "pushfl\n\t"
                     "popl %1"
                     : "=&r"(before), "=&r"(after)
                     :
                     : "memory", "cc");
    uprintf("redpill popf: IF %u, then %u after popf with IF clear, IOPL %u (expected 1, 1, 0)", (before >> 9) & 1,
            (after >> 9) & 1, (before >> 12) & 3);
    differ += redpill_line((before & 0x200) && (after & 0x200) && !(before & 0x3000));

    uint32_t cs;
    __asm__ volatile("movl %%cs, %0" : "=r"(cs));
    cs &= 0xFFFF;
    uprintf("redpill cs: CS %04x, RPL %u (the kernel's user code selector 001b)", cs, cs & 3);
    differ += redpill_line(cs == 0x1B);

    uint32_t msw, cr0 = sys_kstat(KSTAT_CR0);
    __asm__ volatile("smsw %0" : "=r"(msw));
    uprintf("redpill smsw: MSW %04x, the kernel set CR0 %08x (low half %04x)", msw & 0xFFFF, cr0, cr0 & 0xFFFF);
    differ += redpill_line((msw & 0xFFFF) == (cr0 & 0xFFFF));

    uint32_t tr = 0, tr_loaded = sys_kstat(KSTAT_TR);
    __asm__ volatile("str %w0" : "+r"(tr));
    uprintf("redpill str: TR %04x, the kernel loaded %04x", tr & 0xFFFF, tr_loaded);
    differ += redpill_line((tr & 0xFFFF) == tr_loaded);

    sys_exit(differ);
}

/* ---------------------------------------------------------------- init: the checks */

static int checks, failures;

static void report(int ok, const char *name, const char *fmt, ...)
{
    checks++;
    if (!ok)
        failures++;
    uprintf("procs: %s %s: ", name, ok ? "ok" : "FAILED");
    va_list ap;
    va_start(ap, fmt);
    uvprintf(fmt, ap);
    va_end(ap);
    write_all(1, "\n", 1);
}

static const char *yes(int b)
{
    return b ? "yes" : "NO";
}

/* fork, then exec `name` with `arg` in the child; the child's pid (or -1). */
static int32_t spawn(const char *name, uint32_t arg)
{
    int32_t pid = sys_fork();
    if (pid == 0) {
        sys_exec(name, arg);
        uprintf("spawn: exec %s failed\n", name);
        sys_exit(127);
    }
    return pid;
}

/* Waits for `pid`; its status, or -1 if wait returned another child or none. */
static int32_t wait_for(int32_t pid)
{
    int32_t status = -1;
    int32_t got = sys_wait(&status);
    return got == pid ? status : -1;
}

static volatile uint32_t cow_word = 42;

static void check_basics(void)
{
    int32_t pid = sys_getpid();
    int32_t none = sys_wait(0);
    report(pid == 1 && none == -1, "getpid", "init is pid %d; wait without children returns %d", pid, none);
    report(sys_exec("no-such-program", 0) == -1, "exec-missing", "exec of a name the image lacks returns -1");
}

static void check_sbrk(void)
{
    uint32_t free_before = sys_kstat(KSTAT_FREE_PAGES);
    uint32_t start = sys_sbrk(0);
    uint32_t old = sys_sbrk(3 * 4096);
    volatile uint8_t *heap = (volatile uint8_t *)old;
    for (uint32_t i = 0; i < 3 * 4096; i++)
        heap[i] = (uint8_t)(i * 7);
    int pattern = 1;
    for (uint32_t i = 0; i < 3 * 4096; i++)
        pattern &= heap[i] == (uint8_t)(i * 7);
    uint32_t now = sys_sbrk(0);
    uint32_t used = free_before - sys_kstat(KSTAT_FREE_PAGES);
    int ok = old == start && now == old + 3 * 4096 && pattern && used >= 3 && used <= 4;
    report(ok, "sbrk", "grew the heap by 12288 bytes from %08x, wrote and read back a pattern: %s", old, yes(pattern));
    /* Give the last page back and take it again: it comes back zeroed. */
    sys_sbrk(-4096);
    sys_sbrk(4096);
    int zeroed = 1;
    for (uint32_t i = 2 * 4096; i < 3 * 4096; i++)
        zeroed &= heap[i] == 0;
    report(zeroed && sys_sbrk(0) == now, "sbrk-shrink", "a page given back and taken again reads zero: %s", yes(zeroed));
}

static void check_fork_cow(void)
{
    uint32_t faults_before = sys_kstat(KSTAT_COW_FAULTS);
    volatile uint8_t *heap = (volatile uint8_t *)(sys_sbrk(0) - 4096);
    heap[0] = 'P';
    uint32_t parent_pte = sys_vminfo(&cow_word);
    int32_t pid = sys_fork();
    if (pid == 0) {
        /* The child: the page is the parent's, read-only and marked copy-on-write... */
        uint32_t shared = sys_vminfo(&cow_word);
        int ok = (shared & ~0xFFFu) == (parent_pte & ~0xFFFu) && (shared & PTE_COW) && !(shared & PTE_W);
        ok &= cow_word == 42 && heap[0] == 'P';
        /* ...until the child writes: then it has its own writable copy. */
        cow_word = 99;
        heap[0] = 'C';
        uint32_t own = sys_vminfo(&cow_word);
        ok &= (own & PTE_W) && !(own & PTE_COW) && cow_word == 99 && heap[0] == 'C';
        sys_exit(ok ? 7 : 1);
    }
    int32_t status = wait_for(pid);
    uint32_t faults = sys_kstat(KSTAT_COW_FAULTS) - faults_before;
    int parent_intact = cow_word == 42 && heap[0] == 'P';
    report(status == 7 && parent_intact && faults >= 2, "fork-cow",
           "the child shared the parent's pages read-only, its writes faulted in its own copies (exit %d); the "
           "parent still reads %u and '%c'",
           status, cow_word, heap[0]);
    cow_word = 43; /* the parent's own write: its page is its own again */
    report(cow_word == 43 && (sys_vminfo(&cow_word) & PTE_W), "cow-parent",
           "the parent's write after the child exited made its page writable again");
}

static void check_exec(void)
{
    int32_t pid = spawn("hello", 3);
    int32_t status = wait_for(pid);
    report(status == 3, "exec", "the child exec'd hello, which exited with %d", status);
}

static void check_many(void)
{
    int32_t pids[5];
    for (int i = 0; i < 5; i++) {
        pids[i] = sys_fork();
        if (pids[i] == 0)
            sys_exit(10 + i);
    }
    uint32_t seen = 0, sum = 0;
    for (int i = 0; i < 5; i++) {
        int32_t status = -1;
        int32_t pid = sys_wait(&status);
        for (int k = 0; k < 5; k++)
            if (pid == pids[k] && status == 10 + k)
                seen |= 1u << k;
        sum += (uint32_t)status;
    }
    int32_t none = sys_wait(0);
    report(seen == 0x1F && sum == 60 && none == -1, "fork-wait",
           "5 children reaped, each with its own status (sum %u), then wait returns %d", sum, none);
}

static void check_pipe(void)
{
    int32_t fds[2];
    int made = sys_pipe(fds);
    uint32_t blocks_before = sys_kstat(KSTAT_PIPE_BLOCKS);
    int32_t pid = sys_fork();
    if (pid == 0) {
        sys_close(fds[0]);
        char chunk[100];
        for (int c = 0; c < 10; c++) {
            for (int i = 0; i < 100; i++)
                chunk[i] = (char)(c * 100 + i);
            write_all(fds[1], chunk, 100);
        }
        sys_exit(0);
    }
    sys_close(fds[1]);
    uint32_t total = 0, sum = 0, in_order = 1;
    char buf[48];
    for (;;) {
        int32_t n = sys_read(fds[0], buf, sizeof(buf));
        if (n <= 0)
            break;
        for (int32_t i = 0; i < n; i++) {
            in_order &= (uint8_t)buf[i] == (uint8_t)total;
            sum += (uint8_t)buf[i];
            total++;
        }
    }
    int32_t status = wait_for(pid);
    sys_close(fds[0]);
    uint32_t blocks = sys_kstat(KSTAT_PIPE_BLOCKS) - blocks_before;
    report(made == 0 && total == 1000 && in_order && status == 0 && blocks >= 1, "pipe",
           "1000 bytes in order through a 64-byte pipe (sum %u), end of file once the writer exited, blocked: %s",
           sum, yes(blocks >= 1));
}

static void check_preemption(void)
{
    int32_t fds[2];
    sys_pipe(fds);
    uint32_t switches_before = sys_kstat(KSTAT_SWITCHES);
    int32_t a = spawn("spin", 'a' | (uint32_t)fds[1] << 8);
    int32_t b = spawn("spin", 'b' | (uint32_t)fds[1] << 8);
    sys_close(fds[1]);
    char seq[16];
    uint32_t n = 0;
    for (;;) {
        char c;
        if (sys_read(fds[0], &c, 1) <= 0)
            break;
        if (n < sizeof(seq))
            seq[n++] = c;
    }
    sys_close(fds[0]);
    int32_t status_a = -1, status_b = -1;
    for (int i = 0; i < 2; i++) {
        int32_t status = -1;
        int32_t pid = sys_wait(&status);
        if (pid == a)
            status_a = status;
        else if (pid == b)
            status_b = status;
    }
    uint32_t as = 0, bs = 0, changes = 0;
    for (uint32_t i = 0; i < n; i++) {
        as += seq[i] == 'a';
        bs += seq[i] == 'b';
        changes += i > 0 && seq[i] != seq[i - 1];
    }
    /* Run to completion one after the other, the letters would come as aaaaaabbbbbb (one
       change); round robin on the timer interleaves them. */
    int interleaved = changes >= 2;
    int preempted = status_a >= 2 && status_b >= 2;
    report(as == 6 && bs == 6 && interleaved && preempted && sys_kstat(KSTAT_SWITCHES) > switches_before,
           "preempt", "two CPU-bound spinners both made progress: letters interleaved %s, each preempted twice or more %s",
           yes(interleaved), yes(preempted));
}

static void check_yield(void)
{
    /* The child yields 50 times before it exits, so it is alive (and runnable) at each of the
       parent's three yields, whoever the timer ran in between: each must switch to it and back. */
    int32_t pid = sys_fork();
    if (pid == 0) {
        for (int i = 0; i < 50; i++)
            sys_yield();
        sys_exit(0);
    }
    int switched = 0, returned = 0;
    for (int i = 0; i < 3; i++) {
        uint32_t before = sys_kstat(KSTAT_SWITCHES);
        returned += sys_yield() == 0;
        switched += sys_kstat(KSTAT_SWITCHES) - before >= 2;
    }
    int32_t status = wait_for(pid);
    report(returned == 3 && switched == 3 && status == 0, "yield",
           "each of 3 yields ran the other process before it returned: %s", yes(switched == 3));
}

static void check_killed(const char *name, const char *program, uint32_t arg, uint32_t vector, const char *what)
{
    int32_t pid = spawn(program, arg);
    int32_t status = wait_for(pid);
    report(status == (int32_t)(WAIT_KILLED | vector), name, "%s: the kernel killed the child, wait saw status %x", what,
           (uint32_t)status);
}

static void check_redpill(void)
{
    int32_t status = wait_for(spawn("redpill", 0));
    report(status == 0, "redpill", "%d of 5 checks at CPL 3 differ from bare metal's", status);
}

static void prog_init(uint32_t arg)
{
    (void)arg;
    uprintf("init: pid %d at CPL %u\n", sys_getpid(), ({
                uint32_t cs;
                __asm__ volatile("movl %%cs, %0" : "=r"(cs));
                cs & 3;
            }));
    check_basics();
    check_sbrk();
    uint32_t free_pages = sys_kstat(KSTAT_FREE_PAGES);
    check_fork_cow();
    check_exec();
    check_many();
    check_pipe();
    check_preemption();
    check_yield();
    check_killed("segv-kernel", "segv", 0, 14, "a write to the kernel's image (supervisor-only) took #PF");
    check_killed("segv-unmapped", "segv", 1, 14, "a write to an unmapped address took #PF");
    check_killed("gp-cli", "gp", 0, 13, "CLI at CPL 3 with IOPL 0 took #GP");
    check_killed("gp-in", "gp", 1, 13, "IN at CPL 3 with IOPL 0 took #GP");
    check_redpill();
    uint32_t leaked = free_pages - sys_kstat(KSTAT_FREE_PAGES);
    report(leaked == 0, "no-leaks", "every page the children used is free again (%d leaked)", (int32_t)leaked);
    if (failures)
        uprintf("procs: %d of %d checks FAILED\n", failures, checks);
    else
        uprintf("procs: all %d checks passed\n", checks);
    sys_exit(failures);
}

/* ---------------------------------------------------------------- the image's table */

extern char __user_end[];

__attribute__((section(".user_header"), used)) const struct user_image user_image = {
    .magic = USER_IMAGE_MAGIC,
    .end = (uint32_t)__user_end,
    .count = 6,
    .programs =
        {
            {"init", prog_init},
            {"hello", prog_hello},
            {"segv", prog_segv},
            {"gp", prog_gp},
            {"spin", prog_spin},
            {"redpill", prog_redpill},
        },
};
