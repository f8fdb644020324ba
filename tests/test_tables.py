"""runtime/tools/tables.py: the one renderer behind ring1's text tables (bench, spec coverage,
run --stats, inspect --list)."""

from __future__ import annotations

import pytest

from ring1.runtime import engines
from ring1.runtime.tools import bench, tables


def test_columns_fit_their_widest_cell_and_align() -> None:
    lines = tables.render(("name", "ns"), [("a", "1.5"), ("longer", "12,345.0")], "lr", rule=True)
    assert lines == [
        "name          ns",
        "------  --------",
        "a            1.5",
        "longer  12,345.0",
    ]


def test_no_header_indent_and_no_trailing_spaces() -> None:
    lines = tables.render(None, [("x", ""), ("label", "v")], "ll", indent="  ")
    assert lines == ["  x", "  label  v"]


def test_rejects_ragged_rows_and_unknown_alignment() -> None:
    with pytest.raises(ValueError, match="2 cells"):
        tables.render(("a", "b", "c"), [("1", "2")], "lll")
    with pytest.raises(ValueError, match="align"):
        tables.render(None, [("1",)], "c")


def test_nano_table_layout() -> None:
    """The nanobenchmark table as before the renderer: the name left, the figures right, a rule."""

    def rec(name: str, mode: str, ns: float, ratio: float) -> dict:
        return {"name": name, "mode": mode, "ns_per_op": ns, "ratio_to_bare": ratio}

    result = {
        "benchmarks": [rec("call_ret", "bare", 32.1, 1.0), rec("call_ret", "bt", 162.1, 5.05)],
        "ladder": None,
        "settings": {"repeats": 1, "target_s": 0.01},
    }
    assert bench.format_nano(result).splitlines()[:3] == [
        "time per op     bare        bt  bt/bare",
        "-----------  -------  --------  -------",
        "call_ret     32.1 ns  162.1 ns    5.05x",
    ]


def test_run_stats_layout() -> None:
    stats = engines.RunStats("bt")
    stats.add("instructions", "instructions executed", 1234)
    stats.add("ident_share", "IDENT share", 93.5, "%")
    assert stats.format().splitlines() == [
        "ring1 run stats (mode bt):",
        "  instructions executed  1,234",
        "  IDENT share            93.5 %",
    ]
