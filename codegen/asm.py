"""Assemble the spec's `template` blocks with the GNU assembler, at generation time.

Everything x86 that the VMM emits is written in the spec as assembly: the in-TC emulation
of sensitive instructions (`translate inline NAME`) and the VMM's own stubs (world switch,
indirect-branch lookup, callout entry and exit). `make generate` assembles it once into byte
strings in generated/rules.py; the translator only copies.

The assembler is ring1's one encoder (ring1.runtime.isa.assembler): the machine's own GNU
`as` (with `ld` to place blobs at their address), in Intel syntax without register prefixes
(`.intel_syntax noprefix`): binutils is on every machine that can build the guests, the
syntax is the SDM's, and it is the same assembler the guest kernels are built with, so the
project needs no other tool. Comments in templates start
with `#` (`;` separates statements in GNU as). Numeric local labels (`1:`, `jne 1f`) may be
used in any template; named labels only in blobs. An assembler error is reported at the
template line it comes from: `spec/file:line:col: error: as: ...`.

Template lines may use placeholders in braces:
- `{NAME}` with an upper-case NAME: a spec `const` (vcpu field offsets, VMM addresses);
- `{dst}`, `{src}`: the guest instruction's register operands (32-bit names; `{dst16}`,
  `{src16}` for 16-bit); `{cc}`: its condition (`j{cc}` is jo .. jg). The template is
  assembled once per combination used, and the translator picks the variant;
- `{ea}` as the memory operand of one instruction (`lea eax, {ea}`, `mov eax, {ea}`): the
  guest instruction's own r/m operand (ModRM, SIB, displacement, address size; a register
  when the guest's is one), so addressing is exact;
- `{seg}` at the start of a line: a prefix for the segment the guest's operand uses;
  `{addr}`: the guest instruction's address-size prefix, if it has one (LOOP with CX);
- `{@name}:` as a whole line: a mark, whose offset the translator learns (where EAX has
  been set aside, for translating a fault back);
- `{@name}`: a value only the translator knows, 32 bits wide wherever the assembler puts it:
  an immediate or displacement (`push offset {@next}`, `lea esp, [esp + {@n}]`) or a branch
  target (`jmp {@target}`). The assembler leaves a relocation there, which generation turns
  into a ("abs32" | "rel32", "@name", addend) chunk. `jnz {@callout}` is the slow path of an
  in-TC emulation: a callout of the guest instruction itself, placed after the CCF, that
  comes back after the template. The stubs' labels (`jmp lookup`) are filled the same way.
A first line `when osize=32 mod=reg src#=0..5` limits the template to instances with that
operand size (`asize=` address size, `stack=` the stack's size, `code=` the code segment's:
16 for real-mode code), ModRM form and register numbers (ranges, comma-separated:
`dst#=0..0,3..4`); the translator makes the others callouts. Several templates may share a
name when each has a `when` line (alternates, generated as NAME, NAME/2...): the translator
emits the first that covers the instance.
A template whose first line is `org {ADDRESS}` is a blob placed at that address; its labels
(`name:` lines) are exported with their addresses.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

from ring1.codegen import ast as A
from ring1.codegen.emit import Emitter
from ring1.runtime.isa.assembler import AssemblerError, assemble

GPR32 = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
GPR16 = ("ax", "cx", "dx", "bx", "sp", "bp", "si", "di")
CONDITION_CODES = {
    name: cc
    for cc, names in enumerate(
        ("o", "no", "b c nae", "ae nb nc", "e z", "ne nz", "be na", "a nbe", "s", "ns", "p pe", "np po", "l nge",
         "ge nl", "le ng", "g nle")
    )
    for name in ("j" + n for n in names.split())
}  # fmt: skip
# A placeholder: a spec const (upper case, digits part of the name: VMM_HASH16) or an operand
# (lower case) with its 16-bit (`{src16}`) or number (`{dst#}`) suffix.
_PLACE = re.compile(r"\{([A-Z_][A-Z0-9_]*|[a-z_][a-z0-9_]*?)(16|#)?\}")


@dataclass
class AssembledTemplate:
    name: str
    source: str  # spec file:line
    # Register combination -> chunks; a chunk is bytes, ("ea", reg), ("seg",) or ("callout", cc).
    variants: dict[tuple, list] = field(default_factory=dict)
    placeholders: tuple[str, ...] = ()  # operand names the variants are keyed by (register numbers; cc)
    values: tuple[str, ...] = ()  # `{@name}` values the translator fills in (targets, immediates)
    when: dict[str, str] = field(default_factory=dict)  # the variants it handles: osize=32, mod=reg...
    origin: int | None = None  # blobs: the address the bytes are assembled for
    labels: dict[str, int] = field(default_factory=dict)  # blobs: label -> address


class AsmError(A.SpecError):
    pass


def _const_values(spec) -> dict[str, int]:
    out = {}
    for name in spec.consts:
        em = Emitter(spec, kind="const")
        out[name] = em.const_value(name, spec.consts[name].loc).const
    return out


def _substitute_consts(line: str, consts: dict[str, int], loc: A.Loc) -> str:
    """Spec constants (upper-case names) become numbers; operand placeholders stay."""

    def repl(m: re.Match) -> str:
        name = m.group(1)
        if not name.isupper():
            return m.group(0)
        if name not in consts:
            raise AsmError(loc, f"template placeholder {{{name}}} is not a spec const")
        return str(consts[name])

    return _PLACE.sub(repl, line)


def _operand_placeholders(lines: list[str]) -> tuple[str, ...]:
    names: list[str] = []
    for ln in lines:
        for m in _PLACE.finditer(ln):
            n = m.group(1)
            if not n.isupper() and n not in ("ea", "seg", "addr") and not n.startswith("@") and n not in names:
                names.append(n)
    return tuple(names)


def _arith(expr: str, loc: A.Loc) -> int:
    """A constant address expression such as `4290772992 + 73728` (numbers and + - * only)."""
    if not re.fullmatch(r"[0-9a-fA-Fx+\-* ()]+", expr):
        raise AsmError(loc, f"org takes a constant expression, not {expr!r}")
    return int(eval(expr, {"__builtins__": {}}))


class _Source:
    """A GNU as source being built, with the spec location of every line that came from one."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.locs: list[A.Loc | None] = []

    def add(self, line: str, loc: A.Loc | None = None) -> None:
        self.lines.append(line)
        self.locs.append(loc)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _line_locs(t: A.Template) -> list[A.Loc]:
    """Each template line's location (templates parsed before line locations were kept: the block's)."""
    if len(t.line_locs) == len(t.lines):
        return list(t.line_locs)
    return [t.loc] * len(t.lines)


