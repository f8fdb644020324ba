"""The one encoder: x86 assembly text to machine code, by the machine's GNU binutils.

Everything ring1 emits is encoded here: the spec's templates at generation time
(ring1.codegen.asm), the benchmarks' and tests' guest programs at run time. GNU `as` is on
every machine that can build the guests (binutils), its Intel syntax is the SDM's, and it
picks every encoding itself, so ring1 keeps no opcode table of its own.

Text is Intel syntax without register prefixes (`.intel_syntax noprefix`) in 32-bit mode
(`.code16` switches for real-mode code); comments start with `#`. With an `origin`, the code is
linked there by `ld`, so absolute references to labels are right; without one (`origin=None`)
it stays relocatable, and the references to symbols it does not define (the names in
`external`) come back as relocations for the caller to fill in.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

HEADER = (".intel_syntax noprefix", ".code32", ".text")
R_386_32, R_386_PC32 = 1, 2
_MESSAGE = re.compile(r"^[^:]*\.s:(\d+): (?:Error|Warning): (.*)$")


class AssemblerError(Exception):
    """The text was rejected: `line` is 1-based in the caller's text (None: no line known)."""

    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line
        self.message = message


@dataclass(frozen=True)
class Relocation:
    kind: str  # "abs32" (an immediate or displacement) or "rel32" (a branch target)
    symbol: str
    addend: int  # what the field holds: the value is symbol + addend (- the field's address, rel32)


@dataclass(frozen=True)
class Assembled:
    code: bytes
    labels: dict[str, int]  # the text's own labels: addresses (offsets when relocatable)
    relocations: dict[int, Relocation] = field(default_factory=dict)  # offset -> reference


def tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise AssemblerError(None, f"GNU binutils' `{name}` is needed to assemble x86 code (install binutils)")
    return exe


def assemble(text: str, origin: int | None = 0, external: Iterable[str] = ()) -> Assembled:
    """Assemble `text`; cached, so a program built once per run costs one `as` call."""
    return _assemble(text, origin, frozenset(external))


@lru_cache(maxsize=512)
def _assemble(text: str, origin: int | None, external: frozenset[str]) -> Assembled:
    source = "\n".join(HEADER) + "\n" + text + "\n"
    with tempfile.TemporaryDirectory() as d:
        asm_file, obj, elf = Path(d, "t.s"), Path(d, "t.o"), Path(d, "t.elf")
        asm_file.write_text(source)
        r = subprocess.run(
            [tool("as"), "--32", "--fatal-warnings", "-o", str(obj), str(asm_file)], capture_output=True, text=True
        )
        if r.returncode != 0:
            for line in r.stderr.splitlines():
                m = _MESSAGE.match(line)
                if m:
                    n = int(m.group(1)) - len(HEADER)
                    raise AssemblerError(n if n > 0 else None, f"as: {m.group(2)}")
            raise AssemblerError(None, "as: " + (r.stderr.strip().splitlines() or ["?"])[0])
        image = obj.read_bytes()
        _check_defined(image, text, external)
        code, own = _text_and_labels(image, 0)
        if origin is None:
            return Assembled(code, own, _relocations(image, code))
        link = [tool("ld"), "-m", "elf_i386", "-N", f"-Ttext={origin:#x}", "-e", f"{origin:#x}"]
        r = subprocess.run([*link, "-o", str(elf), str(obj)], capture_output=True, text=True)
        if r.returncode != 0:
            raise AssemblerError(None, "ld: " + (r.stderr.strip().splitlines() or ["?"])[0])
        code, linked = _text_and_labels(elf.read_bytes(), origin)
        return Assembled(code, {name: linked[name] + origin for name in own})  # the text's labels, not ld's


def _elf(image: bytes):
    from elftools.elf.elffile import ELFFile

    return ELFFile(io.BytesIO(image))


def _check_defined(image: bytes, text: str, external: frozenset[str]) -> None:
    """A label used but never defined (and not external): reported at its first use."""
    symtab = _elf(image).get_section_by_name(".symtab")
    for sym in symtab.iter_symbols() if symtab is not None else ():
        if sym.name and sym["st_shndx"] == "SHN_UNDEF" and sym.name not in external:
            used = re.compile(rf"(?<![\w.]){re.escape(sym.name)}(?![\w.])")
            line = next((i for i, ln in enumerate(text.splitlines(), 1) if used.search(ln.split("#")[0])), None)
            raise AssemblerError(line, f"label {sym.name!r} is not defined")


def _relocations(image: bytes, code: bytes) -> dict[int, Relocation]:
    elf = _elf(image)
    rel = elf.get_section_by_name(".rel.text")
    if rel is None:
        return {}
    symtab = elf.get_section(rel["sh_link"])
    out: dict[int, Relocation] = {}
    for entry in rel.iter_relocations():
        offset, kind = entry["r_offset"], entry["r_info_type"]
        name = symtab.get_symbol(entry["r_info_sym"]).name
        if kind not in (R_386_32, R_386_PC32) or not name:
            raise AssemblerError(None, f"a reference that cannot be filled in (relocation type {kind} to {name!r})")
        addend = int.from_bytes(code[offset : offset + 4], "little", signed=True)
        out[offset] = Relocation("abs32" if kind == R_386_32 else "rel32", name, addend)
    return out


def _text_and_labels(image: bytes, origin: int) -> tuple[bytes, dict[str, int]]:
    """The .text section of an ELF file and its labels (label -> offset from `origin`)."""
    elf = _elf(image)
    text = elf.get_section_by_name(".text")
    code = text.data() if text is not None else b""
    labels: dict[str, int] = {}
    symtab = elf.get_section_by_name(".symtab")
    index = elf.get_section_index(".text") if text is not None else -1
    for sym in symtab.iter_symbols() if symtab is not None else ():
        if sym.name and sym["st_shndx"] == index and sym["st_info"]["type"] in ("STT_NOTYPE", "STT_FUNC"):
            labels[sym.name] = sym["st_value"] - origin
    return code, labels
