"""The spec's abstract syntax: what a spec file says, with where it says it.

Every node carries a `Loc` so that any later error (a name that does not resolve,
a flag written but not declared, an encoding that collides with another) can be
reported as `spec/<file>:<line>:<col>: error: ...`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Loc:
    file: str  # path relative to the repository root, e.g. "spec/arith.r1"
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class SpecError(Exception):
    """A mistake in the spec. Printed as one line `file:line:col: error: message`."""

    def __init__(self, loc: Loc | None, message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message

    def __str__(self) -> str:
        where = f"{self.loc}: " if self.loc else ""
        return f"{where}error: {self.message}"


# ---------------------------------------------------------------- expressions


@dataclass
class Expr:
    loc: Loc


@dataclass
class Int(Expr):
    value: int


@dataclass
class Str(Expr):
    value: str


@dataclass
class Name(Expr):
    name: str


@dataclass
class Field(Expr):
    base: str
    field: str


@dataclass
class Call(Expr):
    func: str
    args: list[Expr]


@dataclass
class BinOp(Expr):
    op: str  # python-ish operator spelling: + - * / % & | ^ << >> == != < <= > >= and or
    left: Expr
    right: Expr


@dataclass
class UnOp(Expr):
    op: str  # - ~ not
    operand: Expr


@dataclass
class Cond(Expr):
    test: Expr
    then: Expr
    other: Expr


@dataclass
class Bit(Expr):
    value: Expr
    index: Expr


@dataclass
class Slice(Expr):
    value: Expr
    hi: Expr
    lo: Expr


# ---------------------------------------------------------------- statements


@dataclass
class Stmt:
    loc: Loc


@dataclass
class Let(Stmt):
    name: str
    value: Expr


@dataclass
class Assign(Stmt):
    target: Expr  # Name, Field or Call (an lvalue call such as reg(i, w))
    value: Expr


@dataclass
class If(Stmt):
    arms: list[tuple[Expr, list[Stmt]]]  # if / elif arms in order
    orelse: list[Stmt] | None


@dataclass
class While(Stmt):
    test: Expr
    body: list[Stmt]


@dataclass
class Raise(Stmt):
    exc: str  # mnemonic without '#', e.g. "GP"
    code: Expr | None


@dataclass
class Return(Stmt):
    value: Expr | None


@dataclass
class SetFlags(Stmt):
    flagfn: str
    args: list[Expr]


@dataclass
class ExprStmt(Stmt):
    call: Call


@dataclass
class Block(Stmt):
    body: list[Stmt]


# ---------------------------------------------------------------- declarations


@dataclass
class BitField:
    name: str
    hi: int
    lo: int
    loc: Loc


@dataclass
class Bits:
    name: str
    fields: dict[str, BitField]
    loc: Loc


@dataclass
class Fact:
    """A fact the translator knows about an instruction instance (spec/vmm.r1)."""

    name: str
    doc: str
    loc: Loc


@dataclass
class Choice:
    """`condition -> rule "reason";`: the rule an instance takes when the condition holds."""

    condition: Expr
    rule: str
    reason: str
    loc: Loc


@dataclass
class Choose:
    choices: list[Choice]
    loc: Loc


@dataclass
class PrivState:
    name: str
    doc: str
    loc: Loc


@dataclass
class Builtin:
    name: str
    params: list[str]
    doc: str
    loc: Loc


@dataclass
class Macro:
    name: str
    params: list[str]
    body: list[Stmt]
    loc: Loc


@dataclass
class FnDef:
    name: str
    params: list[str]
    body: Expr
    loc: Loc


@dataclass
class Proc:
    name: str
    params: list[str]
    body: list[Stmt]
    loc: Loc


@dataclass
class FlagFn:
    name: str
    params: list[str]
    assigns: list[tuple[str, Expr, Loc]]
    loc: Loc


@dataclass
class Template:
    name: str
    lines: list[str]
    loc: Loc
    line_locs: list[Loc] = field(default_factory=list)  # where each line stands, for assembler errors


# ---------------------------------------------------------------- instructions


@dataclass
class EncItem:
    kind: str  # byte, opreg, opcc, modrm_r, modrm_digit, word, kv
    text: str
    loc: Loc


@dataclass
class Operand:
    name: str
    type: str
    access: str  # r, w, rw or -
    loc: Loc


@dataclass
class Insn:
    name: str
    loc: Loc
    mnemonics: list[tuple[str, str | None, Loc]] = field(default_factory=list)
    encoding: list[EncItem] = field(default_factory=list)
    encoding_loc: Loc | None = None
    operands: list[Operand] | None = None
    width: str | None = None
    flags: list[tuple[str, list[str], Loc]] | None = None
    privilege: Expr | None = None  # None means `any`
    privilege_text: str | None = None
    privilege_exc: tuple[str, Expr | None] | None = None
    privilege_loc: Loc | None = None
    modes: list[str] | None = None
    prefixes: list[str] | None = None
    sensitive: list[tuple[str, list[str], Loc]] | None = None
    translate: tuple[str, str | None, Loc] | None = None
    semantics: list[Stmt] | None = None
    semantics_loc: Loc | None = None
    xchecks: list[tuple[str, str, Loc]] = field(default_factory=list)
    doc: str | None = None
    bulk: Expr | None = None  # a builtin call that runs whole pages of a REP (string.r1)
    bulk_loc: Loc | None = None
    seen: set[str] = field(default_factory=set)  # attribute keywords present, for duplicate checks


@dataclass
class SpecFile:
    path: str
    items: list[object]


@dataclass
class Const:
    name: str
    value: Expr
    loc: Loc