CC_SUFFIXES = ("o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g")
# A memory operand the assembler must encode with a ModRM byte and a disp32 (EBP-based, so
# neither the moffs forms nor a SIB byte): `{ea}` is assembled as this, then the guest's own
# ModRM, SIB and displacement take its place.
_EA_STAND_IN = "[ebp + 0x5EA5EA5E]"
_EA_DISP = (0x5EA5EA5E).to_bytes(4, "little")
_VALUE = re.compile(r"\{@([a-z_][a-z0-9_]*)\}")
_VALUE_SYMBOL = "__value_"


def _placeholder_range(name: str) -> int:
    return 16 if name == "cc" else 8


def assemble_all(spec) -> dict[str, AssembledTemplate]:
    consts = _const_values(spec)
    out: dict[str, AssembledTemplate] = {}
    # One source for every template: each assembled piece between two labels.
    src = _Source()
    pieces = 0
    plan: dict[str, dict[tuple, list]] = {}
    blobs: list[tuple[A.Template, list[tuple[str, A.Loc]], int]] = []
    where_of: dict[str, A.Loc] = {}  # template -> its location, for errors found after assembling
    for t in spec.templates.values():
        loc = t.loc
        where_of[t.name] = loc
        numbered = [
            (_substitute_consts(ln.strip(), consts, where), where)
            for ln, where in zip(t.lines, _line_locs(t), strict=True)
            if ln.strip()
        ]
        lines = [ln for ln, _ in numbered]
        at = AssembledTemplate(t.name, f"{loc.file}:{loc.line}")
        out[t.name] = at
        if lines and lines[0].startswith("org "):
            at.origin = _arith(lines[0].split(None, 1)[1], numbered[0][1])
            blobs.append((t, numbered[1:], at.origin))
            continue
        if lines and lines[0].startswith("when "):
            at.when = dict(item.split("=", 1) for item in lines[0].split()[1:])
            numbered = numbered[1:]
            lines = lines[1:]
        used = _operand_placeholders(lines)
        if len([u for u in used if u != "cc"]) > 2:
            raise AsmError(loc, f"template {t.name}: at most two operand placeholders, not {', '.join(used)}")
        for key, value in at.when.items():
            ranged = key.endswith("#") and key[:-1] in used and re.fullmatch(r"[0-7]\.\.[0-7](,[0-7]\.\.[0-7])*", value)
            if key not in ("osize", "asize", "stack", "code", "mod") and not ranged:
                raise AsmError(
                    loc,
                    f"template {t.name}: `when {key}={value}` is not osize=, asize=, stack=, code=, mod= or "
                    "<operand>#=lo..hi[,lo..hi...]",
                )
        at.placeholders = used
        at.values = tuple(
            dict.fromkeys(m.group(1) for ln in lines if not re.fullmatch(r"\{@\w+\}:", ln) for m in _VALUE.finditer(ln))
        )
        plan[t.name] = {}
        for combo in itertools.product(*(range(_placeholder_range(u)) for u in used)):
            key = tuple(combo)
            regs = dict(zip(used, combo, strict=True))
            chunks: list = []
            group: list[tuple[str, A.Loc]] = []

            def flush(group=group, chunks=chunks, kind: str = "bytes") -> None:
                nonlocal pieces
                if group:
                    pieces += 1
                    label = f"p_{pieces}"
                    src.add(f"{label}_start:")
                    for text, where in group:
                        src.add(text, where)
                    src.add(f"{label}_end:")
                    chunks.append((kind, label, group[0][1]))
                    group.clear()

            for ln, where in numbered:
                for p, r in regs.items():
                    if p == "cc":
                        ln = ln.replace("{cc}", CC_SUFFIXES[r])
                        continue
                    ln = ln.replace(f"{{{p}16}}", GPR16[r]).replace(f"{{{p}#}}", str(r)).replace(f"{{{p}}}", GPR32[r])
                mark = re.fullmatch(r"\{@([a-z_][a-z0-9_]*)\}:", ln)
                if mark:
                    flush()
                    chunks.append(("mark", mark.group(1)))
                    continue
                for prefix in ("seg", "addr"):
                    if ln.startswith(f"{{{prefix}}}"):
                        flush()
                        chunks.append((prefix,))
                        ln = ln[len(prefix) + 2 :].strip()
                ln = _VALUE.sub(lambda v: _VALUE_SYMBOL + v.group(1), ln)
                if "{ea}" in ln:
                    flush()
                    group.append((ln.replace("{ea}", _EA_STAND_IN), where))
                    flush(kind="ea")
                    continue
                if "{" in ln:
                    raise AsmError(where, f"template {t.name}: placeholder left in {ln!r}")
                if re.match(r"[A-Za-z_.][\w.]*:", ln):
                    raise AsmError(where, f"template {t.name}: named labels only in blobs (`org`); use `1:` and `1f`")
                group.append((ln, where))
            flush()
            plan[t.name][key] = chunks
    stub_labels: dict[str, int] = {}
    for t, numbered, origin in blobs:
        blob = _Source()
        for text, where in numbered:
            if "{" in text:
                raise AsmError(where, f"template {t.name}: placeholder left in {text!r}")
            blob.add(text, where)
        binary, symbols, _ = _assemble(blob, origin, t.name)
        at = out[t.name]
        at.variants[()] = [binary]
        at.labels = {k: v + origin for k, v in symbols.items()}
        stub_labels.update(at.labels)
    binary, symbols, relocs = _assemble(src, None, "templates", allowed=set(stub_labels))
    for name, variants in plan.items():
        at = out[name]
        for key, chunks in variants.items():
            at.variants[key] = [
                piece
                for c in chunks
                for piece in (_piece(c, binary, symbols, relocs, name) if c[0] in ("bytes", "ea") else [c])
            ]
    return out


