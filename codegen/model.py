"""The resolved spec: every file of spec/ loaded, names resolved, and checked.

`load_spec(root)` returns a `Spec` or raises `SpecError` at the first mistake, with
the file, line and column to blame. The checks here are the ones a contributor
needs when adding a rule: names that do not resolve, attributes missing, encodings
that collide, operands that do not fit the encoding, and flags the semantics write
without the `flags` line declaring them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ring1.codegen import ast as A
from ring1.codegen.parse import parse_file

SPEC_SUFFIX = ".r1"
ALTERNATE = "/"  # a template's alternates are NAME/2, NAME/3... (the generated TEMPLATES' keys)

STATUS_FLAGS = ("cf", "pf", "af", "zf", "sf", "of")
ALL_FLAGS = ("cf", "pf", "af", "zf", "sf", "tf", "if", "df", "of", "iopl", "nt", "rf", "vm", "ac", "vif", "vip", "id")

EXCEPTIONS = {  # name -> (vector, takes an error code)
    "DE": (0, False),
    "DB": (1, False),
    "BP": (3, False),
    "OF": (4, False),
    "BR": (5, False),
    "UD": (6, False),
    "NM": (7, False),
    "DF": (8, True),
    "TS": (10, True),
    "NP": (11, True),
    "SS": (12, True),
    "GP": (13, True),
    "PF": (14, True),
    "MF": (16, False),
    "AC": (17, True),
    "MC": (18, False),
    "XM": (19, False),
}

def _has_when(t: A.Template) -> bool:
    """The template's first line limits it to some instances (`when ...`)."""
    first = next((ln.strip() for ln in t.lines if ln.strip()), "")
    return first.startswith("when ")


TRANSLATE_RULES = {
    "ident": (None,),
    # A control transfer, followed by the name of its kind: the translator emits the template
    # named `<rule>_<kind>` (spec/vmm.r1), whose {@target} and {@next} branches are exits.
    "direct": "template",
    "indirect": "template",
    "inline": None,  # followed by a template name
    "callout": (None,),
    "trap": (None,),
}


@dataclass(frozen=True)
class OpType:
    kind: str  # reg rm mem addr imm simm rel far moffs opreg sreg creg dreg fixed one cc x87 mmx xmm
    width: int | str | None  # 8, 16, 32, 64, 48, 80, 128, "v" (the operand size), or None
    fixed: str | None = None  # for kind "fixed": the register it names


def _optypes() -> dict[str, OpType]:
    t: dict[str, OpType] = {}
    for w in ("8", "16", "32", "v"):
        width: int | str = int(w) if w != "v" else "v"
        t[f"r{w}"] = OpType("reg", width)
        t[f"rm{w}"] = OpType("rm", width)
        t[f"m{w}"] = OpType("mem", width)
        t[f"i{w}"] = OpType("imm", width)
        t[f"o{w}"] = OpType("opreg", width)
        t[f"moffs{w}"] = OpType("moffs", width)
    for w in (48, 64, 80, 128, 224, 864, 4096):
        t[f"m{w}"] = OpType("mem", w)  # m48 pseudo-descriptor, m64 qword, m80 x87 extended, m128 xmm, env/state images
    t["m"] = OpType("addr", None)  # an address only: LEA, INVLPG, prefetch
    t["mfar"] = OpType("mem", "far")  # m16:16 or m16:32 far pointer in memory
    t["s8"] = OpType("simm", "v")  # imm8 sign-extended to the operand size
    t["rel8"] = OpType("rel", 8)
    t["relv"] = OpType("rel", "v")
    t["far"] = OpType("far", "v")
    t["sreg"] = OpType("sreg", 16)
    t["creg"] = OpType("creg", 32)
    t["dreg"] = OpType("dreg", 32)
    t["one"] = OpType("one", 8)
    t["acc8"] = OpType("fixed", 8, "al")
    t["accv"] = OpType("fixed", "v", "eax")
    t["cl"] = OpType("fixed", 8, "cl")
    t["dx"] = OpType("fixed", 16, "dx")
    t["sti"] = OpType("x87", 80)  # ST(i), i from ModRM.rm: an 80-bit value
    t["st0"] = OpType("x87", 80)  # ST(0)
    t["mm"] = OpType("mmx", 64)  # an MMX register from ModRM.reg: a 64-bit value
    t["mmrm"] = OpType("mmx", 64)  # an MMX register or 64 bits of memory
    t["xmm"] = OpType("xmm", 128)  # an XMM register from ModRM.reg: a 128-bit value
    t["xmmrm"] = OpType("xmm", 128)  # an XMM register or 128 bits of memory
    t["r32rm"] = OpType("rm", 32)  # a general register from ModRM.rm with mod = 11 (MOV CRn, SIMD extracts)
    return t


