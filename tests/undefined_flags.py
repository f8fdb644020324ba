"""Which flags the spec leaves undefined, followed along the instructions that ran.

The spec declares, per form, the flags an instruction tests, sets to a defined value (`mod`,
`set`, `clear`) and leaves undefined (`undef`) (generated/forms.py). After a run, a flag is
undefined when its last writer left it so; comparing two machines on it says nothing (unicorn's
value even depends on where its translation blocks end). An instruction that *reads* such a flag
(ADC after BT, AAA after AND, PUSHF, LAHF, a Jcc on ZF after DIV) turns the undefined value into
defined state, so a run containing one cannot be compared at all.

Used by the differential tests (tests/diff: single forms and straight-line sequences, masked at
the instruction they stopped at) and by the VMM's equivalence programs (tests/vmm: along the
path `bare` took through branches, loops and calls).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ring1.generated.forms import FORMS
from ring1.runtime.isa.decoder import Decoded, decode

FLAG_BITS = {
    "cf": 0,
    "pf": 2,
    "af": 4,
    "zf": 6,
    "sf": 7,
    "tf": 8,
    "if": 9,
    "df": 10,
    "of": 11,
    "iopl": 0x3000,
    "nt": 14,
    "rf": 16,
    "vm": 17,
    "ac": 18,
    "vif": 19,
    "vip": 20,
    "id": 21,
}


def flag_mask(flag: str) -> int:
    b = FLAG_BITS[flag]
    return b if b > 64 else 1 << b


def flag_names(mask: int) -> list[str]:
    return [name for name in FLAG_BITS if mask & flag_mask(name)]


@cache
def condition_flags() -> dict[int, int]:
    """cc -> the flags the spec's `cond(cc)` (spec/prelude.r1) reads: JZ reads ZF only, so a Jcc,
    SETcc or CMOVcc reads an undefined flag only if its own condition does."""
    from ring1.codegen import ast as A
    from ring1.codegen.model import load_spec

    def names(node) -> int:
        if isinstance(node, A.Name):
            return flag_mask(node.name) if node.name in FLAG_BITS else 0
        if dataclasses.is_dataclass(node):
            return _or(names(getattr(node, f.name)) for f in dataclasses.fields(node))
        if isinstance(node, list | tuple):
            return _or(names(n) for n in node)
        return 0

    node = load_spec(Path(__file__).resolve().parents[1]).fns["cond"].body
    out: dict[int, int] = {}
    # cond is a chain `cc == k ? expr : ...`, ending in the expression for the remaining code.
    while isinstance(node, A.Cond) and isinstance(node.test, A.BinOp) and isinstance(node.test.right, A.Int):
        out[node.test.right.value] = names(node.then)
        node = node.other
    for cc in range(16):
        out.setdefault(cc, names(node))
    return out


def _or(masks: Iterable[int]) -> int:
    out = 0
    for m in masks:
        out |= m
    return out


@dataclass(frozen=True)
class FlagEffect:
    """What one instruction does to the flags, as masks of EFLAGS bits."""

    reads: int = 0
    defines: int = 0
    undefines: int = 0

    def after(self, undefined: int) -> int:
        return (undefined & ~self.defines) | self.undefines


NO_EFFECT = FlagEffect()


@cache
def form_effect(form: str, cc: int | None = None) -> FlagEffect:
    """The declared effect of `form`; with the condition `cc` of a conditional form, its reads
    are the flags that condition tests."""
    reads = defines = undefines = 0
    for flag, actions in FORMS[form].flags.items():
        if flag not in FLAG_BITS:
            continue
        m = flag_mask(flag)
        if "test" in actions:
            reads |= m
        if "undef" in actions:
            undefines |= m
        elif set(actions) - {"test"}:
            defines |= m
    if cc is not None:
        reads &= condition_flags()[cc]
    return FlagEffect(reads, defines, undefines)


def effect(d: Decoded, ecx: int | None = None) -> FlagEffect:
    """The effect of one decoded instruction (an undecodable one raises #UD: no effect). With a
    count of zero (`count`), an instruction changes no flag and reads none."""
    if d.form is None or count(d, ecx) == 0:
        return NO_EFFECT
    return form_effect(d.form, d.variant[3])


def count(d: Decoded, ecx: int | None = None) -> int | None:
    """The count for instructions whose flags change only when it is not zero: shifts and
    rotates (an operand `cnt`; "a masked count of 0 changes no flag", spec/shift.r1) and REP
    string instructions (a count of 0 runs no iteration). None for other instructions, and when
    the count is in ECX and `ecx` (its value as the instruction starts) is not known."""
    if d.form is None:
        return None
    kind = next((k for name, k, _ in FORMS[d.form].operands if name == "cnt"), None)
    if kind == "one":
        return 1
    if kind == "i8":
        return d.fields["cnt"] & 0x1F
    if ecx is None:
        return None
    if kind == "cl":
        return ecx & 0x1F
    if d.variant[4] is not None:  # rep, repe, repne
        return ecx & (0xFFFF if d.variant[1] == 16 else 0xFFFFFFFF)
    return None


def counts_in_ecx(d: Decoded) -> bool:
    """Whether the flags `d` changes depend on ECX as it starts (see `count`)."""
    return d.form is not None and count(d, 0) == 0 and count(d) is None and effect(d) != NO_EFFECT


@dataclass
class Follower:
    """Follows the undefined flags along the instructions a run executed, in order."""

    undefined: int = 0
    reads: list[tuple[int, str, int]] = dataclasses.field(default_factory=list)  # (eip, form, flags)

    def step(self, d: Decoded, ecx: int | None = None) -> None:
        """One instruction that completed; `ecx` as it started, for those that count in ECX."""
        fx = effect(d, ecx)
        if fx.reads & self.undefined:
            self.reads.append((d.eip, d.form or "", fx.reads & self.undefined))
        self.undefined = fx.after(self.undefined)

    def describe_reads(self) -> str:
        return "; ".join(f"{form} at {eip:#x} reads {' '.join(flag_names(m))}" for eip, form, m in self.reads)


def straight_line(code: bytes, origin: int, code32: bool) -> list[Decoded]:
    """The instructions of straight-line code, in order."""
    out: list[Decoded] = []
    at = 0
    while at < len(code):
        d = decode(code[at:] + bytes(16), origin + at, code32)
        out.append(d)
        at += d.length if d.form else 1
    return out


def executed_prefix(insns: list[Decoded], stop_eip: int) -> list[Decoded]:
    """The instructions of straight-line code that completed in a run that stopped at `stop_eip`:
    all before the one at `stop_eip` (a fault leaves EIP on the faulting instruction, a trap on
    the next one), or all of them when it stopped elsewhere (at the end, or after a branch out)."""
    for i, d in enumerate(insns):
        if d.eip == stop_eip:
            return insns[:i]
    return insns


def follow(insns: Iterable[Decoded], ecx: dict[int, int] | None = None) -> Follower:
    """Straight-line instructions in order; `ecx` maps the address of those that count in ECX
    to its value as they started (an instruction missing there counts as non-zero)."""
    f = Follower()
    for d in insns:
        f.step(d, (ecx or {}).get(d.eip))
    return f


def hook_ecx(uc, addresses: Iterable[int], record: Callable[[int, int], None]) -> list[int]:
    """Unicorn code hooks, one per address, that `record(address, ecx)` as the instruction there
    starts (a code hook bound to one address is a single helper call: no trace of the rest). The
    handles are returned for `uc.hook_del`."""
    from unicorn import UC_HOOK_CODE
    from unicorn.x86_const import UC_X86_REG_ECX

    def on_code(uc, address: int, _size: int, _user) -> None:
        record(address, uc.reg_read(UC_X86_REG_ECX))

    return [uc.hook_add(UC_HOOK_CODE, on_code, begin=a, end=a) for a in addresses]
