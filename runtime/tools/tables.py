"""The one table renderer every text table ring1 prints goes through.

Plain text on purpose: the tables are read in terminals, in CI logs and in diffs, and the
tests compare some of them as text. Columns are as wide as their widest cell (header
included), two spaces apart; each column is left- or right-aligned; no line ends in spaces.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

GAP = "  "


def render(
    header: Sequence[str] | None,
    rows: Iterable[Sequence[str]],
    align: str,
    *,
    rule: bool = False,
    indent: str = "",
) -> list[str]:
    """The table's lines. `align` has one letter per column: "l" (left) or "r" (right);
    `rule` puts a line of dashes under the header; `indent` starts every line."""
    if set(align) - {"l", "r"}:
        raise ValueError(f"align takes l and r, not {align!r}")
    body = [list(row) for row in rows]
    table = ([list(header)] if header is not None else []) + body
    for row in table:
        if len(row) != len(align):
            raise ValueError(f"a row of {len(row)} cells in a table of {len(align)} columns: {row!r}")
    widths = [max((len(row[i]) for row in table), default=0) for i in range(len(align))]

    def line(cells: Sequence[str]) -> str:
        padded = (c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(cells, widths, align, strict=True))
        return (indent + GAP.join(padded)).rstrip()

    lines = [line(row) for row in table]
    if header is not None and rule:
        lines.insert(1, indent + GAP.join("-" * w for w in widths))
    return lines
