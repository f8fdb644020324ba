"""#AC, alignment checking (issue 10): at CPL 3 with CR0.AM and EFLAGS.AC set, a data access
to an address that is not a multiple of its size raises #AC(0) (SDM vol. 3, "Interrupt 17").

The interpreter checks every data access while the check is on (Machine._select_tlbs takes
the fast paths away). Unicorn never raises #AC (deviation no-alignment-check, proven in
tests/diff/test_deviations_sys.py), so the VMM runs such user code in the interpreter, not
directly. Off at CPL 0, with AC or AM clear, and for byte accesses and the CPU's own
(supervisor) accesses to descriptor tables."""

from __future__ import annotations

import pytest

from ring1.runtime.isa.assembler import assemble
from ring1.runtime.tools import fresh_machine as fm
from tests.vmm.common import differences, iret_to_user, new_vmm, run, run_delivering

AC, AM = 0x40000, 0x40000
DATA = fm.DATA

USER_ACCESSES = {
    "dword load at +1": (f"mov eax, [{DATA + 1:#x}]", True),
    "word store at +3": (f"mov word ptr [{DATA + 3:#x}], ax", True),
    "qword x87 load at +4": (f"fild qword ptr [{DATA + 4:#x}]", True),
    "push on a misaligned stack": ("mov esp, 0x6ffe\npush eax", True),
    "movsd from a misaligned source": (f"mov esi, {DATA + 2:#x}\nmov edi, {DATA + 0x100:#x}\nmovsd", True),
    "byte load at +1": (f"mov al, [{DATA + 1:#x}]", False),
    "aligned dword and word": (f"mov eax, [{DATA + 4:#x}]\nmov word ptr [{DATA + 2:#x}], ax", False),
    "descriptor load (supervisor access)": (f"mov bx, {fm.SEL_WINDOW3}\nmov fs, bx", False),
}


def user_code(body: str, eflags: int, cr0_am: bool = True) -> fm.FreshSpec:
    """The kernel sets CR0.AM (or not) and IRETs to `body` at CPL 3 with `eflags`."""
    text = ("mov eax, cr0\nor eax, 0x40000\nmov cr0, eax\n" if cr0_am else "") + iret_to_user(eflags=eflags)
    text += f"\nuser:\nmov cx, {fm.SEL_DATA3}\nmov ds, cx\nmov es, cx\n{body}"
    return fm.FreshSpec(code=assemble(text, origin=fm.CODE).code)


@pytest.mark.parametrize("name", sorted(USER_ACCESSES))
def test_a_misaligned_user_access_raises_ac_zero(name: str) -> None:
    body, faults = USER_ACCESSES[name]
    spec = user_code(body, eflags=AC | 0x2)
    vmm = new_vmm("bt")
    interp, bt = run(spec, "interp"), run(spec, "bt", vmm)
    assert differences(interp, bt) == []
    if faults:
        assert (interp.stop, interp.exception, interp.regs["eflags"] & AC) == ("exception", 17, AC)
        assert vmm.stats["direct_alignment_check"] >= 1  # the interpreter ran it, not unicorn
    else:
        assert interp.stop == "end"
    assert run(spec, "bare").exception is None  # unicorn: no #AC (deviation no-alignment-check)


@pytest.mark.parametrize("eflags, cr0_am", [(0x2, True), (AC | 0x2, False)], ids=["AC clear", "AM clear"])
def test_no_check_unless_both_ac_and_am(eflags: int, cr0_am: bool) -> None:
    spec = user_code(USER_ACCESSES["dword load at +1"][0], eflags, cr0_am)
    for mode in ("interp", "bt", "bare"):
        assert run(spec, mode).stop == "end", mode


def test_no_check_at_cpl_0() -> None:
    text = f"mov eax, cr0\nor eax, 0x40000\nmov cr0, eax\npush {AC | 0x2:#x}\npopfd\nmov eax, [{DATA + 1:#x}]"
    spec = fm.FreshSpec(code=assemble(text, origin=fm.CODE).code)
    for mode in ("interp", "bt", "bare"):
        assert run(spec, mode).stop == "end", mode


def test_the_kernel_handles_ac_and_the_access_is_made_again() -> None:
    # The #AC handler (the fresh machine's IDT sends every vector to HANDLER) drops the error
    # code, clears AC in the frame's EFLAGS and returns to the access, which now runs; the
    # user then sets AC again with POPF and is checked again: EBP counts the #ACs.
    handler = assemble(f"add esp, 4\nand dword ptr [esp + 8], {~AC & 0xFFFFFFFF:#x}\ninc ebp\niretd", origin=fm.HANDLER)
    body = f"""
        mov eax, [{DATA + 1:#x}]
        pushfd
        or dword ptr [esp], {AC:#x}
        popfd
        mov ebx, [{DATA + 2:#x}]
        mov ecx, [{DATA + 4:#x}]
    """
    spec = user_code(body, eflags=AC | 0x2)
    spec.memory[fm.HANDLER] = handler.code
    spec.memory[DATA] = bytes(range(16))
    vmm = new_vmm("bt")
    interp, bt = run_delivering(spec, "interp"), run_delivering(spec, "bt", vmm)
    assert interp.stop == "end" and differences(interp, bt) == []
    assert interp.regs["ebp"] == 2 and interp.regs["eax"] == 0x04030201 and interp.regs["ebx"] == 0x05040302
