"""Coverage: one record per mnemonic, from the generated form table."""

from __future__ import annotations

from pathlib import Path

from ring1.generated.forms import FORMS

CC = ("o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g")


def _expand(m: str) -> list[str]:
    return [m.replace("{cc}", c) for c in CC] if "{cc}" in m else [m]


class _State:
    """A CPU state to evaluate privilege predicates against."""

    def __init__(self, cpl: int, iopl: int) -> None:
        self.cpl, self.mode, self.eflags = cpl, 1, 0x2 | iopl << 12
        self.cr = [0x11, 0, 0, 0, 0]


def never_traps_in_protected_mode(form) -> bool:
    """The privilege predicate holds at every CPL and IOPL in protected mode (outside v86):
    the instruction never faults for privilege there, whatever it does silently."""
    code = form.privilege_code
    if code is None:
        return True
    if "$" in code or "b_" in code or "p_" in code:
        return False  # depends on an operand or on other state (the I/O bitmap): not unconditional
    for cpl in range(4):
        for iopl in range(4):
            if not eval(code, {"S": _State(cpl, iopl)}):  # the predicate is generated from the spec
                return False
    return True


def coverage() -> list[dict]:
    by_mnemonic: dict[str, list] = {}
    for f in FORMS.values():
        names: list[str] = []
        for m in f.mnemonics.values():
            for x in _expand(m):
                if x not in names:
                    names.append(x)
        for name in names:
            by_mnemonic.setdefault(name, []).append(f)
    records = []
    for name in sorted(by_mnemonic):
        forms = by_mnemonic[name]
        privileges: list[str] = []
        for f in forms:
            if f.privilege not in privileges:
                privileges.append(f.privilege)
        rules: list[str] = []
        for f in forms:
            rule = f.rule if f.rule_arg is None else f"{f.rule} {f.rule_arg}"
            if rule not in rules:
                rules.append(rule)
        reads = sorted({r for f in forms for r in f.reads})
        writes = sorted({w for f in forms for w in f.writes})
        sensitive = bool(reads or writes)
        stealth_forms = [f.name for f in forms if (f.reads or f.writes) and never_traps_in_protected_mode(f)]
        records.append(
            {
                "mnemonic": name,
                "forms": len(forms),
                "form_names": [f.name for f in forms],
                "semantics": all(f.semantics for f in forms),
                "sensitive": sensitive,
                "privilege": " | ".join(privileges),
                "stealth": bool(stealth_forms),
                "stealth_forms": stealth_forms,
                "reads": reads,
                "writes": writes,
                "translate": rules,
                "family": Path(forms[0].source.split(":")[0]).stem,
                "source": forms[0].source,
            }
        )
    return records
