"""The bare engine's instruction counter stops unicorn before RDTSC (unicorn's own reads the
host's TSC) by looking at the instruction's bytes through the guest's page tables. It read
them through the tables of when the run began, so after the guest turned paging on (or
switched address spaces) within one run it missed RDTSC at a high kernel address: Debian's
Linux under bare printed timestamps of the host's clock ([1266874768.341879])."""

from __future__ import annotations

import pytest

from ring1.runtime import engines
from ring1.runtime.isa.assembler import assemble
from ring1.runtime.tools import fresh_machine as fm
from ring1.runtime.tools.fresh_machine import FreshSpec
from ring1.runtime.tools.snippet import ClockedPlatform, run_snippet

PD = fm.DATA  # a page directory in the data window: 4 MB pages at 0 and at 0xC0000000, both to 0

PAGING_ON_THEN_RDTSC = f"""
    mov dword ptr [{PD:#x}], 0x83
    mov dword ptr [{PD + 0xC00:#x}], 0x83
    mov eax, {PD:#x}
    mov cr3, eax
    mov eax, cr4
    or eax, 0x10
    mov cr4, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
    mov eax, offset high
    add eax, 0xC0000000
    jmp eax
high:
    rdtsc
    mov ebx, offset back
    jmp ebx
back:
"""


@pytest.mark.parametrize("mode", ["bare", "interp"])
def test_rdtsc_after_paging_is_turned_on_reads_the_virtual_clock(mode: str) -> None:
    code = assemble(PAGING_ON_THEN_RDTSC, fm.CODE).code
    engine = engines.create(mode, fm.MEMORY_SIZE, ClockedPlatform())
    r = run_snippet(FreshSpec(code=code), mode, engine=engine)
    assert r.stop == "end", r.diagnosis
    tsc = r.regs["edx"] << 32 | r.regs["eax"]
    assert 0 < tsc < 1_000_000, hex(tsc)  # virtual ns: a few instructions in, never the host's


# rdtsc ; mov esi, eax ; mov ecx, 16 ; loop $ ; rdtsc ; sub eax, esi ; mov ebx, esi
TSC_DELTA = bytes.fromhex("0f 31 89 c6 b9 10 00 00 00 e2 fe 0f 31 29 f0 89 f3")


def test_rdtsc_answered_in_the_counters_hook_reads_what_the_interpreter_reads() -> None:
    """Under the bare engine the counter's C hook answers RDTSC itself (no exit to Python): the
    same virtual TSC, to the instruction, as the interpreter's RDTSC."""
    got = {}
    for mode in ("bare", "interp"):
        engine = engines.create(mode, fm.MEMORY_SIZE, ClockedPlatform())
        r = run_snippet(FreshSpec(code=TSC_DELTA), mode, engine=engine)
        assert r.stop == "end", r.diagnosis
        got[mode] = (r.regs["eax"], r.regs["ebx"])
    assert got["bare"] == got["interp"]
    assert got["bare"][0] == (1 + 1 + 16 + 1) * 10  # MOV, MOV, 16 LOOPs, then the RDTSC: 10 ns each


def test_rdpmc_under_the_bare_engine_is_the_interpreters() -> None:
    """Unicorn raises #UD for RDPMC, reported past the instruction (deviation rdpmc-ud): Debian's
    Linux reads a P6 counter that way at power-off and the bare engine stopped on the
    disagreement. The counter stops before RDPMC, as before RDTSC, for the interpreter to run."""
    code = bytes.fromhex("31 c9 0f 33")  # xor ecx, ecx ; rdpmc
    got = {}
    for mode in ("bare", "interp"):
        engine = engines.create(mode, fm.MEMORY_SIZE, ClockedPlatform())
        r = run_snippet(FreshSpec(code=code, regs={"eax": 0x5A5A, "edx": 0xA5A5}), mode, engine=engine)
        assert (r.stop, r.exception) == ("end", None), r.diagnosis
        got[mode] = (r.regs["eax"], r.regs["edx"], r.regs["eip"])
    assert got["bare"] == got["interp"]
