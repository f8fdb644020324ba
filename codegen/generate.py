"""`make generate`: spec/ -> generated/.

Deterministic: the same spec and generator give byte-identical files (sorted tables,
per-body temporary numbering, no timestamps). Files are rewritten only when their text
changes.
"""

from __future__ import annotations

from pathlib import Path

import jinja2

from ring1.codegen import ast as A
from ring1.codegen.decodetable import build_decode_table
from ring1.codegen.emit import (
    STATUS_FLAGS,
    emit_flag_getter,
    emit_form,
    emit_proc,
    ends_block,
    flagfn_ids,
    form_variants,
)
from ring1.codegen.model import EXCEPTIONS, OPTYPES, SIMD_STATE, Spec, load_spec

TEMPLATES = Path(__file__).with_name("templates")
FLAG_BITS = {"cf": 0, "pf": 2, "af": 4, "zf": 6, "sf": 7, "of": 11}


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["py"] = repr
    return env


def _literal(code: str) -> str:
    """A template body as a readable triple-quoted string when that is exact, else repr()."""
    if '"""' not in code and "\\" not in code and not code.endswith('"'):
        return '"""\\\n' + code + '"""'
    return repr(code)


def _module_name(spec_file: str) -> str:
    return "interp_" + Path(spec_file).stem.replace("-", "_")


def render_interp(spec: Spec, env: jinja2.Environment, spec_file: str) -> str:
    templates: list[dict] = []
    forms: list[dict] = []
    for form in spec.forms:
        if form.file != spec_file:
            continue
        by_code: dict[str, int] = {}
        labels: dict[int, list[str]] = {}
        variants: list[tuple[str, int]] = []
        for v in form_variants(form):
            code = emit_form(spec, form, v).code
            if code not in by_code:
                by_code[code] = len(templates)
                templates.append(
                    {
                        "form": form.name,
                        "source": form.source,
                        "index": len(templates),
                        "literal": _literal(code),
                        "labels": "",
                    }
                )
            idx = by_code[code]
            labels.setdefault(idx, []).append(v.label() or "all")
            variants.append((repr(v.key()), idx))
        for idx, ls in labels.items():
            templates[idx]["labels"] = ", ".join(ls) if len(ls) <= 4 else f"{ls[0]} and {len(ls) - 1} more"
        forms.append({"name": form.name, "source": form.source, "variants": variants})
    return env.get_template("interp.py.j2").render(
        sources=spec_file, spec_file=spec_file, templates=templates, forms=forms
    )


def render_procs(spec: Spec, env: jinja2.Environment) -> str:
    procs = [emit_proc(spec, p).rstrip("\n") for p in spec.procs.values()]
    files = sorted({p.loc.file for p in spec.procs.values()}) or [_all_sources(spec)]
    return env.get_template("procs.py.j2").render(sources=", ".join(files), procs=procs)


def render_flags(spec: Spec, env: jinja2.Environment) -> str:
    ids = flagfn_ids(spec)
    ccs, getters, all_fns = [], [], []
    per_flag: dict[str, list[str]] = {f: [] for f in STATUS_FLAGS}
    alls: list[str] = []
    for (name, width), ident in ids.items():
        fn = spec.flagfns[name]
        defined = [f for f, _, _ in fn.assigns]
        mask = sum(1 << FLAG_BITS[f] for f in defined)
        source = f"{fn.loc.file}:{fn.loc.line}"
        ccs.append({"id": ident, "name": name, "width": width, "mask": hex(mask), "source": source})
        parts = []
        for flag in STATUS_FLAGS:
            if flag in defined:
                fname = f"cc_{name}{width}_{flag}"
                code = emit_flag_getter(spec, fn, width, flag)
                loc = next(loc for f, _, loc in fn.assigns if f == flag)
                getters.append({"fname": fname, "code": code, "source": f"{loc.file}:{loc.line}"})
                per_flag[flag].append(fname)
                shift = FLAG_BITS[flag]
                parts.append(f"({code}) << {shift}" if shift else f"({code})")
            else:
                per_flag[flag].append(f"_eflags_bit({FLAG_BITS[flag]})")
        all_name = f"cc_{name}{width}_all"
        all_fns.append({"fname": all_name, "code": " | ".join(parts) or "0", "source": source})
        alls.append(all_name)
    tables = [(flag, FLAG_BITS[flag], per_flag[flag]) for flag in STATUS_FLAGS]
    files = sorted({f.loc.file for f in spec.flagfns.values()})
    return env.get_template("flags.py.j2").render(
        sources=", ".join(files), ccs=ccs, getters=getters, tables=tables, alls=alls, all_fns=all_fns
    )


