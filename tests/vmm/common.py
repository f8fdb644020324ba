"""Running one fresh-machine snippet under `bare`, `bt`, `trap` (and the interpreter), and
comparing what the guest can see.

`bare` is `ring1 exec --mode bare` (runtime.snippet.run_unicorn): the guest on unicorn at its
own CPL 0, no VMM. `bt` and `trap` are `ring1 exec --mode bt|trap` (runtime.snippet.run_vmm).
Every run stops at the end of the code or at the first exception, which is then reported
(not delivered), so the vector and the state at the faulting instruction are compared.
"""

from __future__ import annotations

import struct

from ring1.runtime.tools import fresh_machine
from ring1.runtime.tools.snippet import SnippetResult, run_interp, run_unicorn, run_vmm
from ring1.runtime.vmm import Vmm

REG_KEYS = fresh_machine.REG_KEYS  # 8 GPRs, eip, eflags (all 32 bits), 6 selectors


def run(spec: fresh_machine.FreshSpec, mode: str, vmm: Vmm | None = None, max_insns: int = 100_000) -> SnippetResult:
    """One run with guest memory kept. Never lets an exception out of ring1 itself pass as a
    result: a Python traceback from the VMM fails the test that asked."""
    if mode == "bare":
        return run_unicorn(spec, max_insns, keep_memory=True)
    if mode == "interp":
        return run_interp(spec, max_insns, keep_memory=True)
    return run_vmm(spec, mode, max_insns, keep_memory=True, vmm=vmm)


def new_vmm(mode: str = "bt") -> Vmm:
    return Vmm(fresh_machine.MEMORY_SIZE, mode=mode)


def _ranges(a: bytes, b: bytes, limit: int = 6) -> list[str]:
    out: list[str] = []
    i, n = 0, min(len(a), len(b))
    while i < n and len(out) < limit:
        if a[i] != b[i]:
            j = i
            while j < n and a[j] != b[j]:
                j += 1
            out.append(f"{i:#x}..{j:#x}: {a[i:j][:16].hex()} vs {b[i:j][:16].hex()}")
            i = j
        else:
            i += 1
    return out


def differences(a: SnippetResult, b: SnippetResult, memory: bool = True) -> list[str]:
    """Every guest-visible difference between two runs: how they stopped, the exception vector
    (and CR2 for a page fault), every register with all of EFLAGS (IF, IOPL, AC, ID ... too),
    and every byte of guest memory (nothing is excluded: the snippet machine has no scratch
    area a mode uses differently; the VMM keeps its own data in its 4 MB area, not in guest RAM)."""
    out: list[str] = []
    for r in (a, b):
        if r.stop == "vmstop":
            out.append(f"stopped by the engine: {r.diagnosis}")
    if a.stop != b.stop:
        out.append(f"stop: {a.stop} vs {b.stop}")
    if a.exception != b.exception:
        out.append(f"exception: {a.exception} vs {b.exception}")
    elif a.exception == 14 and a.cr2 is not None and b.cr2 is not None and a.cr2 != b.cr2:
        out.append(f"cr2: {a.cr2:#x} vs {b.cr2:#x}")
    for k in REG_KEYS:
        if a.regs[k] != b.regs[k]:
            out.append(f"{k}: {a.regs[k]:#x} vs {b.regs[k]:#x}")
    if memory and a.memory is not None and b.memory is not None and a.memory != b.memory:
        out += ["memory " + r for r in _ranges(a.memory, b.memory)]
    return out


def assert_clean(r: SnippetResult) -> None:
    """A VM stop is an answer, not a crash: it must say why."""
    if r.stop == "vmstop":
        assert r.diagnosis, "a VM stop without a diagnosis"


# ---------------------------------------------------------------- a guest with paging

# A guest that turns paging on in its first instructions: identity-maps guest RAM (2 MB) and
# maps the top 4 MB of the linear address space, where the VMM lives, onto four pages of its
# own RAM (VPAGE..VPAGE+0x3FFF, repeated), filled with a known pattern. On `bare` those
# addresses are simply the guest's memory, which makes them comparable.
PD, PT0, PTV, VPAGE = 0x20000, 0x21000, 0x22000, 0x30000
VMM_LINEAR = 0xFFC00000


