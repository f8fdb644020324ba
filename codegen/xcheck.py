"""Cross-check the spec against capstone.

For every form, sample encodings are built from the spec (each operand size, each
register/memory kind, each condition) and disassembled by capstone. The spec and capstone
must agree on: the mnemonic, the instruction's length (checked against ring1's own
decoder, so encodings and immediates are right), the per-flag actions, and whether the
instruction is privileged. A disagreement is either fixed or recorded in the form with
`xcheck <kind> "reason"`; the rest are reported and fail the check.
"""

from __future__ import annotations

from dataclasses import dataclass

from capstone import CS_ARCH_X86, CS_MODE_16, CS_MODE_32, Cs
from capstone import x86_const as X

from ring1.codegen.emit import emit_form, form_variants
from ring1.codegen.model import CC_NAMES, Form, Spec

FLAG_NAMES = ("cf", "pf", "af", "zf", "sf", "of", "tf", "if", "df", "nt", "rf", "ac")
_CAPSTONE_ACTIONS = {"MODIFY": "mod", "SET": "set", "RESET": "clear", "UNDEFINED": "undef", "TEST": "test"}
_PREFIX_WORDS = ("lock", "rep", "repe", "repne", "repz", "repnz", "bnd", "notrack", "xacquire", "xrelease")
SIMD_FAMILIES = ("x87", "mmx", "sse")


@dataclass
class Disagreement:
    form: Form
    kind: str  # mnemonic, encoding, flags, privilege
    message: str
    accepted: str | None  # the xcheck reason, when the spec records this disagreement

    def __str__(self) -> str:
        tag = f" (kept: {self.accepted})" if self.accepted else ""
        return f"{self.form.source}: {self.form.name}: capstone {self.kind}: {self.message}{tag}"


def _md(mode: int) -> Cs:
    md = Cs(CS_ARCH_X86, mode)
    md.detail = True
    return md


_MD32 = _md(CS_MODE_32)
_MD16 = _md(CS_MODE_16)


def sample_bytes(form: Form, osize: int, mod: str | None, cc: int | None) -> bytes:
    """One encoding of the form in 32-bit code, with the given operand size and ModRM kind."""
    e = form.enc
    out = bytearray()
    if e.pfx in (0xF2, 0xF3):
        out.append(e.pfx)
    if osize == 16 and e.pfx != 0x66:
        out.append(0x66)
    if e.pfx == 0x66:
        out.append(0x66)
    if e.asize == 16:
        out.append(0x67)
    opcode = list(e.opcode)
    if e.low_field == "r":
        opcode[-1] += 1
    elif e.low_field == "cc":
        opcode[-1] += cc or 0
    out += bytes(opcode)
    if e.fixed_modrm is not None:
        out.append(e.fixed_modrm)
    elif e.modrm is not None:
        reg = 1 if e.modrm == "r" else int(e.modrm)
        if any(o.type in ("sreg",) for o in form.operands):
            reg = 3  # DS: valid for every segment-register form
        if mod == "reg" or e.mod == "reg":
            rm = e.rm if e.rm is not None else 2
            out.append(0xC0 | reg << 3 | rm)
        else:
            out.append(0x00 | reg << 3 | 0)  # [eax]
    for imm in e.imms:
        n = {
            "ib": 1,
            "iw": 2,
            "id": 4,
            "cb": 1,
            "iv": osize // 8,
            "cv": osize // 8,
            "cp": osize // 8 + 2,
            "mo": 2 if e.asize == 16 else 4,
        }[imm]
        out += bytes(n)
    return bytes(out)


def expected_mnemonic(form: Form, osize: int, cc: int | None) -> str:
    m = form.mnemonics.get(None) or form.mnemonics.get(f"o{osize}") or next(iter(form.mnemonics.values()))
    if cc is not None:
        m = m.replace("{cc}", CC_NAMES[cc])
    return m


def _capstone_flags(insn) -> dict[str, str]:
    out: dict[str, str] = {}
    fl = insn.eflags
    for name in dir(X):
        if not name.startswith("X86_EFLAGS_"):
            continue
        bit = getattr(X, name)
        if not fl & bit:
            continue
        parts = name[len("X86_EFLAGS_") :].split("_")
        action = _CAPSTONE_ACTIONS.get(parts[0])
        flag = parts[-1].lower()
        if action is None or flag not in FLAG_NAMES:
            continue
        if action == "test":
            out.setdefault(flag + "?", "test")
        else:
            out[flag] = action
    return out


