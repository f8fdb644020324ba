"""The spec compiler: what it accepts, what it rejects (with file:line:col), and what it makes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ring1.codegen.ast import SpecError
from ring1.codegen.generate import render_all
from ring1.codegen.model import load_spec

ROOT = Path(__file__).resolve().parent.parent
PRELUDE = (ROOT / "spec" / "prelude.r1").read_text()

GOOD = """
insn ADD_RMv_Rv {
  mnemonic  add
  encoding  01 /r
  operands  dst: rmv rw, src: rv r
  prefixes  lock
  flags     mod(of sf zf af pf cf)
  privilege any
  sensitive none
  translate ident
  semantics { let r = trunc(dst + src, w); dst = r; setflags add(dst, src, r); }
}
"""


def compile_spec(tmp_path: Path, text: str):
    """Load a spec directory holding the real prelude and one file with `text`."""
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir(exist_ok=True)
    (spec_dir / "prelude.r1").write_text(PRELUDE)
    (spec_dir / "t.r1").write_text(text)
    return load_spec(tmp_path, spec_dir)


def rejected(tmp_path: Path, text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        compile_spec(tmp_path, text)
    return info.value


def test_a_good_form_compiles(tmp_path: Path) -> None:
    spec = compile_spec(tmp_path, GOOD)
    form = spec.form("ADD_RMv_Rv")
    assert form.mnemonics == {None: "add"}
    assert form.flag_actions["cf"] == {"mod"}
    assert form.rule == "ident"


# Each case: a mistake, and where and what the one-line error must say.
CASES = [
    ("typo in a keyword", GOOD.replace("privilege any", "privilige any"), (8, 3), "unexpected"),
    ("unknown operand type", GOOD.replace("rv r", "rq r"), (5, 26), "unknown operand type 'rq'"),
    ("unknown name in semantics", GOOD.replace("dst + src", "dst + srcc"), (11, 35), "unknown name 'srcc'"),
    (
        "flag written but not declared",
        GOOD.replace("mod(of sf zf af pf cf)", "mod(of sf zf af pf)"),
        (11, 3),
        "the semantics write cf but the flags line does not declare it",
    ),
    (
        "flag declared but never written",
        GOOD.replace("setflags add(dst, src, r);", ""),
        (11, 3),
        "declares af written, but the semantics never write it",
    ),
    ("missing required line", GOOD.replace("  sensitive none\n", ""), (2, 1), "has no 'sensitive' line"),
    ("immediate without operand", GOOD.replace("01 /r", "01 /r ib"), (4, 3), "immediate field"),
    (
        "unknown privstate",
        GOOD.replace("sensitive none", "sensitive reads(gdtrr)"),
        (9, 13),
        "'gdtrr' is not privileged state",
    ),
    ("unknown flagfn", GOOD.replace("setflags add(", "setflags ad("), (11, 53), "no flagfn named 'ad'"),
    ("arity", GOOD.replace("trunc(dst + src, w)", "trunc(dst + src)"), (11, 23), "trunc takes 2 arguments"),
    ("unknown exception", GOOD.replace("let r", "raise #XX; let r"), (11, 21), "unexpected character '#'"),
    ("bad translate rule", GOOD.replace("translate ident", "translate direct"), (10, 3), "needs a kind with"),
    ("missing brace", GOOD.rstrip().rstrip("}"), (11, 80), "unexpected end of file"),
]


@pytest.mark.parametrize("what,text,where,message", CASES, ids=[c[0] for c in CASES])
def test_mistakes_are_reported_at_their_place(tmp_path: Path, what, text, where, message) -> None:
    err = rejected(tmp_path, text)
    line = str(err)
    assert "\n" not in line
    assert re.match(r"spec/t\.r1:\d+:\d+: error: ", line), line
    assert (err.loc.line, err.loc.col) == where, line
    assert message in line, line


def test_colliding_encodings_name_both_forms(tmp_path: Path) -> None:
    twin = GOOD.replace("ADD_RMv_Rv", "ADD_TWIN")
    err = rejected(tmp_path, GOOD + twin)
    assert "collides with ADD_RMv_Rv" in str(err)
    assert err.loc.line == 16  # the second encoding line


def test_duplicate_form_names(tmp_path: Path) -> None:
    err = rejected(tmp_path, GOOD + GOOD)
    assert "is already defined at spec/t.r1:2" in str(err)


def test_the_command_line_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    """`ring1 spec check` on a spec with a typo: one line, file:line:col, exit status 1."""
    work = tmp_path / "repo"
    shutil.copytree(ROOT / "spec", work / "spec")
    (work / "spec" / "t.r1").write_text(GOOD.replace("privilege any", "privilige any"))
    code = (
        "import sys; from pathlib import Path; from ring1.codegen.model import load_spec;"
        "from ring1.codegen.ast import SpecError\n"
        "try:\n    load_spec(Path(sys.argv[1]))\n"
        "except SpecError as e:\n    print(e, file=sys.stderr); sys.exit(1)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(work)], capture_output=True, text=True)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert re.match(r"spec/t\.r1:8:3: error: unexpected", lines[0]), lines[0]


def test_generation_is_deterministic_and_committed() -> None:
    """generated/ is exactly what the spec and generator make now, and making it twice agrees."""
    spec = load_spec(ROOT)
    first = render_all(spec)
    second = render_all(load_spec(ROOT))
    assert first == second
    for name, text in first.items():
        assert (ROOT / "generated" / name).read_text() == text, f"generated/{name} is stale: run make generate"


def test_generated_code_names_its_spec_lines() -> None:
    text = (ROOT / "generated" / "interp_arith.py").read_text()
    templates = text.count('"""\\\n')
    assert templates > 50
    assert text.count("from spec/arith.r1:") >= templates  # every template says where it comes from


