/* ring1: count the instructions unicorn executes, in C (runtime/host/counter.py).
 *
 * A UC_HOOK_CODE callback: unicorn calls it before each instruction it executes. It keeps the
 * number of calls, the addresses of the last two instructions it was called for, and stops the
 * CPU when the calls pass a limit (the instruction it is called for then does not run), or, while
 * asked to watch IF, before the first instruction that would run with IF set. No
 * unicorn header is needed: uc_emu_stop comes as a function pointer from the Python side. */
#include <stdint.h>

typedef int (*ring1_stop_fn)(void *uc);
typedef int (*ring1_reg_read_fn)(void *uc, int regid, void *value);

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
} ring1_counter;

void ring1_count(void *uc, uint64_t address, uint32_t size, void *user) {
    ring1_counter *c = (ring1_counter *)user;
    (void)size;
    c->prev = c->last;
    c->last = address;
    if (++c->calls > c->limit) {
        c->stop(uc);
    } else if (c->watch_if) {
        uint64_t eflags = 0;
        c->reg_read(uc, c->eflags_id, &eflags);
        if (eflags & 0x200) {
            c->saw_if = 1;
            c->watch_if = 0;
            c->stop(uc);
        }
    }
}
