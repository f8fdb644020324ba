"""Benchmarks: `ring1 bench interp` and `ring1 bench nano`.

Every figure is measured when the command runs; nothing here is a recorded number.

`interp`: one standard guest loop (an add, a store, a load, a decrement and a conditional
branch: five instructions per iteration) on the generated interpreter and on unicorn with no
VMM (bare). Instructions are counted exactly: the interpreter's `state.icount`, and for
unicorn the loop's known instruction count times its iterations.

`nano`: the Adams & Agesen (ASPLOS 2006) nanobenchmarks that apply to a 32-bit kernel, each
a small kernel-mode loop on the fresh machine of `ring1 exec` (ring1.runtime.tools.fresh_machine), with
the guest's own IDT handlers and, for `pgfault` and `ptemod`, the guest's own page tables.
Each runs in every mode; the loop is

    head:  <body> x unroll
           dec ecx
           jnz head
    end:                           (the stop address)

and each benchmark also has a baseline loop (by default an empty body: only `dec ecx; jnz`).
The time per operation is (median time of the loop - median time of the baseline) divided by
iterations x unroll, so the loop overhead is measured and subtracted; `alu` is the exception:
its operation is one whole iteration, loop included (`loop_included` in the JSON). Each
machine is built once, warmed up (translated, compiled, pages filled) by a short run, and then
re-run from the loop head; the iteration count is calibrated per mode so that one
measurement takes about `target` seconds (of CPU time: see `clock`), and each figure is the
median of `repeats` measurements.

Issue 10's rows are processes: the loop runs at CPL 3 on page tables of its own (the prologue,
in the kernel, turns paging on and IRETs into the loop head), and a small guest kernel at CPL 0
serves it through the guest's IDT (a DPL-3 gate for INT 0x80, the stack from the TSS's ESP0):
`syscall` (a null system call), `pgfault_user` (a #PF from user code the kernel handles),
`ptemod_user` (a system call that rewrites one of the caller's PTEs, then the page is touched),
`cr3switch` (the kernel switching address space, kernel mode) and `forkwait` (fork+wait pairs
on a kernel with a process table, per-process directories and a copy of the user pages: the
`ForkWait` class). The kernels count their own work in guest memory (`guest_per_op` in the
JSON: one system call, fault, PTE write, fork, exit and reap per operation); the `pgfault`
and `ptemod` rows stay kernel-mode loops, as before. These rows and `irq` are also given in
exits (`exits_per_op`: the time over `exit_ns`, the price of one unicorn-to-Python exit measured
in the same run), next to the exits the engine counted (`exits_counted_per_op`) and the issue's
target where it has one (`target_exits`, `within_target`).
"""

from __future__ import annotations

import io
import statistics
import struct
import time
from dataclasses import dataclass, field

from ring1.runtime.cpu import descriptors
from ring1.runtime.engines import EVENT_COUNTERS
from ring1.runtime.isa.assembler import assemble
from ring1.runtime.tools import fresh_machine, tables
from ring1.runtime.tools.progress import Progress

MODES = ("bare", "bt", "trap", "interp")
# The clock: CPU time of this process (the guest runs on this thread), so that other work on a
# shared machine inflates the figures less than wall time would.
clock = time.process_time
NANO_NAMES = (
    "alu",
    "call_ret",
    "cli_sti",
    "pushf_popf",
    "in_port",
    "int_syscall",
    "divzero",
    "pgfault",
    "ptemod",
    "store_load",
    "smc",
    "irq",
    "syscall",
    "pgfault_user",
    "ptemod_user",
    "cr3switch",
    "forkwait",
)
COUNTERS = EVENT_COUNTERS  # the VMM's counts per operation in the JSON (ring1.runtime.engines)


class BenchError(Exception):
    """A mode could not run a benchmark's loop to its end."""


# ---------------------------------------------------------------- the loops' code (assembly text)

ALU_BODY = """
    add eax, ebx
    xor edx, eax
    sub esi, edx
    and edi, esi
    or ebx, edi
    lea eax, [eax + ebx*2 + 1]
    rol edx, 3
    xchg esi, ebx
"""
ALU_INSNS = 8
STORE_LOAD = "mov [edi], eax\nmov eax, [edi]"


# Self-modifying code: the body rewrites the immediate of the next instruction (in the same
# basic block, so in the same unit under bt) with the loop counter, and counts in a word on its
# own code page (past the loop: the loop is at fresh_machine.CODE).
SMC_COUNTER = fresh_machine.CODE + 0x800
SMC_BODY = f"""
    mov byte ptr [smc_next + 1], cl
smc_next:
    mov al, 0
    inc dword ptr [{SMC_COUNTER:#x}]
"""


# Paging for pgfault and ptemod: a page directory and one page table identity-mapping guest
# memory; the loops work on the PTE of one test page.
PAGE_DIR, PAGE_TABLE, TEST_PAGE = 0x20000, 0x21000, 0x30000
TEST_PTE = PAGE_TABLE + (TEST_PAGE >> 12) * 4
PTE_PRESENT = TEST_PAGE | 0x3
SET_TEST_PTE = f"mov dword ptr [{TEST_PTE:#x}], {PTE_PRESENT:#x}"
CLEAR_TEST_PTE = f"mov dword ptr [{TEST_PTE:#x}], 0"
INVLPG_TEST = f"invlpg [{TEST_PAGE:#x}]"
LOAD_TEST = f"mov eax, [{TEST_PAGE:#x}]"


def enable_paging(directory: int) -> str:
    return f"""
    mov eax, {directory:#x}
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
"""


ENABLE_PAGING = enable_paging(PAGE_DIR)


def paging_memory() -> dict[int, bytes]:
    pd = bytearray(4096)
    struct.pack_into("<I", pd, 0, PAGE_TABLE | 0x3)
    pt = b"".join(struct.pack("<I", (i << 12) | 0x3) for i in range(fresh_machine.MEMORY_SIZE >> 12))
    return {PAGE_DIR: bytes(pd), PAGE_TABLE: pt}


def gate(handler: int) -> bytes:
    """A 32-bit interrupt gate to a ring-0 handler, DPL 3."""
    return descriptors.gate(handler, fresh_machine.SEL_CODE0, descriptors.GATE_INTERRUPT32, dpl=3)


# ---------------------------------------------------------------- snippets


@dataclass
class Loop:
    """One loop on the fresh machine: `prologue`, then `body` x unroll counted down in ECX.
    Code is assembly text for the one encoder (ring1.runtime.isa.assembler)."""

    body: str
    unroll: int = 1
    prologue: str = ""
    handlers: dict[int, str] = field(default_factory=dict)  # vector -> handler code (ends in IRETD)
    functions: str = ""  # code after the end (called as "fn")
    calls_fn: bool = False  # the body is `call fn` (the body is ignored)
    paging: bool = False
    regs: dict[str, int] = field(default_factory=dict)
    platform: bool = False  # on the PC of `ring1 run` (PIC, PIT, virtual clock), not a bare bus
    memory: dict[int, bytes] = field(default_factory=dict)  # more guest memory: page tables, kernel data
    # The loop runs at CPL 3 with ESP here: the prologue (at CPL 0) ends by IRET into `head`
    # (enter_user()); re-runs start at `head` in user mode with this ESP. None: a kernel loop.
    user_stack: int | None = None


