"""The decode table: which form an opcode, ModRM and prefixes select.

Keys are (opcode map, opcode byte); each key holds the candidate forms with the
conditions that select them, most specific first. Two forms whose conditions can both
hold for one byte sequence, at the same specificity, are a spec error: the spec must
say which instruction a byte sequence is.
"""

from __future__ import annotations

from dataclasses import dataclass

from ring1.codegen import ast as A


@dataclass(frozen=True)
class Candidate:
    form: str
    exact: bool  # the opcode byte is written out, not one of XX+r / XX+cc
    reg: int | None  # ModRM.reg, when the encoding fixes it (/digit)
    mod: str | None  # "mem", "reg" or None
    rm: int | None  # ModRM.rm with mod = 11, when fixed
    osize: int | None
    asize: int | None
    pfx: int | None  # 0x66, 0xF2, 0xF3, 0 (none of them) or None (prefixes have their usual meaning)
    has_modrm: bool

    def specificity(self) -> int:
        return (
            int(self.exact)
            + sum(x is not None for x in (self.reg, self.mod, self.rm, self.osize, self.asize))
            + (2 if self.pfx not in (None, 0) else int(self.pfx == 0))
        )

    def overlaps(self, other: Candidate) -> bool:
        def meet(a, b) -> bool:
            return a is None or b is None or a == b

        if not (meet(self.reg, other.reg) and meet(self.mod, other.mod) and meet(self.osize, other.osize)):
            return False
        if not meet(self.asize, other.asize):
            return False
        if self.rm is not None and other.rm is not None and self.rm != other.rm:
            return False
        if (self.rm is not None and other.mod == "mem") or (other.rm is not None and self.mod == "mem"):
            return False
        return meet(self.pfx, other.pfx) or (self.pfx is None or other.pfx is None)


def build_decode_table(forms) -> dict[tuple[tuple[int, ...], int], list[Candidate]]:
    table: dict[tuple[tuple[int, ...], int], list[Candidate]] = {}
    origin: dict[str, object] = {f.name: f for f in forms}
    for f in forms:
        e = f.enc
        if e.low_field == "r":
            bytes_ = range(e.primary, e.primary + 8)
        elif e.low_field == "cc":
            bytes_ = range(e.primary, e.primary + 16)
        else:
            bytes_ = [e.primary]
        reg = int(e.modrm) if e.modrm not in (None, "r") else None
        cand = Candidate(
            form=f.name,
            exact=e.low_field is None,
            reg=reg,
            mod=e.mod,
            rm=e.rm,
            osize=e.osize,
            asize=e.asize,
            pfx=e.pfx,
            has_modrm=e.modrm is not None,
        )
        for b in bytes_:
            key = (e.map, b)
            for other in table.get(key, []):
                if other.has_modrm != cand.has_modrm:
                    o = origin[other.form]
                    raise A.SpecError(
                        f.insn.encoding_loc,
                        f"{f.name} and {other.form} (at {o.file}:{o.line}) share opcode {b:02X} "
                        "but disagree on whether a ModRM byte follows",
                    )
                if cand.overlaps(other) and cand.specificity() == other.specificity():
                    o = origin[other.form]
                    raise A.SpecError(
                        f.insn.encoding_loc,
                        f"encoding {e.text()} of {f.name} collides with {other.form} at {o.file}:{o.line}",
                    )
            table.setdefault(key, []).append(cand)
    for cands in table.values():
        cands.sort(key=lambda c: -c.specificity())
    return table
