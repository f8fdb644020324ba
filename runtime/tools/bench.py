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
from ring1.runtime.tools import fresh_machine

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
ENABLE_PAGING = f"""
    mov eax, {PAGE_DIR:#x}
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
"""


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


@dataclass
class Built:
    spec: fresh_machine.FreshSpec
    head: int  # the loop head: re-runs start here
    end: int  # the stop address
    platform: bool = False


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
    regs = {"ecx": 1, **loop.regs}
    spec = fresh_machine.FreshSpec(code=code.code, regs=regs, memory=memory)
    return Built(spec, code.labels["head"], code.labels["end"], loop.platform)


@dataclass
class Nano:
    name: str
    what: str
    loop: Loop
    baseline: Loop | None  # None: the empty loop with the same prologue, handlers and paging
    loop_included: bool = False

    def baseline_loop(self) -> Loop:
        if self.baseline is not None:
            return self.baseline
        lp = self.loop
        return Loop("", 1, lp.prologue, dict(lp.handlers), lp.functions, False, lp.paging, dict(lp.regs), lp.platform)


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
        ),
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
        engine.set_registers(self.entry, {1: n, 4: fresh_machine.STACK_TOP})  # ECX: iterations; ESP
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
    return {
        "name": nano.name,
        "mode": mode,
        "ns_per_op": ns,
        "iterations": n,
        "unroll": per_iter_ops,
        "repeats": s.repeats,
        "loop_s": med_op,
        "baseline_s": med_base if base is not None else None,
        "loop_included": nano.loop_included,
        "per_op": per_op,
    }


def run_nano(
    modes: tuple[str, ...] = MODES,
    names: tuple[str, ...] = NANO_NAMES,
    quick: bool = False,
    repeats: int | None = None,
    ladder: bool = True,
) -> dict:
    s = settings(quick, repeats)
    benches = [b for b in nano_benchmarks() if b.name in names]
    records = []
    for b in benches:
        by_mode = {}
        for mode in modes:
            try:
                rec = measure(mode, b, s)
            except BenchError as err:
                rec = {"name": b.name, "mode": mode, "ns_per_op": None, "error": str(err)}
            rec["what"] = b.what
            by_mode[mode] = rec
        bare = by_mode.get("bare", {}).get("ns_per_op")
        exit_ns = exit_cost(s) if b.name == "irq" else None
        for rec in by_mode.values():
            ns = rec["ns_per_op"]
            rec["ratio_to_bare"] = ns / bare if ns is not None and bare else None
            if exit_ns is not None:
                rec["exit_ns"] = exit_ns
                rec["exits_per_op"] = ns / exit_ns if ns is not None and exit_ns > 0 else None
            records.append(rec)
    return {
        "benchmarks": records,
        "ladder": run_ladder(s) if ladder else None,
        "settings": {"target_s": s.target, "repeats": s.repeats, "modes": list(modes)},
    }


def exit_cost(s: Settings) -> float | None:
    """The price of one exit from unicorn to Python and back, measured now: `in al, 0x80`
    under bare is exactly that (unicorn's I/O hook calls the platform in Python), less the
    loop. The unit `irq` is judged in."""
    try:
        return measure("bare", Nano("exit", "in al, 0x80", Loop("in al, 0x80", 4), None), s)["ns_per_op"]
    except BenchError:
        return None


def run_ladder(s: Settings) -> dict:
    """CLI three ways: trap-and-emulate, callout-and-emulate, in-TC emulation."""
    nano = Nano("cli", "cli", ladder_loop(), None)
    out: dict = {}
    for key, mode, overrides in (
        ("trap_ns", "trap", None),
        ("callout_ns", "bt", {"CLI": "callout"}),
        ("in_tc_ns", "bt", None),
    ):
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
    for name, fn in (("interp", interp_run), ("unicorn", unicorn_run)):
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
    rows = [header]
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
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.rjust(widths[i]) if i else c.ljust(widths[i]) for i, c in enumerate(r)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = []
    for r in recs:
        if r.get("error"):
            notes.append(f"  {r['name']} in {r['mode']}: not run: {r['error']}")
    irq = next((r for r in recs if r["name"] == "irq" and r.get("exit_ns")), None)
    if irq is not None:
        per_mode = ", ".join(
            f"{r['mode']} {r['exits_per_op']:,.1f}" for r in recs if r["name"] == "irq" and r.get("exits_per_op")
        )
        lines.append("")
        lines.append(f"one exit from unicorn to Python and back (bare IN): {_ns(irq['exit_ns'])}")
        lines.append(f"  irq, in exits: {per_mode}")
    lad = result["ladder"] or {}
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


def format_interp(result: dict) -> str:
    return "\n".join(
        [
            f"loop: {result['loop']}",
            f"interp_ips        {result['interp_ips']:>14,.0f}  guest instructions/s (generated interpreter)",
            f"unicorn_ips       {result['unicorn_ips']:>14,.0f}  guest instructions/s (unicorn, bare)",
            f"ratio_to_unicorn  {result['ratio_to_unicorn']:>14.6f}  (the interpreter is "
            f"{result['slowdown']:,.0f}x slower)",
        ]
    )


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
    for name, argv in startup_commands(guest).items():
        times = []
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            r = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            dt = time.perf_counter() - t0
            if r.returncode != 0:
                raise BenchError(f"{name}: exit status {r.returncode}: {r.stderr.decode(errors='replace').strip()}")
            if i:
                times.append(dt)
        out["commands"][name] = {"argv": argv[1:], "wall_s": statistics.median(times)}
    python = out["commands"]["python"]["wall_s"]
    for rec in out["commands"].values():
        rec["ratio_to_python"] = rec["wall_s"] / python
        rec["within_target"] = rec["wall_s"] <= STARTUP_TARGET_S
    return out


def format_startup(result: dict) -> str:
    lines = [f"{'command':<14}  {'wall':>9}  {'x python -c pass':>16}  within {result['target_s']} s"]
    for name, rec in result["commands"].items():
        ok = "yes" if rec["within_target"] else "NO"
        lines.append(f"{name:<14}  {rec['wall_s'] * 1e3:>6.0f} ms  {rec['ratio_to_python']:>15.1f}x  {ok}")
    lines.append(f"Medians of {result['repeats']} runs after a warm-up, wall time from process start to exit.")
    return "\n".join(lines)