def _privilege_code(spec: Spec, form) -> str | None:
    """The privilege predicate as a Python expression over the CPU state S (None: `any`)."""
    from ring1.codegen.emit import Emitter, Variant

    if form.insn.privilege is None:
        return None
    em = Emitter(spec, form=form, variant=Variant(osize=32, asize=32, mod="reg" if form.enc.mod != "mem" else "mem"))
    return em.expr(form.insn.privilege).code


def _privilege_exc(form) -> str:
    exc = form.insn.privilege_exc
    if exc is None:
        return repr((13, True)) if form.insn.privilege is not None else "None"
    return repr(EXCEPTIONS[exc[0]])


def _calls(node, name: str):
    """Every call of `name` in a statement or expression tree."""
    if isinstance(node, A.Call) and node.func == name:
        yield node
    if isinstance(node, (list, tuple)):
        for item in node:
            yield from _calls(item, name)
    elif isinstance(node, (A.Expr, A.Stmt)):
        for value in vars(node).values():
            if isinstance(value, (A.Expr, A.Stmt, list, tuple)):
                yield from _calls(value, name)


SIMD_OPERAND_TYPES = ("st0", "sti", "mm", "mmrm", "xmm", "xmmrm")
SIMD_BUILTINS = ("fpr", "set_fpr", "xmm", "set_xmm")


def _uses_simd_state(spec: Spec, node, seen: set[str] | None = None) -> bool:
    """Whether a statement or expression tree, with the macros, fns and procs it calls, names the
    x87, MMX or SSE state (SIMD_STATE, or the builtins fpr and set_fpr)."""
    seen = set() if seen is None else seen
    if isinstance(node, A.Name) and node.name in SIMD_STATE:
        return True
    if isinstance(node, A.Field) and node.base in SIMD_STATE:
        return True
    if isinstance(node, A.Call):
        if node.func in SIMD_BUILTINS:
            return True
        callee = spec.macros.get(node.func) or spec.fns.get(node.func) or spec.procs.get(node.func)
        if callee is not None and node.func not in seen:
            seen.add(node.func)
            if _uses_simd_state(spec, callee.body, seen):
                return True
    if isinstance(node, (list, tuple)):
        return any(_uses_simd_state(spec, item, seen) for item in node)
    if isinstance(node, (A.Expr, A.Stmt)):
        return any(
            _uses_simd_state(spec, value, seen)
            for value in vars(node).values()
            if isinstance(value, (A.Expr, A.Stmt, list, tuple))
        )
    return False


def simd_state(spec: Spec, form) -> bool:
    """A form that reads or writes the x87, MMX or SSE state: the VMM hands that state to the
    interpreter (and back) when it emulates one, and only then (reading it costs microseconds)."""
    if any(o.type in SIMD_OPERAND_TYPES for o in form.operands):
        return True
    return form.insn.semantics is not None and _uses_simd_state(spec, form.insn.semantics)


def _soft_interrupt(spec: Spec, form, consts: dict[str, int]) -> str:
    """(vector, event kind) of a form whose semantics raise a software interrupt: the vector a
    constant or the name of the operand holding it. The VMM uses it to tell INT n from a fault
    when unicorn reports a vector (both arrive alike)."""
    calls = list(_calls(form.insn.semantics, "soft_interrupt")) if form.insn.semantics is not None else []
    if not calls:
        return "None"
    vector, kind = calls[0].args

    def value(e: A.Expr) -> int | str:
        if isinstance(e, A.Name) and e.name in consts:
            return consts[e.name]
        if isinstance(e, A.Name) and any(o.name == e.name for o in form.operands):
            return e.name
        raise A.SpecError(e.loc, "soft_interrupt takes a constant or an operand")

    return repr((value(vector), value(kind)))