def _piece(chunk: tuple, binary: bytes, symbols: dict[str, int], relocs: dict[int, tuple], name: str) -> list:
    """An assembled piece as chunks: bytes, with its relocations as ("abs32" | "rel32", symbol,
    addend) and, for an `{ea}` line, ("ea", bytes before the ModRM, its reg field, bytes after)."""
    kind, label, where = chunk
    start, end = symbols[f"{label}_start"], symbols[f"{label}_end"]
    if kind == "ea":
        code = binary[start:end]
        at = code.find(_EA_DISP)
        if at < 1 or (code[at - 1] & 0xC7) != 0x85 or any(start <= r < end for r in relocs):
            raise AsmError(where, f"template {name}: {{ea}} must be a plain memory operand of one instruction")
        return [("ea", code[: at - 1], (code[at - 1] >> 3) & 7, code[at + 4 :])]
    out: list = []
    at = start
    for r in sorted(r for r in relocs if start <= r < end):
        if at < r:
            out.append(binary[at:r])
        out.append(relocs[r])
        at = r + 4
    if at < end:
        out.append(binary[at:end])
    return out


def _assemble(
    src: _Source, origin: int | None, what: str, allowed: set[str] = frozenset()
) -> tuple[bytes, dict[str, int], dict[int, tuple]]:
    """Assemble with the one encoder (ring1.runtime.isa.assembler). A blob (`origin` given) is
    linked at its address; the other templates stay relocatable: their references to values
    (`{@name}`) and to the stubs' labels (`allowed`) come back as relocations, offset ->
    ("abs32" | "rel32", "@name" or label, addend). Returns the code, the source's labels
    (relative to `origin`) and those relocations. Errors name the template line."""
    text = src.text()
    values = set(re.findall(rf"\b{_VALUE_SYMBOL}\w+", text))
    try:
        out = assemble(text, origin, external=values | set(allowed))
    except AssemblerError as e:
        where = src.locs[e.line - 1] if e.line and e.line <= len(src.locs) else None
        raise AsmError(where, f"template {what}: {e.message}") from None
    relocs = {
        offset: (
            r.kind,
            "@" + r.symbol[len(_VALUE_SYMBOL) :] if r.symbol.startswith(_VALUE_SYMBOL) else r.symbol,
            r.addend,
        )
        for offset, r in out.relocations.items()
    }
    base = origin or 0
    return out.code, {name: addr - base for name, addr in out.labels.items()}, relocs
