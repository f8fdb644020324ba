"""Assemble the spec's `template` blocks with nasm, at generation time.

Everything x86 that the VMM emits is written in the spec as assembly: the in-TC emulation
of sensitive instructions (`translate inline NAME`) and the VMM's own stubs (world switch,
indirect-branch lookup, callout entry and exit). `make generate` assembles it once, with
the machine's nasm, into byte strings in generated/rules.py; the translator only copies.

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


def _nasm() -> str:
    exe = shutil.which("nasm")
    if exe is None:
        raise AsmError(None, "nasm is needed to assemble the spec's templates (install nasm)")
    return exe


def assemble_all(spec) -> dict[str, AssembledTemplate]:
    consts = _const_values(spec)
    out: dict[str, AssembledTemplate] = {}
    # One nasm source for every template: each assembled piece between two labels.
    src = ["bits 32"]
    pieces: list[tuple[str, tuple, int, A.Loc]] = []  # (template, variant key, chunk index, loc)
    plan: dict[str, dict[tuple, list]] = {}
    blobs: list[tuple[A.Template, list[str], int]] = []
    for t in spec.templates.values():
        loc = t.loc
        lines = [_substitute_consts(ln.strip(), consts, loc) for ln in t.lines if ln.strip()]
        at = AssembledTemplate(t.name, f"{loc.file}:{loc.line}")
        out[t.name] = at
        if lines and lines[0].startswith("org "):
            at.origin = _arith(lines[0].split(None, 1)[1], loc)
            blobs.append((t, lines[1:], at.origin))
            continue
        if lines and lines[0].startswith("when "):
            at.when = dict(item.split("=", 1) for item in lines[0].split()[1:])
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
            group: list[str] = []

            def flush(group=group, chunks=chunks, key=key, t=t) -> None:
                if group:
                    idx = len(chunks)
                    pieces.append((t.name, key, idx, t.loc))
                    label = f"p_{len(pieces)}"
                    src.append(f"{label}_start:")
                    src.extend(group)
                    src.append(f"{label}_end:")
                    chunks.append(label)
                    group.clear()

            for ln in lines:
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
                        raise AsmError(t.loc, f"template {t.name}: {m.group(1)} is not a conditional jump")
                    flush()
                    chunks.append(("callout", CONDITION_CODES[m.group(1)]))
                    continue
                if ln.startswith("{seg}"):
                    flush()
                    chunks.append(("seg",))
                    ln = ln[len("{seg}") :].strip()
                if "{" in ln:
                    raise AsmError(t.loc, f"template {t.name}: placeholder left in {ln!r}")
                group.append(ln)
            flush()
            plan[t.name][key] = chunks
    binary, symbols = _run_nasm("\n".join(src) + "\n", "templates")
    for name, variants in plan.items():
        at = out[name]
        for key, chunks in variants.items():
            at.variants[key] = [
                binary[symbols[f"{c}_start"] : symbols[f"{c}_end"]] if isinstance(c, str) else c for c in chunks
            ]
    for t, lines, origin in blobs:
        text = f"bits 32\norg {origin}\n" + "\n".join(lines) + "\n"
        binary, symbols = _run_nasm(text, t.name)
        at = out[t.name]
        at.variants[()] = [binary]
        at.labels = {k: v for k, v in symbols.items() if not k.startswith("..")}
    return out


def _run_nasm(text: str, what: str) -> tuple[bytes, dict[str, int]]:
    with tempfile.TemporaryDirectory() as d:
        src, out, mp = Path(d, "t.asm"), Path(d, "t.bin"), Path(d, "t.map")
        src.write_text(f"[map symbols {mp}]\n" + text)
        r = subprocess.run([_nasm(), "-f", "bin", "-o", str(out), str(src)], capture_output=True, text=True)
        if r.returncode != 0:
            first = (r.stderr.strip().splitlines() or ["?"])[0]
            raise AsmError(None, f"nasm rejected template {what}: {first}")  # names the template; nasm's line
        return out.read_bytes(), _parse_map(mp.read_text())


def _parse_map(text: str) -> dict[str, int]:
    """nasm's symbol map: `Real  Virtual  Name` rows (addresses in hex) under a header line."""
    symbols: dict[str, int] = {}
    in_table = False
    for line in text.splitlines():
        if line.startswith("Real"):
            in_table = True
            continue
        parts = line.split()
        if in_table and len(parts) == 3:
            try:
                symbols[parts[2]] = int(parts[1], 16)
            except ValueError:
                continue
    return symbols
