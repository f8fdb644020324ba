"""`ring1 bench nano --plot FILE`: the nanobenchmark table as a chart, beside VMware's figures.

Left: every row's time per operation in each mode, grouped bars on a log scale. Right, like
figure 4 of Adams & Agesen (ASPLOS 2006): for the rows that correspond to the paper's
nanobenchmarks, ring1's bt/bare ratio beside VMware's published BT/native ratio. bare is
unicorn with no VMM, the nearest thing ring1 has to native, so the two ratios are comparable
in kind, not in size (bare is itself an emulator).

The chart is drawn with matplotlib's Agg backend (no display needed). `plot_nano` returns the
series read back from the bars it drew, and the PNG carries them too (a tEXt chunk named
`PLOT_DATA_KEY`, JSON), so a test can check the picture against `ring1 bench nano --json`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

# The published figures, in one place. Adams & Agesen, "A Comparison of Software and Hardware
# Techniques for x86 Virtualization", ASPLOS 2006, figure 4 (3.8 GHz Pentium 4; cycles per
# operation), as recorded in ../shared/notes/anchors.md. None: the paper gives no figure.
# cr8wr is left out: a 32-bit guest has no CR8, so ring1 has no row to set beside it.


@dataclass(frozen=True)
class Published:
    paper_row: str  # the nanobenchmark's name in the paper
    ring1_row: str  # the ring1 row that measures the same operation (bench.NANO_NAMES)
    native_cycles: float | None
    bt_cycles: float | None
    vt_cycles: float | None
    note: str = ""

    @property
    def bt_ratio(self) -> float | None:
        """VMware's BT/native: what the ring1 bt/bare ratio is set beside."""
        if self.native_cycles is None or self.bt_cycles is None:
            return None
        return self.bt_cycles / self.native_cycles


VMWARE_2006 = (
    # The paper gives syscall as native n, BT about n + 2000 cycles: no native figure, so no ratio.
    Published("syscall", "syscall", None, None, None, "BT about native + 2000 cycles"),
    Published("in", "in_port", 3209, 214, 15826, "BT emulates in the TC: 15x faster than native"),
    Published("call/ret", "call_ret", 11, 51, 11),
    Published("pgfault", "pgfault", 1093, 3927, 11242),
    Published("divzero", "divzero", 889, 3223, 1014),
    Published("ptemod", "ptemod", 1, 391, 12733, "native about 1 cycle"),
)
CITATION = "Adams & Agesen, ASPLOS 2006, fig. 4 (3.8 GHz Pentium 4)"

# The image's size in pixels: FIGSIZE inches at DPI (savefig keeps it: no tight bounding box).
DPI = 100
WIDTH_PX, HEIGHT_PX = 1400, 600
PLOT_DATA_KEY = "ring1-nano-plot"
MODE_COLOURS = {"bare": "#4c72b0", "bt": "#dd8452", "trap": "#c44e52", "interp": "#8172b3"}


@dataclass
class PlotData:
    """What the chart shows, read back from the bars drawn. A value a log scale cannot show
    (a time that is n/a, zero or negative after the baseline's subtraction) is None."""

    rows: list[str]
    ns_per_op: dict[str, list[float | None]]  # mode -> one value per row
    ratio_rows: list[str]  # ring1 rows beside a paper row
    ring1_bt_ratio: list[float | None]
    vmware_bt_ratio: list[float | None]

    def as_json(self) -> dict:
        return {
            "rows": self.rows,
            "ns_per_op": self.ns_per_op,
            "ratio_rows": self.ratio_rows,
            "ring1_bt_ratio": self.ring1_bt_ratio,
            "vmware_bt_ratio": self.vmware_bt_ratio,
        }


def drawable(v: float | None) -> float | None:
    """The value as a log-scale bar shows it: None where it cannot."""
    return v if v is not None and math.isfinite(v) and v > 0 else None


def _heights(bars) -> list[float | None]:
    out = []
    for patch in bars:
        h = patch.get_height()
        out.append(None if math.isnan(h) else float(h))
    return out