OPTYPES = _optypes()

IMM_SIZES = {"ib": 1, "iw": 2, "id": 4, "iv": "v", "cb": 1, "cv": "v", "cp": "far", "mo": "a"}


@dataclass
class Encoding:
    """One encoding form. `opcode` holds the bytes of the opcode map and opcode proper."""

    opcode: list[int]
    low_field: str | None = None  # "r" (a register in the low 3 bits) or "cc" (a condition in the low 4)
    modrm: str | None = None  # None, "r" (reg field is an operand) or "0".."7" (reg field fixed)
    fixed_modrm: int | None = None  # a whole fixed ModRM byte (0F 01 D0, D9 E8 ...)
    mod: str | None = None  # None (either), "mem" or "reg"
    rm: int | None = None  # fixed rm field with mod = 11
    imms: list[str] = field(default_factory=list)
    osize: int | None = None
    asize: int | None = None
    pfx: int | None = None  # mandatory prefix 0x66, 0xF2, 0xF3, or 0 for "none of them"

    @property
    def map(self) -> tuple[int, ...]:
        """The opcode map: (), (0x0F,), (0x0F, 0x38) or (0x0F, 0x3A)."""
        if self.opcode[:2] in ([0x0F, 0x38], [0x0F, 0x3A]):
            return tuple(self.opcode[:2])
        if self.opcode[:1] == [0x0F]:
            return (0x0F,)
        return ()

    @property
    def primary(self) -> int:
        return self.opcode[len(self.map)]

    def text(self) -> str:
        parts = []
        if self.pfx:
            parts.append(f"{self.pfx:02X}")
        for i, b in enumerate(self.opcode):
            s = f"{b:02X}"
            if i == len(self.opcode) - 1 and self.low_field:
                s += "+" + self.low_field
            parts.append(s)
        if self.fixed_modrm is not None:
            parts.append(f"{self.fixed_modrm:02X}")
        elif self.modrm is not None:
            parts.append("/" + self.modrm)
        if self.mod:
            parts.append(self.mod)
        parts.extend(self.imms)
        return " ".join(parts)