@dataclass
class Built:
    spec: fresh_machine.FreshSpec
    head: int  # the loop head: re-runs start here
    end: int  # the stop address
    platform: bool = False
    stack: int = fresh_machine.STACK_TOP  # ESP of the re-runs (the prologue's is STACK_TOP)


def build(loop: Loop) -> Built:
    body = "call fn" if loop.calls_fn else loop.body
    parts = [loop.prologue, "head:", *[body] * loop.unroll, "dec ecx", "jnz head", "end:"]
    parts += ["hlt  # never reached: every mode stops at `end`", "fn:", loop.functions]
    for vector in sorted(loop.handlers):
        parts += [".balign 16, 0x90", f"handler_{vector}:", loop.handlers[vector]]
    code = assemble("\n".join(parts), origin=fresh_machine.CODE)
    memory: dict[int, bytes] = {
        fresh_machine.IDT + vector * 8: gate(code.labels[f"handler_{vector}"]) for vector in loop.handlers
    }
    if loop.paging:
        memory.update(paging_memory())
    memory.update(loop.memory)
    regs = {"ecx": 1, **loop.regs}
    spec = fresh_machine.FreshSpec(code=code.code, regs=regs, memory=memory)
    stack = fresh_machine.STACK_TOP if loop.user_stack is None else loop.user_stack
    return Built(spec, code.labels["head"], code.labels["end"], loop.platform, stack)


@dataclass
class Nano:
    name: str
    what: str
    loop: Loop
    baseline: Loop | None  # None: the empty loop with the same prologue, handlers and paging
    loop_included: bool = False
    # The guest kernel's own counts of the work it did (name -> physical address of a dword it
    # increments): the JSON gives each per operation of the measured runs (`guest_per_op`).
    guest_counts: dict[str, int] = field(default_factory=dict)
    # Issue 10's rows (user processes): their time is also given in exits (`exit_ns`, measured
    # in the same run), and the target in exits, where it has one.
    in_exits: bool = False
    target_exits: float | None = None

    def baseline_loop(self) -> Loop:
        if self.baseline is not None:
            return self.baseline
        lp = self.loop
        return Loop(
            "",
            1,
            lp.prologue,
            dict(lp.handlers),
            lp.functions,
            False,
            lp.paging,
            dict(lp.regs),
            lp.platform,
            dict(lp.memory),
            lp.user_stack,
        )


def nano_benchmarks() -> list[Nano]:
    pf_handler = f"{SET_TEST_PTE}\nadd esp, 4  # drop the error code\niretd"
    return [
        Nano(
            "alu",
            f"one loop iteration: {ALU_INSNS} ALU instructions, dec, jnz (loop included)",
            Loop(ALU_BODY),
            None,
            loop_included=True,
        ),
        Nano("call_ret", "call to a function that returns", Loop("", 4, functions="ret", calls_fn=True), None),
        Nano("cli_sti", "CLI; STI", Loop("cli\nsti", 4), None),
        Nano("pushf_popf", "PUSHFD; POPFD", Loop("pushfd\npopfd", 4), None),
        Nano("in_port", "in al, 0x80", Loop("in al, 0x80", 4), None),
        Nano(
            "int_syscall",
            "int 0x80 to the guest's handler, which IRETs",
            Loop("int 0x80", handlers={0x80: "iretd"}),
            None,
        ),
        Nano(
            "divzero",
            "div by zero; the guest's #DE handler skips it and IRETs",
            Loop("div ebx", handlers={0: "add dword ptr [esp], 2  # step over div ebx\niretd"}, regs={"ebx": 0}),
            None,
        ),
        Nano(
            "pgfault",
            "a true #PF: the loop clears a PTE (and INVLPGs), touches the page; the guest's handler maps it "
            "and IRETs. Baseline: the same loop writing the PTE present, so no fault",
            Loop(
                "\n".join((CLEAR_TEST_PTE, INVLPG_TEST, LOAD_TEST)),
                prologue=ENABLE_PAGING,
                handlers={14: pf_handler},
                paging=True,
            ),
            Loop(
                "\n".join((SET_TEST_PTE, INVLPG_TEST, LOAD_TEST)),
                prologue=ENABLE_PAGING,
                handlers={14: pf_handler},
                paging=True,
            ),
        ),
        Nano(
            "ptemod",
            "write a PTE of the live page tables, then INVLPG its page",
            Loop(f"{SET_TEST_PTE}\n{INVLPG_TEST}", prologue=ENABLE_PAGING, paging=True),
            None,
        ),
        # Not one of Adams & Agesen's: the substrate's price of a memory access, to read the others by.
        Nano(
            "store_load",
            "a store and a load of the same word (no sensitive instruction)",
            Loop(STORE_LOAD, 4, regs={"edi": fresh_machine.DATA}),
            None,
        ),
        # Issue 8's self-modifying loop: the time of 10,000 rewrites is 10,000 x this figure.
        Nano(
            "smc",
            "rewrite the next instruction's immediate and count on the code page (self-modifying code)",
            Loop(SMC_BODY),
            None,
        ),
        # Issue 9: a timer interrupt from the PIT through the 8259, taken in HLT and acknowledged.
        Nano(
            "irq",
            "a PIT interrupt taken through the 8259 in HLT, its handler's EOI and IRET (baseline: the PIT "
            "armed the same way, IRQ 0 masked, no wait)",
            *irq_loops(),
            in_exits=True,
        ),
        *process_benchmarks(),
    ]


# irq: the 8259 pair at vector 0x20 with only IRQ 0 unmasked; each operation arms the PIT's
# channel 0 for a one-shot of two ticks (mode 0), and waits in HLT for IRQ 0, whose handler
# acknowledges it (EOI) and IRETs. The baseline arms the PIT the same way with IRQ 0 masked
# and does not wait: the difference is the wait in HLT (virtual time, skipped) and taking,
# acknowledging and returning from the interrupt.
PIC_AT_0X20 = """  # ICW1-4: the master at vector 0x20, a slave on IR2, 8086 mode; every IRQ but 0 masked
    mov al, 0x11
    out 0x20, al
    mov al, 0x20
    out 0x21, al
    mov al, 0x04
    out 0x21, al
    mov al, 0x01
    out 0x21, al
    mov al, 0xfe
    out 0x21, al
"""
ARM_PIT_TWO_TICKS = """
    mov al, 0x30
    out 0x43, al
    mov al, 2
    out 0x40, al
    xor al, al
    out 0x40, al
"""
WAIT_FOR_IRQ0 = "sti\nhlt\ncli"
EOI_IRET = "push eax\nmov al, 0x20\nout 0x20, al\npop eax\niretd"


def irq_loops() -> tuple[Loop, Loop]:
    handlers = {0x20: EOI_IRET}
    loop = Loop(f"{ARM_PIT_TWO_TICKS}\n{WAIT_FOR_IRQ0}", prologue=PIC_AT_0X20, handlers=handlers, platform=True)
    masked = PIC_AT_0X20.replace("mov al, 0xfe", "mov al, 0xff")
    base = Loop(ARM_PIT_TWO_TICKS, prologue=masked, handlers=handlers, platform=True)
    return loop, base


# ---------------------------------------------------------------- issue 10: user processes
#
# Each of these rows is a process: user code at CPL 3 on page tables of its own, a guest kernel
# at CPL 0 entered through the guest's IDT (a DPL-3 gate for INT 0x80) on the stack the guest's
# TSS gives (ESP0), returning with IRET. The prologue runs in the kernel: it turns paging on and
# IRETs into the loop head at CPL 3 with IF set, as a kernel starts its first process.

