"""Run one snippet of guest code from the fresh machine and report the final state.

This is `ring1 exec`: the quickest way to try an instruction. Every mode starts from the
same guest-visible state (ring1.runtime.tools.fresh_machine) and reports the same fields, so the
outputs of two modes can be compared field by field. Every mode also keeps the same time: a
virtual clock (devices/clock.py) that the guest's instructions advance, as under `ring1 run`,
so RDTSC reads virtual nanoseconds (NS_PER_INSN an instruction) from 0 in every mode.
"""

from __future__ import annotations

from dataclasses import dataclass

from ring1.runtime.cpu import descriptors
from ring1.runtime.cpu.events import Fault, Trap, VMStop
from ring1.runtime.cpu.machine import Machine, Platform
from ring1.runtime.cpu.state import CS
from ring1.runtime.devices.clock import VirtualClock
from ring1.runtime.tools import fresh_machine

DEFAULT_MAX_INSNS = 100_000


@dataclass
class SnippetResult:
    regs: dict[str, int]  # the 8 GPRs, eip, eflags, the 6 selectors
    exception: int | None  # vector of the fault or software interrupt that stopped the run
    error_code: int | None
    cr2: int | None
    stop: str  # "end", "exception", "limit", "halt", "vmstop", "interrupted" (Ctrl-C)
    icount: int
    diagnosis: str | None = None
    memory: bytes | None = None  # guest physical memory at the end, when the caller asked for it

    def as_json(self) -> dict:
        out: dict = dict(self.regs)
        out.update(
            exception=self.exception, error_code=self.error_code, cr2=self.cr2, stop=self.stop, instructions=self.icount
        )
        if self.diagnosis:
            out["diagnosis"] = self.diagnosis
        return out


class ClockedPlatform(Platform):
    """The fresh machine's platform: no device (ports float high, no interrupt ever arrives),
    but a virtual clock, as every `ring1 run` has one. The engines then count what they run
    (unicorn included, host/counter.py) and RDTSC reads the clock in every mode; without one
    the TSC would be whatever each mode counts (the interpreter's instructions, the VMM's
    callouts, the host's cycles)."""

    def __init__(self, clock: VirtualClock | None = None) -> None:
        self.clock = clock if clock is not None else VirtualClock()


def interp_machine(spec: fresh_machine.FreshSpec, m: Machine | None = None) -> Machine:
    """The fresh machine, built directly into the interpreter's state (a new Machine, or `m`)."""
    m = m if m is not None else Machine(fresh_machine.MEMORY_SIZE)
    for addr, data in fresh_machine.memory_image(spec):
        m.mem.write(addr, data)
    S = m.state
    regs = spec.initial_regs()
    for i, name in enumerate(fresh_machine.GPR_NAMES):
        m.regs[i] = regs[name] & 0xFFFFFFFF
    gdt = fresh_machine.gdt_bytes()
    if spec.real:
        S.cr[0] = fresh_machine.CR0_ET | spec.cr0_bits
        S.idtr_base, S.idtr_limit = fresh_machine.IVT, 0x3FF
        sels = fresh_machine.selectors(spec)
        for s, name in enumerate(fresh_machine.SEG_NAMES):
            m.b_set_seg(s, sels[name], sels[name] << 4, 0xFFFF, 0x9B if s == CS else 0x93)
    else:
        m.b_write_cr(0, fresh_machine.CR0_ET | fresh_machine.CR0_PE | spec.cr0_bits)
        S.gdtr_base, S.gdtr_limit = fresh_machine.GDT, len(gdt) - 1
        S.idtr_base, S.idtr_limit = fresh_machine.IDT, 256 * 8 - 1
        base, limit, attr = descriptors.to_cache(gdt[fresh_machine.SEL_TSS : fresh_machine.SEL_TSS + 8])
        m.b_set_tr(fresh_machine.SEL_TSS, base, limit, attr)
        sels = fresh_machine.selectors(spec)
        for s, name in enumerate(fresh_machine.SEG_NAMES):
            sel = sels[name]
            base, limit, attr = descriptors.to_cache(gdt[sel & ~7 : (sel & ~7) + 8])
            m.b_set_seg(s, sel, base, limit, attr | 1)  # the CPU sets the accessed bit on load
    m.set_eflags(regs["eflags"])
    S.cr[4] = spec.cr4
    S.xmm[:] = spec.xmm
    S.mxcsr = spec.mxcsr
    S.fpr[:] = spec.fpr
    S.fcw, S.fsw, S.ftw = spec.fcw, spec.fsw, spec.ftw
    S.eip = fresh_machine.CODE
    m.update_mode()
    return m