def render_forms(spec: Spec, env: jinja2.Environment) -> str:
    from ring1.codegen.asm import _const_values

    consts = _const_values(spec)
    forms = []
    for f in spec.forms:
        forms.append(
            {
                "name": f.name,
                "mnemonics": repr(dict(f.mnemonics)),
                "source": f.source,
                "encoding": f.enc.text(),
                "operands": repr(tuple((o.name, o.type, o.access) for o in f.operands)),
                "width": repr(f.width),
                "flags": repr({k: tuple(sorted(v)) for k, v in sorted(f.flag_actions.items())}),
                "privilege": f.privilege_text,
                "privilege_exc": _privilege_exc(f),
                "privilege_code": repr(_privilege_code(spec, f)),
                "modes": repr(f.modes),
                "prefixes": repr(f.prefixes),
                "reads": repr(f.reads),
                "writes": repr(f.writes),
                "rule": f.rule,
                "rule_arg": repr(f.rule_arg),
                "semantics": repr(f.has_semantics),
                "ends_block": repr(ends_block(f)),
                "xchecks": repr(tuple((k, r) for k, r, _ in f.insn.xchecks)),
                "soft_interrupt": _soft_interrupt(spec, f, consts),
                "simd_state": repr(simd_state(spec, f)),
                "interrupt_shadow": repr(
                    f.insn.semantics is not None and any(_calls(f.insn.semantics, "inhibit_interrupts"))
                ),
            }
        )
    return env.get_template("forms.py.j2").render(sources=_all_sources(spec), forms=forms)


def render_rules(spec: Spec, env: jinja2.Environment) -> str:
    rules = [
        {
            "name": f.name,
            "rule": f.rule,
            "arg": repr(f.rule_arg),
            "reads": repr(f.reads),
            "writes": repr(f.writes),
            "source": f.source,
        }
        for f in spec.forms
    ]
    from ring1.codegen.asm import _const_values, assemble_all

    templates = []
    for name, at in sorted(assemble_all(spec).items()):
        variants = {k: [_chunk_literal(c) for c in chunks] for k, chunks in at.variants.items()}
        templates.append(
            {
                "name": name,
                "source": at.source,
                "placeholders": repr(at.placeholders),
                "values": repr(at.values),
                "when": repr(at.when),
                "origin": repr(at.origin),
                "labels": repr(dict(sorted(at.labels.items()))),
                "variants": variants,
            }
        )
    consts = sorted(_const_values(spec).items())
    choices = [
        {
            "test": _choice_condition(c.condition),
            "rule": "rule" if c.rule == "own" else repr(c.rule),
            "reason": repr(c.reason),
            "source": repr(f"{c.loc.file}:{c.loc.line}"),
        }
        for c in spec.choices
    ]
    facts = [{"name": f.name, "doc": f.doc, "source": f"{f.loc.file}:{f.loc.line}"} for f in spec.facts.values()]
    return env.get_template("rules.py.j2").render(
        sources=_all_sources(spec), rules=rules, templates=templates, consts=consts, choices=choices, facts=facts
    )


def _choice_condition(e: A.Expr) -> str:
    """A `choose` condition as Python over `fact(name)` and the form's own `rule`."""
    match e:
        case A.Name(name="false"):
            return "False"
        case A.Name(name=name):
            return f"fact({name!r})"
        case A.Call(func="rule", args=args):
            return f"rule in {tuple(a.name for a in args)!r}"
        case A.BinOp(op=op, left=left, right=right):
            return f"({_choice_condition(left)} {op} {_choice_condition(right)})"
        case A.UnOp(op="not", operand=operand):
            return f"not {_choice_condition(operand)}"
    raise A.SpecError(e.loc, "a choice's condition is facts, rule(...), and, or, not")


def _chunk_literal(c) -> str:
    if isinstance(c, bytes):
        return f"bytes.fromhex({c.hex(' ')!r})"
    if isinstance(c, tuple):
        parts = [_chunk_literal(part) for part in c]
        return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"
    return repr(c)