U, W, P = 0x4, 0x2, 0x1  # page table entry bits
KERNEL_DATA = 0x24000  # the guest kernel's variables (a supervisor page)
FRAME_A, FRAME_B = TEST_PAGE, TEST_PAGE + 0x1000  # the two frames ptemod_user and cr3switch map
FRAME_A_WORD, FRAME_B_WORD = 1, 2  # the first dword of each, read through TEST_PAGE
SYS_NULL, SYS_REMAP = 0, 1  # the system calls of the small kernel of syscall, pgfault_user, ptemod_user
SYSCALLS, PAGE_FAULTS, FAULT_CR2, FAULT_ERROR, PTE_WRITES = (KERNEL_DATA + 4 * i for i in range(5))
PAGE_BYTES = 0x1000


def enter_user(stack: int) -> str:
    """The end of a user loop's prologue: user data selectors, then IRET to `head` at CPL 3
    with IF set and ESP = `stack`; the process starts with EAX = 0."""
    return f"""
    mov ax, {fresh_machine.SEL_DATA3:#x}
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    push {fresh_machine.SEL_DATA3:#x}
    push {stack:#x}
    push 0x202
    push {fresh_machine.SEL_CODE3:#x}
    push offset head
    xor eax, eax
    iretd
"""


def page_table(entries: dict[int, int], default_flags: int) -> bytes:
    """A page table identity-mapping guest memory with `default_flags`; `entries` (page number
    -> whole entry) override it."""
    pages = fresh_machine.MEMORY_SIZE >> 12
    return b"".join(struct.pack("<I", entries.get(i, (i << 12) | default_flags)) for i in range(pages))


def page_directory(tables: dict[int, int]) -> bytes:
    """A page directory: PDE index -> the page table's address (user, writable: the PTEs decide)."""
    pd = bytearray(PAGE_BYTES)
    for index, table in tables.items():
        struct.pack_into("<I", pd, index * 4, table | U | W | P)
    return bytes(pd)


# What the user may not touch: the IVT, GDT, IDT, TSS and kernel stack (below 0x3000), the page
# tables and the kernel's data (0x20000-0x2FFFF). Code, the user stack (0x3000-0x7000) and the
# rest are user pages.
SUPERVISOR_RANGES = ((0, fresh_machine.STACK0_TOP), (PAGE_DIR, TEST_PAGE))


def user_paging_memory(test_pte: int) -> dict[int, bytes]:
    """One process's address space: guest memory identity-mapped, user pages but for
    SUPERVISOR_RANGES, TEST_PAGE's entry `test_pte`; and the two frames' first words."""
    entries = {TEST_PAGE >> 12: test_pte}
    for lo, hi in SUPERVISOR_RANGES:
        entries.update({i: (i << 12) | W | P for i in range(lo >> 12, hi >> 12)})
    return {
        PAGE_DIR: page_directory({0: PAGE_TABLE}),
        PAGE_TABLE: page_table(entries, U | W | P),
        KERNEL_DATA: bytes(PAGE_BYTES),
        FRAME_A: struct.pack("<I", FRAME_A_WORD),
        FRAME_B: struct.pack("<I", FRAME_B_WORD),
    }


USER_PROLOGUE = ENABLE_PAGING + enter_user(fresh_machine.STACK_TOP)
# INT 0x80: count it; SYS_REMAP moves TEST_PAGE to the other frame (a PTE write and INVLPG,
# as a kernel's mprotect or mremap does); every call returns 0 in EAX.
SYSCALL_HANDLER = f"""
    inc dword ptr [{SYSCALLS:#x}]
    cmp eax, {SYS_REMAP}
    jne 1f
    mov eax, [{TEST_PTE:#x}]
    xor eax, {FRAME_A ^ FRAME_B:#x}
    mov [{TEST_PTE:#x}], eax
    invlpg [{TEST_PAGE:#x}]
    inc dword ptr [{PTE_WRITES:#x}]
1:
    xor eax, eax
    iretd
"""
USER_LOAD = f"mov eax, dword ptr [{TEST_PAGE:#x}]"
USER_LOAD_MAPPED = f"mov eax, dword ptr [{FRAME_B:#x}]"  # the same instruction on a mapped page
USER_LOAD_LENGTH = len(assemble(USER_LOAD).code)
# #PF: the process survives it (as a signal handler that skips the access would make it): the
# kernel reads CR2 and the error code, counts the fault and returns past the load.
USER_FAULT_HANDLER = f"""
    push eax
    mov eax, cr2
    mov [{FAULT_CR2:#x}], eax
    mov eax, [esp + 4]
    mov [{FAULT_ERROR:#x}], eax
    inc dword ptr [{PAGE_FAULTS:#x}]
    pop eax
    add esp, 4  # the error code
    add dword ptr [esp], {USER_LOAD_LENGTH}  # step over the load
    iretd
"""
USER_HANDLERS = {0x80: SYSCALL_HANDLER, 14: USER_FAULT_HANDLER}


def user_loop(body: str, test_pte: int, unroll: int = 1) -> Loop:
    memory = user_paging_memory(test_pte)
    return Loop(body, unroll, USER_PROLOGUE, dict(USER_HANDLERS), memory=memory, user_stack=fresh_machine.STACK_TOP)


# cr3switch: two address spaces that differ in TEST_PAGE's frame (A: FRAME_A, B: FRAME_B), each
# a directory and a table of its own (the kernel's identity map, supervisor). EAX holds the
# current directory; each operation switches to the other one and writes to TEST_PAGE there
# (increments the frame's first word: each frame counts the operations that switched to it).
SPACE_B_DIR, SPACE_B_TABLE = PAGE_DIR + 0x2000, PAGE_DIR + 0x3000


def two_spaces_memory() -> dict[int, bytes]:
    return {
        PAGE_DIR: page_directory({0: PAGE_TABLE}),
        PAGE_TABLE: page_table({}, W | P),
        SPACE_B_DIR: page_directory({0: SPACE_B_TABLE}),
        SPACE_B_TABLE: page_table({TEST_PAGE >> 12: FRAME_B | W | P}, W | P),
        FRAME_A: struct.pack("<I", FRAME_A_WORD),
        FRAME_B: struct.pack("<I", FRAME_B_WORD),
    }


def cr3switch_loops() -> tuple[Loop, Loop]:
    prologue = ENABLE_PAGING + f"mov eax, {PAGE_DIR:#x}\n"
    toggle = f"xor eax, {PAGE_DIR ^ SPACE_B_DIR:#x}"
    touch = f"inc dword ptr [{TEST_PAGE:#x}]"  # each frame counts the touches made in its space
    memory = two_spaces_memory()
    loop = Loop(f"{toggle}\nmov cr3, eax\n{touch}", 2, prologue, memory=memory)
    base = Loop(f"{toggle}\n{touch}", 2, prologue, memory=memory)
    return loop, base