def state_of(m: Machine) -> dict[str, int]:
    S = m.state
    out = {name: m.regs[i] for i, name in enumerate(fresh_machine.GPR_NAMES)}
    out["eip"] = S.eip
    out["eflags"] = m.eflags()
    for i, name in enumerate(fresh_machine.SEG_NAMES):
        out[name] = S.sel[i]
    return out


def simd_of(m: Machine) -> dict[str, int]:
    """The interpreter's SSE and x87 state by fresh_machine.SIMD_KEYS."""
    S = m.state
    return {
        **dict(zip(fresh_machine.XMM_NAMES, S.xmm, strict=True)),
        "mxcsr": S.mxcsr,
        **dict(zip(fresh_machine.FPR_NAMES, S.fpr, strict=True)),
        "fcw": S.fcw,
        "fsw": S.fsw,
        "ftw": S.ftw,
    }


def run_snippet(
    spec: fresh_machine.FreshSpec, mode: str, max_insns: int = DEFAULT_MAX_INSNS, keep_memory: bool = False, engine=None
) -> SnippetResult:
    """`ring1 exec`: the fresh machine in an engine of `mode` (ring1.runtime.engines), run until
    the end of the snippet or its first exception. Tests may pass the `engine` to look at it
    afterwards. Under `bare` the snippet runs on unicorn alone (run_unicorn): a run that stops
    at its first event needs no deliverer, and unicorn alone is the reference the differential
    tests compare against, including at CPL 3, which only an IRET can reach on unicorn."""
    from ring1.runtime import engines

    if engine is None:
        if mode == "bare":
            return run_unicorn(spec, max_insns, keep_memory, clock=VirtualClock())
        engine = engines.create(mode, fresh_machine.MEMORY_SIZE, ClockedPlatform())
    m = engine.machine
    interp_machine(spec, m)
    engine.stop_on_event = True
    engine.stop_addresses = {fresh_machine.CODE + len(spec.code)}
    engine.start()
    outcome = engine.run(max_insns)  # Ctrl-C: the guest state is the virtual CPU's as last captured
    vector = err = cr2 = None
    diagnosis = None
    if isinstance(outcome.event, Fault):
        vector, err = outcome.event.vector, outcome.event.error_code
        cr2 = m.state.cr[2] if vector == 14 else None
    elif isinstance(outcome.event, Trap):
        vector = outcome.event.vector
    if isinstance(outcome.vmstop, VMStop):
        diagnosis = f"{outcome.vmstop.reason}; {m.describe_state()}"
    stop = {"stop-address": "end", "event": "exception"}.get(outcome.reason, outcome.reason)
    memory = bytes(m.mem.view) if keep_memory else None
    return SnippetResult(state_of(m), vector, err, cr2, stop, m.state.icount, diagnosis, memory)


def run_interp(
    spec: fresh_machine.FreshSpec, max_insns: int = DEFAULT_MAX_INSNS, keep_memory: bool = False
) -> SnippetResult:
    return run_snippet(spec, "interp", max_insns, keep_memory)


# ---------------------------------------------------------------- the same snippet on unicorn

_ENTER_RING3 = 0x7E00  # a ring-0 stub (below HANDLER) that IRETs into the snippet at CPL 3


def _ring3_stub(esp: int, eflags: int) -> bytes:
    """Six instructions at ring 0 that IRET into the snippet at CPL 3 with its ESP and EFLAGS."""
    from ring1.runtime.isa.assembler import assemble

    return assemble(
        f"""
        push {fresh_machine.SEL_DATA3:#x}   # SS
        push {esp:#x}               # ESP
        push {eflags:#x}            # EFLAGS
        push {fresh_machine.SEL_CODE3:#x}   # CS
        push {fresh_machine.CODE:#x}        # EIP
        iretd
        """,
        origin=_ENTER_RING3,
    ).code