def _all_sources(spec: Spec) -> str:
    return ", ".join(f.path for f in spec.files)


def render_init(spec: Spec) -> str:
    modules = sorted({_module_name(f.file) for f in spec.forms})
    lines = [
        "# Generated by `make generate` (ring1.codegen) from spec/*.r1. Do not edit.",
        '"""Everything generated from the spec: forms, decode tables, interpreter templates,',
        'procs, lazy flags and the translator\'s rules. Regenerate with `make generate`."""',
        "",
        f"INTERP_MODULES = {tuple(modules)!r}",
        "",
    ]
    return "\n".join(lines)


def render_all(spec: Spec) -> dict[str, str]:
    env = _env()
    out = {
        "__init__.py": render_init(spec),
        "forms.py": render_forms(spec, env),
        "decode.py": render_decode(spec, env),
        "procs.py": render_procs(spec, env),
        "flags.py": render_flags(spec, env),
        "rules.py": render_rules(spec, env),
        "layouts.py": render_layouts(spec, env),
    }
    for spec_file in sorted({f.file for f in spec.forms}):
        out[_module_name(spec_file) + ".py"] = render_interp(spec, env, spec_file)
    return out


def render_layouts(spec: Spec, env: jinja2.Environment) -> str:
    layouts = []
    for b in spec.bits.values():
        fields = []
        for f in b.fields.values():
            mask = ((1 << (f.hi - f.lo + 1)) - 1) << f.lo
            fields.append({"name": f.name.upper(), "mask": hex(mask), "shift": f.lo if f.hi > f.lo else None})
        layouts.append({"name": b.name.upper(), "source": f"{b.loc.file}:{b.loc.line}", "fields": fields})
    return env.get_template("layouts.py.j2").render(sources=_all_sources(spec), layouts=layouts)


def render_decode(spec: Spec, env: jinja2.Environment) -> str:
    table = build_decode_table(spec.forms)
    opcodes = []
    for key in sorted(table):
        cands = [repr((c.form, c.reg, c.mod, c.rm, c.osize, c.asize, c.pfx)) for c in table[key]]
        opcodes.append((repr(key), cands))
    layouts = []
    encodings = []
    for f in spec.forms:
        ops = tuple((o.name, _decode_kind(o.type), OPTYPES[o.type].width) for o in f.operands)
        layout = (f.enc.modrm is not None, f.enc.low_field, tuple(f.enc.imms), ops)
        layouts.append((f.name, repr(layout), f.source))
        e = f.enc
        enc = (
            tuple(e.opcode),
            e.low_field,
            e.modrm,
            e.fixed_modrm,
            e.mod,
            e.rm,
            tuple(e.imms),
            e.osize,
            e.asize,
            e.pfx,
        )
        encodings.append((f.name, repr(enc), f.source))
    return env.get_template("decode.py.j2").render(
        sources=_all_sources(spec), opcodes=opcodes, layouts=layouts, encodings=encodings
    )


def _decode_kind(optype: str) -> str:
    if optype in ("mmrm", "xmmrm"):
        return "rm"
    return OPTYPES[optype].kind


def write_generated(spec: Spec, out_dir: Path) -> list[Path]:
    """Write every generated file whose text changed; remove stale ones. Returns the changed paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = render_all(spec)
    changed = []
    for name, text in files.items():
        path = out_dir / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            changed.append(path)
    for stale in out_dir.glob("*.py"):
        if stale.name not in files:
            stale.unlink()
            changed.append(stale)
    return changed


def generate(root: Path) -> list[Path]:
    spec = load_spec(root)
    return write_generated(spec, root / "generated")


def stale_files(root: Path) -> list[str]:
    """The generated files that differ from what the spec and codegen make now (for CI)."""
    files = render_all(load_spec(root))
    out_dir = root / "generated"
    stale = [n for n, text in files.items() if not (out_dir / n).exists() or (out_dir / n).read_text() != text]
    stale += [p.name for p in out_dir.glob("*.py") if p.name not in files]
    return sorted(stale)


__all__ = ["generate", "load_spec", "render_all", "stale_files", "write_generated"]
