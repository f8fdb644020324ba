"""Benchmarks: `ring1 bench interp` and `ring1 bench nano`.

Every figure is measured when the command runs; nothing here is a recorded number.

`interp`: one standard guest loop (an add, a store, a load, a decrement and a conditional
branch: five instructions per iteration) on the generated interpreter and on unicorn with no
VMM (bare). Instructions are counted exactly: the interpreter's `state.icount`, and for
unicorn the loop's known instruction count times its iterations.

`nano`: the Adams & Agesen (ASPLOS 2006) nanobenchmarks that apply to a 32-bit kernel, each
a small kernel-mode loop on the fresh machine of `ring1 exec` (ring1.runtime.fresh), with
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

import statistics
import struct
import time
from dataclasses import dataclass, field

from ring1.runtime import fresh
from ring1.runtime.isa.assembler import assemble

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
)
COUNTERS = (
    "world_switches",
    "callouts",
    "traps",
    "events_delivered",
    "hidden_page_faults",
    "traced_writes",
    "translator_entries",
    "shadow_flushes",
)


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
    pt = b"".join(struct.pack("<I", (i << 12) | 0x3) for i in range(fresh.MEMORY_SIZE >> 12))
    return {PAGE_DIR: bytes(pd), PAGE_TABLE: pt}


def gate(handler: int, kind: int = 0xE) -> bytes:
    """A 32-bit interrupt (0xE) or trap (0xF) gate to a ring-0 handler, DPL 3."""
    return struct.pack("<HHBBH", handler & 0xFFFF, fresh.SEL_CODE0, 0, 0xE0 | kind, handler >> 16)


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


@dataclass
class Built:
    spec: fresh.FreshSpec
    head: int  # the loop head: re-runs start here
    end: int  # the stop address


def build(loop: Loop) -> Built:
    body = "call fn" if loop.calls_fn else loop.body
    parts = [loop.prologue, "head:", *[body] * loop.unroll, "dec ecx", "jnz head", "end:"]
    parts += ["hlt  # never reached: every mode stops at `end`", "fn:", loop.functions]
    for vector in sorted(loop.handlers):
        parts += [".balign 16, 0x90", f"handler_{vector}:", loop.handlers[vector]]
    code = assemble("\n".join(parts), origin=fresh.CODE)
    memory: dict[int, bytes] = {
        fresh.IDT + vector * 8: gate(code.labels[f"handler_{vector}"]) for vector in loop.handlers
    }
    if loop.paging:
        memory.update(paging_memory())
    regs = {"ecx": 1, **loop.regs}
    spec = fresh.FreshSpec(code=code.code, regs=regs, memory=memory)
    return Built(spec, code.labels["head"], code.labels["end"])


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
        return Loop("", 1, lp.prologue, dict(lp.handlers), lp.functions, False, lp.paging, dict(lp.regs))


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
            Loop(STORE_LOAD, 4, regs={"edi": fresh.DATA}),
            None,
        ),
    ]


def ladder_loop() -> Loop:
    return Loop("cli", 4)


# ---------------------------------------------------------------- one machine per mode


class Runner:
    """A fresh machine in one mode with a loop in memory. `run(n)` runs n iterations and returns
    the seconds spent; the first run starts at the prologue, later ones at the loop head."""

    def __init__(self, mode: str, built: Built, rule_overrides: dict[str, str] | None = None) -> None:
        self.mode = mode
        self.built = built
        self.entry = fresh.CODE
        self.runs = 0
        spec = built.spec
        if mode == "interp":
            from ring1.runtime.snippet import interp_machine

            self.m = interp_machine(spec)
            self.m.stop_addresses = {built.end}
        elif mode == "bare":
            from ring1.runtime.bare import BareMachine
            from ring1.runtime.snippet import interp_machine

            self.bm = BareMachine(fresh.MEMORY_SIZE)
            interp_machine(spec, self.bm.interp)
            self.bm.load_from_interp()
            self.bm.stop_addresses = {built.end}
        elif mode in ("bt", "trap"):
            from ring1.runtime.snippet import interp_machine
            from ring1.runtime.vmm import Vmm

            self.vmm = Vmm(fresh.MEMORY_SIZE, mode=mode, rule_overrides=rule_overrides)
            interp_machine(spec, self.vmm.m)
            self.vmm.stop_addresses = {built.end}
        else:
            raise ValueError(f"unknown mode {mode!r}")

    def run(self, n: int) -> float:
        entry, end = self.entry, self.built.end
        if self.mode == "interp":
            m = self.m
            m.state.eip = entry
            m.regs[1], m.regs[4] = n, fresh.STACK_TOP
            t0 = clock()
            r = m.run(None)
            dt = clock() - t0
            ok, why = r.reason == "stop-address" and m.state.eip == end, r.reason
        elif self.mode == "bare":
            from unicorn import x86_const as X

            uc = self.bm.cpu.uc
            uc.reg_write(X.UC_X86_REG_EIP, entry)
            uc.reg_write(X.UC_X86_REG_ECX, n)
            uc.reg_write(X.UC_X86_REG_ESP, fresh.STACK_TOP)
            t0 = clock()
            r = self.bm.run()
            dt = clock() - t0
            ok, why = r.reason == "stop-address", f"{r.reason} {r.vmstop or ''}".strip()
        else:
            m = self.vmm.m
            m.state.eip = entry
            m.regs[1], m.regs[4] = n, fresh.STACK_TOP
            t0 = clock()
            stop, what = self.vmm.run(None)
            dt = clock() - t0
            ok, why = stop == "stop" and m.state.eip == end, f"{stop} {what or ''}".strip()
        if not ok:
            raise BenchError(f"{self.mode}: the loop did not reach its end ({why})")
        self.entry = self.built.head
        self.runs += 1
        return dt

    def final_state(self) -> dict[str, int]:
        """The guest's GPRs, EIP and EFLAGS after the last run."""
        if self.mode == "interp":
            m = self.m
        elif self.mode == "bare":
            m = self.bm.interp  # the run ends by reading unicorn's state into it
        else:
            m = self.vmm.m
        regs = dict(zip(fresh.GPR_NAMES, m.regs, strict=True))
        return {**regs, "eip": m.state.eip, "eflags": m.eflags()}

    def counters(self) -> dict[str, int]:
        if self.mode in ("bt", "trap"):
            return {k: self.vmm.stats[k] for k in COUNTERS}
        if self.mode == "bare":
            return {"events_delivered": sum(self.bm.events.values())}
        return {}


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
        for rec in by_mode.values():
            ns = rec["ns_per_op"]
            rec["ratio_to_bare"] = ns / bare if ns is not None and bare else None
            records.append(rec)
    return {
        "benchmarks": records,
        "ladder": run_ladder(s) if ladder else None,
        "settings": {"target_s": s.target, "repeats": s.repeats, "modes": list(modes)},
    }


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
    code = assemble(INTERP_LOOP, origin=fresh.CODE)
    spec = fresh.FreshSpec(code=code.code, regs={"ecx": 1, "ebx": 3, "edi": fresh.DATA})
    return Built(spec, code.labels["head"], code.labels["end"])


def run_interp_bench(quick: bool = False, repeats: int | None = None) -> dict:
    from unicorn import x86_const as X

    from ring1.runtime.snippet import interp_machine, unicorn_machine

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
    lines.append("bare delivers exceptions and interrupts in Python (ring1.runtime.bare): its event figures are")
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
