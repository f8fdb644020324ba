"""Blocks: decoded once, compiled to one Python function, run many times.

A block is a run of guest instructions that ends at a control transfer, at an
instruction whose form changes state that decoding depends on (the generated
`ends_block`), at a page boundary, at a stop address, or at MAX_INSNS instructions.
Its function is the concatenation of the instructions' generated templates with their
`$placeholders` filled in, so a block runs without any per-instruction dispatch.

Precise state on faults: a local `i` counts the instructions completed; on a Fault the
handler sets the guest EIP to the faulting instruction and counts only those before it.
A store into code of the running block sets S.smc; the block checks it after each
instruction that can store and leaves early, so stale instructions never run. A block
records the bytes it was made from (`code`, per physical page: the page-trace registry
drops it when they are written) and the linear->physical mapping it was fetched through
(`maps`: a CR3 write or INVLPG that changes it drops the block).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from string import Template

from ring1.generated import INTERP_MODULES
from ring1.generated.forms import FORMS
from ring1.runtime.cpu.traces import CodeRanges
from ring1.runtime.isa.decoder import Decoded

MAX_INSNS = 32


def _load_templates() -> dict[str, dict[tuple, Template]]:
    out: dict[str, dict[tuple, Template]] = {}
    for mod in INTERP_MODULES:
        m = importlib.import_module(f"ring1.generated.{mod}")
        for form, variants in m.TEMPLATES.items():
            out[form] = {k: Template(v) for k, v in variants.items()}
    return out


TEMPLATES = _load_templates()

UNDEFINED = "raise Fault(6, None)\n"


@dataclass(eq=False)
class Block:
    fn: object
    eip: int  # first instruction (offset in CS)
    insns: list[Decoded]
    source: str
    code: CodeRanges  # the physical bytes the block was made from
    maps: dict[int, tuple[int, bool] | None]  # linear page -> (physical page, user), as fetched
    # (physical address, bytes) of `code`, when they must be checked before the block runs
    snapshot: tuple[tuple[int, bytes], ...] = ()

    @property
    def pages(self) -> tuple[int, ...]:
        """The physical pages the block's bytes come from."""
        return tuple(sorted(self.code.spans))

    def unchanged(self, mem: memoryview) -> bool:
        """Guest memory still holds the bytes the block was made from."""
        return all(mem[pa : pa + len(raw)] == raw for pa, raw in self.snapshot)


def _indent(code: str, n: int) -> str:
    pad = "    " * n
    return "".join(pad + line + "\n" if line else "\n" for line in code.splitlines())


def instruction_body(d: Decoded) -> str:
    """The Python statements that execute one decoded instruction."""
    if d.form is None or d.lock_invalid:
        return UNDEFINED
    variants = TEMPLATES[d.form]
    tpl = variants.get(d.variant)
    if tpl is None:
        # A variant the spec does not have, e.g. a REP prefix the form ignores.
        tpl = variants.get((*d.variant[:4], None))
        if tpl is None:
            return UNDEFINED
    return tpl.substitute(d.fields)


def _can_store(body: str) -> bool:
    return "wr8(" in body or "wr16(" in body or "wr32(" in body or "b_store(" in body or "p_" in body


def block_source(name: str, insns: list[Decoded], describe) -> str:
    """The source of one block function. `describe(d)` gives the comment line for an instruction."""
    lines = [f"def {name}(EIPS=None):", "    i = 0", "    try:"]
    n = len(insns)
    last = insns[-1]
    for k, d in enumerate(insns):
        lines.append(f"        # {d.eip:#x}: {describe(d)}")
        body = instruction_body(d)
        lines.append(_indent(body, 2).rstrip("\n"))
        if k < n - 1:
            lines.append(f"        i = {k + 1}")
            if _can_store(body):
                lines.append(
                    f"        if S.smc: S.smc = False; S.icount += {k + 1}; S.eip = {insns[k + 1].eip}; return"
                )
    info = FORMS.get(last.form) if last.form else None
    lines.append(f"        S.icount += {n}")
    if info is not None and info.ends_block and not last.lock_invalid:
        lines.append("        return")
    else:
        lines.append(f"        S.eip = {last.next}")
    lines.append("    except Fault:")
    lines.append("        if S.new_task: S.new_task = False")  # (EIP is the new task's: spec/tasks.r1)
    lines.append("        else: S.eip = EIPS[i]")
    lines.append("        S.icount += i")
    lines.append("        raise")
    lines.append("    except VMStop:")  # a clean stop names the instruction that made it
    lines.append("        S.new_task = False")
    lines.append("        S.eip = EIPS[i]")
    lines.append("        S.icount += i")
    lines.append("        raise")
    lines.append("    except Trap as trap:")
    lines.append("        S.new_task = False")
    lines.append("        trap.start = EIPS[i]")
    lines.append("        S.icount += i + 1")
    lines.append("        raise")
    return "\n".join(lines) + "\n"


def compile_block(
    ns: dict, insns: list[Decoded], code: CodeRanges, maps: dict[int, tuple[int, bool] | None], describe
) -> Block:
    name = f"block_{insns[0].eip:x}"
    src = block_source(name, insns, describe)
    compiled = compile(src, f"<guest block at {insns[0].eip:#x}>", "exec")
    exec(compiled, ns)
    fn = ns.pop(name)
    fn.__defaults__ = (tuple(d.eip for d in insns),)
    return Block(fn, insns[0].eip, insns, src, code, maps)