class ForkWait:
    """forkwait's kernel: a process table, a free-frame stack, per-process page directories,
    and three system calls. fork copies the caller's user pages (eagerly) into fresh frames of a
    new address space and makes the child runnable; wait reaps a zombie child, or sleeps until
    one exits; exit frees the address space, becomes a zombie and wakes (and is reaped by) a
    waiting parent. One kernel stack (ESP0): a process that stops running leaves its trap frame
    (PUSHAD and the IRET frame) in its process slot, and the next one's frame is copied back.

    Guest memory: the kernel's page table (KERNEL_TABLE, identity, supervisor, but the code
    pages which user code runs read-only) is shared by every directory (PDE 0); each process's
    user pages are at USER_BASE (PDE 1, a table of its own): a data page, then the stack."""

    SYS_FORK, SYS_WAIT, SYS_EXIT = 1, 2, 3
    KERNEL_TABLE = PAGE_TABLE
    CURRENT, NEXT_PID, FORKS, EXITS, REAPED, FREE_TOP = (KERNEL_DATA + 4 * i for i in range(6))
    PROCS = KERNEL_DATA + 0x100
    NPROC, PROC_SIZE = 8, 0x80
    PROCS_END = PROCS + NPROC * PROC_SIZE
    FREE_STACK = KERNEL_DATA + 0x1000  # a page of free frame addresses; FREE_TOP is past the last
    P_STATE, P_PID, P_PARENT, P_CR3, P_TABLE, P_STATUS, P_FRAME = 0, 4, 8, 12, 16, 20, 24
    FREE, RUNNABLE, ZOMBIE, WAITING = 0, 1, 2, 3
    FRAME_DWORDS = 13  # PUSHAD (8) and the IRET frame to CPL 3 (5)
    TRAP_FRAME = fresh_machine.STACK0_TOP - 4 * FRAME_DWORDS
    F_EBX, F_EAX = 16, 28  # in the PUSHAD part
    USER_BASE, USER_PAGES = 0x400000, 4
    USER_DATA = USER_BASE  # the data page: a word the child changes in its copy, then the parent's sum
    USER_STACK_TOP = USER_BASE + USER_PAGES * PAGE_BYTES
    USER_WORD = 0x1000  # the data word's first value
    FRAME_POOL = (0x40000, fresh_machine.MEMORY_SIZE)
    # pid 1, as the loader makes it: its directory, its user table, then its user pages
    FIRST_DIRECTORY, FIRST_TABLE, FIRST_USER = FRAME_POOL[0], FRAME_POOL[0] + PAGE_BYTES, FRAME_POOL[0] + 2 * PAGE_BYTES
    FIRST_FREE = FIRST_USER + USER_PAGES * PAGE_BYTES
    CODE_PAGES = (fresh_machine.CODE, fresh_machine.DATA)  # run by user code: user, read-only

    @classmethod
    def memory(cls) -> dict[int, bytes]:
        """The kernel as its loader leaves it: the first process (pid 1) made, every other frame free."""
        user = range(cls.FIRST_USER, cls.FIRST_FREE, PAGE_BYTES)
        free = range(cls.FIRST_FREE, cls.FRAME_POOL[1], PAGE_BYTES)
        code = {i: (i << 12) | U | P for i in range(cls.CODE_PAGES[0] >> 12, cls.CODE_PAGES[1] >> 12)}
        data = bytearray(PAGE_BYTES)
        # CURRENT (pid 1's slot), NEXT_PID, FORKS, EXITS, REAPED, FREE_TOP
        struct.pack_into("<6I", data, 0, cls.PROCS, 2, 0, 0, 0, cls.free_top())
        first = (cls.RUNNABLE, 1, 0, cls.FIRST_DIRECTORY, cls.FIRST_TABLE, 0)
        struct.pack_into("<6I", data, cls.PROCS - KERNEL_DATA, *first)
        return {
            cls.KERNEL_TABLE: page_table(code, W | P),
            KERNEL_DATA: bytes(data),
            cls.FREE_STACK: struct.pack(f"<{len(free)}I", *reversed(free)),
            cls.FIRST_DIRECTORY: page_directory({0: cls.KERNEL_TABLE, cls.USER_BASE >> 22: cls.FIRST_TABLE}),
            cls.FIRST_TABLE: b"".join(struct.pack("<I", frame | U | W | P) for frame in user),
            cls.FIRST_USER: struct.pack("<I", cls.USER_WORD),
        }

    @classmethod
    def free_top(cls) -> int:
        """FREE_TOP when every frame but pid 1's is free (at the start, and after each pair)."""
        return cls.FREE_STACK + 4 * len(range(cls.FIRST_FREE, cls.FRAME_POOL[1], PAGE_BYTES))

    @classmethod
    def loop(cls) -> Loop:
        prologue = enable_paging(cls.FIRST_DIRECTORY) + enter_user(cls.USER_STACK_TOP)
        body = f"""
    mov eax, {cls.SYS_FORK}
    int 0x80
    test eax, eax
    jz child_main
    js fork_failed
    mov eax, {cls.SYS_WAIT}
    int 0x80
    add dword ptr [{cls.USER_DATA + 4:#x}], ebx  # the parent sums what its children exit with
"""
        child = f"""
child_main:  # the child: change its copy of the data word, exit with it
    mov ebx, dword ptr [{cls.USER_DATA:#x}]
    inc ebx
    mov dword ptr [{cls.USER_DATA:#x}], ebx
    mov eax, {cls.SYS_EXIT}
    int 0x80
fork_failed:
    ud2  # exit does not return; a fork that failed stops the run (the benchmark reports it)
"""
        return Loop(
            body,
            1,
            prologue,
            {0x80: cls.kernel()},
            functions=child + cls.helpers(),
            memory=cls.memory(),
            user_stack=cls.USER_STACK_TOP,
        )

    @classmethod
    def kernel(cls) -> str:
        c = cls
        frame = c.TRAP_FRAME
        return f"""
    pushad
    cmp eax, {c.SYS_FORK}
    je sys_fork
    cmp eax, {c.SYS_WAIT}
    je sys_wait
    cmp eax, {c.SYS_EXIT}
    je sys_exit
    mov dword ptr [{frame + c.F_EAX:#x}], -1  # no such system call
sys_return:
    popad
    iretd

sys_fork:  # a free slot for the child
    mov edi, {c.PROCS:#x}
    mov ecx, {c.NPROC}
1:  cmp dword ptr [edi + {c.P_STATE}], {c.FREE}
    je 2f
    add edi, {c.PROC_SIZE}
    dec ecx
    jnz 1b
    mov dword ptr [{frame + c.F_EAX:#x}], -1
    jmp sys_return
2:  mov ebx, [{c.CURRENT:#x}]
    mov eax, [{c.NEXT_PID:#x}]
    inc dword ptr [{c.NEXT_PID:#x}]
    mov [edi + {c.P_PID}], eax
    mov [edi + {c.P_PARENT}], ebx
    call alloc_zeroed  # the child's page directory: the kernel's table, and a user table
    mov [edi + {c.P_CR3}], eax
    mov edx, eax
    call alloc_zeroed
    mov [edi + {c.P_TABLE}], eax
    or eax, {U | W | P}
    mov [edx + {(c.USER_BASE >> 22) * 4}], eax
    mov dword ptr [edx], {c.KERNEL_TABLE | U | W | P:#x}
    push edi
    mov edx, [ebx + {c.P_TABLE}]  # the parent's user entries
    mov edi, [edi + {c.P_TABLE}]  # the child's
    mov ecx, {c.USER_PAGES}
3:  push ecx  # copy each user page into a new frame
    call alloc_frame
    mov [edi], eax
    or dword ptr [edi], {U | W | P}
    mov esi, [edx]
    and esi, 0xfffff000
    push edi
    mov edi, eax
    mov ecx, {PAGE_BYTES // 4}
    rep movsd
    pop edi
    add edi, 4
    add edx, 4
    pop ecx
    dec ecx
    jnz 3b
    pop edi
    push edi  # the child resumes from the parent's trap frame, its fork returning 0
    lea edi, [edi + {c.P_FRAME}]
    mov esi, {frame:#x}
    mov ecx, {c.FRAME_DWORDS}
    rep movsd
    pop edi
    mov dword ptr [edi + {c.P_FRAME + c.F_EAX}], 0
    mov dword ptr [edi + {c.P_STATE}], {c.RUNNABLE}
    inc dword ptr [{c.FORKS:#x}]
    mov eax, [edi + {c.P_PID}]
    mov [{frame + c.F_EAX:#x}], eax  # the parent's fork returns the child's pid
    jmp sys_return

sys_wait:  # reap a zombie child, or sleep until one exits
    mov edx, [{c.CURRENT:#x}]
    mov ebx, {c.PROCS:#x}
    mov ecx, {c.NPROC}
    xor edi, edi  # children seen
1:  cmp dword ptr [ebx + {c.P_STATE}], {c.FREE}
    je 2f
    cmp [ebx + {c.P_PARENT}], edx
    jne 2f
    inc edi
    cmp dword ptr [ebx + {c.P_STATE}], {c.ZOMBIE}
    jne 2f
    mov esi, {frame:#x}
    call reap
    jmp sys_return
2:  add ebx, {c.PROC_SIZE}
    dec ecx
    jnz 1b
    test edi, edi
    jnz 3f
    mov dword ptr [{frame + c.F_EAX:#x}], -1  # no child to wait for
    jmp sys_return
3:  mov dword ptr [edx + {c.P_STATE}], {c.WAITING}
    jmp schedule

sys_exit:  # status in EBX
    mov ebx, [{c.CURRENT:#x}]
    mov eax, [{frame + c.F_EBX:#x}]
    mov [ebx + {c.P_STATUS}], eax
    mov edx, [ebx + {c.P_TABLE}]  # give back the user pages, the table, the directory (the
    mov ecx, {c.USER_PAGES}       # live CR3 until the switch below: nothing reuses them before)
1:  mov eax, [edx]
    and eax, 0xfffff000
    call free_frame
    add edx, 4
    dec ecx
    jnz 1b
    mov eax, [ebx + {c.P_TABLE}]
    call free_frame
    mov eax, [ebx + {c.P_CR3}]
    call free_frame
    inc dword ptr [{c.EXITS:#x}]
    mov dword ptr [ebx + {c.P_STATE}], {c.ZOMBIE}
    mov edi, [ebx + {c.P_PARENT}]
    cmp dword ptr [edi + {c.P_STATE}], {c.WAITING}
    jne schedule
    lea esi, [edi + {c.P_FRAME}]  # the parent waits: its wait returns this child now
    call reap
    mov dword ptr [edi + {c.P_STATE}], {c.RUNNABLE}
    jmp schedule

schedule:  # the current process stops: keep its frame, run the next runnable one
    mov ebx, [{c.CURRENT:#x}]
    lea edi, [ebx + {c.P_FRAME}]
    mov esi, {frame:#x}
    mov ecx, {c.FRAME_DWORDS}
    rep movsd
    mov edi, ebx
    mov ecx, {c.NPROC}
1:  add edi, {c.PROC_SIZE}
    cmp edi, {c.PROCS_END:#x}
    jb 2f
    mov edi, {c.PROCS:#x}
2:  cmp dword ptr [edi + {c.P_STATE}], {c.RUNNABLE}
    je 3f
    dec ecx
    jnz 1b
    hlt  # nothing can run: a kernel bug (the run stops here and the benchmark says so)
3:  mov [{c.CURRENT:#x}], edi
    mov eax, [edi + {c.P_CR3}]
    mov cr3, eax
    lea esi, [edi + {c.P_FRAME}]
    mov edi, {frame:#x}
    mov ecx, {c.FRAME_DWORDS}
    rep movsd
    jmp sys_return
"""

    @classmethod
    def helpers(cls) -> str:
        c = cls
        return f"""
reap:  # EBX: a zombie child; ESI: the trap frame its parent's wait returns in (EAX pid, EBX status)
    mov eax, [ebx + {c.P_PID}]
    mov [esi + {c.F_EAX}], eax
    mov eax, [ebx + {c.P_STATUS}]
    mov [esi + {c.F_EBX}], eax
    mov dword ptr [ebx + {c.P_STATE}], {c.FREE}
    inc dword ptr [{c.REAPED:#x}]
    ret
alloc_frame:  # EAX: a free frame
    mov eax, [{c.FREE_TOP:#x}]
    cmp eax, {c.FREE_STACK:#x}
    je out_of_memory
    sub eax, 4
    mov [{c.FREE_TOP:#x}], eax
    mov eax, [eax]
    ret
out_of_memory:
    hlt  # the run stops here: the benchmark reports it
alloc_zeroed:  # EAX: a free frame, zeroed
    call alloc_frame
    push edi
    push ecx
    push eax
    mov edi, eax
    xor eax, eax
    mov ecx, {PAGE_BYTES // 4}
    rep stosd
    pop eax
    pop ecx
    pop edi
    ret
free_frame:  # EAX: a frame no one uses any more
    push edx
    mov edx, [{c.FREE_TOP:#x}]
    mov [edx], eax
    add edx, 4
    mov [{c.FREE_TOP:#x}], edx
    pop edx
    ret
"""