def unicorn_machine(spec: fresh_machine.FreshSpec, clock: VirtualClock | None = None):
    """The fresh machine on unicorn: a PhysicalCpu positioned at the snippet's first instruction.
    With a `clock`, the CPU counts what it executes and stops before RDTSC, RDMSR and WRMSR
    (host/counter.py: unicorn cannot hook them), for run_unicorn to emulate them on the clock."""
    from unicorn import x86_const as X

    from ring1.runtime.cpu.memory import PhysicalMemory
    from ring1.runtime.host.physcpu import GPR_IDS, PhysicalCpu

    mem = PhysicalMemory(fresh_machine.MEMORY_SIZE)
    for addr, data in fresh_machine.memory_image(spec):
        mem.write(addr, data)
    platform = Platform() if clock is None else ClockedPlatform(clock)
    cpu = PhysicalCpu(mem, real_mode=spec.real, platform=platform, count_instructions=clock is not None)
    if cpu.counter is not None:
        cpu.counter.stop_before_unhookable(mem.address, mem.size)
    uc = cpu.uc
    regs = spec.initial_regs()
    gdt = fresh_machine.gdt_bytes()
    # The same control state the interpreter starts from (unicorn's reset values differ:
    # its MXCSR starts at 0).
    uc.reg_write(X.UC_X86_REG_CR4, spec.cr4)
    uc.reg_write(X.UC_X86_REG_MXCSR, spec.mxcsr)
    for i, v in enumerate(spec.xmm):
        uc.reg_write(X.UC_X86_REG_XMM0 + i, v)
    write_x87_of(uc, spec)
    if spec.real:
        uc.reg_write(X.UC_X86_REG_CR0, fresh_machine.CR0_ET | spec.cr0_bits)  # ET: hard-wired on a Pentium-class CPU
        uc.reg_write(X.UC_X86_REG_IDTR, (0, fresh_machine.IVT, 0x3FF, 0))
        uc.reg_write(X.UC_X86_REG_GDTR, (0, 0, 0xFFFF, 0))
    if not spec.real:
        uc.reg_write(X.UC_X86_REG_GDTR, (0, fresh_machine.GDT, len(gdt) - 1, 0))
        uc.reg_write(X.UC_X86_REG_IDTR, (0, fresh_machine.IDT, 256 * 8 - 1, 0))
        uc.reg_write(X.UC_X86_REG_CR0, fresh_machine.CR0_ET | fresh_machine.CR0_PE | spec.cr0_bits)
        uc.reg_write(
            X.UC_X86_REG_TR, (fresh_machine.SEL_TSS, fresh_machine.TSS, 0x67, 0x8B << 8)
        )  # flags as QEMU keeps them
        uc.reg_write(X.UC_X86_REG_CS, fresh_machine.SEL_CODE0)
        uc.reg_write(X.UC_X86_REG_SS, fresh_machine.SEL_DATA0)
        for rid in (X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_FS, X.UC_X86_REG_GS):
            uc.reg_write(rid, fresh_machine.SEL_DATA0)
        sels = fresh_machine.selectors(spec)
        for rid, name in (
            (X.UC_X86_REG_DS, "ds"),
            (X.UC_X86_REG_ES, "es"),
            (X.UC_X86_REG_FS, "fs"),
            (X.UC_X86_REG_GS, "gs"),
        ):
            uc.reg_write(rid, sels[name])
        if spec.cpl == 3:
            stub = _ring3_stub(regs["esp"], regs["eflags"])
            mem.write(_ENTER_RING3, stub)
            uc.reg_write(X.UC_X86_REG_ESP, fresh_machine.STACK0_TOP)
            uc.reg_write(X.UC_X86_REG_EFLAGS, 0x2)
            cpu.run(_ENTER_RING3, fresh_machine.CODE, count=6)
            if cpu.counter is not None:
                # The stub is the harness's, not the snippet's: its instructions go to a clock
                # nobody reads, so the snippet's time starts at 0 as in the other modes.
                cpu.counter.account(VirtualClock(), fresh_machine.CODE)
    else:
        sels = fresh_machine.selectors(spec)
        for rid, name in (
            (X.UC_X86_REG_CS, "cs"),
            (X.UC_X86_REG_SS, "ss"),
            (X.UC_X86_REG_DS, "ds"),
            (X.UC_X86_REG_ES, "es"),
            (X.UC_X86_REG_FS, "fs"),
            (X.UC_X86_REG_GS, "gs"),
        ):
            uc.reg_write(rid, sels[name])
    for rid, name in zip(GPR_IDS, fresh_machine.GPR_NAMES, strict=True):
        uc.reg_write(rid, regs[name])
    if spec.cpl == 0 or spec.real:
        uc.reg_write(X.UC_X86_REG_EFLAGS, regs["eflags"])
    return cpu


def write_x87_of(uc, spec: fresh_machine.FreshSpec) -> None:
    """A FreshSpec's x87 state into unicorn."""
    from ring1.runtime.cpu.state import CpuState
    from ring1.runtime.host.context import write_x87

    S = CpuState()
    S.fpr[:] = spec.fpr
    S.fcw, S.fsw, S.ftw = spec.fcw, spec.fsw, spec.ftw
    write_x87(uc, S)


def unicorn_simd(uc) -> dict[str, int]:
    """Unicorn's SSE and x87 state by fresh_machine.SIMD_KEYS."""
    from unicorn import x86_const as X

    from ring1.runtime.cpu.state import CpuState
    from ring1.runtime.host.context import read_x87

    out = {name: uc.reg_read(X.UC_X86_REG_XMM0 + i) for i, name in enumerate(fresh_machine.XMM_NAMES)}
    out["mxcsr"] = uc.reg_read(X.UC_X86_REG_MXCSR)
    S = CpuState()
    read_x87(uc, S)
    out.update(zip(fresh_machine.FPR_NAMES, S.fpr, strict=True))
    out.update(fcw=S.fcw, fsw=S.fsw, ftw=S.ftw)
    return out