@dataclass
class Form:
    """One encoding form of one instruction, resolved and checked."""

    name: str
    insn: A.Insn
    file: str
    line: int
    mnemonics: dict[str | None, str]  # variant (None, "o16", "o32") -> capstone mnemonic
    enc: Encoding
    operands: list[A.Operand]
    width: int | str  # 8, 16, 32 or "v"
    flag_actions: dict[str, set[str]]  # flag -> {test, mod, set, clear, undef}
    privilege_text: str
    modes: tuple[str, ...]
    prefixes: tuple[str, ...]
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    rule: str
    rule_arg: str | None
    has_semantics: bool

    @property
    def source(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def sensitive(self) -> bool:
        return bool(self.reads or self.writes)

    @property
    def base_mnemonics(self) -> list[str]:
        """The distinct mnemonics this form decodes to, with {cc} expanded."""
        out: list[str] = []
        for m in self.mnemonics.values():
            for x in expand_cc(m):
                if x not in out:
                    out.append(x)
        return out

    def optype(self, op: A.Operand) -> OpType:
        return OPTYPES[op.type]

    def memory_operand(self) -> A.Operand | None:
        for op in self.operands:
            if OPTYPES[op.type].kind in ("rm", "mem", "addr", "moffs") or op.type in ("mmrm", "xmmrm"):
                return op
        return None


CC_NAMES = ("o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g")


def expand_cc(mnemonic: str) -> list[str]:
    if "{cc}" not in mnemonic:
        return [mnemonic]
    return [mnemonic.replace("{cc}", c) for c in CC_NAMES]


@dataclass
class Spec:
    root: Path
    files: list[A.SpecFile]
    bits: dict[str, A.Bits]
    consts: dict[str, A.Const]
    privstates: dict[str, A.PrivState]
    builtins: dict[str, A.Builtin]
    macros: dict[str, A.Macro]
    fns: dict[str, A.FnDef]
    procs: dict[str, A.Proc]
    flagfns: dict[str, A.FlagFn]
    templates: dict[str, A.Template]
    forms: list[Form]
    facts: dict[str, A.Fact] = field(default_factory=dict)
    choices: list[A.Choice] = field(default_factory=list)

    def form(self, name: str) -> Form:
        for f in self.forms:
            if f.name == name:
                return f
        raise KeyError(name)


def spec_files(spec_dir: Path) -> list[Path]:
    # The prelude first; the rest in name order, so generation is deterministic.
    files = sorted(spec_dir.glob(f"*{SPEC_SUFFIX}"), key=lambda p: (p.name != f"prelude{SPEC_SUFFIX}", p.name))
    return files


def load_spec(root: Path, spec_dir: Path | None = None) -> Spec:
    spec_dir = spec_dir or root / "spec"
    files = [parse_file(p, root) for p in spec_files(spec_dir)]
    if not files:
        raise A.SpecError(None, f"no spec files (*{SPEC_SUFFIX}) in {spec_dir}")
    return Resolver(root, files).resolve()


# Names the semantics may read without declaring them: the machine's state and the
# per-form constants. See spec/README.md, "Names".
GPR32 = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
GPR16 = ("ax", "cx", "dx", "bx", "sp", "bp", "si", "di")
GPR8 = ("al", "cl", "dl", "bl", "ah", "ch", "dh", "bh")
SEGREGS = ("es", "cs", "ss", "ds", "fs", "gs")
READONLY_STATE = (
    "cpl",
    "mode",
    "stack32",
    "code32",
    "cr0",
    "cr2",
    "cr3",
    "cr4",
    "dr0",
    "dr1",
    "dr2",
    "dr3",
    "dr6",
    "dr7",
    "gdtr_base",
    "gdtr_limit",
    "idtr_base",
    "idtr_limit",
    "ldtr",
    "ldtr_base",
    "ldtr_limit",
    "tr",
    "tr_base",
    "tr_limit",
    "tr_attr",
    *SEGREGS,
)
# Registers of the x87 unit and SSE that semantics name directly, with their widths: SSE's
# control and status register, the x87 status, control and abridged tag words and its last
# instruction and operand pointers. The XMM, MMX and x87 data registers are operands (and fpr).
SIMD_STATE_WIDTHS = {
    "mxcsr": 32,
    "fsw": 16,
    "fcw": 16,
    "ftw": 8,
    "fip": 32,
    "fcs": 16,
    "fdp": 32,
    "fds": 16,
    "fop": 11,
}
SIMD_STATE = tuple(SIMD_STATE_WIDTHS)
WRITABLE_STATE = (*GPR32, *GPR16, *GPR8, "eip", "eflags", *SIMD_STATE)
FORM_CONSTANTS = ("w", "osize", "asize", "cc", "dseg", "insn_eip", "x87_opcode")
INTRINSICS = {  # name -> number of arguments; implemented by the generator, not the machine
    "reg": 2,
    "parity": 1,
    "sx": 2,
    "addr": 1,
    "seg": 1,
    "uses_esp": 1,
    "in_memory": 1,
    "st_index": 1,
}


class Resolver:
    def __init__(self, root: Path, files: list[A.SpecFile]) -> None:
        self.root = root
        self.files = files
        self.where: dict[str, A.Loc] = {}
        self.spec = Spec(root, files, {}, {}, {}, {}, {}, {}, {}, {}, {}, [])

    def _declare(self, table: dict, name: str, item, loc: A.Loc, what: str) -> None:
        if name in self.where:
            raise A.SpecError(loc, f"{what} {name!r} is already defined at {self.where[name]}")
        hides = name in FORM_CONSTANTS or name in INTRINSICS or name in WRITABLE_STATE or name in READONLY_STATE
        if hides and what != "bits":  # bit layouts describe the machine's own registers
            raise A.SpecError(loc, f"{what} {name!r} would hide a built-in name")
        self.where[name] = loc
        table[name] = item

    def resolve(self) -> Spec:
        s = self.spec
        insns: list[tuple[A.Insn, str]] = []
        for f in self.files:
            for item in f.items:
                match item:
                    case A.Bits():
                        self._declare(s.bits, item.name, item, item.loc, "bits")
                    case A.Const():
                        self._declare(s.consts, item.name, item, item.loc, "constant")
                    case A.PrivState():
                        if item.name in s.privstates:
                            raise A.SpecError(item.loc, f"privstate {item.name!r} declared twice")
                        s.privstates[item.name] = item
                    case A.Builtin():
                        self._declare(s.builtins, item.name, item, item.loc, "builtin")
                    case A.Macro():
                        self._declare(s.macros, item.name, item, item.loc, "macro")
                    case A.FnDef():
                        self._declare(s.fns, item.name, item, item.loc, "fn")
                    case A.Proc():
                        self._declare(s.procs, item.name, item, item.loc, "proc")
                    case A.FlagFn():
                        if item.name in s.flagfns:
                            raise A.SpecError(
                                item.loc, f"flagfn {item.name!r} is already defined at {s.flagfns[item.name].loc}"
                            )
                        s.flagfns[item.name] = item
                    case A.Fact():
                        self._declare(s.facts, item.name, item, item.loc, "fact")
                    case A.Choose():
                        if s.choices:
                            raise A.SpecError(item.loc, f"one `choose` block only (the first is at {s.choices[0].loc})")
                        s.choices = list(item.choices) or [A.Choice(A.Name(item.loc, "false"), "ident", "", item.loc)]
                    case A.Template():
                        if item.name in s.templates:
                            # An alternate: another template of the name, for the instances its
                            # `when` covers; the translator emits the first whose `when` holds.
                            first = s.templates[item.name]
                            if not (_has_when(first) and _has_when(item)):
                                raise A.SpecError(
                                    item.loc,
                                    f"template {item.name!r} is already defined (alternates need `when` lines)",
                                )
                            n = 2
                            while f"{item.name}{ALTERNATE}{n}" in s.templates:
                                n += 1
                            item = dataclasses.replace(item, name=f"{item.name}{ALTERNATE}{n}")
                        s.templates[item.name] = item
                    case A.Insn():
                        insns.append((item, f.path))
        self._check_flagfns()
        self._check_choices()
        names: dict[str, A.Loc] = {}
        for insn, path in insns:
            if insn.name in names:
                raise A.SpecError(insn.loc, f"insn {insn.name} is already defined at {names[insn.name]}")
            names[insn.name] = insn.loc
            s.forms.append(self._form(insn, path))
        from ring1.codegen.decodetable import build_decode_table  # the collision check needs every form

        build_decode_table(s.forms)
        from ring1.codegen.emit import check_semantics

        check_semantics(s)
        return s

    def _check_flagfns(self) -> None:
        for fn in self.spec.flagfns.values():
            seen: set[str] = set()
            for flag, _, loc in fn.assigns:
                if flag not in STATUS_FLAGS:
                    raise A.SpecError(
                        loc, f"a flagfn computes status flags only ({', '.join(STATUS_FLAGS)}), not {flag!r}"
                    )
                if flag in seen:
                    raise A.SpecError(loc, f"flag {flag} assigned twice in flagfn {fn.name}")
                seen.add(flag)

    # ------------------------------------------------------------ one instruction

    def _form(self, insn: A.Insn, path: str) -> Form:
        for required in ("mnemonic", "encoding", "privilege", "sensitive", "translate"):
            if required not in insn.seen:
                raise A.SpecError(insn.loc, f"insn {insn.name} has no {required!r} line")
        enc = self._encoding(insn)
        operands = insn.operands or []
        seen_ops: set[str] = set()
        for op in operands:
            if op.type not in OPTYPES:
                raise A.SpecError(
                    op.loc, f"unknown operand type {op.type!r}; known types: {', '.join(sorted(OPTYPES))}"
                )
            if op.name in seen_ops:
                raise A.SpecError(op.loc, f"operand {op.name!r} listed twice")
            if op.name in WRITABLE_STATE or op.name in READONLY_STATE or op.name in FORM_CONSTANTS:
                raise A.SpecError(op.loc, f"operand name {op.name!r} would hide a machine register or constant")
            seen_ops.add(op.name)
        self._check_operands_fit(insn, enc, operands)
        width = self._width(insn, operands)
        mnemonics = self._mnemonics(insn)
        flag_actions = self._flags(insn)
        reads, writes = self._sensitivity(insn)
        rule, rule_arg = self._translate(insn)
        modes = tuple(insn.modes) if insn.modes else ("real", "prot", "v86")
        prefixes = tuple(insn.prefixes or ())
        if ("rep" in prefixes) and ("repe" in prefixes or "repne" in prefixes):
            raise A.SpecError(insn.loc, "a form takes either `rep` or `repe repne`, not both")
        if insn.privilege_exc is not None and insn.privilege is None:
            raise A.SpecError(insn.privilege_loc, "`privilege any` cannot name an exception")
        return Form(
            name=insn.name,
            insn=insn,
            file=path,
            line=insn.loc.line,
            mnemonics=mnemonics,
            enc=enc,
            operands=operands,
            width=width,
            flag_actions=flag_actions,
            privilege_text=insn.privilege_text or "any",
            modes=modes,
            prefixes=prefixes,
            reads=reads,
            writes=writes,
            rule=rule,
            rule_arg=rule_arg,
            has_semantics=insn.semantics is not None,
        )

    def _encoding(self, insn: A.Insn) -> Encoding:
        enc = Encoding(opcode=[])
        stage = "opcode"  # opcode -> modrm -> imm
        for item in insn.encoding:
            k, t, loc = item.kind, item.text, item.loc
            if k == "byte":
                if stage == "opcode":
                    enc.opcode.append(int(t, 16))
                    if _opcode_complete(enc.opcode):
                        stage = "after-opcode"
                elif stage == "after-opcode" and enc.modrm is None and enc.fixed_modrm is None:
                    enc.fixed_modrm = int(t, 16)
                    stage = "modrm"
                else:
                    raise A.SpecError(loc, f"opcode byte {t} after the ModRM or an immediate")
            elif k in ("opreg", "opcc"):
                if stage != "opcode":
                    raise A.SpecError(loc, f"{t} must be the last opcode byte")
                base = int(t[:2], 16)
                field_ = "r" if k == "opreg" else "cc"
                span = 8 if field_ == "r" else 16
                if base % span:
                    raise A.SpecError(loc, f"{t}: the base opcode must have its low {3 if span == 8 else 4} bits clear")
                enc.opcode.append(base)
                enc.low_field = field_
                if not _opcode_complete(enc.opcode):
                    raise A.SpecError(loc, f"{t} is not in an opcode position")
                stage = "after-opcode"
            elif k in ("modrm_r", "modrm_digit"):
                if stage != "after-opcode":
                    raise A.SpecError(loc, f"{t} must follow the opcode bytes")
                enc.modrm = t[1:]
                stage = "modrm"
            elif k == "word":
                if t in ("mem", "reg"):
                    if enc.modrm is None and enc.fixed_modrm is None:
                        raise A.SpecError(loc, f"`{t}` restricts a ModRM, and this encoding has none")
                    enc.mod = t
                else:
                    if stage == "opcode":
                        raise A.SpecError(loc, f"immediate {t} before the opcode is complete")
                    enc.imms.append(t)
                    stage = "imm"
            elif k == "kv":
                key, _, val = t.partition("=")
                if key == "osize" or key == "asize":
                    if val not in ("16", "32"):
                        raise A.SpecError(loc, f"{key} must be 16 or 32")
                    setattr(enc, key, int(val))
                elif key == "pfx":
                    if val.upper() not in ("66", "F2", "F3", "0"):
                        raise A.SpecError(loc, "pfx must be 66, F2, F3 or 0 (none of them)")
                    enc.pfx = int(val, 16)
                elif key == "rm":
                    enc.rm = int(val, 0)
                    if not 0 <= enc.rm <= 7:
                        raise A.SpecError(loc, "rm must be 0..7")
                    enc.mod = "reg"
        if not enc.opcode:
            raise A.SpecError(insn.encoding_loc, "encoding has no opcode byte")
        if not _opcode_complete(enc.opcode):
            raise A.SpecError(
                insn.encoding_loc, "encoding ends inside a multi-byte opcode (0F, 0F 38 or 0F 3A needs another byte)"
            )
        if enc.fixed_modrm is not None:
            m = enc.fixed_modrm
            if m >> 6 != 3:
                raise A.SpecError(insn.encoding_loc, f"fixed ModRM byte {m:02X} must have mod = 11")
            enc.modrm = str((m >> 3) & 7)
            enc.mod = "reg"
            enc.rm = m & 7
        return enc

    def _check_operands_fit(self, insn: A.Insn, enc: Encoding, operands: list[A.Operand]) -> None:
        imms = [i for i in enc.imms]
        imm_ops = [op for op in operands if OPTYPES[op.type].kind in ("imm", "simm", "rel", "far", "moffs")]
        if len(imm_ops) != len(imms):
            loc = insn.encoding_loc
            raise A.SpecError(
                loc,
                f"the encoding has {len(imms)} immediate field(s) ({' '.join(imms) or 'none'}) "
                f"but {len(imm_ops)} operand(s) take one ({', '.join(o.name for o in imm_ops) or 'none'})",
            )
        for op, imm in zip(imm_ops, imms, strict=True):
            kind = OPTYPES[op.type].kind
            ok = {
                "imm": ("ib", "iw", "id", "iv"),
                "simm": ("ib",),
                "rel": ("cb", "cv"),
                "far": ("cp",),
                "moffs": ("mo",),
            }[kind]
            if imm not in ok:
                raise A.SpecError(op.loc, f"operand {op.name}: {op.type} does not take the immediate {imm}")
            t = OPTYPES[op.type]
            want = {8: "ib", 16: "iw", 32: "id", "v": "iv"}
            if kind == "imm" and want[t.width] != imm:
                raise A.SpecError(op.loc, f"operand {op.name}: {op.type} needs {want[t.width]}, the encoding has {imm}")
            if kind == "rel" and {8: "cb", "v": "cv"}[t.width] != imm:
                raise A.SpecError(op.loc, f"operand {op.name}: {op.type} does not match the immediate {imm}")
        reg_field = [
            op
            for op in operands
            if OPTYPES[op.type].kind in ("reg", "sreg", "creg", "dreg") or op.type in ("mm", "xmm")
        ]
        rm_field = [
            op for op in operands if OPTYPES[op.type].kind in ("rm", "mem", "addr") or op.type in ("mmrm", "xmmrm")
        ]
        low = [op for op in operands if OPTYPES[op.type].kind == "opreg"]
        if reg_field and enc.modrm != "r":
            raise A.SpecError(
                reg_field[0].loc, f"operand {reg_field[0].name} is a ModRM.reg operand; the encoding needs /r"
            )
        if len(reg_field) > 1:
            raise A.SpecError(reg_field[1].loc, "only one operand can come from ModRM.reg")
        if rm_field and enc.modrm is None:
            raise A.SpecError(
                rm_field[0].loc, f"operand {rm_field[0].name} is a ModRM.rm operand; the encoding has no ModRM"
            )
        if len(rm_field) > 1:
            raise A.SpecError(rm_field[1].loc, "only one operand can come from ModRM.rm")
        for op in rm_field:
            kind = OPTYPES[op.type].kind
            if kind in ("mem", "addr") and enc.mod != "mem":
                raise A.SpecError(op.loc, f"operand {op.name} is memory only; add `mem` to the encoding")
            if op.type == "r32rm" and enc.mod != "reg":
                raise A.SpecError(op.loc, f"operand {op.name} is a register from ModRM.rm; add `reg` to the encoding")
        if low and enc.low_field != "r":
            raise A.SpecError(
                low[0].loc, f"operand {low[0].name} comes from the opcode's low bits; write the opcode as XX+r"
            )
        if enc.modrm == "r" and not reg_field and not any(o.type in ("sti",) for o in operands):
            raise A.SpecError(insn.encoding_loc, "the encoding has /r but no operand uses ModRM.reg")

    def _width(self, insn: A.Insn, operands: list[A.Operand]) -> int | str:
        if insn.width:
            return insn.width if insn.width == "v" else int(insn.width)
        for op in operands:
            t = OPTYPES[op.type]
            if t.kind in ("reg", "rm", "mem", "imm", "opreg", "moffs", "fixed") and t.width in (8, 16, 32, "v"):
                return t.width
        return "v"

    def _mnemonics(self, insn: A.Insn) -> dict[str | None, str]:
        out: dict[str | None, str] = {}
        for m, variant, loc in insn.mnemonics:
            if variant in out:
                raise A.SpecError(loc, f"mnemonic for {variant or 'all sizes'} given twice")
            if variant in ("a16", "a32"):
                raise A.SpecError(loc, "mnemonics vary by operand size (o16, o32) only")
            out[variant] = m
        if None in out and len(out) > 1:
            raise A.SpecError(insn.mnemonics[0][2], "give one mnemonic, or one per operand size (o16, o32), not both")
        if None not in out and set(out) != {"o16", "o32"}:
            raise A.SpecError(insn.mnemonics[0][2], "per-size mnemonics need both o16 and o32")
        return out

    def _flags(self, insn: A.Insn) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for action, flags, loc in insn.flags or []:
            for f in flags:
                if f not in ALL_FLAGS:
                    raise A.SpecError(loc, f"unknown flag {f!r}; flags are {' '.join(ALL_FLAGS)}")
                acts = out.setdefault(f, set())
                if action in acts:
                    raise A.SpecError(loc, f"flag {f} is already {action}")
                writes = acts - {"test"}
                if action != "test" and writes:
                    raise A.SpecError(loc, f"flag {f} has two write actions ({next(iter(writes))} and {action})")
                acts.add(action)
        return out

    def _sensitivity(self, insn: A.Insn) -> tuple[tuple[str, ...], tuple[str, ...]]:
        reads: list[str] = []
        writes: list[str] = []
        for kind, names, loc in insn.sensitive or []:
            for n in names:
                if n not in self.spec.privstates:
                    known = " ".join(sorted(self.spec.privstates))
                    raise A.SpecError(loc, f"{n!r} is not privileged state (declare it with privstate); known: {known}")
                (reads if kind == "reads" else writes).append(n)
        return tuple(reads), tuple(writes)

    def _check_choices(self) -> None:
        """A choice's condition is made of declared facts, `rule(r, ...)` (the form's own rule is
        one of them), `and`, `or` and `not`; it picks a translate rule, or `own`."""
        rules = set(TRANSLATE_RULES)

        def check(e: A.Expr) -> None:
            match e:
                case A.Name(name=name) if name in self.spec.facts:
                    return
                case A.Name(name=name):
                    known = ", ".join(sorted(self.spec.facts)) or "none"
                    raise A.SpecError(e.loc, f"{name!r} is not a fact (declare it with `fact`); known: {known}")
                case A.Call(func="rule", args=args) if args:
                    for a in args:
                        if not isinstance(a, A.Name) or a.name not in rules:
                            raise A.SpecError(a.loc, f"rule(...) takes translate rules: {', '.join(sorted(rules))}")
                    return
                case A.BinOp(op=op) if op in ("and", "or"):
                    check(e.left)
                    check(e.right)
                    return
                case A.UnOp(op="not"):
                    check(e.operand)
                    return
            raise A.SpecError(e.loc, "a choice's condition is facts, rule(...), and, or, not")

        for c in self.spec.choices:
            if c.condition != A.Name(c.loc, "false"):
                check(c.condition)
            if c.rule not in rules and c.rule != "own":
                raise A.SpecError(c.loc, f"{c.rule!r} is not a translate rule or `own`")

    def _translate(self, insn: A.Insn) -> tuple[str, str | None]:
        rule, arg, loc = insn.translate  # type: ignore[misc]
        allowed = TRANSLATE_RULES[rule]
        if rule == "inline":
            if arg is None:
                raise A.SpecError(loc, "`translate inline` names the template that emulates the instruction")
            if arg not in self.spec.templates:
                raise A.SpecError(loc, f"no template named {arg!r}")
        elif allowed == (None,):
            if arg is not None:
                raise A.SpecError(loc, f"`translate {rule}` takes no argument")
        elif arg is None or f"{rule}_{arg}" not in self.spec.templates:
            kinds = sorted(n.removeprefix(f"{rule}_") for n in self.spec.templates if n.startswith(f"{rule}_"))
            known = ", ".join(kinds) or "none"
            raise A.SpecError(loc, f"`translate {rule}` needs a kind with a template {rule}_<kind>; known: {known}")
        return rule, arg


def _opcode_complete(op: list[int]) -> bool:
    if not op:
        return False
    if op[0] != 0x0F:
        return True
    if len(op) == 1:
        return False
    if op[1] in (0x38, 0x3A):
        return len(op) >= 3
    return True
