"""Every byte the VMM emits comes from the spec (spec/vmm.r1's templates, assembled by GNU as at
generation time), and every choice of rule from the spec's rules and `choose` clauses: the
VMM's package holds no opcode byte and tests no mnemonic. (Issue: the rooms, one encoder.)"""

from __future__ import annotations

import ast
from pathlib import Path

from ring1.generated.forms import FORMS

VMM_PACKAGE = Path(__file__).resolve().parents[2] / "runtime" / "vmm"
# x86 mnemonics, less the two that are also ring1's words for other things: the `bt` mode and
# the `test` flag action of the spec.
MNEMONICS = ({m.replace("{cc}", "") for f in FORMS.values() for m in f.mnemonics.values() if m} | {"jcc", "loop"}) - {
    "bt",
    "test",
}


def _sources() -> list[Path]:
    files = sorted(VMM_PACKAGE.rglob("*.py"))
    assert files, f"no VMM package at {VMM_PACKAGE}"
    return files


def _offences(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, bytes) and node.value:
            found.append((node.lineno, f"bytes literal {node.value!r}"))
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "fromhex":
                found.append((node.lineno, "bytes.fromhex"))
            literal = node.args and isinstance(node.args[0], (ast.List, ast.Tuple, ast.Set))
            if isinstance(func, ast.Name) and func.id in ("bytes", "bytearray") and literal:
                found.append((node.lineno, f"{func.id} of literal bytes"))
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                names = [side] if isinstance(side, ast.Constant) else getattr(side, "elts", [])
                for c in names:
                    if isinstance(c, ast.Constant) and isinstance(c.value, str) and c.value in MNEMONICS:
                        found.append((node.lineno, f"mnemonic test {c.value!r}"))
    return found


def test_the_vmm_writes_no_opcode_byte_and_tests_no_mnemonic() -> None:
    offences = [
        f"{path.relative_to(VMM_PACKAGE.parents[1])}:{line}: {what}"
        for path in _sources()
        for line, what in _offences(ast.parse(path.read_text(), str(path)))
    ]
    assert offences == []


def test_the_check_finds_what_it_looks_for() -> None:
    bad = 'code += b"\\xe9" + bytes([0x0F, 0x80])\nif kind == "jmp": pass\nx = bytes.fromhex("58")\n'
    kinds = sorted(what.split(" ")[0] for _, what in _offences(ast.parse(bad)))
    assert kinds == ["bytes", "bytes", "bytes.fromhex", "mnemonic"], kinds