def process_benchmarks() -> list[Nano]:
    """Issue 10's rows: user processes, each figure also in exits."""
    return [
        Nano(
            "syscall",
            "user -> kernel -> user: INT 0x80 at CPL 3 through a DPL-3 gate (stack from the TSS), the "
            "kernel's dispatch counts it and IRETs",
            user_loop("int 0x80", FRAME_A | U | W | P),
            None,
            guest_counts={"syscalls": SYSCALLS},
            in_exits=True,
            target_exits=3,
        ),
        Nano(
            "pgfault_user",
            "a user load from a page its tables leave not present: the #PF goes to the kernel, which reads "
            "CR2, counts it and IRETs past the load (baseline: the same load on a mapped page)",
            user_loop(USER_LOAD, 0),
            user_loop(USER_LOAD_MAPPED, 0),
            guest_counts={"page_faults": PAGE_FAULTS},
            in_exits=True,
            target_exits=3,
        ),
        Nano(
            "ptemod_user",
            "a system call moves a user page to another frame (PTE write, INVLPG), then user code reads "
            "the page (baseline: the null system call and the read)",
            user_loop(f"mov eax, {SYS_REMAP}\nint 0x80\nadd ebx, dword ptr [{TEST_PAGE:#x}]", FRAME_A | U | W | P),
            user_loop(f"mov eax, {SYS_NULL}\nint 0x80\nadd ebx, dword ptr [{TEST_PAGE:#x}]", FRAME_A | U | W | P),
            guest_counts={"pte_writes": PTE_WRITES, "syscalls": SYSCALLS},
            in_exits=True,
            target_exits=2,
        ),
        Nano(
            "cr3switch",
            "the kernel switches address space (MOV CR3, two spaces) and writes to a page there "
            "(baseline: the same loop without MOV CR3)",
            *cr3switch_loops(),
            guest_counts={"space_a_touches": FRAME_A, "space_b_touches": FRAME_B},
            in_exits=True,
        ),
        Nano(
            "forkwait",
            f"fork (eager copy of {ForkWait.USER_PAGES} user pages into a new address space), the child "
            "exits at once, the parent's wait reaps it: one fork+wait pair",
            ForkWait.loop(),
            None,
            guest_counts={"forks": ForkWait.FORKS, "exits": ForkWait.EXITS, "reaped": ForkWait.REAPED},
            in_exits=True,
        ),
    ]