def test_template_when_clauses_are_checked(tmp_path: Path) -> None:
    from ring1.codegen.asm import assemble_all

    good = "template t {\n  | when osize=32 mod=reg src#=0..5\n  | mov {src}, {src}\n}\n"
    assembled = assemble_all(compile_spec(tmp_path, good))["t"]
    assert assembled.when == {"osize": "32", "mod": "reg", "src#": "0..5"}
    assert sorted(assembled.variants) == [(r,) for r in range(8)]
    bad = "template t {\n  | when osize=32 dst#=0..5\n  | mov {src}, {src}\n}\n"
    with pytest.raises(SpecError) as info:
        assemble_all(compile_spec(tmp_path, bad))
    assert "spec/t.r1:1:" in str(info.value) and "dst#=0..5" in str(info.value)
    listed = "template t {\n  | when src#=0..0,3..4\n  | mov {src}, {src}\n}\n"
    assert assemble_all(compile_spec(tmp_path, listed))["t"].when == {"src#": "0..0,3..4"}
    dangling = "template t {\n  | when src#=0..0,\n  | mov {src}, {src}\n}\n"
    with pytest.raises(SpecError):
        assemble_all(compile_spec(tmp_path, dangling))


def test_templates_of_one_name_are_alternates_with_when_clauses(tmp_path: Path) -> None:
    """A second template of a name is an alternate (NAME/2: the translator emits the first whose
    `when` holds) when both have a `when` line; `code=` is the code segment's size."""
    from ring1.codegen.asm import assemble_all

    two = "template t {\n  | when osize=32\n  | nop\n}\ntemplate t {\n  | when osize=16 code=16\n  | int3\n}\n"
    out = assemble_all(compile_spec(tmp_path, two))
    assert (out["t"].when, out["t/2"].when) == ({"osize": "32"}, {"osize": "16", "code": "16"})
    assert (out["t"].variants[()], out["t/2"].variants[()]) == ([b"\x90"], [b"\xcc"])
    bare = "template t {\n  | when osize=32\n  | nop\n}\ntemplate t {\n  | int3\n}\n"
    with pytest.raises(SpecError) as info:
        compile_spec(tmp_path, bare)
    assert "spec/t.r1:5:" in str(info.value) and "alternates need `when` lines" in str(info.value)


def test_assembler_errors_point_at_the_template_line(tmp_path: Path) -> None:
    from ring1.codegen.asm import assemble_all

    bad = "template t {\n  | mov eax, 1\n  | movv eax, ebx\n}\n"
    with pytest.raises(SpecError) as info:
        assemble_all(compile_spec(tmp_path, bad))
    message = str(info.value)
    assert message.startswith("spec/t.r1:3:") and "as:" in message and "movv" in message
    assert "/tmp" not in message and ".s:" not in message  # no temporary file's name
    blob = "template b {\n  | org 0x1000\n  | here:\n  |   jmp there\n}\n"
    with pytest.raises(SpecError) as info:
        assemble_all(compile_spec(tmp_path, blob))
    assert str(info.value).startswith("spec/t.r1:")


