/* ring1: count the instructions unicorn executes, in C (runtime/host/counter.py).
 *
 * A UC_HOOK_CODE callback: unicorn calls it before each instruction it executes. It keeps the
 * number of calls, the addresses of the last two instructions it was called for, and stops the
 * CPU when the calls pass a limit (the instruction it is called for then does not run), or, while
 * asked to watch IF, before the first instruction that would run with IF set, or, with guest RAM
 * given, before an instruction unicorn cannot be asked about (RDTSC, RDMSR, WRMSR, RDPMC: unicorn offers
 * no hook for them) so that Python emulates it. No unicorn header is needed: uc_emu_stop and
 * uc_reg_read come as function pointers from the Python side. */
#include <stdint.h>
#include <string.h>

typedef int (*ring1_stop_fn)(void *uc);
typedef int (*ring1_reg_read_fn)(void *uc, int regid, void *value);
typedef int (*ring1_reg_write_fn)(void *uc, int regid, const void *value);
typedef void (*ring1_code_fn)(void *uc, uint64_t address, uint32_t size, void *user);

#define RING1_RANGES 8

typedef struct {
    uint64_t calls;   /* hook calls so far (Python subtracts the ones whose instruction never ran) */
    uint64_t limit;   /* stop before running the instruction of call number limit + 1 */
    uint64_t last;    /* address of the last call's instruction */
    uint64_t prev;    /* address of the call before it */
    ring1_stop_fn stop;
    ring1_reg_read_fn reg_read;
    int32_t eflags_id;  /* UC_X86_REG_EFLAGS */
    int32_t watch_if;   /* an interrupt waits for IF: stop before the first instruction run with IF set */
    int32_t saw_if;     /* set when watch_if stopped the CPU */
    int32_t paging;     /* the guest's CR0.PG, CR4.PSE and CR3 as the run started (set by Python) */
    int32_t pse;
    uint32_t cr3;
    const uint8_t *ram; /* guest physical memory, or NULL: no instruction is looked at */
    uint64_t ram_size;
    int32_t saw_unhookable; /* set when the CPU was stopped before RDTSC, RDMSR or WRMSR */
    int32_t cr_ids[3];      /* UC_X86_REG_CR0, CR3, CR4 */
    int32_t reread_paging;  /* the last instruction was a MOV to a control register */
    ring1_reg_write_fn reg_write;
    uint64_t tsc_base;      /* with emulate_rdtsc: the virtual TSC is tsc_base + ns_per_insn * (calls before) */
    uint64_t ns_per_insn;
    int32_t emulate_rdtsc;  /* RDTSC (CR4.TSD clear) is answered here, not by Python, not by the host's TSC */
    int32_t rdtsc_ids[3];   /* UC_X86_REG_EAX, EDX, EIP */
    const uint8_t *tc;      /* the VMM's translation cache in host memory, or NULL */
    uint64_t tc_linear;     /* its linear address */
    uint64_t tc_size;
    /* Code hooks of the VMM's own (its pads and stubs), called from here: every code hook
       unicorn holds slows every instruction it runs, hooked or not (tests/test_counter_ranges.py
       says how it was seen), so they ride on the counter's, as a range test each. */
    int32_t nranges;
    uint64_t range_lo[RING1_RANGES];
    uint64_t range_hi[RING1_RANGES]; /* inclusive */
    ring1_code_fn range_fn;          /* called with the range's index as `user` */
} ring1_counter;

/* RDTSC on the virtual clock, in place: EDX:EAX, then EIP past it (unicorn goes on from the EIP a
   hook writes, and never runs the instruction itself). */
static void answer_rdtsc(ring1_counter *c, void *uc)
{
    uint64_t tsc = c->tsc_base + c->ns_per_insn * (c->calls - 1);
    uint64_t lo = tsc & 0xFFFFFFFFu, hi = tsc >> 32, eip = 0;
    c->reg_write(uc, c->rdtsc_ids[0], &lo);
    c->reg_write(uc, c->rdtsc_ids[1], &hi);
    c->reg_read(uc, c->rdtsc_ids[2], &eip);
    eip += 2;
    c->reg_write(uc, c->rdtsc_ids[2], &eip);
}

/* The guest-physical address of linear `la` through the guest's page tables (no checks but
   presence: a wrong answer only costs a needless stop or misses one), or -1. */
