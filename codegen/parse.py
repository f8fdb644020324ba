"""Parse spec files into the AST of `ring1.codegen.ast`.

Syntax errors become `SpecError` with the file, line and column of the offending
token, so `ring1 spec check` can print one line and exit non-zero.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from ring1.codegen import ast as A

GRAMMAR = Path(__file__).with_name("grammar.lark")

# Readable names for the terminals a parse error may say it expected.
_TERMINAL_WORDS = {
    "NAME": "a name",
    "INT": "a number",
    "STRING": "a quoted string",
    "SEMICOLON": "';'",
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "LPAR": "'('",
    "RPAR": "')'",
    "COMMA": "','",
    "COLON": "':'",
    "EQUAL": "'='",
    "OPBYTE": "an opcode byte",
    "ACCESS": "an access (r, w, rw, -)",
    "FLAG_ACTION": "a flag action (test, mod, set, clear, undef)",
    "RULE": "a translation rule (ident, direct, indirect, inline, callout, trap)",
    "MNEMONIC": "a mnemonic",
    "EXC": "an exception such as #GP",
}


@cache
def _parser() -> Lark:
    return Lark(GRAMMAR.read_text(), parser="lalr", propagate_positions=True, maybe_placeholders=False)


def _describe_expected(expected: set[str]) -> str:
    words = sorted({_TERMINAL_WORDS.get(t, repr(t.lower()) if t.isupper() and len(t) > 1 else t) for t in expected})
    if len(words) > 8:
        words = [*words[:8], "..."]
    return ", ".join(words)


def _syntax_error(path: str, err: UnexpectedInput) -> A.SpecError:
    loc = A.Loc(path, err.line, err.column)
    if isinstance(err, UnexpectedCharacters):
        return A.SpecError(loc, f"unexpected character {err.char!r}")
    if isinstance(err, UnexpectedEOF):
        return A.SpecError(loc, "unexpected end of file (a '}' or ';' is missing)")
    if isinstance(err, UnexpectedToken):
        tok = err.token
        if tok.type == "$END":
            return A.SpecError(loc, "unexpected end of file (a '}' or ';' is missing)")
        return A.SpecError(loc, f"unexpected {str(tok)!r}; expected {_describe_expected(set(err.expected))}")
    return A.SpecError(loc, "syntax error")


_BINOPS = {
    "or_op": "or",
    "and_op": "and",
    "eq_op": "==",
    "ne_op": "!=",
    "lt_op": "<",
    "le_op": "<=",
    "gt_op": ">",
    "ge_op": ">=",
    "bor_op": "|",
    "bxor_op": "^",
    "band_op": "&",
    "shl_op": "<<",
    "shr_op": ">>",
    "add_op": "+",
    "sub_op": "-",
    "mul_op": "*",
    "div_op": "/",
    "mod_op": "%",
}


class _ToAst(Transformer):
    """Bottom-up conversion of the lark tree; rule names map to AST nodes."""

    def __init__(self, path: str, text: str) -> None:
        super().__init__(visit_tokens=False)
        self.path = path
        self.lines = text.splitlines()

    def _loc(self, meta_or_tok) -> A.Loc:
        return A.Loc(self.path, getattr(meta_or_tok, "line", 0) or 0, getattr(meta_or_tok, "column", 0) or 0)

    def _text(self, meta) -> str:
        """The source text a node spans, for predicates shown verbatim in coverage reports."""
        if meta.line == meta.end_line:
            return self.lines[meta.line - 1][meta.column - 1 : meta.end_column - 1]
        parts = [self.lines[meta.line - 1][meta.column - 1 :]]
        parts += self.lines[meta.line : meta.end_line - 1]
        parts.append(self.lines[meta.end_line - 1][: meta.end_column - 1])
        return " ".join(p.strip() for p in parts)

    # ------------------------------------------------------------ expressions

    @v_args(meta=True)
    def int_lit(self, meta, children):
        return A.Int(self._loc(meta), int(str(children[0]).replace("_", ""), 0))

    @v_args(meta=True)
    def str_lit(self, meta, children):
        return A.Str(self._loc(meta), str(children[0])[1:-1])

    @v_args(meta=True)
    def name_ref(self, meta, children):
        return A.Name(self._loc(meta), str(children[0]))

    @v_args(meta=True)
    def field_ref(self, meta, children):
        return A.Field(self._loc(meta), str(children[0]), str(children[1]))

    @v_args(meta=True)
    def call(self, meta, children):
        args = children[1] if len(children) > 1 else []
        return A.Call(self._loc(meta), str(children[0]), args)

    def args(self, children):
        return list(children)

    @v_args(meta=True)
    def cond_expr(self, meta, children):
        return A.Cond(self._loc(meta), *children)

    @v_args(meta=True)
    def not_op(self, meta, children):
        return A.UnOp(self._loc(meta), "not", children[0])

    @v_args(meta=True)
    def neg_op(self, meta, children):
        return A.UnOp(self._loc(meta), "-", children[0])

    @v_args(meta=True)
    def inv_op(self, meta, children):
        return A.UnOp(self._loc(meta), "~", children[0])

    @v_args(meta=True)
    def bit_op(self, meta, children):
        return A.Bit(self._loc(meta), children[0], children[1])

    @v_args(meta=True)
    def slice_op(self, meta, children):
        return A.Slice(self._loc(meta), children[0], children[1], children[2])

    def __default__(self, data, children, meta):
        if data in _BINOPS:
            return A.BinOp(self._loc(meta), _BINOPS[data], children[0], children[1])
        return Tree(data, children, meta)

    # ------------------------------------------------------------ statements

    def block(self, children):
        return list(children)

    @v_args(meta=True)
    def let_stmt(self, meta, children):
        return A.Let(self._loc(meta), str(children[0]), children[1])

    @v_args(meta=True)
    def assign_stmt(self, meta, children):
        return A.Assign(self._loc(meta), children[0], children[1])

    @v_args(meta=True)
    def augassign_stmt(self, meta, children):
        target, op, value = children
        loc = self._loc(meta)
        return A.Assign(loc, target, A.BinOp(loc, str(op)[:-1], target, value))

    @v_args(meta=True)
    def name_lv(self, meta, children):
        return A.Name(self._loc(meta), str(children[0]))

    @v_args(meta=True)
    def field_lv(self, meta, children):
        return A.Field(self._loc(meta), str(children[0]), str(children[1]))

    def call_lv(self, children):
        return children[0]

    @v_args(meta=True)
    def if_stmt(self, meta, children):
        arms = [(children[0], children[1])]
        orelse = None
        for c in children[2:]:
            if c.data == "elif_clause":
                arms.append((c.children[0], c.children[1]))
            else:
                orelse = c.children[0]
        return A.If(self._loc(meta), arms, orelse)

    @v_args(meta=True)
    def while_stmt(self, meta, children):
        return A.While(self._loc(meta), children[0], children[1])

    def exc(self, children):
        return (str(children[0])[1:], children[1] if len(children) > 1 else None)

    @v_args(meta=True)
    def raise_stmt(self, meta, children):
        name, code = children[0]
        return A.Raise(self._loc(meta), name, code)

    @v_args(meta=True)
    def return_stmt(self, meta, children):
        return A.Return(self._loc(meta), children[0] if children else None)

    @v_args(meta=True)
    def setflags_stmt(self, meta, children):
        return A.SetFlags(self._loc(meta), str(children[0]), children[1] if len(children) > 1 else [])

    @v_args(meta=True)
    def expr_stmt(self, meta, children):
        return A.ExprStmt(self._loc(meta), children[0])

    # ------------------------------------------------------------ declarations

    def params(self, children):
        return [str(c) for c in children]

    @v_args(meta=True)
    def bitsdecl(self, meta, children):
        fields: dict[str, A.BitField] = {}
        for f in children[1:]:
            if f.name in fields:
                raise A.SpecError(f.loc, f"bit field {f.name!r} declared twice in bits {children[0]}")
            fields[f.name] = f
        return A.Bits(str(children[0]), fields, self._loc(meta))

    @v_args(meta=True)
    def bitfield(self, meta, children):
        hi = int(str(children[1]), 0)
        lo = int(str(children[2]), 0) if len(children) > 2 else hi
        if lo > hi:
            raise A.SpecError(self._loc(meta), f"bit range {hi}:{lo} must be written high:low")
        return A.BitField(str(children[0]), hi, lo, self._loc(meta))

    @v_args(meta=True)
    def fact(self, meta, children):
        return A.Fact(str(children[0]), str(children[1])[1:-1], self._loc(meta))

    @v_args(meta=True)
    def choice(self, meta, children):
        return A.Choice(children[0], str(children[1]), str(children[2])[1:-1], self._loc(meta))

    @v_args(meta=True)
    def choose(self, meta, children):
        return A.Choose(list(children), self._loc(meta))

    @v_args(meta=True)
    def privstate(self, meta, children):
        return A.PrivState(str(children[0]), str(children[1])[1:-1], self._loc(meta))

    @v_args(meta=True)
    def constdecl(self, meta, children):
        return A.Const(str(children[0]), children[1], self._loc(meta))

    @v_args(meta=True)
    def builtin(self, meta, children):
        params: list[str] = []
        doc = ""
        for c in children[1:]:
            if isinstance(c, list):
                params = c
            else:
                doc = str(c)[1:-1]
        return A.Builtin(str(children[0]), params, doc, self._loc(meta))

    def _params_body(self, children):
        if len(children) == 3:
            return str(children[0]), children[1], children[2]
        return str(children[0]), [], children[1]

    @v_args(meta=True)
    def macro(self, meta, children):
        return A.Macro(*self._params_body(children), self._loc(meta))

    @v_args(meta=True)
    def fndef(self, meta, children):
        return A.FnDef(*self._params_body(children), self._loc(meta))

    @v_args(meta=True)
    def proc(self, meta, children):
        return A.Proc(*self._params_body(children), self._loc(meta))

    @v_args(meta=True)
    def flagfn(self, meta, children):
        name = str(children[0])
        rest = children[1:]
        params = rest.pop(0) if rest and isinstance(rest[0], list) else []
        return A.FlagFn(name, params, list(rest), self._loc(meta))

    @v_args(meta=True)
    def flagassign(self, meta, children):
        return (str(children[0]), children[1], self._loc(meta))

    @v_args(meta=True)
    def template(self, meta, children):
        tokens = [c.children[0] if isinstance(c, Tree) else c for c in children[1:]]
        lines = [str(tok)[1:] for tok in tokens]
        return A.Template(str(children[0]), lines, self._loc(meta), [self._loc(tok) for tok in tokens])

    # ------------------------------------------------------------ instructions

    @v_args(meta=True)
    def insn(self, meta, children):
        insn = A.Insn(str(children[0]), self._loc(meta))
        for attr in children[1:]:
            key = attr.data.removesuffix("_attr")
            loc = self._loc(attr.meta)
            if key in insn.seen and key != "xcheck":
                raise A.SpecError(loc, f"{key!r} given twice in insn {insn.name}")
            insn.seen.add(key)
            getattr(self, f"_attr_{key}")(insn, attr, loc)
        return insn

    def _attr_mnemonic(self, insn, attr, loc):
        for item in attr.children:
            variant = str(item.children[1]) if len(item.children) > 1 else None
            insn.mnemonics.append((str(item.children[0]), variant, self._loc(item.meta)))

    def _attr_encoding(self, insn, attr, loc):
        insn.encoding_loc = loc
        for item in attr.children:
            tok: Token = item.children[0]
            insn.encoding.append(A.EncItem(item.data.removeprefix("enc_"), str(tok), self._loc(tok)))

    def _attr_operands(self, insn, attr, loc):
        insn.operands = []
        for op in attr.children:
            name, typ, access = (str(c) for c in op.children)
            insn.operands.append(A.Operand(name, typ, access, self._loc(op.meta)))

    def _attr_width(self, insn, attr, loc):
        insn.width = str(attr.children[0])

    def _attr_flags(self, insn, attr, loc):
        insn.flags = [(str(a.children[0]), [str(n) for n in a.children[1:]], self._loc(a.meta)) for a in attr.children]

    def _attr_privilege(self, insn, attr, loc):
        insn.privilege_loc = loc
        for c in attr.children:
            if isinstance(c, tuple):
                insn.privilege_exc = c
            else:
                insn.privilege = c
                insn.privilege_text = self._text(attr.meta).removeprefix("privilege").strip()
                if " else " in insn.privilege_text:
                    insn.privilege_text = insn.privilege_text.rsplit(" else ", 1)[0].strip()

    def _attr_modes(self, insn, attr, loc):
        insn.modes = [str(c) for c in attr.children]

    def _attr_prefixes(self, insn, attr, loc):
        insn.prefixes = [str(c) for c in attr.children]

    def _attr_sensitive(self, insn, attr, loc):
        insn.sensitive = [
            (str(c.children[0]), [str(n) for n in c.children[1:]], self._loc(c.meta)) for c in attr.children
        ]

    def _attr_translate(self, insn, attr, loc):
        rule = str(attr.children[0])
        sub = str(attr.children[1]) if len(attr.children) > 1 else None
        insn.translate = (rule, sub, loc)

    def _attr_semantics(self, insn, attr, loc):
        insn.semantics = attr.children[0]
        insn.semantics_loc = loc

    def _attr_xcheck(self, insn, attr, loc):
        insn.xchecks.append((str(attr.children[0]), str(attr.children[1])[1:-1], loc))

    def _attr_bulk(self, insn, attr, loc):
        insn.bulk = attr.children[0]
        insn.bulk_loc = loc

    def _attr_doc(self, insn, attr, loc):
        insn.doc = str(attr.children[0])[1:-1]

    def start(self, children):
        return list(children)


def parse_text(text: str, path: str) -> A.SpecFile:
    """Parse one spec file's text; `path` is how errors name the file."""
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as err:
        raise _syntax_error(path, err) from None
    try:
        items = _ToAst(path, text).transform(tree)
    except VisitError as err:
        if isinstance(err.orig_exc, A.SpecError):
            raise err.orig_exc from None
        raise
    return A.SpecFile(path, items)


class SpecFileError(A.SpecError):
    """A spec file that cannot be read as text at all: `path: error: message`."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(None, message)
        self.path = path

    def __str__(self) -> str:
        return f"{self.path}: error: {self.message}"


def read_spec_text(path: Path, rel: str) -> str:
    """The file's text, or a SpecError naming it: a spec file is UTF-8 text in a regular file."""
    if path.is_dir():
        raise SpecFileError(rel, "is a directory, not a spec file (every spec/*.r1 is read as one)")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SpecFileError(rel, f"cannot read: {err.strerror or err}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        col = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise A.SpecError(
            A.Loc(rel, line, col), f"not UTF-8 (byte {data[err.start]:#04x}); spec files are UTF-8 text"
        ) from None


def parse_file(path: Path, root: Path) -> A.SpecFile:
    try:
        rel = path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        rel = str(path)
    return parse_text(read_spec_text(path, rel), rel)
