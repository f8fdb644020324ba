"""The spec covers the IA-32 general-purpose and system instructions, all with semantics, and
declares Robin & Irvine's stealth instructions as sensitive yet never trapping."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ring1.codegen.coverage import coverage

# The list, in capstone's spelling (conditions: every one of the sixteen).
CC = ("o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g")
GENERAL_AND_SYSTEM = (
    (
        "mov xchg bswap xadd cmpxchg cmpxchg8b push pop pushal pushaw popal popaw movsx movzx cbw cwde cwd cdq "
        "add adc sub sbb cmp inc dec neg mul imul div idiv aaa aas aam aad daa das and or xor not "
        "shl sal shr sar rol ror rcl rcr shld shrd bt bts btr btc bsf bsr test "
        "jmp call ret retf ljmp lcall loop loope loopne jcxz jecxz int int3 into iret iretd enter leave bound "
        "movsb movsw movsd cmpsb cmpsw cmpsd scasb scasw scasd lodsb lodsw lodsd stosb stosw stosd "
        "insb insw insd outsb outsw outsd in out pushf pushfd popf popfd cli sti lahf sahf clc stc cmc cld std "
        "lds les lfs lgs lss lea nop pause salc ud2 xlatb cpuid "
        "lgdt sgdt lidt sidt lldt sldt ltr str lmsw smsw clts arpl lar lsl verr verw invd wbinvd invlpg hlt "
        "rdmsr wrmsr rdtsc rdpmc sysenter sysexit"
    ).split()
    + [f"j{c}" for c in CC]
    + [f"set{c}" for c in CC]
    + [f"cmov{c}" for c in CC]
)

# Robin & Irvine (USENIX Security 2000): the sensitive instructions that never trap at CPL > 0,
# by the forms that are them.
STEALTH = {
    "sgdt": "SGDT",
    "sidt": "SIDT",
    "sldt": "SLDT",
    "smsw": "SMSW",
    "str": "STR",
    "pushf": "PUSHF",
    "popf": "POPF",
    "lar": "LAR",
    "lsl": "LSL",
    "verr": "VERR",
    "verw": "VERW",
    "push": "PUSH_CS",
    "pop": "POP_DS",
    "mov": "MOV_RMw_Sreg",
    "lcall": "CALL_FAR_PTR",
    "ljmp": "JMP_FAR_PTR",
    "retf": "RET_FAR",
    "int": "INT_Ib",
    "iret": "IRET",
}
RECORDS = {r["mnemonic"]: r for r in coverage()}


@pytest.mark.parametrize("mnemonic", GENERAL_AND_SYSTEM)
def test_every_general_and_system_instruction_has_semantics(mnemonic: str) -> None:
    record = RECORDS.get(mnemonic)
    assert record is not None, f"{mnemonic} is not in the spec"
    assert record["semantics"], f"{mnemonic}: some of {record['form_names']} have no semantics"


@pytest.mark.parametrize("mnemonic", sorted(STEALTH))
def test_stealth_instructions_are_sensitive_and_never_trap(mnemonic: str) -> None:
    record = RECORDS[mnemonic]
    assert record["sensitive"]
    assert STEALTH[mnemonic] in record["stealth_forms"]


def test_privileged_instructions_are_not_stealth() -> None:
    for mnemonic in ("lgdt", "lidt", "lldt", "ltr", "lmsw", "clts", "hlt", "invlpg", "wrmsr", "rdmsr"):
        record = RECORDS[mnemonic]
        assert record["sensitive"] and not record["stealth"], mnemonic
        assert "cpl == 0" in record["privilege"], mnemonic


def test_coverage_json_records_have_the_documented_keys() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ring1.runtime.cli", "spec", "coverage", "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    records = json.loads(out)["instructions"]
    assert len(records) > 400
    for r in records:
        assert {"mnemonic", "forms", "semantics", "sensitive", "privilege", "translate", "source"} <= set(r)
        assert r["mnemonic"] == r["mnemonic"].lower()
        assert r["source"].startswith("spec/") and ":" in r["source"]
