"""`ring1 inspect`: what the binary translator made of a guest's code.

The guest is booted and run under `bt` (its console captured, not shown), then one
translation unit is shown beside the CCF made from it: each guest instruction, the rule
that translated it (with the spec file:line of its form, and the VMM's reason when it chose
another rule than the spec's), and the host instructions in the translation cache. The
continuation stubs at the end of the CCF show which exits are chained to which CCF.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from capstone import CS_ARCH_X86, CS_MODE_32, Cs

from ring1.generated.forms import FORMS
from ring1.generated.rules import RULES
from ring1.runtime.cpu.events import Fault
from ring1.runtime.tools import tables
from ring1.runtime.vmm import INDIRECT_ENTRY, KEY16, M32, PAD_SLOT, Unit, Vmm

_CS = Cs(CS_ARCH_X86, CS_MODE_32)


class InspectError(Exception):
    """Something the user asked for that cannot be shown (a one-line message)."""


@dataclass
class Row:
    guest: int
    guest_bytes: bytes
    guest_text: str
    rule: str  # "ident", "direct jmp", "inline cli_virtual", "callout", ...
    source: str | None  # spec file:line of the form, for non-IDENT instructions
    reason: str  # why the VMM chose another rule than the spec's, or ""
    host: list[tuple[int, bytes, str]]  # (TC address, bytes, text)


@dataclass
class UnitView:
    guest: int
    host: int
    size: int
    translated_now: bool  # translated by `inspect` itself (the run never reached it)
    rows: list[Row] = field(default_factory=list)
    tail: list[tuple[int, bytes, str]] = field(default_factory=list)  # continuation stubs
    exits: list[str] = field(default_factory=list)  # what each exit jump leads to

    def as_json(self) -> dict:
        def host(lines: list[tuple[int, bytes, str]]) -> list[dict]:
            return [{"address": a, "bytes": b.hex(" "), "text": t} for a, b, t in lines]

        return {
            "guest": self.guest,
            "host": self.host,
            "size": self.size,
            "translated_now": self.translated_now,
            "instructions": [
                {
                    "guest": r.guest,
                    "bytes": r.guest_bytes.hex(" "),
                    "text": r.guest_text,
                    "rule": r.rule,
                    "source": r.source,
                    "reason": r.reason or None,
                    "host": host(r.host),
                }
                for r in self.rows
            ],
            "stubs": host(self.tail),
            "exits": self.exits,
        }


def disassemble(code: bytes, address: int) -> list[tuple[int, bytes, str]]:
    out = []
    offset = 0
    while offset < len(code):
        insn = next(_CS.disasm(code[offset:], address + offset, 1), None)
        if insn is None:  # not an instruction: show the byte
            out.append((address + offset, code[offset : offset + 1], f".byte {code[offset]:#04x}"))
            offset += 1
            continue
        out.append((insn.address, bytes(insn.bytes), f"{insn.mnemonic} {insn.op_str}".strip()))
        offset += insn.size
    return out


class Inspector:
    def __init__(self, vmm: Vmm) -> None:
        self.vmm = vmm

    def units(self) -> list[Unit]:
        return sorted(self.vmm.units.values(), key=lambda u: u.guest)

    def unit_at(self, guest: int) -> tuple[Unit, bool]:
        """The unit holding guest address `guest` (translating one there if none does)."""
        for unit in self.vmm.units.values():
            if any(g == guest for g, *_ in unit.insns):
                return unit, False
        try:
            return self.vmm.translate(self.vmm.unit_key(guest)), True
        except Fault as f:
            raise InspectError(
                f"cannot translate at {guest:#010x}: the instruction fetch raises vector {f.vector}"
            ) from None

    def tc_bytes(self, start: int, end: int) -> bytes:
        return self.vmm.host.read(self.vmm.tc_phys(start), end - start)

    def name_of(self, host: int) -> str:
        vmm = self.vmm
        labels = {addr: name for name, addr in vmm.L.items()}  # where the VMM is now
        if host in labels:
            return f"stub {labels[host]}"
        if vmm.exit_pad <= host < vmm.callout_pad:
            ex = vmm.exits.get((host - vmm.exit_pad) // PAD_SLOT)
            target = f" to guest {ex.target & (0xFFFF if ex.target >= KEY16 else M32):#010x}" if ex else ""
            return f"its continuation{target} (exit pad slot, not chained yet)"
        if vmm.callout_pad <= host < vmm.tc_start:
            site = vmm.sites.get((host - vmm.callout_pad) // PAD_SLOT)
            guest = f" of guest {site.guest:#010x}" if site else ""
            return f"a callout{guest} (callout pad slot)"
        unit = next((u for u in vmm.units.values() if u.host == host), None)
        return f"CCF of guest {unit.guest:#010x} (chained)" if unit else f"{host:#010x}"

    def view(self, unit: Unit, translated_now: bool) -> UnitView:
        vmm = self.vmm
        out = UnitView(unit.guest, unit.host, unit.size, translated_now)
        for guest, host, end, _rule, _eax_at in unit.insns:
            d, _pages = vmm.m.decode_at(guest)
            used, reason = vmm.rule_for(d)
            spec_rule = RULES[d.form] if d.form else None
            label = used
            if spec_rule and used == spec_rule[0] and spec_rule[1]:
                label = f"{used} {spec_rule[1]}"
            source = FORMS[d.form].source if d.form and used != "ident" else None
            text = next((f"{i.mnemonic} {i.op_str}".strip() for i in _CS.disasm(d.raw, guest, 1)), "(undefined)")
            out.rows.append(Row(guest, d.raw, text, label, source, reason, disassemble(self.tc_bytes(host, end), host)))
        last = unit.insns[-1][2] if unit.insns else unit.host
        out.tail = disassemble(self.tc_bytes(last, unit.host + unit.size), last)
        for address, raw, _text in out.rows[-1].host + out.tail if out.rows else out.tail:
            if raw[:1] == b"\xe9" or (raw[:1] == b"\x0f" and 0x80 <= raw[1] <= 0x8F):  # JMP, Jcc rel32
                target = (address + len(raw) + int.from_bytes(raw[-4:], "little", signed=True)) & 0xFFFFFFFF
                if target >= unit.host + unit.size or target < unit.host:
                    out.exits.append(f"{address:#010x}: jump to {self.name_of(target)}")
        return out


def format_view(v: UnitView) -> str:
    lines = [
        f"translation unit at guest {v.guest:#010x}: {len(v.rows)} instruction(s), "
        f"CCF at {v.host:#010x}, {v.size} bytes"
        + (" (translated by inspect: the run never reached it)" if v.translated_now else ""),
        f"  (the {len(INDIRECT_ENTRY)} bytes before the CCF are its indirect entry: "
        "where in-TC lookups that hit come in)",
        "",
    ]
    width = max((len(f"{r.guest_bytes.hex(' ')}") for r in v.rows), default=0)
    width = min(max(width, 8), 30)
    for r in v.rows:
        head = f"{r.guest:08x}  {r.guest_bytes.hex(' '):<{width}}  {r.guest_text:<32}"
        note = "IDENT" if r.rule == "ident" else r.rule
        if r.source:
            note += f"   [{r.source}]"
        lines.append(f"{head}  {note}")
        if r.reason:
            lines.append(f"{'':10}{'':{width}}  {'':32}  ({r.reason})")
        for address, raw, text in r.host:
            lines.append(f"{'':12}-> {address:08x}  {raw.hex(' '):<30}  {text}")
    if v.tail:
        lines.append("")
        lines.append(
            "after the last instruction: the exit to the next one (to its exit pad slot until the VMM chains it)"
            " and the in-TC emulations' slow-path callouts:"
        )
        for address, raw, text in v.tail:
            lines.append(f"{'':12}   {address:08x}  {raw.hex(' '):<30}  {text}")
    if v.exits:
        lines.append("")
        lines.append("exits:")
        lines.extend(f"  {e}" for e in v.exits)
    return "\n".join(lines)


def format_list(units: list[Unit]) -> str:
    rows: list[tuple[str, ...]] = []
    for u in units:
        rules = sorted({rule for _guest, _host, _end, rule, _eax in u.insns if rule != "ident"})
        rows.append((f"{u.guest:#010x}", f"{u.host:#010x}", str(len(u.insns)), str(u.size), ", ".join(rules) or "-"))
    return "\n".join(tables.render(("guest", "CCF", "insns", "bytes", "non-IDENT rules"), rows, "rrrrl"))