def _spec_flags(form: Form, tested: set[str] | None) -> dict[str, str]:
    """The spec's flag actions; `tested`, when given, is what this variant's semantics read."""
    out: dict[str, str] = {}
    for flag in tested or ():
        out[flag + "?"] = "test"
    for flag, acts in form.flag_actions.items():
        if flag not in FLAG_NAMES:
            continue
        if "test" in acts and tested is None:
            out[flag + "?"] = "test"
        writes = acts - {"test"}
        if writes:
            out[flag] = next(iter(writes))
    return out


def _is_simd(form: Form) -> bool:
    return any(form.file.endswith(f"/{fam}.r1") for fam in SIMD_FAMILIES)


def check_form(spec: Spec, form: Form) -> list[Disagreement]:
    from ring1.runtime.isa.decoder import decode  # ring1's own decoder, from the generated tables

    accepted = {kind: reason for kind, reason, _ in form.insn.xchecks}
    out: list[Disagreement] = []

    def report(kind: str, msg: str) -> None:
        if not any(d.kind == kind and d.message == msg for d in out):
            out.append(Disagreement(form, kind, msg, accepted.get(kind)))

    seen: set[tuple] = set()
    for v in form_variants(form):
        key = (v.osize, v.mod, v.cc)
        if key in seen:
            continue
        if v.osize == 16 and form.enc.pfx is not None:
            continue  # a 66 prefix would be (or change) the mandatory prefix: a different instruction
        seen.add(key)
        code = sample_bytes(form, v.osize or 32, v.mod, v.cc)
        insns = list(_MD32.disasm(code, 0))
        if not insns:
            report("encoding", f"does not decode {code.hex(' ')}")
            continue
        insn = insns[0]
        mine = decode(code, 0, True)
        if mine.form != form.name:
            report("encoding", f"ring1's decoder reads {code.hex(' ')} as {mine.form or 'nothing'}")
        elif mine.length != insn.size:
            report("encoding", f"{code.hex(' ')}: length {mine.length}, capstone says {insn.size}")
        words = [w for w in insn.mnemonic.split() if w not in _PREFIX_WORDS]
        theirs = words[-1] if words else insn.mnemonic
        want = expected_mnemonic(form, v.osize or 32, v.cc)
        if theirs != want:
            report("mnemonic", f"{code.hex(' ')} is {theirs!r}, the spec says {want!r}")
        if not _is_simd(form):
            cs_flags = _capstone_flags(insn)
            tested = None
            if form.has_semantics and v.cc is not None:
                fc = emit_form(spec, form, v)
                tested = fc.flags_read if not fc.opaque_flags else None
            spec_flags = _spec_flags(form, tested)
            if cs_flags != spec_flags:
                diff = sorted(set(cs_flags.items()) ^ set(spec_flags.items()))
                only_cs = [f"{k}:{a}" for k, a in diff if cs_flags.get(k) == a]
                only_spec = [f"{k}:{a}" for k, a in diff if spec_flags.get(k) == a]
                report("flags", f"capstone has {' '.join(only_cs) or '-'}, the spec has {' '.join(only_spec) or '-'}")
        cs_priv = X.X86_GRP_PRIVILEGE in insn.groups
        spec_priv = form.privilege_text.replace(" ", "") in ("cpl==0",)
        if cs_priv != spec_priv:
            report(
                "privilege",
                f"capstone {'marks' if cs_priv else 'does not mark'} it privileged; "
                f"the spec says `privilege {form.privilege_text}`",
            )
    for kind, _reason, _loc in form.insn.xchecks:
        if not any(d.kind == kind for d in out):
            out.append(
                Disagreement(form, "stale", f"`xcheck {kind}` records a disagreement capstone no longer has", None)
            )
    return out


def check_spec(spec: Spec) -> list[Disagreement]:
    out: list[Disagreement] = []
    for form in spec.forms:
        out.extend(check_form(spec, form))
    return out


__all__ = ["_MD16", "Disagreement", "check_form", "check_spec", "sample_bytes"]
