"""REP STOS and REP MOVS in bulk (spec/string.r1 `bulk`, Machine.b_rep_stos/b_rep_movs): with
a 32-bit address size and DF clear the interpreter makes the iterations that stay within a
page of RAM in one access per page, and leaves the rest to the element-by-element loop. The
results must be the loop's exactly, faults included: every case here is compared with unicorn
(`bare`), registers, flags and all of memory, and the bulk path is checked to have run."""

from __future__ import annotations

import pytest

from ring1.runtime.cpu import machine
from ring1.runtime.isa.assembler import assemble
from ring1.runtime.tools import fresh_machine as fm
from tests.vmm.common import PT0, differences, paged, run

DST, SRC = 0x40000, 0x50000
CASES = {
    "stosd over three pages from an odd offset": (
        f"mov edi, {DST + 0x10:#x}\nmov ecx, 2500\nmov eax, 0x11223344\nrep stosd"
    ),
    "stosb, a count that ends mid-page": f"mov edi, {DST + 0x7ff:#x}\nmov ecx, 0x1234\nmov al, 0x5a\nrep stosb",
    "stosw with an element across a page end": f"mov edi, {DST + 0xfff:#x}\nmov ecx, 3000\nmov ax, 0xbeef\nrep stosw",
    "movsd, source and destination pages out of step": (
        f"mov esi, {SRC + 0x104:#x}\nmov edi, {DST + 0xc08:#x}\nmov ecx, 3000\nrep movsd"
    ),
    "movsb forward into its own source (a repeated pattern)": (
        f"mov esi, {SRC:#x}\nmov edi, {SRC + 3:#x}\nmov ecx, 5000\nrep movsb"
    ),
    "movsd down (DF set): the loop": (
        f"std\nmov esi, {SRC + 0x2000:#x}\nmov edi, {DST + 0x3000:#x}\nmov ecx, 2000\nrep movsd\ncld"
    ),
    "stosd into a page not present: #PF at the element": (
        f"mov edi, {DST + 0x100:#x}\nmov ecx, 5000\nmov eax, 7\nmov dword ptr [{PT0 + ((DST >> 12) + 2) * 4:#x}], 0\n"
        f"invlpg [{DST + 0x2000:#x}]\nrep stosd"
    ),
    "stosd to a segment's limit: #GP at the element": (
        f"mov ax, {fm.SEL_WINDOW0}\nmov es, ax\nmov edi, 0xf000\nmov ecx, 2000\nmov eax, 9\nrep stosd"
    ),
    "movsd from a segment's limit: #GP at the element": (
        f"mov ax, {fm.SEL_WINDOW0}\nmov ds, ax\nmov esi, 0xfff0\nmov edi, {DST:#x}\nmov ecx, 100\nrep movsd"
    ),
}


def _spec(text: str) -> fm.FreshSpec:
    code = assemble(text, origin=fm.CODE + len(paged(b"").code)).code
    source = bytes((i * 37 + 11) & 0xFF for i in range(0x3000))
    return paged(code, memory={SRC: source, DST: bytes(range(256)) * 64})


@pytest.mark.parametrize("name", sorted(CASES))
def test_bulk_string_instructions_are_the_loop(name: str, monkeypatch) -> None:
    spec = _spec(CASES[name])
    bare = run(spec, "bare")
    with monkeypatch.context() as m:  # the loop alone: the builtins do nothing
        m.setattr(machine.Machine, "b_rep_stos", lambda self, bits: None)
        m.setattr(machine.Machine, "b_rep_movs", lambda self, seg, bits: None)
        loop = run(spec, "interp")
    calls = []
    for builtin in ("b_rep_stos", "b_rep_movs"):
        original = getattr(machine.Machine, builtin)

        def spy(self, *args, original=original, builtin=builtin):
            calls.append((builtin, self.regs[1]))
            return original(self, *args)

        monkeypatch.setattr(machine.Machine, builtin, spy)
    bulk = run(spec, "interp")
    assert differences(loop, bulk) == []
    if "segment's limit" not in name:  # (unicorn checks no data segment limit: deviation)
        assert differences(bare, bulk) == []
    if "DF set" not in name:
        assert calls, "the bulk path did not run"