def vpage_pattern() -> bytes:
    return bytes((i * 7 + 1) & 0xFF for i in range(0x4000))


def paging_memory(extra: dict[int, int] | None = None) -> dict[int, bytes]:
    """Page tables (PD at PD); `extra` maps linear page addresses in the top 4 MB to guest
    physical pages of their own (e.g. code placed where the VMM's TC is)."""
    pd, pt0, ptv = bytearray(4096), bytearray(4096), bytearray(4096)
    struct.pack_into("<I", pd, 0, PT0 | 7)
    struct.pack_into("<I", pd, 1023 * 4, PTV | 7)
    for i in range(fresh_machine.MEMORY_SIZE >> 12):
        struct.pack_into("<I", pt0, i * 4, (i << 12) | 3)
    for i in range(1024):
        struct.pack_into("<I", ptv, i * 4, (VPAGE + ((i % 4) << 12)) | 3)
    for la, pa in (extra or {}).items():
        struct.pack_into("<I", ptv, ((la >> 12) & 0x3FF) * 4, pa | 3)
    return {PD: bytes(pd), PT0: bytes(pt0), PTV: bytes(ptv), VPAGE: vpage_pattern()}


# mov eax, PD; mov cr3, eax; mov eax, cr0; or eax, 0x80000000; mov cr0, eax
ENABLE_PAGING = (
    b"\xb8" + struct.pack("<I", PD) + b"\x0f\x22\xd8" + b"\x0f\x20\xc0" + b"\x0d\x00\x00\x00\x80" + b"\x0f\x22\xc0"
)


def paged(
    code: bytes,
    regs: dict[str, int] | None = None,
    extra: dict[int, int] | None = None,
    memory: dict[int, bytes] | None = None,
) -> fresh_machine.FreshSpec:
    """The fresh machine running ENABLE_PAGING and then `code`."""
    mem = paging_memory(extra)
    mem.update(memory or {})
    return fresh_machine.FreshSpec(code=ENABLE_PAGING + code, regs=dict(regs or {}), memory=mem)


# ---------------------------------------------------------------- runs that deliver exceptions


def run_delivering(
    spec: fresh_machine.FreshSpec, mode: str, vmm: Vmm | None = None, max_insns: int = 100_000, engine=None
) -> SnippetResult:
    """Like `run`, but exceptions and interrupts are delivered through the guest's IDT (by the
    spec's `deliver`, in every mode: `bare`, `bt`, `trap`, `interp`) instead of ending the run:
    it ends at the end of the code (stop "end"), at a HLT (fresh_machine.HANDLER is one), at the
    budget or at a VM stop. Tests may pass a new `vmm` (or `engine`, of `mode`) to look at it
    afterwards."""
    from ring1.runtime import engines
    from ring1.runtime.tools.snippet import interp_machine, state_of
    from ring1.runtime.vmm import VmmEngine

    if engine is None:
        engine = VmmEngine.around(vmm) if vmm is not None else engines.create(mode, fresh_machine.MEMORY_SIZE)
    m = engine.machine
    interp_machine(spec, m)
    engine.stop_on_event = False
    engine.stop_addresses = {fresh_machine.CODE + len(spec.code)}
    engine.start()
    outcome = engine.run(max_insns)
    diagnosis = f"{outcome.vmstop.reason}; {m.describe_state()}" if outcome.vmstop is not None else None
    stop = "end" if outcome.reason == "stop-address" else outcome.reason
    return SnippetResult(state_of(m), None, None, None, stop, m.state.icount, diagnosis, bytes(m.mem.view))


def iret_to_user(label: str = "user", eflags: int = 0x2) -> str:
    """Assembly for the fresh machine's kernel: IRET to `label` at CPL 3 with the user selectors,
    the fresh stack and `eflags`."""
    return f"""
        push {fresh_machine.SEL_DATA3}
        push {fresh_machine.STACK_TOP}
        push {eflags:#x}
        push {fresh_machine.SEL_CODE3}
        push offset {label}
        iretd
    """