def ladder_loop() -> Loop:
    return Loop("cli", 4)


# ---------------------------------------------------------------- one machine per mode


class Runner:
    """A fresh machine in one mode (an engine of ring1.runtime.engines) with a loop in memory.
    `run(n)` runs n iterations and returns the seconds spent; the first run starts at the
    prologue, later ones at the loop head."""

    def __init__(self, mode: str, built: Built, rule_overrides: dict[str, str] | None = None) -> None:
        from ring1.runtime import engines
        from ring1.runtime.tools.snippet import interp_machine

        self.mode = mode
        self.built = built
        self.entry = fresh_machine.CODE
        self.runs = 0
        options = {"rule_overrides": rule_overrides} if rule_overrides else {}
        platform = None
        if built.platform:
            from ring1.runtime.devices.platform import ConsoleSink, GuestPlatform

            platform = GuestPlatform(ConsoleSink(io.BytesIO()), memory_size=fresh_machine.MEMORY_SIZE)
        self.engine = engines.create(mode, fresh_machine.MEMORY_SIZE, platform, **options)
        interp_machine(built.spec, self.engine.machine)
        self.engine.start()
        self.engine.stop_addresses = {built.end}

    def run(self, n: int) -> float:
        engine, end = self.engine, self.built.end
        esp = fresh_machine.STACK_TOP if self.runs == 0 else self.built.stack
        engine.set_registers(self.entry, {1: n, 4: esp})  # ECX: iterations; ESP
        t0 = clock()
        outcome = engine.run(None)
        dt = clock() - t0
        if outcome.reason != "stop-address" or engine.machine.state.eip != end:
            why = f"{outcome.reason} {outcome.vmstop or outcome.event or ''}".strip()
            raise BenchError(f"{self.mode}: the loop did not reach its end ({why})")
        self.entry = self.built.head
        self.runs += 1
        return dt

    def final_state(self) -> dict[str, int]:
        """The guest's GPRs, EIP and EFLAGS after the last run."""
        m = self.engine.machine
        regs = dict(zip(fresh_machine.GPR_NAMES, m.regs, strict=True))
        return {**regs, "eip": m.state.eip, "eflags": m.eflags()}

    def counters(self) -> dict[str, int]:
        counts = self.engine.counters()
        return {k: counts[k] for k in COUNTERS if k in counts}

    def guest_word(self, address: int) -> int:
        """A dword of guest physical memory (the guest kernel's counters)."""
        return self.engine.machine.mem.read32(address)


# ---------------------------------------------------------------- measuring


@dataclass
class Settings:
    target: float = 0.3  # seconds per measurement
    repeats: int = 5
    quick: bool = False


def settings(quick: bool, repeats: int | None = None) -> Settings:
    s = Settings(target=0.01, repeats=1, quick=True) if quick else Settings()
    if repeats is not None:
        s.repeats = max(1, repeats)
    return s


def calibrate(run, target: float) -> int:
    """Iterations that make one call of `run(n)` (returning seconds) take about `target` seconds."""
    n = 1
    while True:
        dt = run(n)
        if dt >= target / 4 or n >= 1 << 34:
            break
        n = n * 8 if dt < target / 64 else max(n + 1, int(n * target / 2 / max(dt, 1e-9)))
    return max(1, int(n * target / max(dt, 1e-9)))


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


def measure(mode: str, nano: Nano, s: Settings, rule_overrides: dict[str, str] | None = None) -> dict:
    """One benchmark in one mode: the JSON record."""
    op = Runner(mode, build(nano.loop), rule_overrides)
    base = None if nano.loop_included else Runner(mode, build(nano.baseline_loop()), rule_overrides)
    op.run(2)  # warm-up: prologue, translation, hidden faults, compiled blocks
    if base is not None:
        base.run(2)
    n = calibrate(op.run, s.target)
    t_op, t_base = [], []
    c0_op, c0_base = op.counters(), base.counters() if base else {}
    g0 = {k: op.guest_word(a) for k, a in nano.guest_counts.items()}
    for _ in range(s.repeats):
        t_op.append(op.run(n))
        if base is not None:
            t_base.append(base.run(n))
    c_op, c_base = _delta(op.counters(), c0_op), _delta(base.counters(), c0_base) if base else {}
    ops = n * s.repeats * (1 if nano.loop_included else nano.loop.unroll)
    med_op = statistics.median(t_op)
    med_base = statistics.median(t_base) if t_base else 0.0
    per_iter_ops = 1 if nano.loop_included else nano.loop.unroll
    ns = (med_op - med_base) / (n * per_iter_ops) * 1e9
    per_op = {k: round((c_op[k] - c_base.get(k, 0)) / ops, 3) for k in c_op}
    # How far apart the repeats put the operation (half the range of their differences): a
    # figure smaller than this is lost in the noise of what the baseline shares with the loop.
    diffs = [(a - (t_base[i] if t_base else 0.0)) / (n * per_iter_ops) * 1e9 for i, a in enumerate(t_op)]
    noise = (max(diffs) - min(diffs)) / 2 if len(diffs) >= 3 else None
    rec = {
        "name": nano.name,
        "mode": mode,
        "ns_per_op": ns,
        "noise_ns": noise,
        "iterations": n,
        "unroll": per_iter_ops,
        "repeats": s.repeats,
        "loop_s": med_op,
        "baseline_s": med_base if base is not None else None,
        "loop_included": nano.loop_included,
        "per_op": per_op,
    }
    if nano.guest_counts:
        rec["guest_per_op"] = {k: ((op.guest_word(a) - g0[k]) & 0xFFFFFFFF) / ops for k, a in nano.guest_counts.items()}
    return rec


# The VMM's counts of entries from guest context into Python: each a trap (an exception
# unicorn stops at), a callout (a code hook that emulates one instruction) or a translator
# entry (an exit slot taken: translate, chain). Hidden page faults and traced writes are traps;
# world switches (the IRET into guest context after a stop) are counted apart.
VMM_EXITS = ("traps", "callouts", "translator_entries")


def exits_counted(rec: dict) -> float | None:
    """Entries into Python per operation the engine counted: the VMM's VMM_EXITS, bare's events
    (each delivered in Python), nothing for the interpreter (everything is Python there)."""
    per_op = rec.get("per_op")
    if per_op is None or rec["mode"] == "interp":
        return None
    if rec["mode"] == "bare":
        return per_op.get("events_delivered", 0.0)
    return round(sum(per_op.get(k, 0.0) for k in VMM_EXITS), 3)


def run_nano(
    modes: tuple[str, ...] = MODES,
    names: tuple[str, ...] = NANO_NAMES,
    quick: bool = False,
    repeats: int | None = None,
    ladder: bool = True,
) -> dict:
    s = settings(quick, repeats)
    benches = [b for b in nano_benchmarks() if b.name in names]
    with_exits = any(b.in_exits for b in benches)
    steps = len(benches) * len(modes) + with_exits + (len(LADDER_RUNGS) if ladder else 0)
    with Progress("nano", steps) as progress:
        return _run_nano(benches, modes, s, ladder, with_exits, progress)


