"""The host's own SSE unit: a real CPU's answer for one SIMD floating-point instruction.

Unicorn (QEMU 5's TCG) never sets MXCSR's exception flags, never faults on an unmasked
SIMD exception and ignores MXCSR.FZ (tests/diff/test_deviations_sse.py proves each), so
where it differs from ring1 on those points, tests/diff/deviations.py asks the processor the
tests run on: the same instruction, re-encoded on registers (xmm0 or mm0 destination, xmm1,
mm1 or ECX source, EAX for a general-register result), is executed by the host CPU with the case's
MXCSR control bits and every exception masked, and its destination, EAX, EFLAGS and MXCSR are
read back. A deviation accepts ring1's outcome only when it is exactly the processor's.

The instruction runs in a page mapped executable in this process (ctypes): x86-64 hosts only
(`available()`); elsewhere the deviations that need it explain nothing.
"""

from __future__ import annotations

import ctypes
import mmap
import platform
from dataclasses import dataclass
from functools import lru_cache

# stmxcsr [rdi+4] (this process's own MXCSR, put back at the end: QEMU's softfloat uses the
# host's floating point for some operations, so a rounding mode left behind would change
# unicorn's results); ldmxcsr [rdi]; movups xmm0, [rsi]; movups xmm1, [rsi+16];
# mov eax, [rsi+32]; mov ecx, eax
# movq mm1, [rsi+16] (the source of CVTPI2PS and CVTPI2PD)
_PROLOGUE = bytes.fromhex("0fae5f04 0fae17 0f1006 0f104e10 8b4620 89c1 0f6f4e10")
# movups [rsi], xmm0; mov [rsi+32], eax; pushfq; pop rax; mov [rsi+36], eax; movq [rsi+40],
# mm0 (CVTPS2PI's destination); emms (the x87 registers empty again); stmxcsr [rdi];
# ldmxcsr [rdi+4]; ret
_EPILOGUE = bytes.fromhex("0f1106 894620 9c 58 894624 0f7f4628 0f77 0fae1f 0fae5704 c3")
MASK_ALL = 0x1F80
FLAGS = 0x3F


@dataclass(frozen=True)
class HostResult:
    xmm0: int  # the destination register (xmm0)
    eax: int  # a general-register result (CVTSS2SI and friends)
    eflags: int  # ZF PF CF for COMISS and friends
    mm0: int  # an MMX destination (CVTPS2PI and friends)
    mxcsr: int  # the exception flags the instruction raised, with the control bits it ran under


def available() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


class _Runner:
    def __init__(self) -> None:
        self.page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        address = ctypes.addressof(ctypes.c_char.from_buffer(self.page))
        self.call = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)(address)

    def run(self, insn: bytes, dst: int, src: int, gpr: int, mxcsr: int) -> HostResult:
        self.page.seek(0)
        self.page.write(_PROLOGUE + insn + _EPILOGUE)
        control = (ctypes.c_uint32 * 2)(mxcsr, 0)
        data = (ctypes.c_ubyte * 48)(*(dst.to_bytes(16, "little") + src.to_bytes(16, "little")))
        data[32:36] = list((gpr & 0xFFFFFFFF).to_bytes(4, "little"))
        self.call(ctypes.addressof(control), ctypes.addressof(data))
        raw = bytes(data)
        return HostResult(
            int.from_bytes(raw[0:16], "little"),
            int.from_bytes(raw[32:36], "little"),
            int.from_bytes(raw[36:40], "little"),
            int.from_bytes(raw[40:48], "little"),
            control[0],
        )


@lru_cache(maxsize=1)
def _runner() -> _Runner:
    return _Runner()


def run_masked(opcode: bytes, imm: bytes, dst: int, src: int, gpr: int, mxcsr: int) -> HostResult:
    """Run `opcode` (mandatory prefix, 0F, opcode byte) with ModRM C1 (xmm0, mm0 or EAX the
    destination, xmm1, mm1 or ECX the source) and `imm` on the host, under `mxcsr`'s DAZ, RC and FZ
    with every exception masked and no flag set before."""
    control = (mxcsr & ~FLAGS | MASK_ALL) & 0xFFFF
    return _runner().run(opcode + b"\xc1" + imm, dst, src, gpr, control)
