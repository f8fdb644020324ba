"""Hypothesis strategies: random instances of spec forms, as differential test cases.

Everything about encodings comes from the generated tables (ENCODINGS, LAYOUT and the
interpreter's variant keys); what this module adds is how to make an instance
*meaningful*: memory operands land in the DATA window, branch targets land on a code page
filled with HLT, stacks hold plausible return frames, selectors come from the fresh GDT,
and SSE forms get IEEE doubles and singles (NaNs, infinities, denormals, signed zeros) in
their XMM registers and memory operands, an MXCSR, and CR0/CR4 bits that mostly enable SSE.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

from hypothesis import strategies as st

from ring1.generated.decode import ENCODINGS, LAYOUT
from ring1.generated.forms import FORMS
from ring1.runtime.cpu.blocks import TEMPLATES
from ring1.runtime.isa.decoder import decode
from ring1.runtime.tools import fresh_machine

from .harness import Case, window_segments

HLT = 0xF4
CODE_PAGE = fresh_machine.CODE, fresh_machine.CODE + 0x1000
WINDOW_MARGIN = 0x40  # room past the effective address for operands up to 64 bytes
STATUS_AND_DF = 0x8D5 | 0x400
SELECTORS_PROT = (
    0x00,
    0x03,
    0x08,
    0x0B,
    0x10,
    0x13,
    0x18,
    0x1B,
    0x20,
    0x23,
    0x28,
    0x30,
    0x38,
    0x40,
    0x4B,
    0x4C,
    0x50,
    0xFFF8,
)
SEGMENT_OVERRIDES = (0x26, 0x3E, 0x64, 0x65)  # ES DS FS GS: all over the DATA window in tests


@dataclass
class Instance:
    code: bytes
    regs: dict[str, int] = field(default_factory=dict)
    memory: dict[int, bytes] = field(default_factory=dict)  # window offset -> bytes
    stack: dict[int, bytes] = field(default_factory=dict)  # stack offset (linear) -> bytes
    osize: int = 32  # the operand size drawn, so return frames on the stack can match it


@dataclass
class Mode:
    cpl: int
    real: bool

    @property
    def name(self) -> str:
        return "real" if self.real else f"cpl{self.cpl}"

    @property
    def default_size(self) -> int:
        return 16 if self.real else 32


MODES = {"cpl0": Mode(0, False), "cpl3": Mode(3, False), "real": Mode(0, True)}


def mnemonics(form: str) -> set[str]:
    return set(FORMS[form].mnemonics.values())


def is_string(form: str) -> bool:
    return FORMS[form].source.startswith("spec/string.r1")


def is_sse(form: str) -> bool:
    return FORMS[form].source.startswith("spec/sse.r1")


# The x87 control instructions: their operands are images and control words, not numbers, and
# they get the default x87 state (the numeric forms get x87_state and x87_memory_operand).
X87_CONTROL_MNEMONICS = {
    *("fninit", "fnclex", "fldcw", "fnstcw", "fnstsw"),
    *("fldenv", "fnstenv", "frstor", "fnsave", "wait"),
}


def is_x87(form: str) -> bool:
    """A numeric x87 form (spec/x87.r1 but the control instructions)."""
    return FORMS[form].source.startswith("spec/x87.r1") and not mnemonics(form) & X87_CONTROL_MNEMONICS


# The integer SSE and SSE2 forms (on MMX or XMM registers) by mnemonic; the others in sse.r1
# work on floating-point values. PREFETCHh and PAUSE start with a P but move no data.
SIMD_INTEGER_MOVES = {"movd", "movq", "movdqa", "movdqu", "movq2dq", "movdq2q", "movntq", "movntdq", "movnti"}
SIMD_INTEGER_MOVES |= {"maskmovq", "maskmovdqu"}


def aligned_m128(form: str) -> bool:
    """An SSE/SSE2 form whose 128-bit memory operand must be 16-byte aligned (SDM vol. 1,
    11.6.7): all of them but MOVDQU, MOVUPS and MOVUPD."""
    return (
        is_sse(form)
        and not mnemonics(form) & {"movdqu", "movups", "movupd"}
        and any(width == 128 and kind in ("rm", "mem") for _, kind, width in LAYOUT[form][3])
    )


def is_simd_integer(form: str) -> bool:
    """An MMX form, or an SSE/SSE2 integer form: its registers and memory operands get packed
    integers with edge lanes rather than doubles."""
    if FORMS[form].source.startswith("spec/mmx.r1"):
        return True
    mn = mnemonics(form)
    return is_sse(form) and bool(
        mn & SIMD_INTEGER_MOVES or any(m.startswith("p") and not m.startswith(("prefetch", "pause")) for m in mn)
    )


def variants(form: str) -> list[tuple]:
    return sorted(TEMPLATES[form].keys(), key=repr)


@st.composite
def instance(draw, form: str, mode: Mode, doubles: list[int] | None = None, aligned: bool = False) -> Instance:
    """One encoding of `form` with operand values that make it meaningful in `mode`
    (an SSE form's memory operand holds doubles or singles, from `doubles` or any)."""
    opcode, low_field, modrm_kind, fixed_modrm, _mod, rm_fixed, imms, e_osize, _asize, pfx = ENCODINGS[form]
    _, _, _, operands = LAYOUT[form]
    osize, asize, mod, cc, rep = draw(st.sampled_from(variants(form)))
    osize = osize or mode.default_size
    asize = asize or mode.default_size
    if pfx == 0:
        # A mandatory "no prefix" opcode (ADDPS): a 66 would make it another instruction
        # (ADDPD), so its operand size is the mode's own.
        osize = mode.default_size
    regs: dict[str, int] = {}
    memory: dict[int, bytes] = {}
    prefixes = bytearray()
    if rep == "rep":
        prefixes.append(draw(st.sampled_from((0xF3, 0xF2))))
    elif rep == "repe":
        prefixes.append(0xF3)
    elif rep == "repne":
        prefixes.append(0xF2)
    if pfx in (0xF2, 0xF3):
        prefixes.append(pfx)
    # An NP form (pfx 0) takes no 66: it would select another instruction (PADDB xmm for PADDB
    # mm) or none; its operand size is the mode's.
    resized = (osize != mode.default_size and e_osize is None) or (e_osize and e_osize != mode.default_size)
    if pfx == 0x66 or (resized and pfx != 0):
        prefixes.append(0x66)
    if asize != mode.default_size:
        prefixes.append(0x67)
    if mod == "mem" and "lock" in FORMS[form].prefixes and draw(st.integers(0, 3)) == 0:
        prefixes.append(0xF0)
    body = bytearray(opcode)
    low = 0
    if low_field == "r":
        low = draw(st.integers(0, 7))
        body[-1] |= low
    elif low_field == "cc":
        body[-1] |= cc
    needs_memory = mod == "mem"
    if fixed_modrm is not None:
        body.append(fixed_modrm)
    elif modrm_kind is not None:
        reg = draw(st.integers(0, 7)) if modrm_kind == "r" else int(modrm_kind)
        if any(kind == "sreg" for _, kind, _ in operands):
            reg = draw(st.sampled_from((0, 1, 2, 3, 4, 5, 0, 3, 4, 5, 6)))
        if any(kind == "creg" for _, kind, _ in operands):
            reg = draw(st.sampled_from((0, 2, 3, 4, 0, 3, 1)))
        target_op = next((k for n, k, _ in operands if n == "target"), None)
        if needs_memory:
            widest = max((w for _, _, w in operands if isinstance(w, int)), default=0) // 8
            margin = max(WINDOW_MARGIN, widest)  # (FNSAVE's and FXSAVE's images: 108 and 512 bytes)
            align = 2 if aligned and aligned_m128(form) else int(aligned_m128(form))
            body += draw(memory_operand(reg, asize, regs, prefixes, mode, memory, margin, align))
            if is_simd_integer(form):
                ea = next(iter(memory))
                memory[ea] = draw(packed_integer(128)).to_bytes(16, "little")
            elif is_sse(form):
                ea = next(iter(memory))
                memory[ea] = b"".join(draw(sse_quad(doubles)).to_bytes(8, "little") for _ in range(2))
                if "ldmxcsr" in mnemonics(form) and draw(st.integers(0, 3)):
                    # Mostly an MXCSR without reserved bits (16-31: #GP), so loads get tested.
                    memory[ea] = draw(st.integers(0, MXCSR_DEFINED)).to_bytes(4, "little") + memory[ea][4:]
            if is_x87(form):
                ea = next(iter(memory))
                memory[ea] = draw(x87_memory_operand(form))
            if target_op is not None:
                # An indirect branch through memory: a code address (far: offset, then selector).
                ea = next(iter(memory))
                far = any(w == "far" for n, _, w in operands if n == "target")
                memory[ea] = draw(branch_target(mode, osize, far))
        else:
            rm = rm_fixed if rm_fixed is not None else draw(st.integers(0, 7))
            body.append(0xC0 | reg << 3 | rm)
            if target_op == "rm":
                regs[fresh_machine.GPR_NAMES[rm]] = draw(code_address(osize))
    code_tail: list = []
    imm_operands = [(n, k, w) for n, k, w in operands if k in ("imm", "simm", "rel", "far", "moffs")]
    for (name, kind, _width), imm in zip(imm_operands, imms, strict=True):
        size = {
            "ib": 1,
            "iw": 2,
            "id": 4,
            "cb": 1,
            "iv": osize // 8,
            "cv": osize // 8,
            "cp": osize // 8 + 2,
            "mo": asize // 8,
        }[imm]
        if kind == "rel":
            code_tail.append(("rel", size))
        elif kind == "far":
            code_tail.append(("raw", draw(branch_target(mode, osize, True))))
        elif kind == "moffs":
            target = draw(st.integers(0, fresh_machine.DATA_SIZE - WINDOW_MARGIN))
            code_tail.append(("raw", target.to_bytes(size, "little")))
        elif name == "level":
            code_tail.append(("raw", bytes([draw(st.integers(0, 4))])))
        elif is_simd_integer(form) and size == 1:
            # Shift counts around the lane widths (past them a lane empties), lane selectors and
            # shuffle orders: small numbers, and any byte.
            code_tail.append(
                ("raw", bytes([draw(st.one_of(st.integers(0, 17), st.integers(0, 0x41), st.integers(0, 0xFF)))]))
            )
        elif is_sse(form) and size == 1:
            # Mostly below 8: CMPSD's predicate is imm8[2:0] and an immediate past 7 makes
            # unicorn raise #UD (deviation cmpsd-imm8-reserved), which only a re-encoded run
            # can compare; uniform bytes would leave the plain encodings nearly untested.
            code_tail.append(("raw", bytes([draw(st.one_of(st.integers(0, 7), st.integers(0, 0xFF)))])))
        else:
            code_tail.append(("raw", draw(st.binary(min_size=size, max_size=size))))
    # Relative targets depend on the instruction's length, known once everything else is laid out.
    fixed_len = len(prefixes) + len(body) + sum(len(p[1]) if p[0] == "raw" else p[1] for p in code_tail)
    out = bytes(prefixes) + bytes(body)
    for part in code_tail:
        if part[0] == "raw":
            out += part[1]
        else:
            size = part[1]
            next_eip = fresh_machine.CODE + fixed_len
            # Past the instruction, on the HLT filler: a target inside the instruction itself runs
            # its bytes as another instruction, which may jump off RAM (open bus on the CPU, an
            # unmapped fetch on unicorn; tests/diff campaign, seed 3141592653). The code page has
            # nothing before the instruction, so displacements are never negative here.
            lo = 0
            hi = min((1 << (8 * size - 1)) - 1, CODE_PAGE[1] - 1 - next_eip)
            disp = draw(st.integers(lo, hi))
            out += (disp & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
    inst = Instance(out, regs, memory, osize=osize)
    _role_registers(draw, form, inst, mode, asize, osize)
    return inst


@st.composite
def branch_target(draw, mode: Mode, osize: int, far: bool) -> bytes:
    """A near target (offset) or far target (offset, selector) that lands on the HLT code page."""
    off = draw(code_address(osize))
    if not far:
        return off.to_bytes(osize // 8, "little") + draw(st.binary(min_size=4, max_size=4))
    if mode.real:
        # selector:offset must still land on the code page: shift the offset by the selector's base.
        sel = draw(st.sampled_from((0, 0x10, 0x80, 0x7F0)))
        off = (off - (sel << 4)) & 0xFFFF
    else:
        sel = draw(st.sampled_from(SELECTORS_PROT))
    return off.to_bytes(osize // 8, "little") + sel.to_bytes(2, "little") + draw(st.binary(min_size=2, max_size=2))


CODE_LIMIT = 0x100  # code under test stays below CODE + 0x100; code addresses land past it, on HLT


@st.composite
def code_address(draw, osize: int) -> int:
    return draw(st.integers(CODE_PAGE[0] + CODE_LIMIT, CODE_PAGE[1] - 1)) & ((1 << osize) - 1)


@st.composite
def memory_operand(
    draw,
    reg: int,
    asize: int,
    regs: dict[str, int],
    prefixes: bytearray,
    mode: Mode,
    memory: dict[int, bytes],
    margin: int = WINDOW_MARGIN,
    align16: int = 0,
) -> bytes:
    """ModRM (+SIB, +displacement) addressing a random offset of the DATA window, at least
    `margin` bytes before its end; sets the registers. With `align16` 1 the offset is mostly a
    multiple of 16 (every segment over the window has a base that is one too), as an SSE
    form's 128-bit operand must be; with 2, always."""
    target = draw(st.integers(0, fresh_machine.DATA_SIZE - margin))
    if align16 == 2 or (align16 and draw(st.integers(0, 3))):
        target &= ~15
    names = fresh_machine.GPR_NAMES
    memory[target] = draw(operand_bytes(mode))
    if asize == 16:
        mod = draw(st.integers(0, 2))
        rm = draw(st.integers(0, 7))
        if mod == 0 and rm == 6:
            return bytes([reg << 3 | 6]) + target.to_bytes(2, "little")
        pairs = ((3, 6), (3, 7), (5, 6), (5, 7), (6, None), (7, None), (5, None), (3, None))
        base, index = pairs[rm]
        disp = 0 if mod == 0 else draw(st.integers(-128, 127) if mod == 1 else st.integers(0, 0xFFFF))
        if 5 in (base, index):
            _add_override(prefixes)  # BP addresses SS by default; point it at the window
        index_val = draw(st.integers(0, 0xFFFF)) if index is not None else 0
        base_val = (target - disp - index_val) & 0xFFFF
        for r, v in ((base, base_val), (index, index_val)):
            if r is not None:
                regs[names[r]] = (draw(st.integers(0, 0xFFFF)) << 16) | v
        tail = b"" if mod == 0 else (struct.pack("<b", disp) if mod == 1 else disp.to_bytes(2, "little"))
        return bytes([mod << 6 | reg << 3 | rm]) + tail
    kind = draw(st.sampled_from(("base", "base8", "base32", "sib", "disp32")))
    if kind == "disp32":
        return bytes([reg << 3 | 5]) + target.to_bytes(4, "little")
    if kind == "sib":
        base = draw(st.sampled_from((0, 1, 2, 3, 4, 6, 7, 5)))
        index = draw(st.sampled_from((0, 1, 2, 3, 5, 6, 7, 4)))  # 4: no index
        scale = draw(st.integers(0, 3))
        mod = draw(st.sampled_from((1, 2))) if base == 5 else draw(st.integers(0, 2))
        if base == index or (index != 4 and base == 4):
            mod = 2
        disp = 0 if mod == 0 else (draw(st.integers(-128, 127)) if mod == 1 else draw(st.integers(0, 0xFFFFFFFF)))
        if base in (4, 5):
            _add_override(prefixes)
        index_val = draw(st.integers(0, 0xFFFFFFFF)) if index != 4 else 0
        if base == 4:
            # ESP stays a usable stack pointer: fix it, and let the displacement reach the target.
            esp = draw(st.integers(0x4000, 0x6F00))
            mod = 2
            disp = (target - esp - (index_val << scale)) & 0xFFFFFFFF
            regs["esp"] = esp
            if index != 4:
                regs[names[index]] = index_val
            sib = scale << 6 | index << 3 | base
            return bytes([mod << 6 | reg << 3 | 4, sib]) + disp.to_bytes(4, "little")
        if index != 4 and index == base:
            base_val = index_val
            disp = (target - index_val * ((1 << scale) + 1)) & 0xFFFFFFFF
        else:
            base_val = (target - disp - (index_val << scale)) & 0xFFFFFFFF
        regs[names[base]] = base_val
        if index != 4:
            regs[names[index]] = index_val
        sib = scale << 6 | index << 3 | base
        tail = b"" if mod == 0 else (struct.pack("<b", disp) if mod == 1 else (disp & 0xFFFFFFFF).to_bytes(4, "little"))
        return bytes([mod << 6 | reg << 3 | 4, sib]) + tail
    base = draw(st.sampled_from((0, 1, 2, 3, 6, 7, 5)))
    mod = {"base": 0, "base8": 1, "base32": 2}[kind]
    if base == 5 and mod == 0:
        mod = 1
    disp = 0 if mod == 0 else (draw(st.integers(-128, 127)) if mod == 1 else draw(st.integers(0, 0xFFFFFFFF)))
    if base == 5:
        _add_override(prefixes)
    regs[names[base]] = (target - disp) & 0xFFFFFFFF
    tail = b"" if mod == 0 else (struct.pack("<b", disp) if mod == 1 else (disp & 0xFFFFFFFF).to_bytes(4, "little"))
    return bytes([mod << 6 | reg << 3 | base]) + tail


def _add_override(prefixes: bytearray) -> None:
    if not any(p in (0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65) for p in prefixes):
        prefixes.append(0x3E)


def _role_registers(draw, form: str, inst: Instance, mode: Mode, asize: int, osize: int) -> None:
    """Registers whose values are addresses or counts for this form (string, loop, stack...)."""
    mn = mnemonics(form)
    regs = inst.regs
    amask = 0xFFFF if asize == 16 else 0xFFFFFFFF
    if is_string(form) or mn & {"xlatb"}:
        for r in ("esi", "edi"):
            if r not in regs:
                regs[r] = (draw(st.integers(0, 0xFFFFFFFF)) & ~amask) | draw(
                    st.integers(0x100, fresh_machine.DATA_SIZE - 0x100)
                )
        regs["ecx"] = (draw(st.integers(0, 0xFFFFFFFF)) & ~amask) | draw(st.integers(0, 9))
        if "xlatb" in mn and "ebx" not in regs:
            regs["ebx"] = draw(st.integers(0, fresh_machine.DATA_SIZE - 0x100))
    if mn & {"maskmovq", "maskmovdqu"}:
        # The implicit destination DS:EDI (DS:DI): in the DATA window, 16 bytes from its end.
        regs["edi"] = (draw(st.integers(0, 0xFFFFFFFF)) & ~amask) | draw(st.integers(0, fresh_machine.DATA_SIZE - 0x10))
    if mn & {"leave", "enter"} and "ebp" not in regs:
        regs["ebp"] = draw(st.integers(0x4000, 0x6F00))
    if mn & {"cmpxchg", "cmpxchg8b"} and inst.memory and draw(st.booleans()):
        # Half the time the accumulator (EAX, or EDX:EAX) equals the memory operand: drawn
        # apart they almost never match (never, 64 bits wide), and the exchange itself (ZF = 1,
        # the source or ECX:EBX stored) would go untested. Not when they address the operand.
        operand = next(iter(inst.memory.values()))
        for name, offset in (("eax", 0), ("edx", 4)) if "cmpxchg8b" in mn else (("eax", 0),):
            if name not in regs:
                regs[name] = int.from_bytes(operand[offset : offset + 4], "little")


def selectors(mode: Mode):
    return st.sampled_from((0, 0x1000, 0x800, 0xFFFF)) if mode.real else st.sampled_from(SELECTORS_PROT)


@st.composite
def operand_bytes(draw, mode: Mode) -> bytes:
    """16 bytes for a memory operand: random, or selectors and far pointers where they may be read."""
    if draw(st.booleans()):
        return draw(st.binary(min_size=16, max_size=16))
    words = [draw(st.one_of(selectors(mode), st.integers(0, 0xFFFF))) for _ in range(8)]
    return b"".join(w.to_bytes(2, "little") for w in words)


def register_value(mode: Mode):
    """A 32-bit register: random, or a selector (for segment loads), or a small count."""
    return st.one_of(st.integers(0, 0xFFFFFFFF), selectors(mode), st.integers(0, 40))


@st.composite
def registers(draw, mode: Mode) -> dict[str, int]:
    regs = {name: draw(register_value(mode)) for name in fresh_machine.GPR_NAMES if name != "esp"}
    flags = draw(st.integers(0, 0xFFFFFFFF)) & STATUS_AND_DF
    if not mode.real:
        flags |= draw(st.sampled_from((0, 0x200))) | draw(st.sampled_from((0, 0x1000, 0x2000, 0x3000)))
    regs["eflags"] = flags | 2
    return regs


@st.composite
def stack_image(draw, mode: Mode, osize: int) -> bytes:
    """The 64 bytes at ESP: a plausible return frame (EIP, CS, EFLAGS, ESP, SS, then segment
    selectors), laid out for 32-bit pops or for 16-bit pops."""
    sels = selectors(mode)
    flags = st.integers(0, 0xFFFFFFFF).map(lambda v: (v & 0x3F7FD5 & ~0x20100) | 2)
    matching = "frame32" if osize == 32 else "frame16"
    layout = draw(st.sampled_from((matching, matching, matching, "frame32", "frame16")))
    code = draw(code_address(32))
    cs = 0 if mode.real else draw(sels)
    if layout == "frame16" and osize == 32 and not mode.real:
        # A 32-bit pop of this frame reads CS as EIP[31:16]: keep EIP on the HLT code page, as the
        # frame's EIP does (CODE < 64 KB). Elsewhere it runs whatever memory holds, where unicorn
        # and the CPU part on what this form's test is not about (unicorn checks no data
        # segment limit: deviation of tests/test_physcpu.py).
        cs = CODE_PAGE[0] >> 16
    flags_word = draw(flags)
    words = [code, cs, flags_word, draw(st.integers(0x4000, 0x6F00)), draw(sels)]
    words += [draw(sels) for _ in range(4)]
    if layout == "frame16" and osize == 32 and mode.real:
        # A 32-bit pop of this frame (RETF, IRETD) reads CS from the FLAGS word: there, a
        # real-mode segment that a status-flags value can be (2, 3, 6 or 7) and that keeps CS:EIP
        # on the HLT code page, as the frame's EIP does (elsewhere it runs whatever memory holds);
        # IRETD's EFLAGS then comes from words 4 and 5: a flags value like the frame's (no TF).
        words[0] = draw(st.integers(CODE_PAGE[0] + CODE_LIMIT, CODE_PAGE[1] - 0x100))
        words[2] = (draw(st.integers(0, 0xF)) & 0xD5) | 2
        words[4], words[5] = draw(flags) & 0xFFFF, 0
    if layout == "frame32":
        words += [draw(st.integers(0, 0xFFFFFFFF)) for _ in range(16 - len(words))]
        return b"".join(w.to_bytes(4, "little") for w in words)
    words16 = [w & 0xFFFF for w in words] + [draw(st.integers(0, 0xFFFF)) for _ in range(32 - len(words))]
    return b"".join(w.to_bytes(2, "little") for w in words16)


# IEEE doubles worth comparing: signed zeros, ones, infinities, quiet and signalling NaNs
# (either sign, small and large payloads), the smallest and largest denormals and normals.
SPECIAL_DOUBLES = (
    0x0000000000000000,
    0x8000000000000000,
    0x3FF0000000000000,
    0xBFF0000000000000,
    0x4000000000000000,
    0x7FF0000000000000,
    0xFFF0000000000000,
    0x7FF8000000000000,
    0xFFF8000000000000,
    0x7FFFFFFFFFFFFFFF,
    0x7FF0000000000001,
    0xFFF4000000000000,
    0x7FF7FFFFFFFFFFFF,
    0x0000000000000001,
    0x800FFFFFFFFFFFFF,
    0x0008000000000000,
    0x0010000000000000,
    0x8010000000000000,
    0x7FEFFFFFFFFFFFFF,
)


@st.composite
def double_bits(draw, pool: list[int] | None = None) -> int:
    """A double's bit pattern: from `pool` (so operands often compare equal), special, or any."""
    choices = [st.sampled_from(SPECIAL_DOUBLES), st.integers(0, (1 << 64) - 1)]
    if pool:
        choices += [st.sampled_from(pool), st.sampled_from(pool)]
    return draw(st.one_of(choices))


# IEEE singles worth comparing, as double_bits's doubles: signed zeros, ones, infinities,
# quiet and signalling NaNs, the smallest and largest denormals and normals.
SPECIAL_FLOATS = (
    0x00000000,
    0x80000000,
    0x3F800000,
    0xBF800000,
    0x40000000,
    0x7F800000,
    0xFF800000,
    0x7FC00000,
    0xFFC00000,
    0x7FFFFFFF,
    0x7F800001,
    0xFFA00000,
    0x7FBFFFFF,
    0x00000001,
    0x807FFFFF,
    0x00400000,
    0x00800000,
    0x80800000,
    0x7F7FFFFF,
    0x4F000000,  # 2^31 and -2^31: the edges of a conversion to a 32-bit integer
    0xCF000000,
)


@st.composite
def float_bits(draw) -> int:
    """A single's bit pattern: special, near 1 (sums and products that round), or any."""
    near_one = st.integers(0x3F000000, 0x40800000)
    return draw(st.one_of(st.sampled_from(SPECIAL_FLOATS), near_one, st.integers(0, (1 << 32) - 1)))


@st.composite
def sse_quad(draw, pool: list[int] | None = None) -> int:
    """64 bits of an XMM register or SSE memory operand: a double or two singles (each from
    `pool`, so operands often compare equal, or drawn anew)."""
    choices = [double_bits(pool), st.tuples(float_bits(), float_bits()).map(lambda p: p[0] | p[1] << 32)]
    if pool:
        choices.append(st.sampled_from(pool))
    return draw(st.one_of(choices))


MXCSR_DEFINED = 0xFFFF  # bits 16-31 are reserved (#GP on LDMXCSR, never set by the CPU)


@st.composite
def sse_state(draw, pool: list[int]) -> dict:
    """XMM registers, MXCSR, and CR0/CR4 bits for SSE forms: mostly SSE enabled (CR4.OSFXSR,
    CR0.EM and TS clear), sometimes not; MXCSR mostly at reset, sometimes with exceptions
    unmasked, DAZ, or anything."""
    xmm = tuple(draw(sse_quad(pool)) | draw(sse_quad(pool)) << 64 for _ in range(8))
    reset = fresh_machine.MXCSR_RESET
    mxcsr = draw(
        st.one_of(
            st.just(reset),
            st.sampled_from((reset & ~0x80, reset & ~0x100, reset & ~0x180, reset | 0x40, reset | 0x3F, 0)),
            st.integers(0, MXCSR_DEFINED),
        )
    )
    osfxsr, osxmmexcpt = fresh_machine.CR4_OSFXSR, fresh_machine.CR4_OSXMMEXCPT
    cr4 = draw(st.sampled_from((osfxsr | osxmmexcpt,) * 4 + (osfxsr,) * 3 + (osxmmexcpt, 0)))
    em, ts, mp = fresh_machine.CR0_EM, fresh_machine.CR0_TS, fresh_machine.CR0_MP
    cr0_bits = draw(st.sampled_from((0,) * 8 + (mp, em, ts, em | ts, mp | ts)))
    return {"xmm": xmm, "mxcsr": mxcsr, "cr4": cr4, "cr0_bits": cr0_bits}


# x87 values that matter: zeros, ones, denormals and pseudo-denormals, the extremes of the
# exponent range, infinities, quiet and signalling NaNs, the indefinite, unnormals and
# pseudo-infinities (invalid operands since the 387), integers and halves (FRNDINT, FIST).
SPECIAL_EXTENDED = (
    0x0000_0000000000000000,
    0x8000_0000000000000000,
    0x3FFF_8000000000000000,
    0xBFFF_8000000000000000,
    0x4000_C000000000000000,
    0x3FFE_8000000000000000,
    0x4000_A000000000000000,
    0x0000_0000000000000001,
    0x8000_7FFFFFFFFFFFFFFF,
    0x0000_8000000000000000,
    0x0001_8000000000000000,
    0x7FFE_FFFFFFFFFFFFFFFF,
    0x7FFF_8000000000000000,
    0xFFFF_8000000000000000,
    0x7FFF_C000000000000000,
    0xFFFF_C000000000000000,
    0x7FFF_C000000000000001,
    0x7FFF_8000000000000001,
    0xFFFF_A000000000000000,
    0x3FFF_4000000000000000,
    0x7FFF_0000000000000000,
    0x403D_8000000000000000,
    0x401D_FFFFFFFF00000000,
    0x400E_8000000000000000,
    0xC03E_8000000000000000,
    0x3C00_8000000000000000,
    0x43FF_8000000000000001,
)


@st.composite
def extended_bits(draw) -> int:
    """An 80-bit register pattern: special, a float or double's value, or any."""
    normal = st.builds(
        lambda sign, exp, frac: sign << 79 | exp << 64 | 1 << 63 | frac,
        st.integers(0, 1),
        st.integers(0x3FB0, 0x4050),
        st.integers(0, (1 << 63) - 1),
    )
    from_double = double_bits().map(lambda d: _double_as_extended(d))
    return draw(st.one_of(st.sampled_from(SPECIAL_EXTENDED), normal, from_double, st.integers(0, (1 << 80) - 1)))


def _double_as_extended(d: int) -> int:
    from ring1.runtime.cpu import x87

    return x87.widen(64, d)[0]


@st.composite
def x87_memory_operand(draw, form: str) -> bytes:
    """The bytes of an x87 form's memory operand: a real of its size, an integer, or BCD."""
    (_, _, width), = [op for op in LAYOUT[form][3] if op[1] == "mem"]
    mnemonic = next(iter(mnemonics(form)))
    if mnemonic.startswith("fi"):
        value = draw(st.one_of(st.integers(-3, 3), st.integers(0, (1 << width) - 1)))
        return (value & ((1 << width) - 1)).to_bytes(width // 8, "little")
    if mnemonic == "fbld":
        digits = draw(st.lists(st.integers(0, 9), min_size=18, max_size=18))
        value = sum(d << (4 * k) for k, d in enumerate(digits)) | draw(st.sampled_from((0, 1 << 79)))
        return draw(st.sampled_from((value, value, draw(st.integers(0, (1 << 80) - 1))))).to_bytes(10, "little")
    if width == 80:
        return draw(extended_bits()).to_bytes(10, "little")
    if width == 64:
        return draw(double_bits()).to_bytes(8, "little")
    single = st.one_of(
        st.sampled_from((0, 0x80000000, 0x3F800000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 1, 0x807FFFFF)),
        st.integers(0, (1 << 32) - 1),
    )
    return draw(single).to_bytes(4, "little")


def x87_pushes(form: str) -> bool:
    """The form pushes onto the register stack (a load: ST(0) written, not read)."""
    ops = FORMS[form].operands
    return any(kind == "st0" and access == "w" for _, kind, access in ops) or form in ("FPTAN", "FSINCOS", "FXTRACT")


@st.composite
def x87_state(draw, pushes: bool = False) -> dict:
    """The x87 registers for x87 forms: a TOP, the registers in use mostly a stack from ST(0) up
    (sometimes full, empty, or any tags), values that matter; an FCW with any precision and
    rounding control and the exceptions mostly masked; an FSW with any condition codes and
    mostly no exception flag; CR0.EM, TS, MP and NE sometimes. `pushes`: the instruction pushes."""
    top = draw(st.integers(0, 7))
    # Mostly a stack the instruction can use (room for a push, or every register for ST(i)
    # reads), so that stack faults (deviation x87-stack-fault) stay a minority.
    depth = draw(st.sampled_from((1, 2, 3, 4, 5, 6, 7, 0) if pushes else (8, 8, 8, 8, 8, 2, 4, 7)))
    in_use = sum(1 << ((top + i) & 7) for i in range(depth))
    ftw = draw(st.one_of(*(st.just(in_use),) * 7, st.integers(0, 0xFF)))
    fpr = tuple(draw(extended_bits()) for _ in range(8))
    masks = draw(st.one_of(st.just(0x3F), st.just(0x3F), st.just(0x3F), st.integers(0, 0x3F)))
    fcw = 0x40 | masks | draw(st.integers(0, 3)) << 8 | draw(st.integers(0, 3)) << 10
    conditions = draw(st.integers(0, 0x4700)) & 0x4700
    flags = draw(st.sampled_from((0,) * 6 + (0x20, 0x01, 0x3F)))
    fsw = top << 11 | conditions | flags
    if flags & ~masks & 0x3F:
        fsw |= 0x8080  # a pending unmasked exception: ES and B
    em, ts, mp, ne = fresh_machine.CR0_EM, fresh_machine.CR0_TS, fresh_machine.CR0_MP, fresh_machine.CR0_NE
    cr0_bits = draw(st.sampled_from((0,) * 8 + (ne,) * 4 + (mp, em, ts, mp | ts, ne | ts)))
    return {"fpr": fpr, "fcw": fcw, "fsw": fsw, "ftw": ftw, "cr0_bits": cr0_bits}


# Lanes worth packing: zero, one, the signed extremes, all ones (8, 16, 32 and 64 bits).
EDGE_LANES = {n: (0, 1, (1 << (n - 1)) - 1, 1 << (n - 1), (1 << (n - 1)) + 1, (1 << n) - 1) for n in (8, 16, 32, 64)}


@st.composite
def packed_integer(draw, size: int) -> int:
    """A packed-integer register or memory value of `size` bits: lanes of one width, each an
    edge value or random, or a small number (a shift count), or anything."""
    kind = draw(st.sampled_from(("lanes", "lanes", "lanes", "count", "any")))
    if kind == "count":
        return draw(st.integers(0, 70)) | (draw(st.sampled_from((0, 0, 1 << 63, 1 << 40))) if size > 32 else 0)
    if kind == "any":
        return draw(st.integers(0, (1 << size) - 1))
    # Few draws (hypothesis draws cost more than the run): random lanes, and four bits a lane
    # that pick an edge value for it (6 of 16) or keep the random one.
    n = draw(st.sampled_from((8, 16, 32, 64)))
    lanes = size // n
    randoms = draw(st.integers(0, (1 << size) - 1))
    picks = draw(st.integers(0, (1 << 4 * lanes) - 1))
    value = 0
    for i in range(lanes):
        pick = picks >> 4 * i & 15
        lane = EDGE_LANES[n][pick] if pick < len(EDGE_LANES[n]) else randoms >> i * n & (1 << n) - 1
        value |= lane << i * n
    return value


# Bits 79:64 of an x87 register holding an MMX value: all ones (as an MMX write leaves them), zero,
# or what a floating-point value has there.
EXPONENTS = (0xFFFF, 0xFFFF, 0, 0, 0x3FFF, 0x8000, 0x1234, 0x7FFF)


@st.composite
def simd_integer_state(draw) -> dict:
    """The MMX registers (the low 64 bits of x87 R0-R7, any exponent above them), the rest of
    the x87 state an MMX instruction reads or resets (FSW with TOP and, rarely, a pending
    exception; the tag word; CR0.NE, EM, TS), and XMM registers with packed integers; CR4
    mostly enabling SSE."""
    exponents = draw(st.integers(0, (1 << 24) - 1))  # three bits a register: one of EXPONENTS
    fpr = tuple(draw(packed_integer(64)) | EXPONENTS[exponents >> 3 * i & 7] << 64 for i in range(8))
    xmm = tuple(draw(packed_integer(128)) for _ in range(8))
    top = draw(st.integers(0, 7)) << 11
    pending = draw(st.sampled_from((0,) * 6 + (0x81,)))  # ES with IE: an unmasked invalid operation
    fsw = top | pending | draw(st.sampled_from((0, 0x4700, 0x20)))  # condition codes, a masked precision flag
    ftw = draw(st.sampled_from((0, 0xFF, draw(st.integers(0, 0xFF)))))
    fcw = fresh_machine.FCW_INIT & ~(1 if pending else 0)
    osfxsr, osxmmexcpt = fresh_machine.CR4_OSFXSR, fresh_machine.CR4_OSXMMEXCPT
    cr4 = draw(st.sampled_from((osfxsr | osxmmexcpt,) * 4 + (osfxsr,) * 3 + (osxmmexcpt, 0)))
    em, ts, mp, ne = fresh_machine.CR0_EM, fresh_machine.CR0_TS, fresh_machine.CR0_MP, fresh_machine.CR0_NE
    cr0_bits = draw(st.sampled_from((0,) * 6 + (ne, ne, mp, em, ts, em | ts, mp | ts | ne)))
    return {"fpr": fpr, "xmm": xmm, "fsw": fsw, "ftw": ftw, "fcw": fcw, "cr4": cr4, "cr0_bits": cr0_bits}


def writes_esp(code: bytes, code32: bool = True) -> bool:
    """Whether the instruction explicitly writes ESP or SP (a register operand numbered 4)."""
    d = decode(code + bytes(16), fresh_machine.CODE, code32)
    if d.form is None:
        return False
    access = {name: acc for name, _kind, acc in FORMS[d.form].operands}
    for name, kind, width in LAYOUT[d.form][3]:
        if "w" not in access.get(name, "") or width == 8:
            continue
        if (kind in ("reg", "opreg") or (kind == "rm" and d.variant[2] == "reg")) and d.fields.get(name) == 4:
            return True
    return False


@st.composite
def case_for(draw, forms: list[str], mode: Mode, reload: bool = False, aligned: bool = False) -> Case:
    """A case running `forms` in order (each one random instance) from a random state. With
    `reload`, every instance after the first is preceded by `mov r32, imm32` (MOV_Ov_Iv) of the
    registers it was drawn with, so its memory operands stay in the test window whatever the
    instructions before it did (unicorn does not check segment limits: tests/test_physcpu.py),
    and no instance but the last writes ESP (a stack outside guest RAM is no comparison). With
    `aligned`, every 128-bit SSE operand that must be 16-byte aligned is."""
    regs = draw(registers(mode))
    code = bytearray()
    window: dict[int, bytes] = {}
    osize = mode.default_size
    sse: dict = {}
    pool: list[int] | None = None
    if any(is_simd_integer(f) for f in forms):
        sse = draw(simd_integer_state())
    elif any(is_sse(f) for f in forms):
        pool = draw(st.lists(sse_quad(), min_size=1, max_size=3))
        sse = draw(sse_state(pool))
    if any(is_x87(f) for f in forms):
        sse = {**sse, **draw(x87_state(pushes=any(x87_pushes(f) for f in forms if is_x87(f))))}
    ran: list[str] = []
    for n, f in enumerate(forms):
        inst = instance(f, mode, pool, aligned)
        if reload and n < len(forms) - 1:
            inst = inst.filter(lambda i: not writes_esp(i.code, not mode.real))
        inst = draw(inst)
        osize = inst.osize
        if reload and ran and inst.regs:
            for name, value in sorted(inst.regs.items()):
                code += (b"\x66" if mode.real else b"") + bytes([0xB8 + fresh_machine.GPR_NAMES.index(name)])
                code += struct.pack("<I", value & 0xFFFFFFFF)
            ran.append("MOV_Ov_Iv")
        else:
            regs.update(inst.regs)
        code += inst.code
        ran.append(f)
        window.update(inst.memory)
    seed = draw(st.integers(0, 2**32 - 1))
    rnd = random.Random(seed)
    data = bytearray(rnd.randbytes(fresh_machine.DATA_SIZE))
    for off, b in window.items():
        data[off : off + len(b)] = b
    page = bytearray([HLT]) * (CODE_PAGE[1] - CODE_PAGE[0])
    page[: len(code)] = code
    stack = draw(stack_image(mode, osize))
    memory = {
        fresh_machine.CODE: bytes(page),
        fresh_machine.DATA: bytes(data),
        fresh_machine.STACK_TOP: stack,
        fresh_machine.STACK_TOP - 64: stack,
    }
    spec = fresh_machine.FreshSpec(
        code=bytes(code),
        regs=regs,
        cpl=mode.cpl,
        real=mode.real,
        memory=memory,
        segs=window_segments(mode.cpl, mode.real),
        **sse,
    )
    return Case(spec, ran, note=f"seed={seed}")
