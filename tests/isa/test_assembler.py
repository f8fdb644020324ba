"""The one encoder: GNU as through ring1.runtime.isa.assembler."""

from __future__ import annotations

import pytest

from ring1.runtime.isa.assembler import AssemblerError, Relocation, assemble


def test_linked_at_an_origin_with_its_labels() -> None:
    out = assemble("start:\n  mov eax, offset data\n  jmp start\ndata:\n  .long 7", origin=0x10_0000)
    assert out.labels == {"start": 0x100000, "data": 0x100007}
    assert out.code == bytes.fromhex("b8 07 00 10 00 eb f9 07 00 00 00")


def test_relocatable_code_leaves_its_external_references() -> None:
    out = assemble("jne target\npush offset value\nlea esp, [esp + value]", origin=None, external={"target", "value"})
    assert out.code[:2] == bytes.fromhex("0f 85") and out.code[6] == 0x68
    assert out.relocations == {
        2: Relocation("rel32", "target", -4),
        7: Relocation("abs32", "value", 0),
        14: Relocation("abs32", "value", 0),
    }


def test_real_mode_code() -> None:
    assert assemble(".code16\nmov ax, 0x1234\nint 0x10").code == bytes.fromhex("b8 34 12 cd 10")


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("nop\nmovv eax, 1\n", 2, "movv"),
        ("nop\nnop\njmp nowhere  # a comment naming nowhere\n", 3, "'nowhere' is not defined"),
        ("mov eax, ebx, ecx\n", 1, "as:"),
    ],
)
def test_errors_name_the_line_of_the_callers_text(text: str, line: int, message: str) -> None:
    with pytest.raises(AssemblerError) as info:
        assemble(text)
    assert info.value.line == line and message in info.value.message
    assert "/tmp" not in str(info.value)
