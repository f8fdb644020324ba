"""Where unicorn is wrong, recorded.

Each deviation is proven by a minimal case in test_deviations.py (unicorn does X, the
architecture requires Y, the interpreter does Y). The differential tests accept an
observed difference only when a deviation here explains exactly that difference; any other
difference in the same example still fails.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ring1.generated.forms import FORMS

from .harness import Case, Outcome


@dataclass
class Deviation:
    name: str
    reason: str
    applies: Callable[[Case, Outcome], bool]


def _mnemonics(case: Case) -> set[str]:
    return {m for f in case.forms for m in FORMS[f].mnemonics.values()}


IO_MNEMONICS = {"in", "out", "insb", "insw", "insd", "outsb", "outsw", "outsd"}


def _io_without_permission(case: Case, o: Outcome) -> bool:
    # Unicorn runs IN/OUT at CPL > IOPL although the TSS (I/O map base past its limit)
    # denies every port: the CPU raises #GP(0). Only this exact outcome is accepted.
    return (
        case.spec.cpl == 3
        and bool(_mnemonics(case) & IO_MNEMONICS)
        and o.ours.exception == 13
        and o.theirs.exception is None
    )


DEVIATIONS = [
    Deviation(
        "io-permission",
        "unicorn does not check CPL > IOPL and the TSS I/O bitmap for IN/OUT/INS/OUTS (no #GP)",
        _io_without_permission,
    ),
]


def explain(case: Case, outcome: Outcome) -> Deviation | None:
    for d in DEVIATIONS:
        if d.applies(case, outcome):
            return d
    return None


# ------------------------------------------------------------ ALU families (arith, logic, shift, bit)
# Proven by tests/diff/test_deviations_alu.py.

TEST_ALIASES = {"TEST_RMb_Ib_F6r1", "TEST_RMv_Iv_F7r1"}
BT_MEMORY_FORMS = {"BT_Mv_Rv", "BTS_Mv_Rv", "BTR_Mv_Rv", "BTC_Mv_Rv"}
_PREFIX_BYTES = {0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3}


def _opcode_index(code: bytes) -> int:
    i = 0
    while code[i] in _PREFIX_BYTES:
        i += 1
    return i


def as_test_r0(case: Case) -> Case:
    """The same case with its F6/F7 /1 instruction re-encoded as the documented F6/F7 /0."""
    from dataclasses import replace

    code = bytearray(case.spec.code)
    i = _opcode_index(code) + 1  # the ModRM byte
    code[i] &= ~0x38
    memory = dict(case.spec.memory)
    from ring1.runtime import fresh

    if fresh.CODE in memory:
        page = bytearray(memory[fresh.CODE])
        page[: len(code)] = code
        memory[fresh.CODE] = bytes(page)
    return Case(replace(case.spec, code=bytes(code), memory=memory), list(case.forms), case.note)


def _test_alias_undefined(case: Case, o: Outcome) -> bool:
    # Unicorn (QEMU 5) raises #UD for F6 /1 and F7 /1, which processors run as TEST (Intel's
    # XED decodes them as TEST_*_F6r1/F7r1; AMD documents the alias). Accepted only when
    # unicorn stops with #UD on the instruction itself and the interpreter's outcome is
    # exactly unicorn's outcome for the same instruction encoded as /0.
    from .harness import differences, reference

    if len(case.forms) != 1 or case.forms[0] not in TEST_ALIASES:
        return False
    if o.theirs.exception != 6 or o.ours.exception == 6:
        return False
    from ring1.runtime import fresh

    if o.theirs.regs["eip"] != fresh.CODE:
        return False
    ref = reference(case.spec.cpl, case.spec.real)
    theirs0 = ref.run(as_test_r0(case))
    memory0 = bytearray(ref.memory())
    memory0[fresh.CODE : fresh.CODE + len(case.spec.code)] = case.spec.code  # the one byte re-encoded
    return not differences(Outcome(o.ours, theirs0, o.our_memory, bytes(memory0), o.undefined))


def bt_offset(case: Case) -> tuple[int, int]:
    """The offset in its segment, and the size, of the word a BT* m, r instruction accesses,
    computed from capstone's decoding and the case's registers (not from ring1's decoder)."""
    from capstone import CS_ARCH_X86, CS_MODE_16, CS_MODE_32, Cs
    from capstone.x86 import X86_OP_MEM, X86_OP_REG

    md = Cs(CS_ARCH_X86, CS_MODE_16 if case.spec.real else CS_MODE_32)
    md.detail = True
    insn = next(md.disasm(case.spec.code, 0))
    regs = case.spec.initial_regs()

    def value(reg_id: int) -> tuple[int, int]:
        name = insn.reg_name(reg_id)
        if name.startswith("e"):
            return regs[name], 32
        return regs["e" + name] & 0xFFFF, 16

    mem = next(op for op in insn.operands if op.type == X86_OP_MEM)
    bit = next(op for op in insn.operands if op.type == X86_OP_REG)
    amask = (1 << (8 * insn.addr_size)) - 1
    ea = mem.mem.disp
    if mem.mem.base:
        ea += value(mem.mem.base)[0]
    if mem.mem.index:
        ea += value(mem.mem.index)[0] * mem.mem.scale
    off, w = value(bit.reg)
    off = (off ^ (1 << (w - 1))) - (1 << (w - 1))  # the bit offset is signed
    return (ea + (off // w) * (w // 8)) & amask, w // 8


def _bt_beyond_limit(case: Case, o: Outcome) -> bool:
    # QEMU's TCG (so unicorn) does not check data segment limits. BT/BTS/BTR/BTC with a
    # memory operand and a register bit offset reach EA + (offset DIV w) * w/8, which a large
    # offset puts past the limit of the test window's segment (64 KB): the CPU raises #GP(0)
    # (SDM Vol. 3A 5.3, limit checking), unicorn accesses the memory. Only that outcome.
    from ring1.runtime import fresh

    if len(case.forms) != 1 or case.forms[0] not in BT_MEMORY_FORMS:
        return False
    if o.ours.exception != 13 or o.ours.error_code != 0 or o.ours.regs["eip"] != fresh.CODE:
        return False
    if o.theirs.exception is not None:
        return False
    offset, size = bt_offset(case)
    return offset + size - 1 > fresh.DATA_SIZE - 1


DEVIATIONS.extend(
    [
        Deviation(
            "test-f6f7-r1",
            "unicorn raises #UD for TEST's F6 /1 and F7 /1 aliases, which processors run as TEST",
            _test_alias_undefined,
        ),
        Deviation(
            "bt-segment-limit",
            "unicorn does not check the segment limit when BT*'s bit offset addresses past it (no #GP)",
            _bt_beyond_limit,
        ),
    ]
)
