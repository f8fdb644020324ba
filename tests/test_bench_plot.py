"""`ring1 bench nano --plot FILE`: the file is a PNG of the chosen size, and what it draws is
what `--json` printed in the same run (the bars' heights, read back from matplotlib and
carried in the PNG's tEXt chunk)."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest

from ring1.runtime.cli import main
from ring1.runtime.tools import nano_plot

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The chunks of a PNG file, each checked against its CRC."""
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    chunks, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        chunks.append((kind, body))
        at += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    return chunks


def png_size_and_text(path: Path) -> tuple[tuple[int, int], dict[str, str]]:
    chunks = png_chunks(path.read_bytes())
    width, height = struct.unpack(">II", chunks[0][1][:8])
    text = {}
    for kind, body in chunks:
        if kind == b"tEXt":
            key, _, value = body.partition(b"\0")
            text[key.decode("latin-1")] = value.decode("latin-1")
    return (width, height), text


def test_plot_draws_the_json_figures(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    png = tmp_path / "nano.png"
    rows, modes = ["call_ret", "divzero", "ptemod"], ["bare", "bt"]
    argv = ["bench", "nano", "--json", "--quick", "--no-ladder", "--plot", str(png), "--only", *rows]
    assert main([*argv, "--modes", *modes]) == 0
    doc = json.loads(capsys.readouterr().out)

    size, text = png_size_and_text(png)
    assert size == (nano_plot.WIDTH_PX, nano_plot.HEIGHT_PX)
    drawn = json.loads(text[nano_plot.PLOT_DATA_KEY])
    by = {(r["name"], r["mode"]): r for r in doc["benchmarks"]}
    assert drawn["rows"] == rows
    assert set(drawn["ns_per_op"]) == set(modes)
    for mode in modes:
        expected = [nano_plot.drawable(by[(name, mode)]["ns_per_op"]) for name in rows]
        assert drawn["ns_per_op"][mode] == pytest.approx(expected), mode
    # Every row here has a paper counterpart: bt/bare beside VMware's BT/native.
    assert drawn["ratio_rows"] == rows
    assert drawn["ring1_bt_ratio"] == pytest.approx([nano_plot.drawable(by[(n, "bt")]["ratio_to_bare"]) for n in rows])
    published = {p.ring1_row: p for p in nano_plot.VMWARE_2006}
    assert drawn["vmware_bt_ratio"] == pytest.approx([published[n].bt_ratio for n in rows])
    assert drawn["vmware_bt_ratio"][0] == pytest.approx(51 / 11)  # call/ret: 51 cycles under BT, 11 native


def test_plot_leaves_out_what_a_log_scale_cannot_show(tmp_path: Path) -> None:
    """A row that did not run, or that measured no time after the baseline's subtraction, has
    no bar (None), and a paper row without a native figure has no VMware bar."""

    def rec(name: str, mode: str, ns: float | None, ratio: float | None) -> dict:
        return {"name": name, "mode": mode, "ns_per_op": ns, "ratio_to_bare": ratio}

    result = {
        "benchmarks": [
            rec("syscall", "bare", 100.0, 1.0),
            rec("syscall", "bt", None, None),  # did not run
            rec("alu", "bare", 3.0, 1.0),
            rec("alu", "bt", -0.5, -0.17),  # within the noise, below zero
        ],
        "settings": {"repeats": 1},
    }
    data = nano_plot.plot_nano(result, tmp_path / "x.png")
    assert data.ns_per_op == {"bare": [100.0, 3.0], "bt": [None, None]}
    assert data.ratio_rows == ["syscall"]  # alu is not one of the paper's
    assert data.ring1_bt_ratio == [None] and data.vmware_bt_ratio == [None]
    assert png_size_and_text(tmp_path / "x.png")[0] == (nano_plot.WIDTH_PX, nano_plot.HEIGHT_PX)


def test_plot_unwritable_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["bench", "nano", "--quick", "--no-ladder", "--only", "alu", "--modes", "bare"]
    assert main([*argv, "--plot", str(tmp_path / "no" / "such" / "dir.png")]) == 1
    assert "cannot write" in capsys.readouterr().err
