"""Minimal cases proving each recorded unicorn deviation (tests/diff/deviations.py).

Each test shows unicorn's outcome, the architected outcome, and that the interpreter gives
the architected one. If unicorn is fixed, the test fails and the deviation must go.
"""

from __future__ import annotations

from ring1.runtime.tools import fresh_machine

from .harness import Case, run_both


def _case(hexcode: str, cpl: int = 0, forms: list[str] | None = None, **regs: int) -> Case:
    spec = fresh_machine.FreshSpec(code=bytes.fromhex(hexcode), regs=regs, cpl=cpl)
    return Case(spec, forms or [])


def test_io_permission_not_checked_by_unicorn() -> None:
    # IN AL, 0x80 at CPL 3, IOPL 0, with the TSS's I/O map base past its limit: SDM vol. 1
    # 18.5.2 says every I/O instruction then faults with #GP(0) when CPL > IOPL.
    o = run_both(_case("e4 80", cpl=3))
    assert o.theirs.exception is None  # unicorn runs it
    assert o.ours.exception == 13 and o.ours.error_code == 0


def test_int6_reported_at_the_instruction() -> None:
    # INT 6 is a software interrupt: the saved EIP is the next instruction (SDM INT n).
    o = run_both(_case("cd 06"))
    assert o.theirs.exception == 6 and o.theirs.regs["eip"] == fresh_machine.CODE
    assert o.ours.exception == 6 and o.ours.regs["eip"] == fresh_machine.CODE + 2
    o = run_both(_case("cd 0d"))  # any other vector: unicorn reports the next instruction
    assert o.theirs.regs["eip"] == o.ours.regs["eip"] == fresh_machine.CODE + 2


def test_icebp_is_undefined_in_unicorn() -> None:
    # F1 (INT1/ICEBP) delivers #DB as a trap on every IA-32 processor since the 386.
    o = run_both(_case("f1"))
    assert o.theirs.exception == 6
    assert o.ours.exception == 1 and o.ours.regs["eip"] == fresh_machine.CODE + 1


def test_invalid_lock_prefix_ignored_by_unicorn() -> None:
    # LOCK CLC: CLC cannot be locked, so the CPU raises #UD (SDM vol. 2, LOCK).
    o = run_both(_case("f0 f8"))
    assert o.theirs.exception is None and o.theirs.regs["eip"] == fresh_machine.CODE + 2
    assert o.ours.exception == 6 and o.ours.regs["eip"] == fresh_machine.CODE


def test_ret_imm16_sign_extended_by_unicorn() -> None:
    # RET 0x8000 on a 32-bit stack: ESP <- ESP + 4 + 0x8000 (SDM RET: the immediate is an
    # unsigned byte count). Unicorn adds it sign-extended.
    stack = (fresh_machine.CODE + 0x200).to_bytes(4, "little")
    spec = fresh_machine.FreshSpec(code=bytes.fromhex("c2 00 80"), memory={fresh_machine.STACK_TOP: stack})
    o = run_both(Case(spec, ["RET_NEAR_Iw"]))
    assert o.ours.regs["esp"] == fresh_machine.STACK_TOP + 4 + 0x8000
    assert o.theirs.regs["esp"] == (fresh_machine.STACK_TOP + 4 - 0x8000) & 0xFFFFFFFF


def test_single_step_trap_matches_unicorn() -> None:
    # Not a deviation: TF set by IRET traps (#DB) after the instruction that follows.
    stack = b"".join(v.to_bytes(2, "little") for v in (0x8010, 0, 0x0102))  # IP, CS, FLAGS with TF
    spec = fresh_machine.FreshSpec(
        code=bytes.fromhex("cf"), real=True, memory={fresh_machine.STACK_TOP: stack, 0x8010: bytes.fromhex("90 90 90")}
    )
    o = run_both(Case(spec, ["IRET"]))
    assert o.ours.exception == o.theirs.exception == 1
    assert o.ours.regs["eip"] == o.theirs.regs["eip"] == 0x8011


def _iret_frame(eip: int, cs: int, eflags: int) -> dict[int, bytes]:
    return {fresh_machine.STACK_TOP: b"".join(v.to_bytes(4, "little") for v in (eip, cs, eflags))}


def test_iret_to_v86_does_not_load_rf_in_unicorn() -> None:
    # IRET at CPL 0 into virtual-8086 mode with RF in the popped EFLAGS: the SDM loads all of
    # EFLAGS (RF too). Unicorn loads RF on a protected-mode return, but not on this one.
    frame = (fresh_machine.CODE + 0x200, 0, 0x30002, 0x6000, 0, 0, 0, 0, 0)  # EIP CS EFLAGS(VM RF) ESP SS ES DS FS GS
    spec = fresh_machine.FreshSpec(
        code=bytes.fromhex("cf"), memory={fresh_machine.STACK_TOP: b"".join(v.to_bytes(4, "little") for v in frame)}
    )
    o = run_both(Case(spec, ["IRET"]))
    assert o.ours.regs["eflags"] & 0x30000 == 0x30000
    assert o.theirs.regs["eflags"] & 0x30000 == 0x20000
    # Back to the end of the code, so the run stops right after the IRET (the next instruction
    # to complete would clear RF on both).
    same = fresh_machine.FreshSpec(
        code=bytes.fromhex("cf"), memory=_iret_frame(fresh_machine.CODE + 1, fresh_machine.SEL_CODE0, 0x10002)
    )
    o = run_both(Case(same, ["IRET"]))
    assert o.ours.regs["eflags"] & 0x10000 and o.theirs.regs["eflags"] & 0x10000


def test_iret_enters_v86_from_cpl3_in_unicorn() -> None:
    # IRET at CPL 3 with VM in the popped EFLAGS and a null CS: the SDM does a protected-mode
    # return, which faults on the null selector (#GP(0)); unicorn enters v86 mode.
    spec = fresh_machine.FreshSpec(
        code=bytes.fromhex("cf"), cpl=3, memory=_iret_frame(fresh_machine.CODE + 0x200, 0x2, 0x20002)
    )
    o = run_both(Case(spec, ["IRET"]))
    assert o.ours.exception == 13 and o.ours.error_code == 0
    assert o.theirs.exception is None and o.theirs.regs["eflags"] & 0x20000