def _run_nano(
    benches: list[Nano], modes: tuple[str, ...], s: Settings, ladder: bool, with_exits: bool, progress: Progress
) -> dict:
    # One exit's price, measured once in this run: the unit the in_exits rows are given in.
    if with_exits:
        progress.step("exit price")
    exit_ns = exit_cost(s) if with_exits else None
    records = []
    for b in benches:
        by_mode = {}
        for mode in modes:
            progress.step(f"{b.name} {mode}")
            try:
                rec = measure(mode, b, s)
            except BenchError as err:
                rec = {"name": b.name, "mode": mode, "ns_per_op": None, "error": str(err)}
            rec["what"] = b.what
            by_mode[mode] = rec
        bare = by_mode.get("bare", {}).get("ns_per_op")
        for rec in by_mode.values():
            ns = rec["ns_per_op"]
            rec["ratio_to_bare"] = ns / bare if ns is not None and bare else None
            if b.in_exits:
                rec["exit_ns"] = exit_ns
                rec["exits_per_op"] = ns / exit_ns if ns is not None and exit_ns else None
                rec["exits_counted_per_op"] = exits_counted(rec)
                rec["target_exits"] = b.target_exits
                if b.target_exits is not None and rec["exits_per_op"] is not None:
                    noise = rec.get("noise_ns")
                    lost = noise is not None and abs(ns) < noise  # neither met nor missed: unknown
                    rec["within_target"] = None if lost else rec["exits_per_op"] <= b.target_exits
            records.append(rec)
    return {
        "benchmarks": records,
        "exit_ns": exit_ns,
        "ladder": run_ladder(s, progress) if ladder else None,
        "settings": {"target_s": s.target, "repeats": s.repeats, "modes": list(modes)},
    }


def exit_cost(s: Settings) -> float | None:
    """The price of one exit from unicorn to Python and back, measured now: `in al, 0x80`
    under bare is exactly that (unicorn's I/O hook calls the platform in Python), less the
    loop. The unit `irq` and issue 10's rows are judged in."""
    try:
        return measure("bare", Nano("exit", "in al, 0x80", Loop("in al, 0x80", 4), None), s)["ns_per_op"]
    except BenchError:
        return None


LADDER_RUNGS = (
    ("trap_ns", "trap", None),
    ("callout_ns", "bt", {"CLI": "callout"}),
    ("in_tc_ns", "bt", None),
)


def run_ladder(s: Settings, progress: Progress | None = None) -> dict:
    """CLI three ways: trap-and-emulate, callout-and-emulate, in-TC emulation."""
    nano = Nano("cli", "cli", ladder_loop(), None)
    out: dict = {}
    for key, mode, overrides in LADDER_RUNGS:
        if progress is not None:
            progress.step(f"ladder {key.removesuffix('_ns')}")
        try:
            rec = measure(mode, nano, s, overrides)
            out[key] = rec["ns_per_op"]
            out[key.replace("_ns", "_per_op")] = rec["per_op"]
        except BenchError as err:
            out[key] = None
            out[key.replace("_ns", "_error")] = str(err)
    return out


# ---------------------------------------------------------------- the interpreter against unicorn

INTERP_LOOP = """
head:
    add eax, ebx
    mov [edi], eax
    mov edx, [edi]
    dec ecx
    jnz head
end:
    hlt
"""
INTERP_INSNS_PER_ITER = 5  # the body, dec ecx, jnz


def interp_loop() -> Built:
    code = assemble(INTERP_LOOP, origin=fresh_machine.CODE)
    spec = fresh_machine.FreshSpec(code=code.code, regs={"ecx": 1, "ebx": 3, "edi": fresh_machine.DATA})
    return Built(spec, code.labels["head"], code.labels["end"])


def run_interp_bench(quick: bool = False, repeats: int | None = None) -> dict:
    from unicorn import x86_const as X

    from ring1.runtime.tools.snippet import interp_machine, unicorn_machine

    s = settings(quick, repeats)
    built = interp_loop()

    m = interp_machine(built.spec)
    m.stop_addresses = {built.end}

    def interp_run(n: int) -> tuple[float, int]:
        m.state.eip, m.regs[1] = built.head, n
        start = m.state.icount
        t0 = clock()
        r = m.run(None)
        dt = clock() - t0
        count = m.state.icount - start
        if r.reason != "stop-address" or count != n * INTERP_INSNS_PER_ITER:
            raise BenchError(f"interp: the loop stopped early ({r.reason}, {count} instructions)")
        return dt, count

    cpu = unicorn_machine(built.spec)

    def unicorn_run(n: int) -> tuple[float, int]:
        cpu.uc.reg_write(X.UC_X86_REG_ECX, n)
        t0 = clock()
        ev = cpu.run(built.head, built.end)
        dt = clock() - t0
        if ev is not None or cpu.uc.reg_read(X.UC_X86_REG_EIP) != built.end:
            raise BenchError("unicorn: the loop stopped early")
        return dt, n * INTERP_INSNS_PER_ITER

    results = {}
    with Progress("interp", 2) as progress:
        for name, fn in (("interp", interp_run), ("unicorn", unicorn_run)):
            progress.step(name)
            fn(2)  # warm-up: compiled blocks, translated blocks
            n = calibrate(lambda k, fn=fn: fn(k)[0], s.target)
            runs = [fn(n) for _ in range(s.repeats)]
            ips = statistics.median(count / dt for dt, count in runs)
            results[name] = {"ips": ips, "iterations": n, "instructions": runs[0][1], "repeats": len(runs)}
    return {
        "loop": "add eax, ebx; mov [edi], eax; mov edx, [edi]; dec ecx; jnz (5 instructions per iteration)",
        "interp_ips": results["interp"]["ips"],
        "unicorn_ips": results["unicorn"]["ips"],
        "ratio_to_unicorn": results["interp"]["ips"] / results["unicorn"]["ips"],
        "slowdown": results["unicorn"]["ips"] / results["interp"]["ips"],
        "interp": results["interp"],
        "unicorn": results["unicorn"],
    }


# ---------------------------------------------------------------- output


def _ns(v: float | None) -> str:
    if v is None:
        return "n/a"
    if abs(v) >= 1e7:
        return f"{v / 1e6:,.1f} ms"
    if abs(v) >= 1e4:
        return f"{v / 1e3:,.1f} us"
    return f"{v:,.1f} ns"


def format_nano(result: dict) -> str:
    recs = result["benchmarks"]
    modes = [m for m in MODES if any(r["mode"] == m for r in recs)]
    names = list(dict.fromkeys(r["name"] for r in recs))
    by = {(r["name"], r["mode"]): r for r in recs}
    header = ["time per op", *modes, *[f"{m}/bare" for m in modes if m != "bare"]]
    rows: list[list[str]] = []
    for name in names:
        row = [name]
        for m in modes:
            row.append(_ns(by[(name, m)]["ns_per_op"]))
        for m in modes:
            if m == "bare":
                continue
            ratio = by[(name, m)].get("ratio_to_bare")
            row.append("n/a" if ratio is None else f"{ratio:,.2f}x")
        rows.append(row)
    lines = tables.render(header, rows, "l" + "r" * (len(header) - 1), rule=True)
    notes = []
    for r in recs:
        if r.get("error"):
            notes.append(f"  {r['name']} in {r['mode']}: not run: {r['error']}")
    lines.extend(format_in_exits(result))
    lad = result["ladder"]
    if lad is not None:  # (--no-ladder)
        lines.append("")
        lines.append(
            "ladder, one CLI:  trap-and-emulate {}   callout-and-emulate {}   in-TC emulation {}".format(
                _ns(lad.get("trap_ns")), _ns(lad.get("callout_ns")), _ns(lad.get("in_tc_ns"))
            )
        )
        if lad.get("trap_ns") and lad.get("in_tc_ns") and lad["in_tc_ns"] > 0:
            lines.append(
                f"  trap / in-TC = {lad['trap_ns'] / lad['in_tc_ns']:,.0f}x, "
                f"callout / in-TC = {lad['callout_ns'] / lad['in_tc_ns']:,.0f}x"
            )
    lines.append("")
    st = result["settings"]
    lines.append("Time per operation with the loop overhead (a baseline loop) subtracted; alu is one whole iteration,")
    lines.append(f"loop included. Medians of {st['repeats']} runs of about {st['target_s']} s of CPU time each.")
    lines.append(
        "bare delivers exceptions and interrupts in Python (ring1.runtime.engines.bare): its event figures are"
    )
    lines.append("no hardware reference. `ring1 bench nano --json` adds VMM counts per operation (callouts, traps).")
    lines.extend(notes)
    return "\n".join(lines)