def plot_nano(result: dict, path: str | Path) -> PlotData:
    """Draw `result` (bench.run_nano's document) as a PNG at `path`; return what was drawn."""
    import matplotlib

    matplotlib.use("Agg")  # no display: the file is the output
    import matplotlib.pyplot as plt

    recs = result["benchmarks"]
    by = {(r["name"], r["mode"]): r for r in recs}
    rows = list(dict.fromkeys(r["name"] for r in recs))
    modes = [m for m in MODE_COLOURS if any(r["mode"] == m for r in recs)]
    paired = [p for p in VMWARE_2006 if p.ring1_row in rows]

    fig, (left, right) = plt.subplots(
        1,
        2,
        figsize=(WIDTH_PX / DPI, HEIGHT_PX / DPI),
        dpi=DPI,
        gridspec_kw={"width_ratios": [max(len(rows), 1) * max(len(modes), 1), max(len(paired), 1) * 3]},
    )
    nan = float("nan")

    # Left: time per operation, one group per row, one bar per mode.
    width = 0.8 / max(len(modes), 1)
    drawn: dict[str, list[float | None]] = {}
    for i, mode in enumerate(modes):
        values = [drawable(by[(name, mode)]["ns_per_op"]) if (name, mode) in by else None for name in rows]
        xs = [x + (i - (len(modes) - 1) / 2) * width for x in range(len(rows))]
        bars = left.bar(xs, [nan if v is None else v for v in values], width, label=mode, color=MODE_COLOURS[mode])
        drawn[mode] = _heights(bars)
    left.set_yscale("log")
    left.set_xticks(range(len(rows)), rows, rotation=45, ha="right")
    left.set_ylabel("ns per operation (log)")
    left.set_title("ring1 nanobenchmarks, time per operation")
    left.legend(fontsize="small")
    left.grid(axis="y", which="major", alpha=0.3)

    # Right: bt/bare beside VMware's BT/native, for the rows that correspond.
    ring1_ratio = [drawable(by.get((p.ring1_row, "bt"), {}).get("ratio_to_bare")) for p in paired]
    vmware_ratio = [drawable(p.bt_ratio) for p in paired]
    xs = range(len(paired))
    ring1_bars = right.bar(
        [x - 0.2 for x in xs],
        [nan if v is None else v for v in ring1_ratio],
        0.4,
        label="ring1 bt / bare",
        color=MODE_COLOURS["bt"],
    )
    vmware_bars = right.bar(
        [x + 0.2 for x in xs],
        [nan if v is None else v for v in vmware_ratio],
        0.4,
        label="VMware BT / native",
        color="#55a868",
    )
    for x, (p, r, v) in enumerate(zip(paired, ring1_ratio, vmware_ratio, strict=True)):
        # A missing bar says why rather than leave a silent gap.
        if r is None:
            right.annotate("n/a", (x - 0.2, 1), ha="center", va="bottom", fontsize="small")
        if v is None:
            label = f"n/a: {p.note}" if p.note else "n/a"
            right.annotate(label, (x + 0.2, 1), ha="center", va="bottom", fontsize="x-small", rotation=90)
    right.axhline(1.0, color="black", linewidth=0.8)
    right.set_yscale("log")
    right.set_xticks(list(xs), [f"{p.paper_row}\n({p.ring1_row})" for p in paired])
    right.set_ylabel("slowdown ratio (log)")
    right.set_title("bt overhead beside VMware's", fontsize="medium")
    right.legend(fontsize="small")
    right.grid(axis="y", which="major", alpha=0.3)

    settings = result.get("settings", {})
    fig.suptitle(
        f"ring1 bench nano: medians of {settings.get('repeats', '?')} runs; VMware figures: {CITATION}",
        fontsize="small",
    )
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.16, top=0.88, wspace=0.2)

    data = PlotData(rows, drawn, [p.ring1_row for p in paired], _heights(ring1_bars), _heights(vmware_bars))
    fig.savefig(path, format="png", dpi=DPI, metadata={PLOT_DATA_KEY: json.dumps(data.as_json())})
    plt.close(fig)
    return data
