"""Physical addresses where nothing answers (past RAM, between devices) read as all ones and
ignore writes, in every mode, as on a PC. Unicorn alone (the `bare` engine) stopped on them:
Debian's Linux reads there with paging off (its early C code's stack-protector canary, at a
virtual address) and went no further under bare."""

from __future__ import annotations

import pytest

from ring1.runtime import engines
from ring1.runtime.tools import fresh_machine as fm
from ring1.runtime.tools.fresh_machine import FreshSpec
from ring1.runtime.tools.snippet import ClockedPlatform, run_snippet

# mov dword [0x20000000], 0x12345678 ; mov eax, [0x20000000] ; mov bl, [0xFEB00000]
CODE = bytes.fromhex("c7 05 00 00 00 20 78 56 34 12 a1 00 00 00 20 8a 1d 00 00 b0 fe")


@pytest.mark.parametrize("mode", ["bare", "interp", "bt"])
def test_nothing_at_a_physical_address_reads_all_ones(mode: str) -> None:
    engine = engines.create(mode, fm.MEMORY_SIZE, ClockedPlatform())
    r = run_snippet(FreshSpec(code=CODE), mode, engine=engine)
    assert r.stop == "end", r.diagnosis
    assert (r.regs["eax"], r.regs["ebx"] & 0xFF) == (0xFFFFFFFF, 0xFF)
