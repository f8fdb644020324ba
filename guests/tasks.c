/* tasks: hardware task switching, as a 1990s kernel (or Linux's double-fault handler) uses it.

   Four 32-bit TSSes in the GDT: the main task's (loaded with LTR), task A's (its own page
   directory: the same linear page shows other data), task B's (its own LDT, reached through a
   task gate in the GDT) and the double-fault task's (a task gate in the IDT at vector 8). The
   main task:
     1. JMPs to task A's TSS; A JMPs back (each JMP frees the task it leaves);
     2. CALLs task B through the task gate; B, nested (NT set, back link = main), IRETs back,
        and a second CALL resumes B after its IRET;
     3. raises #GP while the #GP gate is not present: the #NP that delivery raises makes a
        #DF, which switches to the double-fault task with the error code on its stack; that
        task sends the main task on past the faulting instruction and IRETs back.
   Every step prints what the CPU left: the task register, the back links, NT, the busy bits
   read back with LAR, CR0.TS, registers kept across a switch. The output is the same on a real
   CPU and under ring1's `bare`, `bt` and `interp`. Exit status: the number of failed checks. */

#include "lib.h"

#define SEL_KCODE 0x08
#define SEL_KDATA 0x10
#define SEL_TSS_MAIN 0x18
#define SEL_TSS_A 0x20
#define SEL_TSS_B 0x28
#define SEL_TSS_DF 0x30
#define SEL_GATE_B 0x38 /* a task gate in the GDT, to task B */
#define SEL_LDT_B 0x40
#define SEL_BAD 0xFFF8 /* past the GDT's limit */
#define SEL_LDT_DATA 0x04 /* entry 0 of task B's LDT, RPL 0 */

#define CR0_PG 0x80000000u
#define CR0_TS 0x00000008u
#define EFLAGS_NT 0x4000u
#define SHOWN_PAGE 0x00400000u /* mapped to another frame in task A's address space */

static struct descriptor gdt[9];
static struct descriptor idt[32];
static struct descriptor ldt_b[1];
static struct tss tss_main, tss_a, tss_b, tss_df;
static uint8_t stack_a[4096] __attribute__((aligned(16)));
static uint8_t stack_b[4096] __attribute__((aligned(16)));
static uint8_t stack_df[4096] __attribute__((aligned(16)));
static uint32_t pd_main[1024] __attribute__((aligned(4096)));
static uint32_t pd_a[1024] __attribute__((aligned(4096)));
static uint32_t pt_low[1024] __attribute__((aligned(4096)));
static uint32_t pt_high_main[1024] __attribute__((aligned(4096)));
static uint32_t pt_high_a[1024] __attribute__((aligned(4096)));
static char frame_main[4096] __attribute__((aligned(4096)));
static char frame_a[4096] __attribute__((aligned(4096)));
static char ldt_data[64] = "task B's LDT segment";

static int failures;
static int b_entries;
static volatile uint32_t df_error;

extern char df_fault_insn[], df_recover[];
void task_a_entry(void);
void task_b_entry(void);
void task_df_entry(void);

static void check(int ok, const char *what)
{
    if (!ok) {
        failures++;
        kprintf("  FAILED: %s\n", what);
    }
}

/* ---------------------------------------------------------------- what the CPU shows */

static uint16_t task_register(void)
{
    uint16_t tr;
    __asm__ volatile("str %0" : "=r"(tr));
    return tr;
}

static uint16_t ldt_register(void)
{
    uint16_t ldtr;
    __asm__ volatile("sldt %0" : "=r"(ldtr));
    return ldtr;
}

/* The TSS descriptor's type as LAR reads it: 9 available, 11 busy. */
static const char *tss_state(uint16_t sel)
{
    uint32_t rights;
    __asm__ volatile("lar %1, %0" : "=r"(rights) : "r"((uint32_t)sel) : "cc");
    switch ((rights >> 8) & 0xF) {
    case 9:
        return "available";
    case 11:
        return "busy";
    default:
        return "?";
    }
}

static int nested(void)
{
    uint32_t eflags;
    __asm__ volatile("pushfl\n\tpopl %0" : "=r"(eflags));
    return (eflags & EFLAGS_NT) != 0;
}

static int ts_set(void)
{
    uint32_t cr0;
    __asm__ volatile("movl %%cr0, %0" : "=r"(cr0));
    return (cr0 & CR0_TS) != 0;
}

static void clear_ts(void)
{
    __asm__ volatile("clts");
}

/* ---------------------------------------------------------------- the tasks */

/* Each task's code: a C body, then the switch back, in a loop, since a task resumes where it
   left (its TSS holds the EIP after the switch that left it). */
