"""Decode one IA-32 instruction with the tables generated from the spec's encodings.

The result names the spec form, the variant to run (operand size, address size,
register or memory, condition, REP) and the values that fill the template's
`$placeholders`: register numbers, immediates, the effective-address expression and
its segment. Nothing about particular instructions lives here; it is all in
generated/decode.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ring1.generated.decode import LAYOUT, OPCODES
from ring1.generated.forms import FORMS

SEGMENT_PREFIXES = {0x26: 0, 0x2E: 1, 0x36: 2, 0x3E: 3, 0x64: 4, 0x65: 5}
SEGMENT_PREFIX_OF = {seg: prefix for prefix, seg in SEGMENT_PREFIXES.items()}
ADDRESS_SIZE_PREFIX = 0x67
MAX_LENGTH = 15

_EA16 = (  # ModRM.rm -> (base register, index register) for 16-bit addressing
    (3, 6),
    (3, 7),
    (5, 6),
    (5, 7),
    (6, None),
    (7, None),
    (5, None),
    (3, None),
)


class Truncated(Exception):
    """The instruction runs past the bytes fetched; fetch more (and let that fault)."""


@dataclass
class Decoded:
    eip: int  # offset in CS of the first byte
    length: int
    form: str | None  # None: no form matches (the instruction raises #UD)
    variant: tuple = ()
    fields: dict = field(default_factory=dict)
    raw: bytes = b""
    lock: bool = False
    lock_invalid: bool = False
    prefixes: tuple = ()
    modrm_at: int = -1  # index in raw of the ModRM byte (-1: none)
    ea_end: int = -1  # index in raw just past ModRM, SIB and displacement

    @property
    def next(self) -> int:
        return self.fields.get("next", self.eip + self.length)

    @property
    def condition(self) -> int | None:
        """The condition code (0-15) of a Jcc, SETcc or CMOVcc form."""
        return self.variant[3] if len(self.variant) > 3 else None

    @property
    def segment_prefix(self) -> bytes:
        """A prefix naming the segment the memory operand uses (by override or by default)."""
        seg = self.fields.get("seg")
        return bytes((SEGMENT_PREFIX_OF[seg],)) if seg is not None else b""

    @property
    def address_size_prefix(self) -> bytes:
        return bytes((ADDRESS_SIZE_PREFIX,)) if ADDRESS_SIZE_PREFIX in self.prefixes else b""

    def rm_operand(self, reg: int) -> bytes:
        """This instruction's r/m operand (ModRM with `reg` in its reg field, SIB, displacement),
        for another instruction to use the same operand: register or memory, exactly addressed."""
        modrm = self.raw[self.modrm_at]
        return bytes(((modrm & 0xC7) | (reg & 7) << 3,)) + self.raw[self.modrm_at + 1 : self.ea_end]


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def u8(self) -> int:
        if self.pos >= len(self.buf):
            raise Truncated
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def peek(self) -> int:
        if self.pos >= len(self.buf):
            raise Truncated
        return self.buf[self.pos]

    def uint(self, n: int) -> int:
        if self.pos + n > len(self.buf):
            raise Truncated
        v = int.from_bytes(self.buf[self.pos : self.pos + n], "little")
        self.pos += n
        return v


def _sext(v: int, bits: int) -> int:
    h = 1 << (bits - 1)
    return (v & ((1 << bits) - 1) ^ h) - h


def decode(buf: bytes, eip: int, code32: bool) -> Decoded:
    """Decode the instruction at the start of `buf` (fetched from CS:eip)."""
    r = _Reader(buf)
    osize = 32 if code32 else 16
    asize = osize
    seg_override = None
    lock = False
    rep_prefix = 0  # the last of F2/F3
    has66 = False
    prefixes: list[int] = []
    while True:
        b = r.u8()
        if b == 0x66:
            has66 = True
        elif b == ADDRESS_SIZE_PREFIX:
            asize = 48 - asize
        elif b == 0xF0:
            lock = True
        elif b in (0xF2, 0xF3):
            rep_prefix = b
        elif b in SEGMENT_PREFIXES:
            seg_override = SEGMENT_PREFIXES[b]
        else:
            break
        prefixes.append(b)
        if len(prefixes) >= MAX_LENGTH:
            return _undefined(buf, eip, MAX_LENGTH, code32)
    opmap: tuple[int, ...] = ()
    if b == 0x0F:
        b = r.u8()
        opmap = (0x0F,)
        if b in (0x38, 0x3A):
            opmap = (0x0F, b)
            b = r.u8()
    cands = OPCODES.get((opmap, b))
    if cands is None:
        return _undefined(buf, eip, r.pos, code32)
    has_modrm = LAYOUT[cands[0][0]][0]
    modrm = r.peek() if has_modrm else None
    mandatory = rep_prefix or (0x66 if has66 else 0)
    chosen = None
    for form, reg, mod, rm, c_osize, c_asize, pfx in cands:
        if pfx is not None and pfx != mandatory:
            continue
        eff_osize = osize if pfx == 0x66 else (48 - osize if has66 else osize)
        if c_osize is not None and c_osize != eff_osize:
            continue
        if c_asize is not None and c_asize != asize:
            continue
        if modrm is not None:
            if reg is not None and (modrm >> 3) & 7 != reg:
                continue
            if mod == "mem" and modrm >> 6 == 3:
                continue
            if mod == "reg" and modrm >> 6 != 3:
                continue
            if rm is not None and (modrm & 7) != rm:
                continue
        chosen = (form, pfx, eff_osize)
        break
    if chosen is None:
        return _undefined(buf, eip, r.pos + (1 if has_modrm else 0), code32)
    form, pfx, osize = chosen
    info = FORMS[form]
    _, low_field, imms, operands = LAYOUT[form]
    fields: dict = {}
    mod_kind = None
    esp_base = 0
    ea_seg = 3
    modrm_at = ea_end = -1
    if has_modrm:
        modrm_at = r.pos
        modrm = r.u8()
        mod_bits, reg_bits, rm_bits = modrm >> 6, (modrm >> 3) & 7, modrm & 7
        if mod_bits == 3:
            mod_kind = "reg"
        else:
            mod_kind = "mem"
            if asize == 32:
                ea, ea_seg, esp_base = _ea32(r, mod_bits, rm_bits)
            else:
                ea, ea_seg = _ea16(r, mod_bits, rm_bits)
            fields["ea"] = ea
        ea_end = r.pos
    else:
        reg_bits = rm_bits = 0
    low = b & (0xF if low_field == "cc" else 0x7)
    imm_values = []
    for imm in imms:
        if imm == "ib" or imm == "cb":
            imm_values.append(r.uint(1))
        elif imm == "iw":
            imm_values.append(r.uint(2))
        elif imm == "id":
            imm_values.append(r.uint(4))
        elif imm in ("iv", "cv"):
            imm_values.append(r.uint(osize // 8))
        elif imm == "cp":
            off = r.uint(osize // 8)
            imm_values.append(r.uint(2) << osize | off)
        elif imm == "mo":
            imm_values.append(r.uint(asize // 8))
    length = r.pos
    next_eip = (eip + length) & (0xFFFFFFFF if code32 else 0xFFFF)
    fields["next"] = next_eip
    fields["here"] = eip
    # The x87's FOP: the first opcode byte's low 3 bits, then the ModRM byte (SDM vol. 1, 8.1.9).
    fields["fop"] = (b & 7) << 8 | (modrm or 0)
    imm_iter = iter(imm_values)
    mask_o = (1 << osize) - 1
    has_rm_operand = False
    for name, kind, width in operands:
        if kind in ("reg", "sreg", "creg", "dreg", "mmx", "xmm") and kind != "rm":
            _reg_fields(fields, name, reg_bits)
        elif kind == "rm":
            has_rm_operand = True
            if mod_kind == "reg":
                _reg_fields(fields, name, rm_bits)
        elif kind == "opreg":
            _reg_fields(fields, name, low)
        elif kind == "imm":
            v = next(imm_iter)
            fields[name] = v & mask_o if width == "v" else v
        elif kind == "simm":
            fields[name] = _sext(next(imm_iter), 8) & mask_o
        elif kind == "rel":
            v = next(imm_iter)
            bits = 8 if width == 8 else osize
            fields[name] = (next_eip + _sext(v, bits)) & mask_o
        elif kind == "far":
            fields[name] = next(imm_iter)
        elif kind == "moffs":
            fields["ea"] = next(imm_iter)
            ea_seg = 3
        elif kind == "x87":
            fields[name] = rm_bits if has_modrm else low
    seg = seg_override if seg_override is not None else ea_seg
    fields["seg"] = seg
    fields["dseg"] = seg_override if seg_override is not None else 3
    fields["esp_base"] = esp_base
    fields.setdefault("ea", 0)
    rep = None
    if rep_prefix and pfx is None:
        if "rep" in info.prefixes:
            rep = "rep"
        elif "repe" in info.prefixes or "repne" in info.prefixes:
            rep = "repe" if rep_prefix == 0xF3 else "repne"
    mod_key = mod_kind if has_rm_operand else ("mem" if info_has_memory(operands) else None)
    cc = low if low_field == "cc" else None
    variant = (osize, asize, mod_key, cc, rep)
    lock_invalid = lock and ("lock" not in info.prefixes or mod_kind != "mem")
    return Decoded(
        eip, length, form, variant, fields, bytes(buf[:length]), lock, lock_invalid, tuple(prefixes), modrm_at, ea_end
    )


def info_has_memory(operands) -> bool:
    return any(kind in ("mem", "addr", "moffs") for _, kind, _ in operands)


def _reg_fields(fields: dict, name: str, idx: int) -> None:
    fields[name] = idx
    fields[f"{name}_r"] = idx & 3
    fields[f"{name}_s"] = (idx & 4) << 1
    fields[f"{name}_k"] = 0xFFFFFFFF ^ (0xFF << ((idx & 4) << 1))


def _ea32(r: _Reader, mod: int, rm: int) -> tuple[str, int, int]:
    base: int | None = rm
    index: int | None = None
    scale = 1
    if rm == 4:
        sib = r.u8()
        scale = 1 << (sib >> 6)
        index = (sib >> 3) & 7
        if index == 4:
            index = None
        base = sib & 7
        if base == 5 and mod == 0:
            base = None
    elif rm == 5 and mod == 0:
        base = None
    if mod == 1:
        disp = _sext(r.uint(1), 8) & 0xFFFFFFFF
    elif mod == 2 or base is None:
        disp = r.uint(4)
    else:
        disp = 0
    terms = []
    if base is not None:
        terms.append(f"R[{base}]")
    if index is not None:
        terms.append(f"R[{index}]" if scale == 1 else f"R[{index}] * {scale}")
    if disp or not terms:
        terms.append(str(disp))
    text = terms[0] if len(terms) == 1 else "(" + " + ".join(terms) + " & 0xffffffff)"
    seg = 2 if base in (4, 5) else 3
    return text, seg, int(base == 4)


def _ea16(r: _Reader, mod: int, rm: int) -> tuple[str, int]:
    if mod == 0 and rm == 6:
        return str(r.uint(2)), 3
    base, index = _EA16[rm]
    disp = _sext(r.uint(1), 8) & 0xFFFF if mod == 1 else (r.uint(2) if mod == 2 else 0)
    terms = [f"(R[{base}] & 0xffff)"]
    if index is not None:
        terms.append(f"(R[{index}] & 0xffff)")
    if disp:
        terms.append(str(disp))
    text = "(" + " + ".join(terms) + " & 0xffff)" if len(terms) > 1 else terms[0]
    seg = 2 if base == 5 else 3
    return text, seg


def _undefined(buf: bytes, eip: int, length: int, code32: bool) -> Decoded:
    length = max(1, min(length, len(buf)))
    next_eip = (eip + length) & (0xFFFFFFFF if code32 else 0xFFFF)
    return Decoded(eip, length, None, (), {"next": next_eip}, bytes(buf[:length]))
