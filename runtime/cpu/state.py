"""The architectural state of one virtual CPU, as the generated interpreter sees it.

Field names are the ones the emitted code uses (`S.eip`, `S.sel[1]`, `S.cr[0]` ...).
The status flags are lazy: `S.cc` holds the pending flag computation and `S.eflags`
the rest (see generated/flags.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from ring1.generated.rules import CONSTS

# Segment register numbers and CPU modes, as the spec's prelude declares them.
SEG_NAMES = ("es", "cs", "ss", "ds", "fs", "gs")
ES, CS, SS, DS, FS, GS = (CONSTS[f"SEG_{name.upper()}"] for name in SEG_NAMES)
MODE_REAL, MODE_PROT, MODE_V86 = CONSTS["MODE_REAL"], CONSTS["MODE_PROT"], CONSTS["MODE_V86"]
MODE_NAMES = ("real", "protected", "v86")
assert (MODE_REAL, MODE_PROT, MODE_V86) == (0, 1, 2), "MODE_NAMES is indexed by mode"
NOCC = (0,)


class CpuState:
    __slots__ = (
        "attr",
        "base",
        "cc",
        "code32",
        "cpl",
        "cr",
        "dr",
        "eflags",
        "eip",
        "fcs",
        "fcw",
        "fdp",
        "fds",
        "fip",
        "fop",
        "fpr",
        "fsw",
        "ftw",
        "gdtr_base",
        "gdtr_limit",
        "halted",
        "icount",
        "idtr_base",
        "idtr_limit",
        "irq_shadow",
        "ldtr",
        "ldtr_attr",
        "ldtr_base",
        "ldtr_limit",
        "limit",
        "mode",
        "msr",
        "mxcsr",
        "new_task",
        "sel",
        "smc",
        "stack32",
        "tr",
        "tr_attr",
        "tr_base",
        "tr_limit",
        "tsc",
        "xmm",
    )

    def __init__(self) -> None:
        self.eip = 0
        self.eflags = 0x2
        self.cc: tuple = NOCC
        self.cpl = 0
        self.mode = MODE_REAL
        self.stack32 = 0
        self.code32 = 0
        self.cr = [0x10, 0, 0, 0, 0]  # CR0.ET set, as on a Pentium-class CPU after reset
        self.dr = [0, 0, 0, 0, 0xFFFF0FF0, 0x400, 0xFFFF0FF0, 0x400]
        self.sel = [0, 0, 0, 0, 0, 0]
        self.base = [0, 0, 0, 0, 0, 0]
        self.limit = [0xFFFF] * 6
        self.attr = [0x93, 0x9B, 0x93, 0x93, 0x93, 0x93]
        self.gdtr_base = 0
        self.gdtr_limit = 0xFFFF
        self.idtr_base = 0
        self.idtr_limit = 0x3FF
        self.ldtr = 0
        self.ldtr_base = 0
        self.ldtr_limit = 0xFFFF
        self.ldtr_attr = 0x82
        self.tr = 0
        self.tr_base = 0
        self.tr_limit = 0xFFFF
        self.tr_attr = 0x8B
        self.msr: dict[int, int] = {}
        self.xmm = [0] * 8  # XMM0-XMM7, 128-bit values
        self.mxcsr = 0x1F80  # every SIMD floating-point exception masked
        # The x87 unit (also the MMX registers), as after RESET (SDM Vol. 3, 9.1.1). `fpr` holds
        # the eight 80-bit registers in physical order R0-R7 (ST(i) is R((TOP + i) mod 8), TOP
        # being FSW bits 13:11; MMX register i is the low 64 bits of R(i)). `ftw` is the
        # abridged tag word FXSAVE stores: bit i set when R(i) holds a value (not empty); the
        # full two-bit tags are derived from the contents when FNSTENV and FNSAVE store them.
        self.fpr = [0] * 8
        self.fcw = 0x0040
        self.fsw = 0
        self.ftw = 0xFF
        self.fip = 0  # the last non-control x87 instruction: its offset and CS selector,
        self.fcs = 0
        self.fdp = 0  # its memory operand's offset and segment selector,
        self.fds = 0
        self.fop = 0  # and its opcode's low 11 bits (first byte's low 3 bits, then the ModRM)
        self.tsc = 0
        self.icount = 0  # instructions retired
        self.halted = False
        # STI (setting IF), MOV SS or POP SS just completed: the next instruction runs before
        # any maskable interrupt is taken (the interrupt shadow).
        self.irq_shadow = False
        self.smc = False  # a store hit code of the block now running
        # A task switch passed its commit point (spec/tasks.r1): a fault now is the new task's,
        # at the EIP it loaded, not at the instruction or event that switched.
        self.new_task = False


@dataclass
class SegmentView:
    """A segment register with its hidden part, for reports."""

    selector: int
    base: int
    limit: int
    attr: int