COUNT_LABELS = (
    ("traps", "traps"),
    ("callouts", "callouts"),
    ("translator_entries", "translator entries"),
    ("world_switches", "world switches"),
    ("hidden_page_faults", "hidden #PF"),
    ("traced_writes", "traced writes"),
    ("shadow_flushes", "shadow flushes"),
)


def _count(v: float) -> str:
    v = round(v, 2) + 0.0  # (no "-0")
    return f"{v:,.0f}" if v == int(v) else f"{v:,.2f}"


def counted_cell(rec: dict) -> str:
    """What the engine counted per operation, in words (the VMM's: traps, callouts and translator
    entries are the exits; world switches, hidden faults, traced writes and flushes say why)."""
    per_op = rec.get("per_op") or {}
    if rec["mode"] == "interp":
        return "everything runs in Python"
    if rec["mode"] == "bare":
        return f"events delivered {_count(per_op.get('events_delivered', 0.0))}"
    parts = [f"{label} {_count(per_op[k])}" for k, label in COUNT_LABELS if round(per_op.get(k, 0.0), 2)]
    return ", ".join(parts) or "nothing"


def format_in_exits(result: dict) -> list[str]:
    """The rows judged in exits (irq and issue 10's user processes): per mode the time, the time
    in exits measured in this run, the issue's target, and the exits the engine counted."""
    recs = [r for r in result["benchmarks"] if "exits_per_op" in r]
    if not recs:
        return []
    lines = [
        "",
        f"In exits: one exit from unicorn to Python and back (bare IN, this run) = {_ns(result.get('exit_ns'))}.",
        "Counted per operation by the engine, less the baseline's (bare: events it delivers in Python; the VMM:",
        "traps + callouts + translator entries, each one entry into Python). 0 +- x: less than the repeats' spread.",
    ]
    header = ["row", "mode", "time per op", "in exits", "target", "counted", "what the engine counted per op"]
    table: list[list[str]] = []
    for r in recs:
        target = r.get("target_exits")
        within = r.get("within_target")
        verdict = "" if target is None else f"<= {target:g}: " + {True: "met", False: "missed", None: "?"}[within]
        if r.get("error"):
            table.append([r["name"], r["mode"], "error", "", verdict, "", r["error"]])
            continue
        ratio, counted = r["exits_per_op"], r["exits_counted_per_op"]
        noise = r.get("noise_ns")
        lost = noise is not None and abs(r["ns_per_op"]) < noise
        table.append(
            [
                r["name"],
                r["mode"],
                f"0 +- {_ns(noise)}" if lost else _ns(r["ns_per_op"]),
                "~0" if lost else "n/a" if ratio is None else f"{ratio:,.1f}",
                verdict,
                "" if counted is None else _count(counted),
                counted_cell(r),
            ]
        )
    return lines + tables.render(header, table, "llrrlrl", rule=True)


def format_interp(result: dict) -> str:
    rows = [
        ("interp_ips", f"{result['interp_ips']:,.0f}", "guest instructions/s (generated interpreter)"),
        ("unicorn_ips", f"{result['unicorn_ips']:,.0f}", "guest instructions/s (unicorn, bare)"),
        (
            "ratio_to_unicorn",
            f"{result['ratio_to_unicorn']:.6f}",
            f"(the interpreter is {result['slowdown']:,.0f}x slower)",
        ),
    ]
    return "\n".join([f"loop: {result['loop']}", *tables.render(None, rows, "lrl")])


# ---------------------------------------------------------------- start-up

STARTUP_TARGET_S = 0.3  # the rooms issue's budget for one short command, wall time
STARTUP_GUEST = "build/guests/hello.elf"


def startup_commands(guest: str = STARTUP_GUEST) -> dict[str, list[str]]:
    """The commands timed by `ring1 bench startup`, and the reference: the interpreter starting
    and exiting (`python -c pass`), which no ring1 change can make faster."""
    import sys

    ring1 = [sys.executable, "-m", "ring1.runtime.cli"]
    return {
        "python": [sys.executable, "-c", "pass"],
        "exec_bt": [*ring1, "exec", "--hex", "f4", "--mode", "bt"],
        "exec_interp": [*ring1, "exec", "--hex", "f4", "--mode", "interp"],
        "run_hello_bt": [*ring1, "run", guest, "--mode", "bt"],
    }


def run_startup(repeats: int = 7, guest: str = STARTUP_GUEST) -> dict:
    """Wall time of short commands from process start to exit, each the median of `repeats`
    runs after one warm-up. Children run as an installed ring1 does, with Python's bytecode
    cache on (PYTHONDONTWRITEBYTECODE removed from their environment): the warm-up writes it."""
    import os
    import subprocess
    from pathlib import Path

    if not Path(guest).is_file():
        raise BenchError(f"{guest} is missing: build the guests first (make guests)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    out: dict = {"repeats": repeats, "target_s": STARTUP_TARGET_S, "commands": {}}
    commands = startup_commands(guest)
    with Progress("startup", len(commands) * (repeats + 1)) as progress:
        for name, argv in commands.items():
            times = []
            for i in range(repeats + 1):
                progress.step(f"{name} {'warm-up' if i == 0 else f'run {i}'}")
                t0 = time.perf_counter()
                r = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                dt = time.perf_counter() - t0
                if r.returncode != 0:
                    err = r.stderr.decode(errors="replace").strip()
                    raise BenchError(f"{name}: exit status {r.returncode}: {err}")
                if i:
                    times.append(dt)
            out["commands"][name] = {"argv": argv[1:], "wall_s": statistics.median(times)}
    python = out["commands"]["python"]["wall_s"]
    for rec in out["commands"].values():
        rec["ratio_to_python"] = rec["wall_s"] / python
        rec["within_target"] = rec["wall_s"] <= STARTUP_TARGET_S
    return out


def format_startup(result: dict) -> str:
    rows = [
        (
            name,
            f"{rec['wall_s'] * 1e3:.0f} ms",
            f"{rec['ratio_to_python']:.1f}x",
            "yes" if rec["within_target"] else "NO",
        )
        for name, rec in result["commands"].items()
    ]
    lines = tables.render(("command", "wall", "x python -c pass", f"within {result['target_s']} s"), rows, "lrrl")
    lines.append(f"Medians of {result['repeats']} runs after a warm-up, wall time from process start to exit.")
    return "\n".join(lines)
