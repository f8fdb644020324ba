"""The guest's x87 and SSE state under the VMM: the hardware holds it while the guest runs,
and nothing the VMM does between guest runs may change it. Each case ends with the state
`bare` (unicorn alone) ends with."""

from __future__ import annotations

import pytest

from ring1.runtime.tools.fresh_machine import FreshSpec
from ring1.runtime.tools.snippet import run_unicorn, run_vmm

ONE = 0x3FFF8000000000000000  # 1.0 as an x87 extended real

# FLD1, then a world switch (MOV CR0 setting TS, then CLTS: each changes CR0's FPU bits in the
# hardware, which the VMM does by a world switch), then FSTP the value to memory and load it.
# The world switch restored a context saved at start-up, and the guest's FPU state with it
# (found here: EAX read 0 instead of 1.0f).
FLD1_SWITCH_FSTP = "d9 e8 0f 20 c0 0c 08 0f 22 c0 0f 06 d9 1d 00 20 00 00 a1 00 20 00 00"


@pytest.mark.parametrize("mode", ["bt", "trap"])
def test_fpu_state_survives_a_world_switch(mode: str) -> None:
    spec = FreshSpec(code=bytes.fromhex(FLD1_SWITCH_FSTP))
    ours, bare = run_vmm(spec, mode), run_unicorn(spec)
    assert bare.regs["eax"] == 0x3F800000
    assert ours.regs["eax"] == bare.regs["eax"]


@pytest.mark.parametrize("mode", ["bt", "trap"])
def test_the_guest_starts_with_the_virtual_cpus_fpu_and_sse_state(mode: str) -> None:
    # FSTP ST(0) to memory from the register the spec gave, and MOVD from XMM3 (SSE on).
    spec = FreshSpec(
        code=bytes.fromhex("d9 1d 00 20 00 00 8b 1d 00 20 00 00 66 0f 7e d8"),
        fpr=(0,) * 7 + (ONE,),
        fsw=7 << 11,
        ftw=0x80,
        xmm=(0, 0, 0, 0x12345678, 0, 0, 0, 0),
        cr4=0x600,
    )
    ours, bare = run_vmm(spec, mode), run_unicorn(spec)
    assert (bare.regs["ebx"], bare.regs["eax"]) == (0x3F800000, 0x12345678)
    assert (ours.regs["ebx"], ours.regs["eax"]) == (bare.regs["ebx"], bare.regs["eax"])
