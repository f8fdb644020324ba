"""The few instruction encodings the translator writes itself.

Everything else it emits is either a copy of the guest's own bytes (IDENT) or a template
the spec assembled with GNU as (generated/rules.py). These are the shapes whose operands are
only known at translation time: branches to continuation stubs, stores of an immediate
into the vcpu page, pushes of a guest return address, and loads of a guest operand.
"""

from __future__ import annotations

import struct

GS = 0x65


def rel32(at: int, size: int, target: int) -> bytes:
    return struct.pack("<i", (target - (at + size) + 0x80000000) % 0x100000000 - 0x80000000)


def jmp(at: int, target: int) -> bytes:
    """jmp rel32 at address `at`."""
    return b"\xe9" + rel32(at, 5, target)


def jcc(at: int, cc: int, target: int) -> bytes:
    """j<cc> rel32 (0F 80+cc)."""
    return bytes([0x0F, 0x80 | cc]) + rel32(at, 6, target)


def mov_gs_imm32(offset: int, value: int) -> bytes:
    """mov dword [gs:offset], imm32."""
    return bytes([GS, 0xC7, 0x05]) + struct.pack("<II", offset & 0xFFFFFFFF, value & 0xFFFFFFFF)


def mov_gs_from_eax(offset: int) -> bytes:
    """mov [gs:offset], eax."""
    return bytes([GS, 0xA3]) + struct.pack("<I", offset)


def push_imm32(value: int) -> bytes:
    return b"\x68" + struct.pack("<I", value & 0xFFFFFFFF)


def lea_esp_plus(n: int) -> bytes:
    """lea esp, [esp + n]: moves ESP without touching the flags."""
    return b"\x8d\xa4\x24" + struct.pack("<i", n)


JMP_SIZE = 5