def test_templates_assemble_with_gnu_as_at_their_origin(tmp_path: Path) -> None:
    from ring1.codegen.asm import assemble_all

    text = (
        "template b {\n  | org 0x1000\n  | first:\n  |   jmp second\n  |   mov eax, offset second\n"
        "  | second:\n  |   jne 1f\n  | 1:\n  |   ret\n}\n"
        "template t {\n  | mov dword ptr gs:[0x28], 0x200\n  | 1:\n  | jne 1b\n}\n"
    )
    out = assemble_all(compile_spec(tmp_path, text))
    assert out["b"].labels == {"first": 0x1000, "second": 0x1007}  # the source's labels only
    assert out["b"].variants[()] == [bytes.fromhex("eb 05 b8 07 10 00 00 75 00 c3")]  # absolute: linked at org
    assert out["t"].variants[()] == [bytes.fromhex("65 c7 05 28 00 00 00 00 02 00 00 75 fe")]


def test_template_values_conditions_and_guest_operands(tmp_path: Path) -> None:
    from ring1.codegen.asm import assemble_all

    text = (
        "template stubs {\n  | org 0x2000\n  | lookup:\n  |   ret\n}\n"
        "template t {\n  | j{cc} {@target}\n  | push offset {@next}\n  | jmp lookup\n}\n"
        "template u {\n  | when asize=32\n  | {seg}mov eax, {ea}\n  | mov dword ptr {ea}, 7\n}\n"
    )
    out = assemble_all(compile_spec(tmp_path, text))
    t = out["t"]
    assert t.placeholders == ("cc",) and t.values == ("target", "next")
    assert sorted(t.variants) == [(c,) for c in range(16)]
    assert t.variants[(5,)] == [
        bytes.fromhex("0f 85"), ("rel32", "@target", -4),  # jne rel32: filled with target - end of field
        bytes.fromhex("68"), ("abs32", "@next", 0),
        bytes.fromhex("e9"), ("rel32", "lookup", -4),
    ]  # fmt: skip
    u = out["u"]
    assert u.when == {"asize": "32"}
    store7 = ("ea", bytes.fromhex("c7"), 0, (7).to_bytes(4, "little"))
    assert u.variants[()] == [("seg",), ("ea", bytes.fromhex("8b"), 0, b""), store7]
    bad = "template t {\n  | jmp nowhere\n}\n"
    with pytest.raises(SpecError) as info:
        assemble_all(compile_spec(tmp_path, bad))
    assert str(info.value).startswith("spec/t.r1:2:") and "'nowhere' is not defined" in str(info.value)


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ('choose {\n  nope -> callout "x";\n}\n', "spec/t.r1:2:3", "'nope' is not a fact"),
        ('fact f "d";\nchoose {\n  f -> teleport "x";\n}\n', "spec/t.r1:3:3", "not a translate rule"),
        ('fact f "d";\nchoose {\n  f and rule(jump) -> own "";\n}\n', "spec/t.r1:3:14", "rule(...) takes"),
        ('fact f "d";\nchoose {\n  f + 1 -> own "";\n}\n', "spec/t.r1:3:3", "facts, rule(...), and, or, not"),
    ],
)
def test_choose_clauses_are_checked(tmp_path: Path, text: str, where: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        compile_spec(tmp_path, text)
    assert str(info.value).startswith(where) and message in str(info.value)


def test_choose_clauses_decide_in_order(tmp_path: Path) -> None:
    from ring1.codegen.generate import _choice_condition

    spec = compile_spec(tmp_path, 'fact a "";\nfact b "";\nchoose {\n  a and not rule(trap) -> callout "r";\n}\n')
    (choice,) = spec.choices
    assert _choice_condition(choice.condition) == "(fact('a') and not rule in ('trap',))"
    assert choice.rule == "callout" and choice.reason == "r"


def test_layouts_give_the_runtime_masks_of_the_spec_bits(tmp_path: Path) -> None:
    from ring1.codegen.generate import _env, render_layouts

    spec = compile_spec(tmp_path, "bits gadget { on = 0; mode = 5:4; }\n")
    namespace: dict = {}
    exec(render_layouts(spec, _env()), namespace)
    gadget = namespace["GADGET"]
    assert (gadget.ON, gadget.MODE, gadget.MODE_SHIFT) == (0x1, 0x30, 4)
    from ring1.generated.layouts import EFLAGS, PTE

    assert (EFLAGS.IF, EFLAGS.IOPL, PTE.D, PTE.FRAME) == (0x200, 0x3000, 0x40, 0xFFFFF000)
