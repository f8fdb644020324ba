"""Semantics to Python: the emitter behind every generated handler.

An instruction form is emitted once per *variant*: its operand size, address size,
ModRM kind (register or memory), condition code and REP kind are fixed, so the
emitter folds constants and drops the arms that cannot run. What is known only when
an instruction is decoded (register numbers, immediates, the effective-address
expression, the segment) is left as `$placeholders` that the block compiler fills.

The emitted code runs in a per-machine namespace (see ring1.runtime.cpu.machine):
`R` is the list of general registers, `S` the rest of the CPU state, `b_<name>` the
builtins, `p_<name>` the procs, `rd8/rd16/rd32`, `wr8/wr16/wr32` the common memory
accesses, `GET_<flag>` the lazy-flag getters and `flush_cc()` the materialiser.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from ring1.codegen import ast as A
from ring1.codegen.model import (
    EXCEPTIONS,
    FORM_CONSTANTS,
    GPR8,
    GPR16,
    GPR32,
    INTRINSICS,
    OPTYPES,
    READONLY_STATE,
    SEGREGS,
    SIMD_STATE,
    SIMD_STATE_WIDTHS,
    STATUS_FLAGS,
    Form,
    Spec,
)

MODE_NUMBERS = {"real": 0, "prot": 1, "v86": 2}
# Builtins that hand control to code that writes EFLAGS (event delivery), so the flags a form
# declares cannot be checked against its own semantics alone.
FLAG_WRITING_BUILTINS = {"soft_interrupt"}
M32 = 0xFFFFFFFF
M128 = (1 << 128) - 1
M80 = (1 << 80) - 1
M64 = (1 << 64) - 1
MMX_EXPONENT = 0xFFFF << 64  # an MMX write sets the aliased x87 register's exponent and sign bits


# Builtins whose value depends on their arguments alone (and the state they name), so a
# repeated evaluation is harmless.
PURE_BUILTINS = frozenset(
    {"seg_selector", "seg_base", "seg_limit", "seg_attr", "sdiv", "srem", "f64_relation", "fpr"}
    | {"f32_relation", "sse_arith", "sse_convert", "sse_reciprocal", "xmm"}
)


@dataclass
class V:
    """An emitted expression: Python code, its value when known now, and whether it is 0/1."""

    code: str
    const: int | None = None
    boolish: bool = False
    pure: bool = True

    @staticmethod
    def of(value: int) -> V:
        value = int(value)
        return V(str(value) if value >= 0 else f"({value})", value, value in (0, 1))


@dataclass
class Variant:
    """The emission-time constants of one specialisation of a form."""

    osize: int | None = None
    asize: int | None = None
    mod: str | None = None  # "reg" or "mem" when the form has a ModRM.rm operand
    cc: int | None = None
    rep: str | None = None  # None, "rep", "repe", "repne"

    def key(self) -> tuple:
        return (self.osize, self.asize, self.mod, self.cc, self.rep)

    def label(self) -> str:
        parts = []
        if self.osize:
            parts.append(f"o{self.osize}")
        if self.asize:
            parts.append(f"a{self.asize}")
        if self.mod:
            parts.append(self.mod)
        if self.cc is not None:
            parts.append(f"cc{self.cc}")
        if self.rep:
            parts.append(self.rep)
        return " ".join(parts)


@dataclass
class Scope:
    # A name maps to a Python variable (str, assignable) or to an emitted value (V, read-only:
    # a macro or fn parameter bound to its argument, so constants keep folding).
    names: dict[str, str | V] = field(default_factory=dict)
    barrier: bool = False  # a macro body: the instruction's operands are not visible through it


class _Return(Exception):
    pass


class Emitter:
    """Emits one body (an instruction variant, a proc, or a flag getter)."""

    def __init__(
        self,
        spec: Spec,
        *,
        form: Form | None = None,
        variant: Variant | None = None,
        kind: str = "insn",
        width: int | None = None,
        src: str = "",
    ) -> None:
        self.spec = spec
        self.form = form
        self.variant = variant or Variant()
        self.kind = kind
        self.src = src  # file name for line comments
        self.lines: list[tuple[int, str]] = []
        self.depth = 0
        self.scopes: list[Scope] = [Scope()]
        self.no_hoist = 0  # > 0 inside ?:, and/or, while tests: statements cannot be hoisted here
        self.macro_stack: list[str] = []
        self.flags_read: set[str] = set()
        self.flags_written: set[str] = set()
        self.opaque_flags = False  # a proc call or a whole-EFLAGS write: flag use is not visible here
        self.writes_eip = False
        self.width = width
        if form is not None:
            w = form.width
            self.width = self.variant.osize if w == "v" else w
        self.operand_vars: dict[str, str] = {}
        self._uid = itertools.count()
        self.refresh_lines: set[int] = set()  # indexes of lines that only keep an operand variable current

    # ------------------------------------------------------------ output

    def line(self, text: str, loc: A.Loc | None = None) -> None:
        if loc is not None and loc.line:
            text = f"{text}  # {loc.file.removeprefix('spec/')}:{loc.line}"
        self.lines.append((self.depth, text))

    def code(self, base_indent: int = 0) -> str:
        lines = [ln for i, ln in enumerate(self.lines) if i not in self._dead_refreshes()]
        return "".join("    " * (base_indent + d) + t + "\n" for d, t in lines)

    def _dead_refreshes(self) -> set[int]:
        """Refresh lines whose variable no later line reads: the common `dst = r` at the end."""
        dead = set()
        for i in self.refresh_lines:
            var = self.lines[i][1].split(" = ", 1)[0]
            if not any(_mentions(t, var) for _, t in self.lines[i + 1 :]):
                dead.add(i)
        return dead

    def temp(self, hint: str = "t") -> str:
        return f"{hint}_{next(self._uid)}"

    # ------------------------------------------------------------ names

    def _lookup_local(self, name: str) -> str | V | None:
        for s in reversed(self.scopes):
            if name in s.names:
                return s.names[name]
        return None

    def _operands_visible(self) -> bool:
        return self.form is not None and not any(s.barrier for s in self.scopes)

    def _operand(self, name: str):
        if not self._operands_visible():
            return None
        for op in self.form.operands:
            if op.name == name:
                return op
        return None

    def err(self, loc: A.Loc, msg: str) -> A.SpecError:
        if self.macro_stack:
            msg += f" (in macro {' -> '.join(self.macro_stack)})"
        return A.SpecError(loc, msg)

    def const_name(self, name: str, loc: A.Loc) -> V | None:
        if name == "w":
            if self.width is None:
                raise self.err(loc, "`w` is known only inside an instruction or a flagfn")
            return V.of(self.width)
        if name in ("osize", "asize"):
            val = getattr(self.variant, name)
            if val is None:
                raise self.err(loc, f"`{name}` is not known here; pass it to the proc as a parameter")
            return V.of(val)
        if name == "cc":
            if self.variant.cc is None:
                raise self.err(loc, "`cc` is known only in forms whose opcode is XX+cc")
            return V.of(self.variant.cc)
        if name == "dseg":
            if self.kind != "insn":
                raise self.err(loc, "`dseg` is known only inside an instruction")
            return V("$dseg")
        if name in ("insn_eip", "x87_opcode"):  # what the x87 records as FIP and FOP
            if self.kind != "insn":
                raise self.err(loc, f"`{name}` is known only inside an instruction")
            return V("$here" if name == "insn_eip" else "$fop")
        return None

    # ------------------------------------------------------------ expressions

    def expr(self, e: A.Expr) -> V:
        match e:
            case A.Int():
                return V.of(e.value)
            case A.Str():
                return V(repr(e.value))
            case A.Name():
                return self.name(e)
            case A.Field():
                return self.field_read(e)
            case A.Call():
                return self.call(e)
            case A.BinOp():
                return self.binop(e)
            case A.UnOp():
                return self.unop(e)
            case A.Cond():
                return self.cond(e)
            case A.Bit():
                v = self.expr(e.value)
                i = self.expr(e.index)
                if v.const is not None and i.const is not None:
                    return V.of((v.const >> i.const) & 1)
                return V(f"({v.code} >> {i.code} & 1)", boolish=True, pure=v.pure and i.pure)
            case A.Slice():
                v = self.expr(e.value)
                hi, lo = self.expr(e.hi), self.expr(e.lo)
                if hi.const is None or lo.const is None:
                    raise self.err(e.loc, "bit slice bounds must be constants")
                if hi.const < lo.const:
                    raise self.err(e.loc, "bit slices are written [high:low]")
                m = (1 << (hi.const - lo.const + 1)) - 1
                if v.const is not None:
                    return V.of((v.const >> lo.const) & m)
                shifted = f"{v.code} >> {lo.const}" if lo.const else v.code
                return V(f"({shifted} & {hex(m)})", pure=v.pure)
        raise self.err(e.loc, f"cannot evaluate {type(e).__name__}")

    def name(self, e: A.Name) -> V:
        n = e.name
        var = self._lookup_local(n)
        if isinstance(var, V):
            return var
        if var is not None:
            return V(var)
        c = self.const_name(n, e.loc)
        if c is not None:
            return c
        op = self._operand(n)
        if op is not None:
            return self.operand_read(op, e.loc)
        if n in STATUS_FLAGS:
            self.flags_read.add(n)
            return V(f"GET_{n.upper()}[S.cc[0]](S.cc)", boolish=True)
        if n in self.spec.bits["eflags"].fields:
            return self.bits_read("eflags", n, e.loc)
        if n in GPR32 or n in GPR16 or n in GPR8:
            return V(_gpr_read(n))
        if n == "eip":
            return V("S.eip")
        if n == "eflags":
            self.flags_read.update(STATUS_FLAGS)
            return V("flush_cc()")
        if n in READONLY_STATE or n in SIMD_STATE:
            return V(_state_read(n))
        if n in self.spec.consts:
            return self.const_value(n, e.loc)
        if n in self.spec.fns or n in self.spec.macros or n in self.spec.procs or n in self.spec.builtins:
            raise self.err(e.loc, f"{n!r} is a function; call it as {n}(...)")
        raise self.err(e.loc, f"unknown name {n!r}")

    def const_value(self, n: str, loc: A.Loc) -> V:
        c = self.spec.consts[n]
        sub = Emitter(self.spec, kind="const")
        v = sub.expr(c.value)
        if v.const is None:
            raise A.SpecError(c.loc, f"constant {n} must be computable from numbers")
        return V.of(v.const)

    def field_read(self, e: A.Field) -> V:
        if e.base not in self.spec.bits:
            raise self.err(e.loc, f"{e.base!r} has no declared bit fields (declare them with `bits {e.base}`)")
        if e.field not in self.spec.bits[e.base].fields:
            raise self.err(e.loc, f"{e.base} has no field {e.field!r}")
        if e.base == "eflags" and e.field in STATUS_FLAGS:
            return self.name(A.Name(e.loc, e.field))
        return self.bits_read(e.base, e.field, e.loc)

    def bits_read(self, base: str, fld: str, loc: A.Loc) -> V:
        f = self.spec.bits[base].fields[fld]
        src = "S.eflags" if base == "eflags" else _state_read(base)
        m = (1 << (f.hi - f.lo + 1)) - 1
        shifted = f"{src} >> {f.lo}" if f.lo else src
        return V(f"({shifted} & {hex(m)})", boolish=(m == 1))

    def binop(self, e: A.BinOp) -> V:
        if e.op in ("and", "or"):
            self.no_hoist += 1
            try:
                a, b = self.expr(e.left), self.expr(e.right)
            finally:
                self.no_hoist -= 1
            if a.const is not None:
                if e.op == "and":
                    return b if a.const else V.of(0)
                return V.of(1) if a.const else b
            if b.const is not None:
                if e.op == "and" and not b.const and a.pure:
                    return V.of(0)
                if e.op == "and" and b.const and a.boolish:
                    return a
                if e.op == "or" and not b.const and a.boolish:
                    return a
            ac = a.code if a.boolish else f"({a.code} != 0)"
            bc = b.code if b.boolish else f"({b.code} != 0)"
            return V(f"({ac} {e.op} {bc})", boolish=True, pure=a.pure and b.pure)
        a, b = self.expr(e.left), self.expr(e.right)
        op = e.op
        if a.const is not None and b.const is not None:
            return V.of(_fold(op, a.const, b.const, e.loc))
        pure = a.pure and b.pure
        if op in ("==", "!=", "<", "<=", ">", ">="):
            return V(f"({a.code} {op} {b.code})", boolish=True, pure=pure)
        if op == "/":
            return V(f"({a.code} // {b.code})", pure=pure)
        # Algebraic shortcuts keep the generated code short for the common widths.
        if op == "&" and (a.const == 0 or b.const == 0):
            return V.of(0)
        if op in ("|", "^", "+", "-", "<<", ">>") and b.const == 0:
            return a
        if op in ("|", "^", "+") and a.const == 0:
            return b
        boolish = (op in ("&", "|", "^") and a.boolish and b.boolish) or (op == "&" and (a.const == 1 or b.const == 1))
        return V(f"({a.code} {op} {b.code})", boolish=boolish, pure=pure)

    def unop(self, e: A.UnOp) -> V:
        if e.op == "not":
            a = self.expr(e.operand)
            if a.const is not None:
                return V.of(0 if a.const else 1)
            return V(f"(not {a.code})", boolish=True, pure=a.pure)
        a = self.expr(e.operand)
        if a.const is not None:
            return V.of(-a.const if e.op == "-" else ~a.const)
        return V(f"({e.op}{a.code})", pure=a.pure)

    def cond(self, e: A.Cond) -> V:
        t = self.expr(e.test)
        if t.const is not None:
            return self.expr(e.then if t.const else e.other)
        self.no_hoist += 1
        try:
            a, b = self.expr(e.then), self.expr(e.other)
        finally:
            self.no_hoist -= 1
        return V(
            f"({a.code} if {t.code} else {b.code})", boolish=a.boolish and b.boolish, pure=t.pure and a.pure and b.pure
        )

    # ------------------------------------------------------------ calls

    def call(self, e: A.Call) -> V:
        f = e.func
        if f in INTRINSICS:
            self._arity(e, INTRINSICS[f])
            return getattr(self, f"intrinsic_{f}")(e)
        if f in self.spec.fns:
            return self.inline_fn(e)
        if f in self.spec.macros:
            return self.inline_macro(e, want_value=True)
        if f in self.spec.procs:
            proc = self.spec.procs[f]
            self._arity(e, len(proc.params))
            args = [self.expr(a) for a in e.args]
            self.opaque_flags = True
            return V(f"p_{f}({', '.join(a.code for a in args)})", pure=False)
        if f in self.spec.builtins:
            b = self.spec.builtins[f]
            self._arity(e, len(b.params))
            args = [self.expr(a) for a in e.args]
            return self.builtin_call(f, args, e.loc)
        raise self.err(e.loc, f"unknown function {f!r}")

    def _arity(self, e: A.Call, n: int) -> None:
        if len(e.args) != n:
            raise self.err(e.loc, f"{e.func} takes {n} argument{'s' if n != 1 else ''}, given {len(e.args)}")

    def builtin_call(self, f: str, args: list[V], loc: A.Loc) -> V:
        if f in FLAG_WRITING_BUILTINS:
            self.opaque_flags = True
        if f == "load" and args[2].const in (8, 16, 32):
            return V(f"rd{args[2].const}({args[0].code}, {args[1].code})", pure=False)
        if f == "store" and args[2].const in (8, 16, 32):
            return V(f"wr{args[2].const}({args[0].code}, {args[1].code}, {args[3].code})", pure=False)
        pure = f in PURE_BUILTINS
        return V(f"b_{f}({', '.join(a.code for a in args)})", pure=pure and all(a.pure for a in args))

    def inline_fn(self, e: A.Call) -> V:
        fn = self.spec.fns[e.func]
        self._arity(e, len(fn.params))
        if e.func in self.macro_stack:
            raise self.err(e.loc, f"fn {e.func} calls itself")
        scope = Scope(barrier=True)
        for p, arg in zip(fn.params, e.args, strict=True):
            scope.names[p] = self.bind_argument(p, self.expr(arg), _count_uses(fn.body, p), arg.loc)
        self.scopes.append(scope)
        self.macro_stack.append(e.func)
        try:
            return self.expr(fn.body)
        finally:
            self.macro_stack.pop()
            self.scopes.pop()

    def bind_argument(self, param: str, a: V, uses: int, loc: A.Loc) -> V:
        """Bind a fn argument so that it is evaluated exactly once."""
        if a.const is not None or _is_simple(a.code) or uses <= 1:
            return a
        if not self.no_hoist:
            t = self.temp(f"a_{param}")
            self.line(f"{t} = {a.code}")
            return V(t, boolish=a.boolish)
        if a.pure:
            return a  # evaluating a pure expression twice costs time, not correctness
        raise self.err(loc, f"argument {param!r} has side effects and is used twice; bind it with let first")

    def inline_macro(self, e: A.Call, want_value: bool) -> V:
        m = self.spec.macros[e.func]
        self._arity(e, len(m.params))
        if e.func in self.macro_stack:
            raise self.err(e.loc, f"macro {e.func} calls itself")
        if self.no_hoist:
            raise self.err(
                e.loc, f"macro {e.func} runs statements, so it cannot be used inside ?:, and/or, or a loop test"
            )
        args = [self.expr(a) for a in e.args]
        scope = Scope(barrier=True)
        for p, a in zip(m.params, args, strict=True):
            if a.const is not None or _is_simple(a.code):
                scope.names[p] = a
            else:
                t = self.temp(f"m_{p}")
                self.line(f"{t} = {a.code}")
                scope.names[p] = V(t, boolish=a.boolish)
        body = m.body
        ret = body[-1] if body and isinstance(body[-1], A.Return) else None
        for s in body[:-1] if ret else body:
            if isinstance(s, A.Return) or _contains_return(s):
                raise A.SpecError(s.loc, f"macro {m.name}: `return` may only be its last statement")
        if want_value and (ret is None or ret.value is None):
            raise self.err(e.loc, f"macro {m.name} returns no value")
        self.scopes.append(scope)
        self.macro_stack.append(e.func)
        try:
            for s in body[:-1] if ret else body:
                self.stmt(s)
            if ret is not None and ret.value is not None:
                v = self.expr(ret.value)
                if want_value:
                    if v.const is not None or _is_simple(v.code):
                        return v
                    t = self.temp("r")
                    self.line(f"{t} = {v.code}")
                    return V(t, boolish=v.boolish)
            return V("None")
        finally:
            self.macro_stack.pop()
            self.scopes.pop()

    # ------------------------------------------------------------ intrinsics

    def intrinsic_parity(self, e: A.Call) -> V:
        a = self.expr(e.args[0])
        if a.const is not None:
            return V.of(1 - bin(a.const & 0xFF).count("1") % 2)
        return V(f"PARITY[{a.code} & 0xff]", boolish=True, pure=a.pure)

    def intrinsic_sx(self, e: A.Call) -> V:
        a, n = self.expr(e.args[0]), self.expr(e.args[1])
        if n.const is None:
            raise self.err(e.loc, "sx needs a constant width")
        h = 1 << (n.const - 1)
        m = (1 << n.const) - 1
        if a.const is not None:
            return V.of(((a.const & m) ^ h) - h)
        return V(f"(({a.code} & {hex(m)} ^ {hex(h)}) - {hex(h)})", pure=a.pure)

    def intrinsic_reg(self, e: A.Call) -> V:
        i, n = self.expr(e.args[0]), self.expr(e.args[1])
        if n.const not in (8, 16, 32):
            raise self.err(e.loc, "reg(i, n) needs n = 8, 16 or 32 known at generation time")
        return V(_reg_read_by_index(i, n.const))

    def _mem_operand(self, e: A.Call) -> A.Operand:
        arg = e.args[0]
        op = self._operand(arg.name) if isinstance(arg, A.Name) else None
        if op is None:
            raise self.err(e.loc, f"{e.func}() takes the name of the instruction's memory operand")
        if self.variant.mod == "reg" and (OPTYPES[op.type].kind == "rm" or op.type in ("mmrm", "xmmrm")):
            raise self.err(e.loc, f"{e.func}({op.name}) in the register variant: the operand is not in memory")
        if OPTYPES[op.type].kind not in ("rm", "mem", "addr", "moffs") and op.type not in ("mmrm", "xmmrm"):
            raise self.err(e.loc, f"{op.name} is not a memory operand")
        return op

    def intrinsic_addr(self, e: A.Call) -> V:
        self._mem_operand(e)
        return V("ea")

    def intrinsic_seg(self, e: A.Call) -> V:
        self._mem_operand(e)
        return V("$seg")

    def intrinsic_in_memory(self, e: A.Call) -> V:
        arg = e.args[0]
        op = self._operand(arg.name) if isinstance(arg, A.Name) else None
        if op is None:
            raise self.err(e.loc, "in_memory() takes the name of one of the instruction's operands")
        return V.of(int(self.op_in_memory(op) or OPTYPES[op.type].kind == "addr"))

    def intrinsic_st_index(self, e: A.Call) -> V:
        """i of an x87 register operand ST(i): 0 for st0, the ModRM.rm field for sti."""
        arg = e.args[0]
        op = self._operand(arg.name) if isinstance(arg, A.Name) else None
        if op is None or op.type not in ("st0", "sti"):
            raise self.err(e.loc, "st_index() takes the name of an st0 or sti operand")
        return V.of(0) if op.type == "st0" else V(f"${op.name}")

    def intrinsic_uses_esp(self, e: A.Call) -> V:
        self._mem_operand(e)
        return V("$esp_base", boolish=True)

    # ------------------------------------------------------------ operands

    def op_width(self, op: A.Operand) -> int | None:
        t = OPTYPES[op.type]
        if t.width == "v":
            return self.variant.osize
        if t.width == "far":
            return (self.variant.osize or 32) + 16
        return t.width if isinstance(t.width, int) else None

    def op_in_memory(self, op: A.Operand) -> bool:
        kind = OPTYPES[op.type].kind
        in_rm = kind == "rm" or op.type in ("mmrm", "xmmrm")
        return kind in ("mem", "moffs") or (in_rm and self.variant.mod == "mem")

    def operand_read(self, op: A.Operand, loc: A.Loc) -> V:
        if op.name in self.operand_vars:
            return V(self.operand_vars[op.name])
        v = self.operand_value(op, loc)
        return v

    def operand_value(self, op: A.Operand, loc: A.Loc) -> V:
        t = OPTYPES[op.type]
        n = self.op_width(op)
        p = f"${op.name}"
        match t.kind:
            case "reg" | "opreg":
                return V(_reg_read_by_placeholder(op.name, n))
            case "rm":
                if self.variant.mod == "reg":
                    return V(_reg_read_by_placeholder(op.name, n))
                return V(_mem_read("$seg", "ea", n), pure=False)
            case "mem" | "moffs":
                return V(_mem_read("$seg", "ea", n), pure=False)
            case "imm" | "simm" | "rel" | "far" | "sreg" | "creg" | "dreg":
                return V(p)
            case "one":
                return V.of(1)
            case "fixed":
                name = t.fixed
                if t.width == "v":
                    name = "eax" if self.variant.osize == 32 else "ax"
                return V(_gpr_read(name))
            case "xmm":
                if self.op_in_memory(op):
                    return V(_mem_read("$seg", "ea", n), pure=False)
                return V(f"S.xmm[{p}]")
            case "x87":
                return V(f"S.fpr[{_st_index(op)}]")
            case "mmx" if self.op_in_memory(op):
                return V(_mem_read("$seg", "ea", n), pure=False)
            case "mmx":
                return V(f"(S.fpr[{p}] & {hex(M64)})")
            case "addr":
                raise self.err(loc, f"operand {op.name} is an address only; use addr({op.name})")
        raise self.err(loc, f"operand {op.name} ({op.type}) has no value in the interpreter yet")

    def operand_write(self, op: A.Operand, v: V, loc: A.Loc) -> None:
        if op.access not in ("w", "rw"):
            raise self.err(loc, f"operand {op.name} is declared {op.access!r}, not written")
        t = OPTYPES[op.type]
        n = self.op_width(op)
        match t.kind:
            case "reg" | "opreg":
                self.line(_reg_write_by_placeholder(op.name, n, v.code), loc)
            case "rm" if self.variant.mod == "reg":
                self.line(_reg_write_by_placeholder(op.name, n, v.code), loc)
            case "rm" | "mem" | "moffs":
                self.line(_mem_write("$seg", "ea", n, v.code), loc)
            case "fixed":
                name = t.fixed
                if t.width == "v":
                    name = "eax" if self.variant.osize == 32 else "ax"
                self.line(_gpr_write(name, v.code), loc)
            case "xmm" if self.op_in_memory(op):
                self.line(_mem_write("$seg", "ea", n, v.code), loc)
            case "xmm":
                self.line(f"S.xmm[${op.name}] = {v.code} & {hex(M128)}", loc)
            case "x87":
                self.line(f"S.fpr[{_st_index(op)}] = {v.code} & {hex(M80)}", loc)
            case "mmx" if self.op_in_memory(op):
                self.line(_mem_write("$seg", "ea", n, v.code), loc)
            case "mmx":
                self.line(f"S.fpr[${op.name}] = {v.code} & {hex(M64)} | {hex(MMX_EXPONENT)}", loc)
            case _:
                raise self.err(loc, f"operand {op.name} ({op.type}) cannot be assigned")
        if op.name in self.operand_vars:
            # Later reads see the written value, truncated as the location truncates it.
            self.refresh_lines.add(len(self.lines))
            self.line(f"{self.operand_vars[op.name]} = {v.code} & {hex((1 << n) - 1)}")

    # ------------------------------------------------------------ statements

    def body(self, stmts: list[A.Stmt]) -> None:
        for s in stmts:
            self.stmt(s)

    def stmt(self, s: A.Stmt) -> None:
        match s:
            case A.Let():
                if s.name in self.scopes[-1].names:
                    raise self.err(s.loc, f"{s.name!r} is already bound in this block")
                if self._operand(s.name) is not None:
                    raise self.err(s.loc, f"{s.name!r} is an operand; pick another name")
                v = self.expr(s.value)
                var = f"l_{s.name}" if not self.macro_stack else self.temp(f"l_{s.name}")
                self.line(f"{var} = {v.code}", s.loc)
                self.scopes[-1].names[s.name] = var
            case A.Assign():
                self.assign(s)
            case A.If():
                self.if_stmt(s)
            case A.While():
                self.no_hoist += 1
                try:
                    t = self.expr(s.test)
                finally:
                    self.no_hoist -= 1
                if t.const == 0:
                    return
                self.line(f"while {t.code}:", s.loc)
                self.block(s.body)
            case A.Raise():
                self.raise_stmt(s)
            case A.Return():
                if self.kind != "proc" or self.macro_stack:
                    raise self.err(s.loc, "`return` belongs in a proc, or as the last statement of a macro")
                if s.value is None:
                    self.line("return None", s.loc)
                else:
                    self.line(f"return {self.expr(s.value).code}", s.loc)
            case A.SetFlags():
                self.setflags(s)
            case A.ExprStmt():
                c = s.call
                if c.func in self.spec.macros:
                    self.inline_macro(c, want_value=False)
                elif c.func in self.spec.fns or c.func in INTRINSICS:
                    raise self.err(s.loc, f"{c.func}(...) computes a value; this statement discards it")
                else:
                    self.line(self.expr(c).code, s.loc)
            case A.Block():
                self.scopes.append(Scope())
                try:
                    self.body(s.body)
                finally:
                    self.scopes.pop()
            case list():
                self.body(s)
            case _:
                raise self.err(s.loc, f"unsupported statement {type(s).__name__}")

    def block(self, stmts: list[A.Stmt]) -> None:
        self.depth += 1
        self.scopes.append(Scope())
        start = len(self.lines)
        try:
            self.body(stmts)
        finally:
            self.scopes.pop()
        if len(self.lines) == start:
            self.line("pass")
        self.depth -= 1

    def if_stmt(self, s: A.If) -> None:
        arms = list(s.arms)
        first = True
        opened = 0  # nested `else:` levels opened to hold hoisted statements of an elif test
        emitted_any = False
        while arms:
            test_expr, body = arms.pop(0)
            mark = len(self.lines)
            t = self.expr(test_expr)
            hoisted = self.lines[mark:]
            if t.const is not None:
                if t.const:
                    if first:
                        self.scopes.append(Scope())
                        self.body(body)
                        self.scopes.pop()
                    else:
                        self.line("else:")
                        self.block(body)
                    for _ in range(opened):
                        self.depth -= 1
                    return
                del self.lines[mark:]
                continue
            if first or hoisted:
                if not first:
                    del self.lines[mark:]
                    self.line("else:")
                    self.depth += 1
                    opened += 1
                    self.lines.extend((self.depth, h) for _, h in hoisted)
                self.line(f"if {t.code}:", test_expr.loc)
            else:
                self.line(f"elif {t.code}:", test_expr.loc)
            self.block(body)
            first = False
            emitted_any = True
        if s.orelse is not None:
            if emitted_any:
                self.line("else:")
                self.block(s.orelse)
            else:
                self.scopes.append(Scope())
                self.body(s.orelse)
                self.scopes.pop()
        for _ in range(opened):
            self.depth -= 1

    def raise_stmt(self, s: A.Raise) -> None:
        if s.exc not in EXCEPTIONS:
            raise self.err(s.loc, f"unknown exception #{s.exc}")
        vec, has_code = EXCEPTIONS[s.exc]
        if has_code and s.code is None:
            raise self.err(s.loc, f"#{s.exc} pushes an error code: write #{s.exc}(code)")
        if not has_code and s.code is not None:
            raise self.err(s.loc, f"#{s.exc} has no error code")
        code = self.expr(s.code).code if s.code is not None else "None"
        self.line(f"raise Fault({vec}, {code})", s.loc)

    def setflags(self, s: A.SetFlags) -> None:
        fn = self.spec.flagfns.get(s.flagfn)
        if fn is None:
            raise self.err(s.loc, f"no flagfn named {s.flagfn!r}")
        if len(s.args) != len(fn.params):
            raise self.err(s.loc, f"flagfn {fn.name} takes {len(fn.params)} arguments, given {len(s.args)}")
        if self.width not in (8, 16, 32):
            raise self.err(s.loc, "setflags needs the operand width w (8, 16 or 32)")
        args = [self.expr(a) for a in s.args]
        defined = {f for f, _, _ in fn.assigns}
        self.flags_written |= defined
        if defined != set(STATUS_FLAGS):
            self.line("flush_cc()")
        ident = flagfn_id(self.spec, fn.name, self.width)
        tup = ", ".join([str(ident)] + [a.code for a in args])
        self.line(f"S.cc = ({tup})", s.loc)

    def assign(self, s: A.Assign) -> None:
        self.assign_value(s.target, self.expr(s.value), s.loc)

    def assign_value(self, tgt: A.Expr, value: V, loc: A.Loc) -> None:
        if isinstance(tgt, A.Call):
            if tgt.func == "reg":
                self._arity(tgt, 2)
                i, n = self.expr(tgt.args[0]), self.expr(tgt.args[1])
                if n.const not in (8, 16, 32):
                    raise self.err(tgt.loc, "reg(i, n) needs n = 8, 16 or 32 known at generation time")
                self.line(_reg_write_by_index(i, n.const, value.code), loc)
                return
            fn = self.spec.fns.get(tgt.func)
            if fn is not None and isinstance(fn.body, A.Call | A.Name):
                # A fn whose body is itself a place, such as count_reg() = reg(1, asize).
                self._arity(tgt, len(fn.params))
                scope = Scope(barrier=True)
                for p, arg in zip(fn.params, tgt.args, strict=True):
                    scope.names[p] = self.bind_argument(p, self.expr(arg), 2, arg.loc)
                self.scopes.append(scope)
                try:
                    self.assign_value(fn.body, value, loc)
                finally:
                    self.scopes.pop()
                return
            raise self.err(tgt.loc, f"{tgt.func}(...) cannot be assigned")
        if isinstance(tgt, A.Field):
            if tgt.base not in ("eflags", *SIMD_STATE):
                raise self.err(tgt.loc, f"{tgt.base} is written with a builtin (write_cr, ...), not by assignment")
            if tgt.base not in self.spec.bits or tgt.field not in self.spec.bits[tgt.base].fields:
                raise self.err(tgt.loc, f"{tgt.base} has no field {tgt.field!r}")
            if tgt.base != "eflags":
                self.field_write(tgt.base, tgt.field, value, loc)
                return
            self.flag_write(tgt.field, value, loc)
            return
        if not isinstance(tgt, A.Name):
            raise self.err(loc, "cannot assign to this")
        n = tgt.name
        var = self._lookup_local(n)
        if isinstance(var, V):
            raise self.err(loc, f"{n!r} is a parameter bound to its argument and cannot be assigned")
        if var is not None:
            self.line(f"{var} = {value.code}", loc)
            return
        op = self._operand(n)
        if op is not None:
            self.operand_write(op, value, loc)
            return
        if n in GPR32 or n in GPR16 or n in GPR8:
            self.line(_gpr_write(n, value.code), loc)
            return
        if n in STATUS_FLAGS or n in self.spec.bits["eflags"].fields:
            self.flag_write(n, value, loc)
            return
        if n == "eip":
            self.writes_eip = True
            self.line(f"S.eip = {value.code}", loc)
            return
        if n == "eflags":
            self.flags_written.update(STATUS_FLAGS)
            self.opaque_flags = True
            self.line(f"set_eflags({value.code})", loc)
            return
        if n in SIMD_STATE:
            self.line(f"{_state_read(n)} = {value.code} & {hex((1 << SIMD_STATE_WIDTHS[n]) - 1)}", loc)
            return
        if n in READONLY_STATE:
            raise self.err(loc, f"{n} is read-only in semantics; a builtin changes it (set_seg, write_cr, ...)")
        if n in FORM_CONSTANTS or n in self.spec.consts:
            raise self.err(loc, f"{n} is a constant")
        raise self.err(loc, f"unknown name {n!r} (declare locals with let)")

    def field_write(self, base: str, fld: str, v: V, loc: A.Loc) -> None:
        """Assign a bit field of a writable register other than EFLAGS (mxcsr.ie = 1)."""
        f = self.spec.bits[base].fields[fld]
        m = (1 << (f.hi - f.lo + 1)) - 1
        keep = M32 ^ (m << f.lo)
        src = _state_read(base)
        if v.const is not None:
            self.line(f"{src} = {src} & {hex(keep)} | {hex((v.const & m) << f.lo)}", loc)
        else:
            shifted = f"({v.code} & {m}) << {f.lo}" if f.lo else f"({v.code} & {m})"
            self.line(f"{src} = {src} & {hex(keep)} | {shifted}", loc)

    def flag_write(self, flag: str, v: V, loc: A.Loc) -> None:
        f = self.spec.bits["eflags"].fields[flag]
        m = (1 << (f.hi - f.lo + 1)) - 1
        place = ((1 << (f.hi + 1)) - 1) ^ ((1 << f.lo) - 1)
        keep = M32 ^ place
        val = v.code if v.const is None else str(v.const & m)
        shifted = f"({val} & {m}) << {f.lo}" if f.lo else f"({val} & {m})"
        if v.const is not None:
            shifted = str((v.const & m) << f.lo)
        if flag in STATUS_FLAGS:
            self.flags_written.add(flag)
            self.line(f"S.eflags = flush_cc() & {hex(keep)} | {shifted}", loc)
        else:
            self.line(f"S.eflags = S.eflags & {hex(keep)} | {shifted}", loc)


# ---------------------------------------------------------------- register and memory code


def _gpr_read(n: str) -> str:
    if n in GPR32:
        return f"R[{GPR32.index(n)}]"
    if n in GPR16:
        return f"(R[{GPR16.index(n)}] & 0xffff)"
    i = GPR8.index(n)
    return f"(R[{i}] & 0xff)" if i < 4 else f"(R[{i - 4}] >> 8 & 0xff)"


def _gpr_write(n: str, v: str) -> str:
    if n in GPR32:
        return f"R[{GPR32.index(n)}] = {v} & 0xffffffff"
    if n in GPR16:
        i = GPR16.index(n)
        return f"R[{i}] = R[{i}] & 0xffff0000 | {v} & 0xffff"
    i = GPR8.index(n)
    if i < 4:
        return f"R[{i}] = R[{i}] & 0xffffff00 | {v} & 0xff"
    return f"R[{i - 4}] = R[{i - 4}] & 0xffff00ff | ({v} & 0xff) << 8"


def _reg_read_by_placeholder(name: str, n: int | None) -> str:
    if n == 32:
        return f"R[${name}]"
    if n == 16:
        return f"(R[${name}] & 0xffff)"
    if n == 8:
        return f"(R[${name}_r] >> ${name}_s & 0xff)"
    raise ValueError(f"register operand of width {n}")


def _reg_write_by_placeholder(name: str, n: int | None, v: str) -> str:
    if n == 32:
        return f"R[${name}] = {v} & 0xffffffff"
    if n == 16:
        return f"R[${name}] = R[${name}] & 0xffff0000 | {v} & 0xffff"
    if n == 8:
        return f"R[${name}_r] = R[${name}_r] & ${name}_k | ({v} & 0xff) << ${name}_s"
    raise ValueError(f"register operand of width {n}")


def _reg_read_by_index(i: V, n: int) -> str:
    if i.const is not None:
        names = {32: GPR32, 16: GPR16, 8: GPR8}[n]
        return _gpr_read(names[i.const])
    if n == 32:
        return f"R[{i.code}]"
    if n == 16:
        return f"(R[{i.code}] & 0xffff)"
    return f"(R[{i.code} & 3] >> (({i.code} & 4) << 1) & 0xff)"


def _reg_write_by_index(i: V, n: int, v: str) -> str:
    if i.const is not None:
        names = {32: GPR32, 16: GPR16, 8: GPR8}[n]
        return _gpr_write(names[i.const], v)
    if n == 32:
        return f"R[{i.code}] = {v} & 0xffffffff"
    if n == 16:
        return f"R[{i.code}] = R[{i.code}] & 0xffff0000 | {v} & 0xffff"
    return f"b_set_reg8({i.code}, {v})"


def _mem_read(seg: str, ea: str, n: int | None) -> str:
    if n in (8, 16, 32):
        return f"rd{n}({seg}, {ea})"
    return f"b_load({seg}, {ea}, {n})"


def _mem_write(seg: str, ea: str, n: int | None, v: str) -> str:
    if n in (8, 16, 32):
        return f"wr{n}({seg}, {ea}, {v})"
    return f"b_store({seg}, {ea}, {n}, {v})"


def _st_index(op: A.Operand) -> str:
    """The physical register that is ST(0) (operand type st0) or ST(i) (sti, i in $name)."""
    if op.type == "st0":
        return "S.fsw >> 11 & 7"
    return f"(S.fsw >> 11) + ${op.name} & 7"


def _state_read(n: str) -> str:
    if n in SEGREGS:
        return f"S.sel[{SEGREGS.index(n)}]"
    if n.startswith("cr") and n[2:].isdigit():
        return f"S.cr[{int(n[2:])}]"
    if n.startswith("dr") and n[2:].isdigit():
        return f"S.dr[{int(n[2:])}]"
    return f"S.{n}"


_FOLD = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "&": lambda a, b: a & b,
    "|": lambda a, b: a | b,
    "^": lambda a, b: a ^ b,
    "<<": lambda a, b: a << b,
    ">>": lambda a, b: a >> b,
    "==": lambda a, b: int(a == b),
    "!=": lambda a, b: int(a != b),
    "<": lambda a, b: int(a < b),
    "<=": lambda a, b: int(a <= b),
    ">": lambda a, b: int(a > b),
    ">=": lambda a, b: int(a >= b),
}


def _fold(op: str, a: int, b: int, loc: A.Loc) -> int:
    """Evaluate an operator on two constants, as the generated code would."""
    if op in ("/", "%"):
        if b == 0:
            raise A.SpecError(loc, "division by zero in a constant")
        return a // b if op == "/" else a % b
    if op not in _FOLD:
        raise A.SpecError(loc, f"unknown operator {op}")
    return _FOLD[op](a, b)


def _mentions(text: str, var: str) -> bool:
    i = text.find(var)
    while i >= 0:
        before = text[i - 1] if i else " "
        after = text[i + len(var)] if i + len(var) < len(text) else " "
        if not (before.isalnum() or before == "_") and not (after.isalnum() or after == "_"):
            return True
        i = text.find(var, i + 1)
    return False


def _is_simple(code: str) -> bool:
    return code.isidentifier() or code.lstrip("-").isdigit() or (code.startswith("$") and code[1:].isidentifier())


def _count_uses(e: A.Expr, name: str) -> int:
    match e:
        case A.Name():
            return int(e.name == name)
        case A.Call():
            return sum(_count_uses(a, name) for a in e.args)
        case A.BinOp():
            return _count_uses(e.left, name) + _count_uses(e.right, name)
        case A.UnOp():
            return _count_uses(e.operand, name)
        case A.Cond():
            return _count_uses(e.test, name) + _count_uses(e.then, name) + _count_uses(e.other, name)
        case A.Bit():
            return _count_uses(e.value, name) + _count_uses(e.index, name)
        case A.Slice():
            return _count_uses(e.value, name) + _count_uses(e.hi, name) + _count_uses(e.lo, name)
    return 0


def _contains_return(s: A.Stmt) -> bool:
    match s:
        case A.Return():
            return True
        case A.If():
            return any(_contains_return(x) for _, b in s.arms for x in b) or any(
                _contains_return(x) for x in s.orelse or []
            )
        case A.While():
            return any(_contains_return(x) for x in s.body)
        case A.Block():
            return any(_contains_return(x) for x in s.body)
    return False


# ---------------------------------------------------------------- flag functions


def flagfn_ids(spec: Spec) -> dict[tuple[str, int], int]:
    """Stable numbering of (flagfn, width) pairs for the lazy-flag tuple; 0 means none pending."""
    ids: dict[tuple[str, int], int] = {}
    for name in spec.flagfns:
        for w in (8, 16, 32):
            ids[(name, w)] = len(ids) + 1
    return ids


def flagfn_id(spec: Spec, name: str, width: int) -> int:
    return flagfn_ids(spec)[(name, width)]


def emit_flag_getter(spec: Spec, fn: A.FlagFn, width: int, flag: str) -> str:
    """The Python expression for one flag of a pending flagfn, reading its arguments from tuple c."""
    em = Emitter(spec, kind="flagfn", width=width)
    em.scopes[-1].names.update({p: V(f"c[{i + 1}]") for i, p in enumerate(fn.params)})
    for f, e, _ in fn.assigns:
        if f == flag:
            v = em.expr(e)
            if em.flags_read:
                raise A.SpecError(e.loc, "a flagfn computes flags from its arguments; it cannot read flags")
            return v.code if v.boolish or v.const is not None else f"({v.code} & 1)"
    raise KeyError(flag)


# ---------------------------------------------------------------- forms


def form_variants(form: Form) -> list[Variant]:
    e = form.enc
    osizes = [e.osize] if e.osize else [16, 32]
    asizes = [e.asize] if e.asize else [16, 32]
    has_rm = any(OPTYPES[o.type].kind == "rm" or o.type in ("mmrm", "xmmrm") for o in form.operands)
    mods = [e.mod] if (e.mod and has_rm) else (["reg", "mem"] if has_rm else [None])
    if not has_rm and form.memory_operand() is not None:
        mods = ["mem"]
    ccs = list(range(16)) if e.low_field == "cc" else [None]
    if "rep" in form.prefixes:
        reps = [None, "rep"]
    elif "repe" in form.prefixes or "repne" in form.prefixes:
        reps = [None] + [r for r in ("repe", "repne") if r in form.prefixes]
    else:
        reps = [None]
    return [Variant(o, a, m, c, r) for o in osizes for a in asizes for m in mods for c in ccs for r in reps]


def ends_block(form: Form) -> bool:
    """Whether the interpreter must end a block after this form (control flow, or state that decoding depends on)."""
    return form.rule != "ident" or bool(form.writes)


@dataclass
class FormCode:
    variant: Variant
    code: str
    flags_read: set[str]
    flags_written: set[str]
    opaque_flags: bool
    writes_eip: bool


def emit_form(spec: Spec, form: Form, variant: Variant) -> FormCode:
    """The interpreter template of one variant of one form (Python statements with $placeholders)."""
    em = Emitter(spec, form=form, variant=variant, kind="insn")
    insn = form.insn
    if not form.has_semantics:
        em.line(f"b_unimplemented({form.name!r}, {form.source!r})", insn.loc)
        return FormCode(variant, em.code(), set(), set(), False, False)
    if ends_block(form):
        em.line("S.eip = $next")
    # Mode, then privilege, then operands: #UD before #GP before memory faults, as the CPU orders them.
    allowed = sorted(MODE_NUMBERS[m] for m in form.modes)
    if len(allowed) < 3:
        em.line(f"if S.mode not in {tuple(allowed)!r}: raise Fault(6, None)", insn.loc)
    mem_op = form.memory_operand()
    if (mem_op is not None and variant.mod != "reg" and OPTYPES[mem_op.type].kind != "moffs") or (
        mem_op is not None and OPTYPES[mem_op.type].kind == "moffs"
    ):
        em.line("ea = $ea")
    reads_first = [o for o in form.operands if o.access in ("r", "rw") and not em.op_in_memory(o)]
    reads_mem = [o for o in form.operands if o.access in ("r", "rw") and em.op_in_memory(o)]
    for op in reads_first:
        v = em.operand_value(op, op.loc)
        if v.const is None and not _is_simple(v.code):
            var = f"v_{op.name}"
            em.line(f"{var} = {v.code}", op.loc)
            em.operand_vars[op.name] = var
    if insn.privilege is not None:
        t = em.expr(insn.privilege)
        exc = insn.privilege_exc
        if exc:
            name, code_e = exc
            if name not in EXCEPTIONS:
                raise A.SpecError(insn.privilege_loc, f"unknown exception #{name}")
            vec, has_code = EXCEPTIONS[name]
            code = em.expr(code_e).code if code_e is not None else "None"
            if has_code and code_e is None:
                raise A.SpecError(insn.privilege_loc, f"#{name} needs an error code")
        else:
            vec, code = 13, "0"
        # Under REP with a zero count the instruction never executes (SDM, REP: the count is
        # tested first), so it raises nothing: the check applies only when the count is not 0.
        guard = ""
        if variant.rep:
            guard = f"{_gpr_read('ecx' if variant.asize == 32 else 'cx')} != 0 and "
        if t.const is None:
            em.line(f"if {guard}not {t.code}: raise Fault({vec}, {code})", insn.privilege_loc)
        elif not t.const:
            when = f"if {guard.removesuffix(' and ')}: " if guard else ""
            em.line(f"{when}raise Fault({vec}, {code})", insn.privilege_loc)
    semantics = insn.semantics
    if reads_mem and not variant.rep:
        # Guards first: the CPU raises #UD and #NM before it touches a memory operand.
        n = _leading_guards(spec, form, semantics)
        em.body(semantics[:n])
        semantics = semantics[n:]
    for op in reads_mem:
        var = f"v_{op.name}"
        em.line(f"{var} = {em.operand_value(op, op.loc).code}", op.loc)
        em.operand_vars[op.name] = var
    if variant.rep:
        counter = "ecx" if variant.asize == 32 else "cx"
        if insn.bulk is not None and variant.asize == 32:
            # `bulk`: with DF clear, a builtin does as many whole iterations as it can at once
            # (each page's run in one access); the loop does the rest, one by one.
            em.line(f"if not S.eflags >> 10 & 1: {em.expr(insn.bulk).code}", insn.bulk_loc)
        em.line(f"while {_gpr_read(counter)} != 0:", insn.semantics_loc)
        em.depth += 1
        em.scopes.append(Scope())
        em.body(insn.semantics)
        em.scopes.pop()
        em.line(_gpr_write(counter, f"{_gpr_read(counter)} - 1"))
        if variant.rep == "repe":
            em.flags_read.add("zf")
            em.line("if not GET_ZF[S.cc[0]](S.cc): break")
        elif variant.rep == "repne":
            em.flags_read.add("zf")
            em.line("if GET_ZF[S.cc[0]](S.cc): break")
        em.depth -= 1
    else:
        em.body(semantics)
    if em.writes_eip and not ends_block(form):
        raise A.SpecError(insn.semantics_loc, f"{form.name} writes eip, so its translate rule cannot be `ident`")
    return FormCode(variant, em.code(), em.flags_read, em.flags_written, em.opaque_flags, em.writes_eip)


ADDRESS_INTRINSICS = ("addr", "seg", "in_memory")


def _leading_guards(spec: Spec, form: Form, stmts: list[A.Stmt]) -> int:
    """How many of the first statements are guards: `if` statements (or macros made of them)
    whose tests name no operand and whose arms only raise. They change nothing, so they may
    run before the memory operands are read."""

    def names_operand(e: A.Expr) -> bool:
        # addr(op), seg(op) and in_memory(op) name the operand without reading its value: an
        # alignment check on them is still a guard (the CPU raises #GP for a misaligned SSE
        # operand before it reads it).
        if isinstance(e, A.Call) and e.func in ADDRESS_INTRINSICS:
            return False
        match e:
            case A.Call():
                return any(names_operand(a) for a in e.args)
            case A.BinOp():
                return names_operand(e.left) or names_operand(e.right)
            case A.UnOp():
                return names_operand(e.operand)
        return any(_count_uses(e, op.name) for op in form.operands)

    def guard(s: A.Stmt, seen: tuple[str, ...]) -> bool:
        match s:
            case A.Raise():
                return s.code is None or not names_operand(s.code)
            case A.If():
                arms_ok = all(not names_operand(t) and all(guard(x, seen) for x in b) for t, b in s.arms)
                return arms_ok and all(guard(x, seen) for x in s.orelse or [])
            case A.Block():
                return all(guard(x, seen) for x in s.body)
            case A.ExprStmt() if s.call.func in spec.macros and s.call.func not in seen:
                m = spec.macros[s.call.func]
                return not any(names_operand(a) for a in s.call.args) and all(
                    guard(x, (*seen, m.name)) for x in m.body
                )
        return False

    n = 0
    while n < len(stmts) and guard(stmts[n], ()):
        n += 1
    return n


def emit_proc(spec: Spec, proc: A.Proc) -> str:
    em = Emitter(spec, kind="proc")
    em.scopes[-1].names.update({p: f"a_{p}" for p in proc.params})
    em.depth = 1
    start = len(em.lines)
    em.body(proc.body)
    if len(em.lines) == start:
        em.line("pass")
    params = ", ".join(f"a_{p}" for p in proc.params)
    header = f"def p_{proc.name}({params}):  # {proc.loc.file}:{proc.loc.line}\n"
    return header + em.code()


# ---------------------------------------------------------------- the checks that need emission


def check_semantics(spec: Spec) -> None:
    """Emit every variant of every form and every proc, so that name and type errors surface
    as spec errors, and compare the flags the semantics touch with the `flags` declarations."""
    for proc in spec.procs.values():
        emit_proc(spec, proc)
    for fn in spec.flagfns.values():
        for f, _, _ in fn.assigns:
            for w in (8, 16, 32):
                emit_flag_getter(spec, fn, w, f)
    for form in spec.forms:
        if not form.has_semantics:
            continue
        read: set[str] = set()
        written: set[str] = set()
        opaque = False
        for v in form_variants(form):
            fc = emit_form(spec, form, v)
            read |= fc.flags_read
            written |= fc.flags_written
            opaque |= fc.opaque_flags
        declared_write = {f for f, acts in form.flag_actions.items() if acts - {"test"}}
        declared_test = {f for f, acts in form.flag_actions.items() if "test" in acts}
        loc = form.insn.semantics_loc
        for f in sorted(written & set(STATUS_FLAGS)):
            if f not in declared_write:
                raise A.SpecError(loc, f"{form.name}: the semantics write {f} but the flags line does not declare it")
        for f in sorted(read & set(STATUS_FLAGS)):
            if f not in declared_test and not opaque:
                raise A.SpecError(
                    loc, f"{form.name}: the semantics read {f} but the flags line does not declare test({f})"
                )
        if not opaque:
            for f in sorted(declared_write & set(STATUS_FLAGS)):
                acts = form.flag_actions[f]
                if f not in written and "undef" not in acts:
                    raise A.SpecError(
                        loc, f"{form.name}: the flags line declares {f} written, but the semantics never write it"
                    )
