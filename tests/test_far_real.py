"""A far CALL or JMP in real mode whose target offset lies past the CS limit is #GP(0) at the
instruction itself, after the stack check and with nothing pushed (SDM CALL and JMP, "real-
address or virtual-8086 mode": "IF tempEIP is beyond code segment limit THEN #GP(0)"), in
every mode that runs the spec (real mode runs on the interpreter under bt and trap too).

Unicorn does not check it: it pushes the return address and goes on at the target (QEMU's
helper_lcall_real has no limit check), so `bare` is shown to differ, not compared.
"""

from __future__ import annotations

import struct

import pytest

from ring1.runtime.tools import fresh_machine
from ring1.runtime.tools.snippet import SnippetResult, run_interp, run_unicorn, run_vmm

POINTER_AT = 0x9000  # DS = 0 in the fresh real-mode machine: the m16:32 operand lives here
SPEC_MODES = ("interp", "bt", "trap")


def store_pointer(offset: int, selector: int) -> bytes:
    """mov dword [POINTER_AT], offset; mov word [POINTER_AT + 4], selector."""
    return (
        b"\x66\xc7\x06"
        + struct.pack("<HI", POINTER_AT, offset)
        + b"\xc7\x06"
        + struct.pack("<HH", POINTER_AT + 4, selector)
    )


# name: (code before the far transfer, the far transfer) for a 32-bit target offset and selector 0
FORMS = {
    "CALL_FAR_M": lambda off: (store_pointer(off, 0), b"\x66\xff\x1e" + struct.pack("<H", POINTER_AT)),
    "JMP_FAR_M": lambda off: (store_pointer(off, 0), b"\x66\xff\x2e" + struct.pack("<H", POINTER_AT)),
    "CALL_FAR_PTR": lambda off: (b"", b"\x66\x9a" + struct.pack("<IH", off, 0)),
    "JMP_FAR_PTR": lambda off: (b"", b"\x66\xea" + struct.pack("<IH", off, 0)),
}
SETUP_INSNS = {"CALL_FAR_M": 2, "JMP_FAR_M": 2, "CALL_FAR_PTR": 0, "JMP_FAR_PTR": 0}


def run(mode: str, code: bytes, max_insns: int) -> SnippetResult:
    spec = fresh_machine.FreshSpec(code=code, real=True)
    if mode == "interp":
        return run_interp(spec, max_insns, keep_memory=True)
    if mode == "bare":
        return run_unicorn(spec, max_insns, keep_memory=True)
    return run_vmm(spec, mode, max_insns, keep_memory=True)


def stack_below(result: SnippetResult) -> bytes:
    assert result.memory is not None
    return result.memory[fresh_machine.STACK_TOP - 8 : fresh_machine.STACK_TOP]


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("mode", SPEC_MODES)
def test_target_past_the_cs_limit_is_gp0_at_the_instruction(mode: str, form: str) -> None:
    setup, transfer = FORMS[form](0x12345)  # the real-mode CS limit is 0xFFFF
    r = run(mode, setup + transfer, SETUP_INSNS[form] + 1)
    assert (r.stop, r.exception, r.error_code) == ("exception", 13, 0)
    assert r.regs["eip"] == fresh_machine.CODE + len(setup)  # at the CALL or JMP, not at the target
    assert (r.regs["cs"], r.regs["esp"]) == (0, fresh_machine.STACK_TOP)
    assert stack_below(r) == bytes(8)  # nothing pushed


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("mode", SPEC_MODES)
def test_target_at_the_cs_limit_is_taken(mode: str, form: str) -> None:
    setup, transfer = FORMS[form](0xFFFF)
    r = run(mode, setup + transfer, SETUP_INSNS[form] + 1)
    assert r.stop == "limit" and r.exception is None
    assert r.regs["eip"] == 0xFFFF
    if form.startswith("CALL"):
        assert r.regs["esp"] == fresh_machine.STACK_TOP - 8
        assert stack_below(r) == struct.pack("<II", fresh_machine.CODE + len(setup) + len(transfer), 0)
    else:
        assert r.regs["esp"] == fresh_machine.STACK_TOP


def test_unicorn_pushes_and_goes_on_to_the_target() -> None:
    # Why bare is left out above: the deviation, shown on the CALL through memory.
    setup, transfer = FORMS["CALL_FAR_M"](0x12345)
    r = run("bare", setup + transfer, SETUP_INSNS["CALL_FAR_M"] + 1)
    assert r.exception is None
    assert r.regs["esp"] == fresh_machine.STACK_TOP - 8
    assert r.regs["eip"] == 0x12345
