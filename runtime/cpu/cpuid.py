"""The identity ring1's virtual CPU reports through CPUID.

A P6-family processor of the Pentium M class (family 6, model 9) with what the spec
describes and no more: the x87 FPU, MMX, FXSAVE/FXRSTOR, SSE and SSE2, TSC, MSRs, CMPXCHG8B,
SYSENTER/SYSEXIT, CMOV, PSE and PGE pages, debugging extensions (and the local APIC while
the platform's is enabled: Machine.b_cpuid_leaf). CR4's implemented bits follow these
(spec/system.r1 cr4_implemented: OSFXSR with FXSR, OSXMMEXCPT with SSE). Not advertised, so
not modelled: VME, PAE, MCE/MCA, MTRR, PAT, CLFLUSH's line size, PSE-36.
"""

from __future__ import annotations

VENDOR = b"GenuineIntel"
FAMILY, MODEL, STEPPING = 6, 9, 5  # a Pentium M-class part (Banias: P6 family, SSE2, no PAE)

FEATURES_EDX = {
    "fpu": 0,
    "de": 2,
    "pse": 3,
    "tsc": 4,
    "msr": 5,
    "cx8": 8,
    "sep": 11,
    "pge": 13,
    "cmov": 15,
    "mmx": 23,
    "fxsr": 24,
    "sse": 25,
    "sse2": 26,
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
