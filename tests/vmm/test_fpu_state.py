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


# FLD1 at CODE, then the save: translated, the save is a callout (it stores the CPL in FCS's
# RPL and the last instruction's EIP), so the image must hold the guest's FIP, never the TC's.
SAVES = {
    "fxsave": ("0f ae 05 00 00 01 00", 8),  # fxsave [DATA]: FIP at byte 8
    "fnsave": ("dd 35 00 00 01 00", 12),  # fnsave [DATA]: FIP at byte 12 (32-bit protected image)
}


@pytest.mark.parametrize("save", sorted(SAVES))
def test_a_translated_save_stores_the_guests_instruction_pointer(save: str) -> None:
    # (Under `trap` the kernel's FNSAVE runs on the hardware and stores FCS with RPL 1: a
    # stealth instruction, which naive trap-and-emulate cannot catch, by design.)
    from ring1.runtime.tools import fresh_machine as fm

    code, fip_at = SAVES[save]
    spec = FreshSpec(code=bytes.fromhex("d9 e8 " + code), cr4=0x600)
    ours, bare = run_vmm(spec, "bt", keep_memory=True), run_unicorn(spec, keep_memory=True)
    assert ours.memory is not None and bare.memory is not None
    image = slice(fm.DATA, fm.DATA + 108)
    fip = int.from_bytes(bare.memory[fm.DATA + fip_at : fm.DATA + fip_at + 4], "little")
    assert fip == fm.CODE  # the FLD1
    if save == "fnsave":  # (FXSAVE's FOP bytes: unicorn leaves them, deviation fxsave-fop)
        assert ours.memory[image] == bare.memory[image]
    assert ours.memory[fm.DATA + fip_at : fm.DATA + fip_at + 4] == bare.memory[fm.DATA + fip_at : fm.DATA + fip_at + 4]