__asm__(".text\n"
        ".global task_a_entry\n"
        "task_a_entry:\n\t"
        "call task_a_body\n\t"
        "ljmp $0x18, $0\n\t" /* back to the main task, by JMP */
        "jmp task_a_entry\n"
        ".global task_b_entry\n"
        "task_b_entry:\n\t"
        "call task_b_body\n\t"
        "iret\n\t" /* NT is set: back through the back link */
        "jmp task_b_entry\n"
        ".global task_df_entry\n"
        "task_df_entry:\n\t"
        "popl %eax\n\t" /* the #DF's error code, pushed on this task's stack */
        "movl %eax, df_error\n\t"
        "call task_df_body\n\t"
        "iret\n\t"
        "jmp task_df_entry\n");

void task_a_body(void)
{
    uint32_t cr3;
    __asm__ volatile("movl %%cr3, %0" : "=r"(cr3));
    kprintf("task A: running, TR %04x, entered by JMP: NT %d, back link %04x\n", task_register(), nested(),
            tss_a.link);
    kprintf("task A: main TSS %s, A TSS %s, CR0.TS %d\n", tss_state(SEL_TSS_MAIN), tss_state(SEL_TSS_A), ts_set());
    kprintf("task A: own page directory %s, page %08x reads \"%s\"\n", cr3 == (uint32_t)pd_a ? "yes" : "no",
            SHOWN_PAGE, (const char *)SHOWN_PAGE);
    check(task_register() == SEL_TSS_A && !nested() && cr3 == (uint32_t)pd_a, "task A's state");
    clear_ts();
}

void task_b_body(void)
{
    uint32_t via_fs; /* the first bytes of FS, which the TSS loads from B's LDT */
    b_entries++;
    __asm__ volatile("movl %%fs:0, %0" : "=r"(via_fs));
    kprintf("task B: entry %d, TR %04x, called through the task gate: NT %d, back link %04x\n", b_entries,
            task_register(), nested(), tss_b.link);
    kprintf("task B: main TSS %s (nested), B TSS %s, LDTR %04x, FS %s\n", tss_state(SEL_TSS_MAIN),
            tss_state(SEL_TSS_B), ldt_register(),
            via_fs == *(const uint32_t *)ldt_data ? "reads its LDT segment" : "WRONG");
    check(nested() && tss_b.link == SEL_TSS_MAIN && ldt_register() == SEL_LDT_B, "task B's state");
}

void task_df_body(void)
{
    kprintf("df task: #DF error code %x, TR %04x, NT %d, back link %04x\n", df_error, task_register(), nested(),
            tss_df.link);
    kprintf("df task: main task saved at the faulting instruction: %s; main TSS %s; page %08x reads \"%s\"\n",
            tss_main.eip == (uint32_t)df_fault_insn ? "yes" : "no", tss_state(SEL_TSS_MAIN), SHOWN_PAGE,
            (const char *)SHOWN_PAGE);
    check(df_error == 0 && nested() && tss_main.eip == (uint32_t)df_fault_insn, "the double-fault task's state");
    tss_main.eip = (uint32_t)df_recover; /* the main task goes on past the faulting instruction */
}

/* isr.S's common path calls this; no IDT entry here leads to isr.S's stubs. */
void trap_dispatch(struct frame *f)
{
    kprintf("unexpected exception %u at %08x\n", f->vector, f->eip);
    guest_exit(100 + (uint8_t)f->vector);
}

/* ---------------------------------------------------------------- set-up */

static void make_task(struct tss *t, void (*entry)(void), uint8_t *stack, size_t size, uint32_t cr3)
{
    t->eip = (uint32_t)entry;
    t->eflags = 0x2;
    t->esp = (uint32_t)(stack + size);
    t->cs = SEL_KCODE;
    t->ss = t->ds = t->es = t->fs = t->gs = SEL_KDATA;
    t->cr3 = cr3;
    t->iomap = sizeof(struct tss);
}

