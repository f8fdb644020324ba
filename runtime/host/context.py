"""Moving CPU state between unicorn and the generated interpreter.

The interpreter (ring1.runtime.cpu.machine.Machine) and unicorn share guest memory (the same
PhysicalMemory buffer), so handing a guest from one to the other is a matter of registers.
Unicorn's register API is slow from Python (a `reg_read_batch` of ten registers costs about
50 us) and does not expose the hidden part of segment registers, so state is read from
unicorn's saved context instead: one `context_save` (about 2 us), then plain `struct`
reads at offsets found once per process by `calibrate()` (never hard-coded: a unicorn
release that moves a field fails calibration loudly instead of reading garbage).

Writing state back goes through `reg_write`, which makes unicorn load segment registers
from the descriptor tables with its own checks (the only way to keep its internal
flags consistent), and is meant for a stopped CPU, not for use inside a hook. The SSE state
(XMM0-XMM7, MXCSR) moves both ways too: unicorn derives its SSE rounding and DAZ/FZ modes
from MXCSR on `reg_write`.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass
from functools import cache, lru_cache

from unicorn import UC_ARCH_X86, UC_MODE_32, Uc
from unicorn import x86_const as X

from ring1.runtime.host.physcpu import GPR_IDS, SEG_IDS

_Q = struct.Struct("<Q")
_QQ = struct.Struct("<QQ")
_I = struct.Struct("<I")


@dataclass(frozen=True)
class ContextLayout:
    """Where unicorn's saved x86 context keeps each field (QEMU's CPUX86State)."""

    regs: int  # 8-byte general registers EAX..EDI
    eip: int
    segs: int  # six segment caches (ES CS SS DS FS GS): selector u32, base u64, limit u32, flags u32
    seg_stride: int
    gdt: int  # a segment cache whose base and limit are GDTR
    idt: int
    ldt: int
    tr: int
    cr: int  # 8-byte CR0..CR4
    xmm: int  # XMM0, 16 bytes (little-endian) at the start of each register's slot
    xmm_stride: int
    mxcsr: int  # u32
    # The x87, MMX and SSE state, one span from the x87 top-of-stack index to the end of XMM7
    # (QEMU keeps it together: fpstt fpus fpuc fptags fpregs ... fp_status ... mxcsr xmm_regs),
    # which a context_restore of a context saved earlier would roll back.
    fpu_start: int
    fpu_end: int


def _raw(uc: Uc) -> bytes:
    ctx = uc.context_save()
    return ctypes.string_at(ctx.context, ctx.size)


def _xmm_probe(i: int) -> int:
    """A distinctive 128-bit value for XMM register i."""
    return int.from_bytes(bytes([0xA0 + i]) * 8 + bytes([0x5B, 0xC3 + i]) * 4, "little")


def _only(raw: bytes, value: int, width: int, what: str, below: int = 2048) -> int:
    needle = value.to_bytes(width, "little")
    hits = []
    i = raw.find(needle)
    while 0 <= i < below:
        hits.append(i)
        i = raw.find(needle, i + 1)
    if len(hits) != 1:
        raise RuntimeError(f"cannot locate {what} in unicorn's saved context ({len(hits)} candidates)")
    return hits[0]


@cache
def calibrate() -> ContextLayout:
    """Find the fields by writing distinctive values through the API and looking for them."""
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x10000)
    gdt = (
        bytes(8)
        + struct.pack("<HHBBBB", 0xFFFF, 0, 0, 0x9B, 0xCF, 0)
        + struct.pack("<HHBBBB", 0x1234, 0x5678, 0x9A, 0x93, 0x40, 0)
    )
    uc.mem_write(0x800, gdt)
    uc.reg_write(X.UC_X86_REG_GDTR, (0, 0x800, len(gdt) - 1, 0))
    uc.reg_write(X.UC_X86_REG_IDTR, (0, 0x7A5B3000, 0x2F7, 0))
    uc.reg_write(X.UC_X86_REG_CR0, 0x11)
    uc.reg_write(X.UC_X86_REG_CR3, 0x6B5A4000)
    uc.reg_write(X.UC_X86_REG_CS, 0x08)
    uc.reg_write(X.UC_X86_REG_DS, 0x10)
    for i, rid in enumerate(GPR_IDS):
        uc.reg_write(rid, 0x5A5A0000 + i * 0x1111)
    uc.reg_write(X.UC_X86_REG_EIP, 0x3C3C7E7E)
    for i in range(8):
        uc.reg_write(X.UC_X86_REG_XMM0 + i, _xmm_probe(i))
    uc.reg_write(X.UC_X86_REG_MXCSR, 0x1F80)
    uc.reg_write(X.UC_X86_REG_FPCW, 0x037F)
    uc.reg_write(X.UC_X86_REG_FPSW, 5 << 11)
    before_mxcsr = _raw(uc)
    uc.reg_write(X.UC_X86_REG_MXCSR, 0x7FBF)
    uc.reg_write(X.UC_X86_REG_FPCW, 0x0C7A)
    raw = _raw(uc)
    regs = _only(raw, 0x5A5A0000, 4, "EAX")
    if _only(raw, 0x5A5A0000 + 7 * 0x1111, 4, "EDI") != regs + 7 * 8:
        raise RuntimeError("unicorn's general registers are not 8 bytes apart in its saved context")
    eip = _only(raw, 0x3C3C7E7E, 4, "EIP")
    ds_base = _only(raw, 0x9A5678, 8, "the DS base")
    seg_stride = 24
    segs = ds_base - 8 - 3 * seg_stride
    if _I.unpack_from(raw, segs + 3 * seg_stride)[0] != 0x10 or _I.unpack_from(raw, segs + seg_stride)[0] != 0x08:
        raise RuntimeError("unicorn's segment caches are not where calibration expects them")
    idt = _only(raw, 0x7A5B3000, 8, "IDTR's base") - 8
    cr3 = _only(raw, 0x6B5A4000, 8, "CR3")
    gdt_off = idt - seg_stride
    if _Q.unpack_from(raw, gdt_off + 8)[0] != 0x800:
        raise RuntimeError("unicorn's GDTR is not where calibration expects it")
    xmm = _only(raw, _xmm_probe(0), 16, "XMM0", below=len(raw))
    xmm_stride = _only(raw, _xmm_probe(1), 16, "XMM1", below=len(raw)) - xmm
    if _only(raw, _xmm_probe(7), 16, "XMM7", below=len(raw)) != xmm + 7 * xmm_stride:
        raise RuntimeError("unicorn's XMM registers are not evenly spaced in its saved context")
    mxcsr = [
        off
        for off in range(0, len(raw) - 3, 4)
        if _I.unpack_from(before_mxcsr, off)[0] == 0x1F80 and _I.unpack_from(raw, off)[0] == 0x7FBF
    ]
    if len(mxcsr) != 1:
        raise RuntimeError(f"cannot locate MXCSR in unicorn's saved context ({len(mxcsr)} candidates)")
    fpuc = [
        off
        for off in range(0, len(raw) - 1, 2)
        if before_mxcsr[off : off + 2] == b"\x7f\x03" and raw[off : off + 2] == b"\x7a\x0c"
    ]
    if len(fpuc) != 1:
        raise RuntimeError(f"cannot locate the x87 control word in unicorn's saved context ({len(fpuc)} candidates)")
    fpu_start = fpuc[0] - 6  # fpstt (u32), fpus (u16), fpuc (u16)
    if _I.unpack_from(raw, fpu_start)[0] != 5 or not fpu_start < mxcsr[0] < xmm:
        raise RuntimeError("unicorn's x87 state is not where calibration expects it")
    return ContextLayout(
        regs=regs,
        eip=eip,
        segs=segs,
        seg_stride=seg_stride,
        gdt=gdt_off,
        idt=idt,
        ldt=segs + 6 * seg_stride,
        tr=segs + 7 * seg_stride,
        cr=cr3 - 3 * 8,
        xmm=xmm,
        xmm_stride=xmm_stride,
        mxcsr=mxcsr[0],
        fpu_start=fpu_start,
        fpu_end=xmm + 7 * xmm_stride + 16,
    )


def _seg(raw: bytes, off: int) -> tuple[int, int, int, int]:
    sel = _I.unpack_from(raw, off)[0] & 0xFFFF
    base = _Q.unpack_from(raw, off + 8)[0] & 0xFFFFFFFF
    limit = _I.unpack_from(raw, off + 16)[0]
    attr = (_I.unpack_from(raw, off + 20)[0] >> 8) & 0xFFFF
    return sel, base, limit, attr


def segment_caches(raw) -> list[tuple[int, int, int, int]]:
    """The six segment registers (ES CS SS DS FS GS) with their hidden parts, as (selector,
    base, limit, attr), from the bytes of a saved context."""
    L = calibrate()
    return [_seg(raw, L.segs + s * L.seg_stride) for s in range(6)]


def gprs_and_eip(raw) -> tuple[list[int], int]:
    """EAX..EDI and EIP from the bytes of a saved context (PhysicalCpu.save_context, which costs
    less than a context_save, and clear_exception_latch, which saves one anyway)."""
    L = calibrate()
    gprs = [_Q.unpack_from(raw, L.regs + 8 * i)[0] & 0xFFFFFFFF for i in range(8)]
    return gprs, _Q.unpack_from(raw, L.eip)[0] & 0xFFFFFFFF


def read_into_machine(uc: Uc, m, fpu: bool = False) -> None:
    """Give the interpreter Machine `m` the CPU state unicorn holds now (memory is shared). The
    x87 state comes too with `fpu` (a handoff of the whole CPU): it costs about twenty register
    reads, which delivering an event or emulating RDTSC does not need."""
    L = calibrate()
    raw = _raw(uc)
    S = m.state
    for i in range(8):
        m.regs[i] = _Q.unpack_from(raw, L.regs + 8 * i)[0] & 0xFFFFFFFF
    for n in (0, 2, 3, 4):
        S.cr[n] = _Q.unpack_from(raw, L.cr + 8 * n)[0] & 0xFFFFFFFF
    S.cr[0] |= 0x10
    _, S.gdtr_base, S.gdtr_limit, _ = _seg(raw, L.gdt)
    _, S.idtr_base, S.idtr_limit, _ = _seg(raw, L.idt)
    S.ldtr, S.ldtr_base, S.ldtr_limit, S.ldtr_attr = _seg(raw, L.ldt)
    S.tr, S.tr_base, S.tr_limit, S.tr_attr = _seg(raw, L.tr)
    if S.tr & ~3:
        # A loaded TR's TSS is busy (LTR marks it so). QEMU's LTR fills TR's cache before it
        # sets the busy bit in the descriptor, so unicorn's cache still says "available", and
        # the spec's `tss_stack` would read it as a 16-bit TSS (tests/test_v86_int.py).
        S.tr_attr |= 0x2
    # EFLAGS through the API: unicorn keeps the arithmetic flags lazily in its context.
    m.set_eflags(uc.reg_read(X.UC_X86_REG_EFLAGS))
    for s in range(6):
        sel, base, limit, attr = _seg(raw, L.segs + s * L.seg_stride)
        S.sel[s], S.base[s], S.limit[s], S.attr[s] = sel, base, limit, attr
        if s == 1:
            S.code32 = attr >> 14 & 1
        elif s == 2:
            S.stack32 = attr >> 14 & 1
    S.eip = _Q.unpack_from(raw, L.eip)[0] & 0xFFFFFFFF
    for i in range(8):
        lo, hi = _QQ.unpack_from(raw, L.xmm + i * L.xmm_stride)
        S.xmm[i] = hi << 64 | lo
    S.mxcsr = _I.unpack_from(raw, L.mxcsr)[0]
    if fpu:
        read_x87(uc, S)
    m.update_mode()
    for s in range(6):
        m.recompute_segment(s)
    # Unicorn may have changed page tables and code behind the interpreter's caches.
    m.flush_tlb()
    m.flush_blocks()


_FPU_WORDS = (
    ("fcw", X.UC_X86_REG_FPCW),
    ("fip", X.UC_X86_REG_FIP),
    ("fcs", X.UC_X86_REG_FCS),
    ("fdp", X.UC_X86_REG_FDP),
    ("fds", X.UC_X86_REG_FDS),
    ("fop", X.UC_X86_REG_FOP),
)


def read_fpu(uc: Uc, S) -> None:
    """The x87 and SSE state unicorn holds into CpuState `S` (through the register API, which
    works inside a hook too: unicorn's x87 and SSE instructions keep their state in memory, not
    in translated code's host registers)."""
    read_x87(uc, S)
    for i in range(8):
        S.xmm[i] = uc.reg_read(X.UC_X86_REG_XMM0 + i)
    S.mxcsr = uc.reg_read(X.UC_X86_REG_MXCSR)


def read_x87(uc: Uc, S) -> None:
    """The x87 state (and so the MMX registers) unicorn holds into CpuState `S`. Unicorn keeps
    no FOP (deviation x87-fop: it stores 0)."""
    S.fsw = uc.reg_read(X.UC_X86_REG_FPSW)
    for name, rid in _FPU_WORDS:
        setattr(S, name, uc.reg_read(rid))
    tags = uc.reg_read(X.UC_X86_REG_FPTAG)
    S.ftw = sum(1 << i for i in range(8) if tags >> 2 * i & 3 != 3)
    for i in range(8):
        significand, exponent = uc.reg_read(X.UC_X86_REG_FP0 + i)
        S.fpr[i] = (exponent & 0xFFFF) << 64 | significand


def write_fpu(uc: Uc, S) -> None:
    """CpuState `S`'s x87 and SSE state into unicorn (a stopped CPU or a hook). Unicorn keeps one
    bit per register (empty or not) and derives the other tags from the contents, as FXRSTOR
    does."""
    write_x87(uc, S)
    write_sse(uc, S)


def write_sse(uc: Uc, S) -> None:
    """CpuState `S`'s XMM registers and MXCSR into unicorn (which derives its SSE rounding and
    DAZ/FZ modes from MXCSR on the write)."""
    for i, v in enumerate(S.xmm):
        uc.reg_write(X.UC_X86_REG_XMM0 + i, v)
    uc.reg_write(X.UC_X86_REG_MXCSR, S.mxcsr)


def write_x87(uc: Uc, S) -> None:
    """CpuState `S`'s x87 state into unicorn."""
    uc.reg_write(X.UC_X86_REG_FPSW, S.fsw)
    for name, rid in _FPU_WORDS:
        uc.reg_write(rid, getattr(S, name))
    uc.reg_write(X.UC_X86_REG_FPTAG, sum(3 << 2 * i for i in range(8) if not S.ftw >> i & 1))
    for i, v in enumerate(S.fpr):
        uc.reg_write(X.UC_X86_REG_FP0 + i, (v & (1 << 64) - 1, v >> 64 & 0xFFFF))


def write_from_machine(
    uc: Uc,
    m,
    segments: bool = True,
    sse: bool = True,
    hardware: tuple[int, int] | None = None,
    fpu: bool = False,
) -> None:
    """Give unicorn the interpreter's registers (a stopped CPU). Segment registers are reloaded
    by selector, from the descriptor tables, as the CPU does at CPL 0. A caller that changed
    no SSE state since read_into_machine (delivering an event changes none) passes `sse=False`,
    and one that knows the EFLAGS and SS selector unicorn holds now passes them as `hardware`:
    each reg_read or reg_write costs microseconds. The x87 state goes too with `fpu`, for a
    machine that read it (read_into_machine with `fpu`)."""
    S = m.state
    for rid, v in zip(GPR_IDS, m.regs, strict=True):
        uc.reg_write(rid, v)
    uc.reg_write(X.UC_X86_REG_CR2, S.cr[2])
    eflags = m.eflags()
    if segments:
        # Unicorn checks each selector load against its current CPL (as MOV to Sreg does), and
        # loads v86-style while its EFLAGS.VM is set: an event that took the guest from v86
        # mode or from CPL 3 to ring 0 needs VM cleared and the CPL lowered first.
        hw_eflags, hw_ss = hardware if hardware is not None else (uc.reg_read(X.UC_X86_REG_EFLAGS), None)
        was_v86 = bool(hw_eflags & EFLAGS_VM)
        uc.reg_write(X.UC_X86_REG_EFLAGS, eflags)
        protected = S.cr[0] & 1 and not eflags & EFLAGS_VM
        if protected and not was_v86 and hw_ss is None:
            hw_ss = uc.reg_read(X.UC_X86_REG_SS)
        if protected and (was_v86 or hw_ss & 3 > S.sel[2] & 3):
            _lower_cpl_to_0(uc)
        for s, rid in enumerate(SEG_IDS):
            if s != 1:
                uc.reg_write(rid, S.sel[s])
        uc.reg_write(X.UC_X86_REG_CS, S.sel[1])
    uc.reg_write(X.UC_X86_REG_EFLAGS, eflags)
    uc.reg_write(X.UC_X86_REG_EIP, S.eip)
    if sse:
        write_sse(uc, S)
    if fpu:
        write_x87(uc, S)


EFLAGS_VM = 0x20000


def _lower_cpl_to_0(uc: Uc) -> None:
    """QEMU takes the CPL from the DPL of the last SS loaded; with PE clear for a moment, SS
    loads real-mode style with DPL 0. The caller then reloads every segment register."""
    cr0 = uc.reg_read(X.UC_X86_REG_CR0)
    uc.reg_write(X.UC_X86_REG_CR0, cr0 & ~1)
    uc.reg_write(X.UC_X86_REG_SS, 0)
    uc.reg_write(X.UC_X86_REG_CR0, cr0)


def soft_interrupt_before(m, vector: int):
    """Unicorn reports INT n and faults alike (a vector, no error code). A software interrupt
    leaves EIP after an INT instruction whose vector is the one reported: return that Trap,
    or None when the event is a fault at EIP."""
    from ring1.runtime.cpu.events import Fault, Trap

    S = m.state
    page_base = None  # the physical page of the last byte translated without a fault
    for length in (2, 1):
        start = (S.eip - length) & 0xFFFFFFFF
        la = (S.base[1] + start) & 0xFFFFFFFF
        if page_base is not None and la & 0xFFF:
            pa = page_base | (la & 0xFFF)  # the same page: translating again gives the same
        else:
            try:
                pa = m.translate(la, False, S.cpl == 3)
            except Fault:
                continue
            page_base = pa & ~0xFFF
        soft = soft_interrupt_in(m.mem.read(pa, length), bool(S.code32))
        if soft is not None and soft[0] == vector:
            return Trap(vector, soft[1], start)
    return None


@lru_cache(maxsize=1024)
def soft_interrupt_in(raw: bytes, code32: bool) -> tuple[int, int, bool] | None:
    """When `raw` is exactly one software-interrupt instruction (a form the spec marks with
    `soft_interrupt`: INT n, INT3, INTO, ICEBP): (its vector, its event kind, whether the vector
    is an operand, as INT n's); else None. Cached: the engines ask at every event that unicorn
    reports, mostly about the same few instructions, and decoding costs more than the rest."""
    from ring1.generated.forms import FORMS
    from ring1.runtime.isa.decoder import Truncated, decode

    try:
        d = decode(raw, 0, code32)
    except Truncated:
        return None
    soft = FORMS[d.form].soft_interrupt if d.form is not None and d.length == len(raw) else None
    if soft is None:
        return None
    vector, kind = soft
    if isinstance(vector, str):
        return d.fields[vector], kind, True
    return vector, kind, False


__all__ = [
    "ContextLayout",
    "calibrate",
    "gprs_and_eip",
    "read_into_machine",
    "soft_interrupt_before",
    "soft_interrupt_in",
    "write_from_machine",
]
