"""The identity ring1's virtual CPU reports through CPUID.

A Pentium-class processor with what the generated interpreter implements and no more:
TSC, MSRs, CMPXCHG8B, SYSENTER/SYSEXIT, CMOV, PSE and PGE pages, debugging extensions.
The FPU, MMX and SSE bits stay clear until the spec gives those instructions semantics
(`ring1 spec coverage` says which lack it), so a guest that checks CPUID does not use them.
"""

from __future__ import annotations

VENDOR = b"GenuineIntel"
FAMILY, MODEL, STEPPING = 6, 1, 9  # a Pentium Pro-class part: family 6, the first P6 model

FEATURES_EDX = {
    "de": 2,
    "pse": 3,
    "tsc": 4,
    "msr": 5,
    "cx8": 8,
    "sep": 11,
    "pge": 13,
    "cmov": 15,
}
BRAND = b"ring1 virtual CPU (spec-driven IA-32)"


def _features() -> int:
    return sum(1 << bit for bit in FEATURES_EDX.values())


def _words(text: bytes) -> tuple[int, ...]:
    text = text.ljust(48, b"\0")
    return tuple(int.from_bytes(text[i : i + 4], "little") for i in range(0, 48, 4))


def cpuid(leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
    """EAX, EBX, ECX, EDX for a leaf."""
    if leaf == 0:
        v = VENDOR
        return (
            1,
            int.from_bytes(v[0:4], "little"),
            int.from_bytes(v[8:12], "little"),
            int.from_bytes(v[4:8], "little"),
        )
    if leaf == 1:
        return ((FAMILY << 8) | (MODEL << 4) | STEPPING, 0, 0, _features())
    if leaf == 0x80000000:
        return (0x80000004, 0, 0, 0)
    if 0x80000002 <= leaf <= 0x80000004:
        w = _words(BRAND)
        i = (leaf - 0x80000002) * 4
        return w[i], w[i + 1], w[i + 2], w[i + 3]
    if leaf > 0x80000004 or 1 < leaf < 0x80000000:
        # Intel returns the highest basic leaf's data for leaves past the maximum.
        return cpuid(1, subleaf)
    return (0, 0, 0, 0)
