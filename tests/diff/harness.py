"""Run one case on unicorn and on the generated interpreter, and compare.

A case is a FreshSpec (code, registers, memory, mode) plus the forms its code uses. Both
machines start from the same guest-visible state (ring1.runtime.tools.fresh_machine); the comparison
covers the general registers, EIP, EFLAGS (masking only the flags the spec declares left
undefined by the instructions that completed, tests/undefined_flags.py), the selectors,
XMM0-XMM7 and MXCSR, all of memory but the harness's own scratch areas, and the exception
raised (vector; CR2 for page faults). Unicorn's error codes are not visible, so error codes
are compared by the interpreter's own tests instead.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

from unicorn import x86_const as X

from ring1.runtime.host.physcpu import GPR_IDS, SEG_IDS, UcError
from ring1.runtime.tools import fresh_machine
from ring1.runtime.tools.snippet import SnippetResult, run_interp, unicorn_machine, unicorn_simd, write_x87_of

from ..undefined_flags import FLAG_BITS, counts_in_ecx, executed_prefix, flag_mask, follow, hook_ecx, straight_line

# Memory the two runs use differently on purpose: unicorn's ring-3 entry stub and its stack.
SCRATCH = ((0x2000, 0x3000), (0x7E00, 0x7F00))


@dataclass(repr=False)
class Case:
    spec: fresh_machine.FreshSpec
    forms: list[str]
    note: str = ""
    max_insns: int = 4096  # a guard against runaway code (unicorn counts each REP iteration)
    extra_undefined: int = 0  # flags a deviation says to ignore (see deviations.py), with its reason
    ignore: set[str] = field(default_factory=set)

    def _repr_pretty_(self, p, cycle) -> None:  # hypothesis prints falsifying examples with this
        p.text(repr(self))

    def __repr__(self) -> str:
        regs = ", ".join(f"{k}={v:#x}" for k, v in self.spec.initial_regs().items())
        mode = "real" if self.spec.real else f"cpl{self.spec.cpl}"
        stack = self.spec.memory.get(fresh_machine.STACK_TOP, b"")[:24].hex()
        simd = ""
        if self.spec.simd() != fresh_machine.FreshSpec(b"").simd() or self.spec.cr0_bits or self.spec.cr4:
            simd = " " + ", ".join(f"{k}={v:#x}" for k, v in self.spec.simd().items())
            simd += f", cr0_bits={self.spec.cr0_bits:#x}, cr4={self.spec.cr4:#x}"
        code = self.spec.code.hex(" ")
        return f"Case({' '.join(self.forms)} [{mode}] code={code} {regs}{simd} stack={stack} {self.note})"


class Reference:
    """Unicorn with the fresh machine, reset from a snapshot for every case."""

    def __init__(self, cpl: int, real: bool) -> None:
        base = fresh_machine.FreshSpec(code=b"", cpl=cpl, real=real, segs=window_segments(cpl, real))
        self.cpu = unicorn_machine(base)
        self.cr0 = self.cpu.uc.reg_read(X.UC_X86_REG_CR0)
        self.ctx = self.cpu.uc.context_save()
        self.snapshot = bytes(self.cpu.memory.view)
        self.cpl, self.real = cpl, real

    def run(self, case: Case) -> SnippetResult:
        cpu, uc, spec = self.cpu, self.cpu.uc, case.spec
        uc.context_restore(self.ctx)
        ctypes.memmove(cpu.memory.address, self.snapshot, len(self.snapshot))
        for addr, data in fresh_machine.memory_image(spec):
            cpu.memory.write(addr, data)
        cpu.forget_code(0, fresh_machine.DATA + fresh_machine.DATA_SIZE)
        regs = spec.initial_regs()
        for rid, name in zip(GPR_IDS, fresh_machine.GPR_NAMES, strict=True):
            uc.reg_write(rid, regs[name])
        uc.reg_write(X.UC_X86_REG_EFLAGS, regs["eflags"])
        sels = fresh_machine.selectors(spec)
        for rid, name in zip(SEG_IDS, fresh_machine.SEG_NAMES, strict=True):
            if name not in ("cs", "ss"):
                uc.reg_write(rid, sels[name])
        # SSE state and the control bits that enable it (the snapshot has the defaults).
        if spec.cr0_bits:
            uc.reg_write(X.UC_X86_REG_CR0, self.cr0 | spec.cr0_bits)
        if spec.cr4:
            uc.reg_write(X.UC_X86_REG_CR4, spec.cr4)
        if spec.mxcsr != fresh_machine.MXCSR_RESET:
            uc.reg_write(X.UC_X86_REG_MXCSR, spec.mxcsr)
        for i, v in enumerate(spec.xmm):
            if v:
                uc.reg_write(X.UC_X86_REG_XMM0 + i, v)
        write_x87_of(uc, spec)
        end = fresh_machine.CODE + len(spec.code)
        diagnosis = None
        try:
            ev = cpu.run(fresh_machine.CODE, end, count=case.max_insns)
        except UcError as err:
            ev, diagnosis = None, f"unicorn: {err}"
        values = cpu.read_state()
        names = (*fresh_machine.GPR_NAMES, "eip", "eflags", *fresh_machine.SEG_NAMES)
        regs_out = dict(zip(names, values, strict=True)) | unicorn_simd(uc)
        stop = "vmstop" if diagnosis else ("exception" if ev else ("end" if regs_out["eip"] == end else "limit"))
        return SnippetResult(regs_out, ev.vector if ev else None, None, ev.cr2 if ev else None, stop, 0, diagnosis)

    def memory(self) -> bytes:
        return bytes(self.cpu.memory.view)


def window_segments(cpl: int, real: bool) -> dict[str, int]:
    """DS, ES, FS and GS over the DATA window, so memory operands of any address size land there."""
    if real:
        return dict.fromkeys(("ds", "es", "fs", "gs"), fresh_machine.REAL_WINDOW)
    sel = fresh_machine.SEL_WINDOW3 if cpl == 3 else fresh_machine.SEL_WINDOW0
    return dict.fromkeys(("ds", "es", "fs", "gs"), sel)


_REFERENCES: dict[tuple[int, bool], Reference] = {}


def reference(cpl: int, real: bool) -> Reference:
    key = (cpl, real)
    if key not in _REFERENCES:
        _REFERENCES[key] = Reference(cpl, real)
    return _REFERENCES[key]


@dataclass
class Outcome:
    ours: SnippetResult
    theirs: SnippetResult
    our_memory: bytes
    their_memory: bytes
    undefined: int  # flags not compared: left undefined by their last writer, or a deviation's
    reads_undefined: str = ""  # the instructions that ran and read an undefined flag, if any


def run_both(case: Case) -> Outcome:
    from ring1.runtime.tools.snippet import interp_machine

    spec = case.spec
    ref = reference(spec.cpl, spec.real)
    insns = straight_line(spec.code, fresh_machine.CODE, not spec.real)
    # ECX as each instruction that counts in it starts (a count of 0 changes no flag).
    ecx: dict[int, int] = {}
    hooks = hook_ecx(ref.cpu.uc, [d.eip for d in insns if counts_in_ecx(d)], ecx.setdefault)
    try:
        theirs = ref.run(case)
    finally:
        for h in hooks:
            ref.cpu.uc.hook_del(h)
    their_memory = ref.memory()
    m = interp_machine(spec)
    ours = run_interp_on(m, spec, case.max_insns)
    # The flags not compared: those the instructions that completed in the spec's run (it
    # stopped at its EIP) left undefined.
    ran = follow(executed_prefix(insns, ours.regs["eip"]), ecx)
    return Outcome(
        ours, theirs, bytes(m.mem.view), their_memory, ran.undefined | case.extra_undefined, ran.describe_reads()
    )


def run_interp_on(m, spec: fresh_machine.FreshSpec, max_insns: int) -> SnippetResult:
    from ring1.runtime.cpu.events import Fault, Trap
    from ring1.runtime.tools.snippet import simd_of, state_of

    m.stop_on_event = True
    m.stop_addresses = {fresh_machine.CODE + len(spec.code)}
    r = m.run(max_insns)
    vector = cr2 = err = None
    if isinstance(r.event, Fault):
        vector, err = r.event.vector, r.event.error_code
        cr2 = m.state.cr[2] if vector == 14 else None
    elif isinstance(r.event, Trap):
        vector = r.event.vector
    stop = {"stop-address": "end", "limit": "limit", "halt": "halt", "event": "exception", "vmstop": "vmstop"}[r.reason]
    diag = r.vmstop.reason if r.vmstop else None
    return SnippetResult(state_of(m) | simd_of(m), vector, err, cr2, stop, m.state.icount, diag)


def differences(o: Outcome) -> list[str]:
    """Every guest-visible difference, as readable lines; empty when the runs agree."""
    out: list[str] = []
    a, b = o.ours, o.theirs
    if a.diagnosis and a.stop == "vmstop":
        out.append(f"interpreter stopped: {a.diagnosis}")
    if b.diagnosis:
        out.append(f"reference stopped: {b.diagnosis}")
    if a.exception != b.exception:
        out.append(f"exception: ours {a.exception}, unicorn {b.exception}")
    elif a.exception == 14 and a.error_code is not None and a.cr2 != b.cr2:  # a page fault, not INT 14
        out.append(f"cr2: ours {a.cr2}, unicorn {b.cr2}")
    for name in (*fresh_machine.GPR_NAMES, "eip", *fresh_machine.SEG_NAMES, *fresh_machine.SIMD_KEYS):
        if a.regs[name] != b.regs[name]:
            out.append(f"{name}: ours {a.regs[name]:#x}, unicorn {b.regs[name]:#x}")
    mask = ~o.undefined & 0x3F7FD7
    if (a.regs["eflags"] & mask) != (b.regs["eflags"] & mask):
        diff = (a.regs["eflags"] ^ b.regs["eflags"]) & mask
        names = [n for n, bit in FLAG_BITS.items() if diff & flag_mask(n)]
        out.append(f"eflags: ours {a.regs['eflags']:#x}, unicorn {b.regs['eflags']:#x} (differ in {' '.join(names)})")
    out.extend(_memory_differences(o.our_memory, o.their_memory))
    return out


def _memory_differences(ours: bytes, theirs: bytes) -> list[str]:
    if ours == theirs:
        return []
    out = []
    start = 0
    for lo, hi in (*SCRATCH, (len(ours), len(ours))):
        if ours[start:lo] != theirs[start:lo]:
            i = next(i for i in range(start, lo) if ours[i] != theirs[i])
            out.append(f"memory at {i:#x}: ours {ours[i : i + 8].hex()}, unicorn {theirs[i : i + 8].hex()}")
        start = hi
    return out


__all__ = [
    "FLAG_BITS",
    "SEG_IDS",
    "Case",
    "Outcome",
    "Reference",
    "differences",
    "flag_mask",
    "reference",
    "run_both",
    "run_interp",
    "window_segments",
]