static void setup(void)
{
    gdt[0] = segment_descriptor(0, 0, 0, 0);
    gdt[1] = segment_descriptor(0, 0xFFFFF, 0x9A, 0xC);
    gdt[2] = segment_descriptor(0, 0xFFFFF, 0x92, 0xC);
    gdt[3] = segment_descriptor((uint32_t)&tss_main, sizeof(struct tss) - 1, 0x89, 0);
    gdt[4] = segment_descriptor((uint32_t)&tss_a, sizeof(struct tss) - 1, 0x89, 0);
    gdt[5] = segment_descriptor((uint32_t)&tss_b, sizeof(struct tss) - 1, 0x89, 0);
    gdt[6] = segment_descriptor((uint32_t)&tss_df, sizeof(struct tss) - 1, 0x89, 0);
    gdt[7] = gate_descriptor(0, SEL_TSS_B, 0x5, 0);
    gdt[8] = segment_descriptor((uint32_t)ldt_b, sizeof(ldt_b) - 1, 0x82, 0);
    ldt_b[0] = segment_descriptor((uint32_t)ldt_data, sizeof(ldt_data) - 1, 0x92, 0x4);
    load_gdt(gdt, sizeof(gdt) - 1);

    /* Paging: the first 4 MB identity-mapped for every task; the page at 4 MB shows another
       frame in task A's page directory. */
    for (uint32_t i = 0; i < 1024; i++)
        pt_low[i] = (i << 12) | 0x3;
    pt_high_main[0] = (uint32_t)frame_main | 0x3;
    pt_high_a[0] = (uint32_t)frame_a | 0x3;
    pd_main[0] = pd_a[0] = (uint32_t)pt_low | 0x3;
    pd_main[1] = (uint32_t)pt_high_main | 0x3;
    pd_a[1] = (uint32_t)pt_high_a | 0x3;
    kstrcpy(frame_main, "the main task's frame");
    kstrcpy(frame_a, "task A's frame");
    uint32_t cr0;
    __asm__ volatile("movl %0, %%cr3" : : "r"(pd_main) : "memory");
    __asm__ volatile("movl %%cr0, %0" : "=r"(cr0));
    __asm__ volatile("movl %0, %%cr0" : : "r"(cr0 | CR0_PG) : "memory");

    make_task(&tss_main, 0, 0, 0, (uint32_t)pd_main); /* filled by the first switch away */
    make_task(&tss_a, task_a_entry, stack_a, sizeof(stack_a), (uint32_t)pd_a);
    make_task(&tss_b, task_b_entry, stack_b, sizeof(stack_b), (uint32_t)pd_main);
    tss_b.ldt = SEL_LDT_B;
    tss_b.fs = SEL_LDT_DATA;
    make_task(&tss_df, task_df_entry, stack_df, sizeof(stack_df), (uint32_t)pd_a); /* (CR3 from a task gate) */
    __asm__ volatile("ltr %w0" : : "r"(SEL_TSS_MAIN));

    /* The IDT: #DF through a task gate; #GP's gate not present (so a #GP becomes a #DF);
       nothing else is expected. */
    for (int v = 0; v < 32; v++)
        idt[v] = segment_descriptor(0, 0, 0, 0);
    idt[8] = gate_descriptor(0, SEL_TSS_DF, 0x5, 0);
    struct table_register idtr = {sizeof(idt) - 1, (uint32_t)idt};
    __asm__ volatile("lidt %0" : : "m"(idtr));
}

/* ---------------------------------------------------------------- the main task */

int kmain(void)
{
    serial_init();
    setup();
    kprintf("tasks: main task, TR %04x, main TSS %s, page %08x reads \"%s\"\n", task_register(),
            tss_state(SEL_TSS_MAIN), SHOWN_PAGE, (const char *)SHOWN_PAGE);

    /* 1. JMP to task A and back by JMP. EBX and ESI live across the switches in the TSS. */
    uint32_t kept_b = 0x12345678, kept_s = 0x9ABCDEF0;
    __asm__ volatile("ljmp %2, $0" : "+b"(kept_b), "+S"(kept_s) : "i"(SEL_TSS_A) : "eax", "ecx", "edx", "edi", "memory", "cc");
    kprintf("main: back by JMP, TR %04x, NT %d, main TSS %s, A TSS %s, CR0.TS %d\n", task_register(), nested(),
            tss_state(SEL_TSS_MAIN), tss_state(SEL_TSS_A), ts_set());
    kprintf("main: registers kept across the switches: %s; page %08x reads \"%s\"\n",
            kept_b == 0x12345678 && kept_s == 0x9ABCDEF0 ? "yes" : "no", SHOWN_PAGE, (const char *)SHOWN_PAGE);
    check(task_register() == SEL_TSS_MAIN && kept_b == 0x12345678 && kept_s == 0x9ABCDEF0, "back from task A");
    clear_ts();

    /* 2. CALL task B through the task gate, twice; B IRETs back each time. */
    for (int i = 0; i < 2; i++) {
        __asm__ volatile("lcall %0, $0" : : "i"(SEL_GATE_B) : "eax", "ecx", "edx", "memory", "cc");
        kprintf("main: back by IRET, TR %04x, NT %d, B TSS %s, LDTR %04x\n", task_register(), nested(),
                tss_state(SEL_TSS_B), ldt_register());
        check(task_register() == SEL_TSS_MAIN && !nested() && ldt_register() == 0, "back from task B");
        clear_ts();
    }

    /* 3. A #GP whose gate is not present: #NP while delivering it, so #DF, through the IDT's
          task gate. The double-fault task moves the main task's EIP to df_recover. */
    kprintf("main: loading DS with %04x, the #GP gate not present\n", SEL_BAD);
    __asm__ volatile("movw %0, %%ax\n"
                     ".global df_fault_insn\n"
                     "df_fault_insn:\n\t"
                     "movw %%ax, %%ds\n"
                     ".global df_recover\n"
                     "df_recover:"
                     :
                     : "i"(SEL_BAD)
                     : "eax", "memory");
    kprintf("main: back from the double-fault task, TR %04x, NT %d, DF TSS %s, main TSS %s\n", task_register(),
            nested(), tss_state(SEL_TSS_DF), tss_state(SEL_TSS_MAIN));
    check(task_register() == SEL_TSS_MAIN && !nested(), "back from the double-fault task");
    kprintf("tasks: done, %d failed\n", failures);
    return failures;
}