static int64_t physical(const ring1_counter *c, uint64_t la)
{
    if (!c->paging)
        return (int64_t)(la & 0xFFFFFFFFu);
    uint64_t pde_at = (c->cr3 & 0xFFFFF000u) + ((la >> 22) & 0x3FF) * 4;
    if (pde_at + 4 > c->ram_size)
        return -1;
    uint32_t pde;
    memcpy(&pde, c->ram + pde_at, 4);
    if (!(pde & 1))
        return -1;
    if ((pde & 0x80) && c->pse)
        return (int64_t)((pde & 0xFFC00000u) | (la & 0x3FFFFF));
    uint64_t pte_at = (pde & 0xFFFFF000u) + ((la >> 12) & 0x3FF) * 4;
    if (pte_at + 4 > c->ram_size)
        return -1;
    uint32_t pte;
    memcpy(&pte, c->ram + pte_at, 4);
    if (!(pte & 1))
        return -1;
    return (int64_t)((pte & 0xFFFFF000u) | (la & 0xFFF));
}

void ring1_count(void *uc, uint64_t address, uint32_t size, void *user)
{
    ring1_counter *c = (ring1_counter *)user;
    c->prev = c->last;
    c->last = address;
    if (++c->calls > c->limit) {
        c->stop(uc);
        return;
    }
    if (c->reread_paging) {
        /* The guest's MOV to CR0, CR3 or CR4 has run: look at instructions through the tables it
           set (paging turned on, another address space), not those of when the run started. */
        uint64_t cr0 = 0, cr3 = 0, cr4 = 0;
        c->reg_read(uc, c->cr_ids[0], &cr0);
        c->reg_read(uc, c->cr_ids[1], &cr3);
        c->reg_read(uc, c->cr_ids[2], &cr4);
        c->paging = (cr0 & 0x80000000u) != 0;
        c->pse = (cr4 & 0x10) != 0;
        c->cr3 = (uint32_t)cr3;
        c->reread_paging = 0;
    }
    if (size == 3 && c->ram != NULL) {
        int64_t pa = physical(c, address);
        if (pa >= 0 && (uint64_t)pa + 1 < c->ram_size && c->ram[pa] == 0x0F && c->ram[pa + 1] == 0x22)
            c->reread_paging = 1; /* MOV CRn, r32 */
    }
    if (size == 2 && c->emulate_rdtsc && address - c->tc_linear < c->tc_size) {
        /* Translated guest kernel code (a virtual CPL 0, whatever the guest's CR4.TSD): its RDTSC,
           copied into the TC, reads the virtual clock here. Unanswered (no guest clock), the
           hardware's CR4.TSD makes it fault at CPL 1 and the VMM emulates it. */
        const uint8_t *at = c->tc + (address - c->tc_linear);
        if (address - c->tc_linear + 1 < c->tc_size && at[0] == 0x0F && at[1] == 0x31) {
            answer_rdtsc(c, uc);
            return;
        }
    }
    if (size == 2 && c->ram != NULL) {
        int64_t pa = physical(c, address);
        if (pa >= 0 && (uint64_t)pa + 1 < c->ram_size && c->ram[pa] == 0x0F) {
            uint8_t op = c->ram[pa + 1];
            if (op == 0x31 && c->emulate_rdtsc) {
                /* RDTSC on the virtual clock, in place: EDX:EAX, then EIP past it (unicorn goes on
                   from the EIP a hook writes). With CR4.TSD set Python decides (#GP at CPL > 0). */
                uint64_t cr4 = 0;
                c->reg_read(uc, c->cr_ids[2], &cr4);
                if (!(cr4 & 0x4)) {
                    answer_rdtsc(c, uc);
                    return;
                }
            }
            /* RDTSC, RDMSR, WRMSR; RDPMC, which unicorn raises #UD for (reported past it) */
            if (op == 0x31 || op == 0x32 || op == 0x30 || op == 0x33) {
                c->saw_unhookable = 1;
                c->stop(uc);
                return;
            }
        }
    }
    if (c->watch_if) {
        uint64_t eflags = 0;
        c->reg_read(uc, c->eflags_id, &eflags);
        if (eflags & 0x200) {
            c->saw_if = 1;
            c->watch_if = 0;
            c->stop(uc);
            return; /* the instruction does not run now: its range's hook runs when it does */
        }
    }
    for (int32_t i = 0; i < c->nranges; i++) {
        if (address - c->range_lo[i] <= c->range_hi[i] - c->range_lo[i]) {
            c->range_fn(uc, address, size, (void *)(intptr_t)i);
            return;
        }
    }
}
