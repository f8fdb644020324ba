"""Assemble the spec's `template` blocks with the GNU assembler, at generation time.

Everything x86 that the VMM emits is written in the spec as assembly: the in-TC emulation
of sensitive instructions (`translate inline NAME`) and the VMM's own stubs (world switch,
indirect-branch lookup, callout entry and exit). `make generate` assembles it once into byte
strings in generated/rules.py; the translator only copies.

The assembler is the machine's own GNU `as` (with `ld` to place blobs at their address), in
Intel syntax without register prefixes (`.intel_syntax noprefix`): binutils is on every
machine that can build the guests, the syntax is the SDM's, and it is the same assembler the
guest kernels are built with, so the project needs no other tool. Comments in templates start
with `#` (`;` separates statements in GNU as). Numeric local labels (`1:`, `jne 1f`) may be
used in any template; named labels only in blobs. An assembler error is reported at the
template line it comes from: `spec/file:line:col: error: as: ...`.

Template lines may use placeholders in braces:
- `{NAME}` with an upper-case NAME: a spec `const` (vcpu field offsets, VMM addresses);
- `{dst}`, `{src}`: the guest instruction's register operands (32-bit names; `{dst16}`,
  `{src16}` for 16-bit). The template is assembled once per register combination used;
- `lea <r32>, {ea}` as a whole line: the guest instruction's own memory operand (ModRM,
  SIB, displacement), re-encoded into a LEA by the translator, so addressing is exact;
- `{seg}` at the start of a line: the guest instruction's segment-override prefix, if any;
- `j<cc> {callout}` as a whole line: a conditional exit to a callout of the guest
  instruction itself (the slow path of an in-TC emulation); the translator places the
  callout after the CCF and resumes after the template when it returns.
A first line `when osize=32 mod=reg src#=0..5` limits the template to instances with that
operand size, ModRM form and register number range; the translator makes the others callouts.
A template whose first line is `org {ADDRESS}` is a blob placed at that address; its labels
(`name:` lines) are exported with their addresses.
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ring1.codegen import ast as A
from ring1.codegen.emit import Emitter

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
_PLACE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(16|#)?\}")


@dataclass
class AssembledTemplate:
    name: str
    source: str  # spec file:line
    # Register combination -> chunks; a chunk is bytes, ("ea", reg), ("seg",) or ("callout", cc).
    variants: dict[tuple, list] = field(default_factory=dict)
    placeholders: tuple[str, ...] = ()  # operand names the variants are keyed by (register numbers)
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
            if not n.isupper() and n not in ("ea", "seg", "callout") and n not in names:
                names.append(n)
    return tuple(names)


def _arith(expr: str, loc: A.Loc) -> int:
    """A constant address expression such as `4290772992 + 73728` (numbers and + - * only)."""
    if not re.fullmatch(r"[0-9a-fA-Fx+\-* ()]+", expr):
        raise AsmError(loc, f"org takes a constant expression, not {expr!r}")
    return int(eval(expr, {"__builtins__": {}}))


def _tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise AsmError(None, f"GNU binutils' `{name}` is needed to assemble the spec's templates (install binutils)")
    return exe


class _Source:
    """A GNU as source being built, with the spec location of every line that came from one."""

    def __init__(self) -> None:
        self.lines: list[str] = [".intel_syntax noprefix", ".code32", ".text"]
        self.locs: list[A.Loc | None] = [None, None, None]

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


def assemble_all(spec) -> dict[str, AssembledTemplate]:
    consts = _const_values(spec)
    out: dict[str, AssembledTemplate] = {}
    # One source for every template: each assembled piece between two labels.
    src = _Source()
    pieces = 0
    plan: dict[str, dict[tuple, list]] = {}
    blobs: list[tuple[A.Template, list[tuple[str, A.Loc]], int]] = []
    for t in spec.templates.values():
        loc = t.loc
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
        if len(used) > 2:
            raise AsmError(loc, f"template {t.name}: at most two operand placeholders, not {', '.join(used)}")
        for key, value in at.when.items():
            ranged = key.endswith("#") and key[:-1] in used and re.fullmatch(r"[0-7]\.\.[0-7]", value)
            if key not in ("osize", "mod") and not ranged:
                raise AsmError(loc, f"template {t.name}: `when {key}={value}` is not osize=, mod= or <operand>#=lo..hi")
        at.placeholders = used
        plan[t.name] = {}
        for combo in itertools.product(range(8), repeat=len(used)):
            key = tuple(combo)
            regs = dict(zip(used, combo, strict=True))
            chunks: list = []
            group: list[tuple[str, A.Loc]] = []

            def flush(group=group, chunks=chunks) -> None:
                nonlocal pieces
                if group:
                    pieces += 1
                    label = f"p_{pieces}"
                    src.add(f"{label}_start:")
                    for text, where in group:
                        src.add(text, where)
                    src.add(f"{label}_end:")
                    chunks.append(label)
                    group.clear()

            for ln, where in numbered:
                for p, r in regs.items():
                    ln = ln.replace(f"{{{p}16}}", GPR16[r]).replace(f"{{{p}#}}", str(r)).replace(f"{{{p}}}", GPR32[r])
                m = re.fullmatch(r"lea\s+(e[a-ds][xip]|e[sd]i|e[sb]p)\s*,\s*\{ea\}", ln)
                if m:
                    flush()
                    chunks.append(("ea", GPR32.index(m.group(1))))
                    continue
                m = re.fullmatch(r"(j[a-z]+)\s+\{callout\}", ln)
                if m:
                    if m.group(1) not in CONDITION_CODES:
                        raise AsmError(where, f"template {t.name}: {m.group(1)} is not a conditional jump")
                    flush()
                    chunks.append(("callout", CONDITION_CODES[m.group(1)]))
                    continue
                if ln.startswith("{seg}"):
                    flush()
                    chunks.append(("seg",))
                    ln = ln[len("{seg}") :].strip()
                if "{" in ln:
                    raise AsmError(where, f"template {t.name}: placeholder left in {ln!r}")
                if re.match(r"[A-Za-z_.][\w.]*:", ln):
                    raise AsmError(where, f"template {t.name}: named labels only in blobs (`org`); use `1:` and `1f`")
                group.append((ln, where))
            flush()
            plan[t.name][key] = chunks
    binary, symbols = _assemble(src, 0, "templates")
    for name, variants in plan.items():
        at = out[name]
        for key, chunks in variants.items():
            at.variants[key] = [
                binary[symbols[f"{c}_start"] : symbols[f"{c}_end"]] if isinstance(c, str) else c for c in chunks
            ]
    for t, numbered, origin in blobs:
        blob = _Source()
        for text, where in numbered:
            if "{" in text:
                raise AsmError(where, f"template {t.name}: placeholder left in {text!r}")
            blob.add(text, where)
        binary, symbols = _assemble(blob, origin, t.name)
        at = out[t.name]
        at.variants[()] = [binary]
        at.labels = {k: v + origin for k, v in symbols.items()}
    return out


_AS_MESSAGE = re.compile(r"^[^:]*\.s:(\d+): (?:Error|Warning): (.*)$")


def _assemble(src: _Source, origin: int, what: str) -> tuple[bytes, dict[str, int]]:
    """Assemble with `as`, then link at `origin` with `ld` so that absolute references to labels
    are right; returns the code (from `origin` on) and its labels, relative to `origin`."""
    with tempfile.TemporaryDirectory() as d:
        asm_file, obj, elf = Path(d, "t.s"), Path(d, "t.o"), Path(d, "t.elf")
        asm_file.write_text(src.text())
        r = subprocess.run(
            [_tool("as"), "--32", "--fatal-warnings", "-o", str(obj), str(asm_file)], capture_output=True, text=True
        )
        if r.returncode != 0:
            for line in r.stderr.splitlines():
                m = _AS_MESSAGE.match(line)
                if m:
                    n = int(m.group(1))
                    where = src.locs[n - 1] if 0 < n <= len(src.locs) else None
                    raise AsmError(where, f"template {what}: as: {m.group(2)}")
            first = (r.stderr.strip().splitlines() or ["?"])[0]
            raise AsmError(None, f"template {what}: as: {first}")
        _check_defined(obj.read_bytes(), src, what)
        link = [_tool("ld"), "-m", "elf_i386", "-N", f"-Ttext={origin:#x}", "-e", f"{origin:#x}"]
        r = subprocess.run(
            [*link, "-o", str(elf), str(obj)],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            first = (r.stderr.strip().splitlines() or ["?"])[0]
            raise AsmError(None, f"template {what}: ld: {first}")
        code, linked = _text_and_symbols(elf.read_bytes(), origin)
        _, own = _text_and_symbols(obj.read_bytes(), 0)
        return code, {name: linked[name] for name in own}  # the source's labels, not the linker's


def _check_defined(image: bytes, src: _Source, what: str) -> None:
    """A label used but never defined is the template's mistake: report it where it is used."""
    import io

    from elftools.elf.elffile import ELFFile

    symtab = ELFFile(io.BytesIO(image)).get_section_by_name(".symtab")
    for sym in symtab.iter_symbols() if symtab is not None else ():
        if sym.name and sym["st_shndx"] == "SHN_UNDEF":
            used = re.compile(rf"(?<![\w.]){re.escape(sym.name)}(?![\w.])")
            uses = (loc for line, loc in zip(src.lines, src.locs, strict=True) if loc and used.search(line))
            where = next(uses, None)
            raise AsmError(where, f"template {what}: label {sym.name!r} is not defined")


def _text_and_symbols(image: bytes, origin: int) -> tuple[bytes, dict[str, int]]:
    """The .text section of an ELF file and its labels (label -> offset from `origin`)."""
    import io

    from elftools.elf.elffile import ELFFile

    elf = ELFFile(io.BytesIO(image))
    text = elf.get_section_by_name(".text")
    code = text.data() if text is not None else b""
    symbols: dict[str, int] = {}
    symtab = elf.get_section_by_name(".symtab")
    index = elf.get_section_index(".text") if text is not None else -1
    for sym in symtab.iter_symbols() if symtab is not None else ():
        if sym.name and sym["st_shndx"] == index and sym["st_info"]["type"] in ("STT_NOTYPE", "STT_FUNC"):
            symbols[sym.name] = sym["st_value"] - origin
    return code, symbols
