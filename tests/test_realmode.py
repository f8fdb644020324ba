"""A real-mode ROM (guests/realmode.S) under `ring1 run --bios`: the same console and POST codes
in `interp`, `bare` and `bt`, and under `bt` its code translated as 16-bit code (issue 13,
item 4), none of it interpreted."""

from __future__ import annotations

import json

import pytest

from tests.runs import ring1

CONSOLE = (
    "realmode: reset vector, real mode\n"
    "realmode: checksum 54DC, fib(12) 0090\n"
    "realmode: string instructions\n"
    "realmode: segment arithmetic\n"
    "realmode: #DE and INT 0x60 through the IVT\n"
    "realmode: code in RAM rewritten and run again\n"
    "realmode: a jump that wraps at 64 KB\n"
    "realmode: five timer interrupts through the 8259 and the IVT, in HLT\n"
    "realmode: ok\n"
)
POST = "01 02 03 04 05 06 07 08 0f"


@pytest.fixture(scope="module")
def runs(guests, tmp_path_factory) -> dict:
    out = {}
    for mode in ("interp", "bare", "bt"):
        stats = tmp_path_factory.mktemp(mode) / "stats.json"
        rom = str(guests / "realmode.bin")
        done = ring1("run", "--bios", rom, "--mode", mode, "--stats", "--json-stats", str(stats))
        out[mode] = (done, json.loads(stats.read_text()))
    return out


@pytest.mark.parametrize("mode", ["interp", "bare", "bt"])
def test_the_real_mode_rom_says_the_same_in_every_mode(runs, mode: str) -> None:
    done, figures = runs[mode]
    assert done.returncode == 0, done.stderr
    assert done.stdout == CONSOLE
    assert POST in done.stderr
    assert figures["exit_status"] == 0


def test_under_bt_its_code_is_translated_as_16_bit_units(runs) -> None:
    done, figures = runs["bt"]
    assert "CCFs of 16-bit code (real mode, 16-bit CS)" in done.stderr
    assert figures["units_16bit"] > 20
    assert figures["units_16bit"] == figures["ccfs"]  # it never leaves real mode
    assert figures["interpreted_instructions"] == 0  # nor runs a real-mode instruction interpreted
    assert figures["chained_links"] > 0 and figures["indirect_hits"] > figures["indirect_misses"]
    assert figures["interrupts_delivered"] == 5  # the PIT's, through the IVT


def test_the_system_roms_real_mode_start_is_translated(guests, tmp_path) -> None:
    """The system ROM that goes on to protected mode (guests/rom.S): its real-mode start runs
    translated, as 16-bit units."""
    stats = tmp_path / "stats.json"
    done = ring1("run", "--bios", str(guests / "rom.bin"), "--mode", "bt", "--json-stats", str(stats))
    assert done.returncode == 0, done.stderr
    figures = json.loads(stats.read_text())
    assert figures["units_16bit"] > 0
