"""The fresh machine every `ring1 exec` mode and every differential test starts from.

Flat 32-bit protected mode (or real mode) with the guest's own GDT, IDT and TSS, a
writable stack of 16 KB at ESP, IOPL 0, and the code at CODE. CR4 is 0 and CR0 has only PE
and ET unless the spec asks for more (CR4.OSFXSR enables SSE; CR0.EM and TS make it fault);
the XMM registers are zero and MXCSR has its reset value unless the spec gives them. The same layout is built
into the interpreter and into unicorn, so two runs can be compared field by field.

Physical layout (below 1 MB, so real mode reaches all of it with CS = 0):

  0x00000  IVT                    0x00800  IDT (256 gates to HANDLER)
  0x00500  GDT                    0x01000  TSS (I/O bitmap past its limit: no I/O at CPL > IOPL)
  0x02000  ring-0 stack for CPL 3 runs (ESP0 = 0x3000)
  0x03000  stack (ESP = 0x7000)   0x07F00  HANDLER: hlt
  0x08000  CODE                   0x10000  DATA window (64 KB) for memory operands
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ring1.runtime.cpu import descriptors

IVT, GDT, IDT, TSS = 0x0, 0x500, 0x800, 0x1000
STACK0_TOP = 0x3000
STACK_TOP = 0x7000
HANDLER = 0x7F00
CODE = 0x8000
DATA = 0x10000
DATA_SIZE = 0x10000
MEMORY_SIZE = 2 << 20

SEL_CODE0, SEL_DATA0, SEL_CODE3, SEL_DATA3, SEL_TSS, SEL_CODE16, SEL_DATA16 = 0x08, 0x10, 0x1B, 0x23, 0x28, 0x30, 0x38
SEL_WINDOW0, SEL_WINDOW3 = 0x40, 0x4B  # data segments over the DATA window (base DATA, 64 KB)
REAL_WINDOW = DATA >> 4  # the real-mode segment of the DATA window
GPR_NAMES = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
SEG_NAMES = ("es", "cs", "ss", "ds", "fs", "gs")
REG_KEYS = (*GPR_NAMES, "eip", "eflags", *SEG_NAMES)
XMM_NAMES = tuple(f"xmm{i}" for i in range(8))
FPR_NAMES = tuple(f"fpr{i}" for i in range(8))  # x87 physical registers R0-R7 (80 bits; MMX in the low 64)
X87_KEYS = (*FPR_NAMES, "fcw", "fsw", "ftw")  # ftw: abridged, bit i set when R(i) is not empty
SIMD_KEYS = (*XMM_NAMES, "mxcsr", *X87_KEYS)
MXCSR_RESET = 0x1F80
FCW_INIT = 0x037F  # the x87 control word after FNINIT, which a fresh machine starts from
CR0_PE, CR0_MP, CR0_EM, CR0_TS, CR0_ET, CR0_NE = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20
CR0_AM = 0x40000
CR4_OSFXSR, CR4_OSXMMEXCPT = 0x200, 0x400


def gdt_bytes() -> bytes:
    return b"".join(
        [
            bytes(8),
            descriptors.segment(0, 0xFFFFF, 0x9B, 0xC),  # 0x08 ring-0 code, 32-bit, 4 GB
            descriptors.segment(0, 0xFFFFF, 0x93, 0xC),  # 0x10 ring-0 data
            descriptors.segment(0, 0xFFFFF, 0xFB, 0xC),  # 0x18 ring-3 code
            descriptors.segment(0, 0xFFFFF, 0xF3, 0xC),  # 0x20 ring-3 data
            descriptors.segment(TSS, 0x67, 0x8B, 0x0),  # 0x28 32-bit TSS, busy: TR holds it
            descriptors.segment(0, 0xFFFF, 0x9B, 0x0),  # 0x30 ring-0 code, 16-bit
            descriptors.segment(0, 0xFFFF, 0x93, 0x0),  # 0x38 ring-0 data, 16-bit
            descriptors.segment(DATA, DATA_SIZE - 1, 0x93, 0x4),  # 0x40 ring-0 data over the DATA window
            descriptors.segment(DATA, DATA_SIZE - 1, 0xF3, 0x4),  # 0x48 ring-3 data over the DATA window
        ]
    )


def idt_bytes() -> bytes:
    gates = []
    for vec in range(256):
        dpl = 3 if vec in (3, 4, 0x80) else 0
        # Trap gates for exceptions, interrupt gates above.
        kind = descriptors.GATE_TRAP32 if vec < 32 else descriptors.GATE_INTERRUPT32
        gates.append(descriptors.gate(HANDLER, SEL_CODE0, kind, dpl))
    return b"".join(gates)


def tss_bytes() -> bytes:
    t = bytearray(0x68)
    struct.pack_into("<I", t, 4, STACK0_TOP)  # ESP0
    struct.pack_into("<I", t, 8, SEL_DATA0)  # SS0
    struct.pack_into("<H", t, 102, 0x68)  # I/O map base at the limit: every port denied past IOPL
    return bytes(t)


def ivt_bytes() -> bytes:
    return b"".join(struct.pack("<HH", HANDLER & 0xF, HANDLER >> 4) for _ in range(256))


@dataclass
class FreshSpec:
    """What a test or `ring1 exec` asks for."""

    code: bytes
    regs: dict[str, int] = field(default_factory=dict)  # any of REG_KEYS but eip and the selectors
    cpl: int = 0
    real: bool = False
    memory: dict[int, bytes] = field(default_factory=dict)  # extra bytes at physical addresses
    segs: dict[str, int] = field(default_factory=dict)  # selectors to use instead of the defaults
    xmm: tuple[int, ...] = (0,) * 8  # XMM0-XMM7
    mxcsr: int = MXCSR_RESET
    fpr: tuple[int, ...] = (0,) * 8  # x87 R0-R7, 80-bit patterns
    fcw: int = FCW_INIT
    fsw: int = 0  # with TOP in bits 13:11
    ftw: int = 0  # abridged tag word: every register empty, as after FNINIT
    cr0_bits: int = 0  # CR0 bits besides PE and ET: MP, EM, TS, NE, AM
    cr4: int = 0  # OSFXSR and OSXMMEXCPT for SSE code

    def simd(self) -> dict[str, int]:
        """The SSE and x87 state the machine starts with, by SIMD_KEYS."""
        return {
            **dict(zip(XMM_NAMES, self.xmm, strict=True)),
            "mxcsr": self.mxcsr,
            **dict(zip(FPR_NAMES, self.fpr, strict=True)),
            "fcw": self.fcw,
            "fsw": self.fsw,
            "ftw": self.ftw,
        }

    def initial_regs(self) -> dict[str, int]:
        regs = {name: 0 for name in GPR_NAMES}
        regs["esp"] = STACK_TOP
        regs["eflags"] = 0x2
        regs.update({k: v for k, v in self.regs.items()})
        regs["eflags"] = (regs["eflags"] & 0x3F7FD5 & ~0x20000) | 0x2  # no VM; bit 1 reads as one
        return regs


def memory_image(spec: FreshSpec) -> list[tuple[int, bytes]]:
    """The (address, bytes) writes that make the fresh machine's memory."""
    writes = [(GDT, gdt_bytes()), (IDT, idt_bytes()), (TSS, tss_bytes()), (HANDLER, b"\xf4")]
    if spec.real:
        writes.append((IVT, ivt_bytes()))
    writes.append((CODE, spec.code))
    writes.extend(sorted(spec.memory.items()))
    return writes


def selectors(spec: FreshSpec) -> dict[str, int]:
    if spec.real:
        sels = dict.fromkeys(SEG_NAMES, 0)
    elif spec.cpl == 3:
        sels = {"cs": SEL_CODE3, "ss": SEL_DATA3, "ds": SEL_DATA3, "es": SEL_DATA3, "fs": SEL_DATA3, "gs": SEL_DATA3}
    else:
        sels = {"cs": SEL_CODE0, "ss": SEL_DATA0, "ds": SEL_DATA0, "es": SEL_DATA0, "fs": SEL_DATA0, "gs": SEL_DATA0}
    sels.update({k: v for k, v in spec.segs.items() if k not in ("cs", "ss")})
    return sels