def run_unicorn(
    spec: fresh_machine.FreshSpec,
    max_insns: int = DEFAULT_MAX_INSNS,
    keep_memory: bool = False,
    clock: VirtualClock | None = None,
) -> SnippetResult:
    """The snippet on unicorn alone: the differential tests' reference. With a `clock` (`ring1
    exec --mode bare`), the instructions unicorn cannot hook (RDTSC, RDMSR, WRMSR) are run by
    the interpreter on that clock, as the `bare` engine of `ring1 run` runs them, and
    everything else by unicorn."""
    from ring1.runtime.host.physcpu import UcError

    cpu = unicorn_machine(spec, clock)
    end = fresh_machine.CODE + len(spec.code)
    diagnosis = None
    interrupted = False
    try:
        if max_insns == 0:  # count=0 means "no limit" to unicorn; a budget of zero runs nothing
            from unicorn import x86_const as X

            cpu.uc.reg_write(X.UC_X86_REG_EIP, fresh_machine.CODE)  # where emu_start would have begun
            ev = None
        elif clock is None:
            ev = cpu.run(fresh_machine.CODE, end, count=max_insns)
        else:
            ev = _run_on_clock(cpu, clock, fresh_machine.CODE, end, max_insns)
    except UcError as err:
        ev = None
        diagnosis = f"unicorn stopped: {err}"
    except VMStop as vmstop:  # the interpreter, running an instruction unicorn cannot hook
        ev = None
        diagnosis = vmstop.reason
    except KeyboardInterrupt:
        ev, interrupted = None, True
    values = cpu.read_state()
    names = (*fresh_machine.GPR_NAMES, "eip", "eflags", *fresh_machine.SEG_NAMES)
    regs = dict(zip(names, values, strict=True))
    if interrupted:
        stop = "interrupted"
    elif diagnosis:
        stop = "vmstop"
    elif ev is not None:
        stop = "exception"
    elif regs["eip"] == end:
        stop = "end"
    else:
        stop = "limit"
    memory = bytes(cpu.memory.view) if keep_memory else None
    return SnippetResult(regs, ev.vector if ev else None, None, ev.cr2 if ev else None, stop, 0, diagnosis, memory)


def _run_on_clock(cpu, clock: VirtualClock, begin: int, end: int, max_insns: int):
    """Run the counting CPU from linear `begin` to `end` (or an event, or `max_insns`). Where it
    stops before an instruction it cannot hook, the interpreter runs that one instruction on
    the clock (a fault it raises is the run's event, reported at the instruction as unicorn
    reports one) and unicorn goes on. The clock gets every instruction either ran; returns the
    event that ended the run, if any."""
    from ring1.runtime.engines.bare import PAGING_IDS
    from ring1.runtime.host.context import read_into_machine, write_from_machine
    from ring1.runtime.host.physcpu import CpuEvent

    uc, counter = cpu.uc, cpu.counter
    interp = Machine(cpu.memory, cpu.platform)
    S = interp.state
    executed = 0
    while True:
        counter.start()
        counter.set_paging(*uc.reg_read_batch(PAGING_IDS))
        counter.bind(clock)
        try:
            ev = cpu.run(begin, end, count=max_insns - executed)
        finally:
            read_into_machine(uc, interp, fpu=True)  # (the CS base, for the linear EIP; the x87 state for the report)
            executed += counter.account(clock, (S.base[CS] + S.eip) & 0xFFFFFFFF)
        if ev is not None or not counter.stopped_before_unhookable or executed >= max_insns:
            return ev
        r = interp.step()  # which advances the clock by the instruction it runs
        if r.vmstop is not None:
            raise r.vmstop
        if r.event is not None:
            return CpuEvent(r.event.vector, S.eip, S.cr[2] if r.event.vector == 14 else None)
        executed += 1
        cpu.clear_exception_latch()
        write_from_machine(uc, interp, fpu=True)
        begin = (S.base[CS] + S.eip) & 0xFFFFFFFF
        if begin == end or executed >= max_insns:
            return None


# ---------------------------------------------------------------- the same snippet under the VMM


def run_vmm(
    spec: fresh_machine.FreshSpec, mode: str, max_insns: int = DEFAULT_MAX_INSNS, keep_memory: bool = False, vmm=None
) -> SnippetResult:
    """`ring1 exec --mode bt|trap`. Tests may pass a new `vmm` (a Vmm of fresh_machine.MEMORY_SIZE in
    `mode`) to look at it afterwards."""
    from ring1.runtime.vmm import VmmEngine

    engine = VmmEngine.around(vmm) if vmm is not None else None
    return run_snippet(spec, mode, max_insns, keep_memory, engine)
