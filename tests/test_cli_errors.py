"""Bad input to `ring1` (and to the spec compiler) gets a one-line error, never a traceback;
and an instruction budget of zero means the same in every mode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ring1.codegen.ast import SpecError
from ring1.codegen.model import load_spec
from ring1.runtime.tools import fresh_machine
from ring1.runtime.tools.snippet import run_interp, run_unicorn, run_vmm
from tests.runs import ring1

ROOT = Path(__file__).resolve().parent.parent
PRELUDE = (ROOT / "spec" / "prelude.r1").read_text()
MODES = ("interp", "bare", "bt", "trap")


def one_line_error(done: subprocess.CompletedProcess, status: int, *words: str) -> str:
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    assert done.returncode == status, (done.returncode, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bootable flat Multiboot image (header flag bit 16): writes 0 to the exit port."""
    import struct

    magic, flags, load = 0x1BADB002, 1 << 16, 0x100000
    header = struct.pack("<III", magic, flags, -(magic + flags) & 0xFFFFFFFF)
    header += struct.pack("<5I", load, load, 0, 0, load + 0x20)
    code = b"\x31\xc0\xe6\xf4"  # xor eax, eax; out 0xf4, al
    path = tmp_path_factory.mktemp("img") / "exit0.bin"
    path.write_bytes(header.ljust(0x20, b"\0") + code)
    return path


def test_the_image_boots(image: Path) -> None:
    # The image the error tests use is a good one: their errors come from the option, not it.
    done = ring1("run", str(image), "--mode", "interp")
    assert (done.returncode, done.stderr) == (0, "")


def test_exec_negative_budget() -> None:
    one_line_error(ring1("exec", "--hex", "90", "--max-insns", "-5"), 2, "--max-insns", "-5")


def test_inspect_negative_budget(image: Path) -> None:
    one_line_error(ring1("inspect", str(image), "--max-insns", "-3"), 2, "--max-insns", "-3")


def test_run_of_a_device_that_never_ends() -> None:
    # /dev/zero read to its end would never end (or end in MemoryError).
    one_line_error(ring1("run", "/dev/zero", timeout=60), 2, "/dev/zero", "not a regular file")


def test_inspect_of_a_device() -> None:
    one_line_error(ring1("inspect", "/dev/zero", timeout=60), 2, "/dev/zero", "not a regular file")


@pytest.mark.parametrize("value", ["0x1FFFFFFFF", "-1", "4294967296"])
def test_set_value_wider_than_a_register(value: str) -> None:
    one_line_error(ring1("exec", "--hex", "90", "--set", f"eax={value}"), 2, f"eax={value}", "out of range")


def test_set_value_not_a_number() -> None:
    one_line_error(ring1("exec", "--hex", "90", "--set", "ebx=zz"), 2, "ebx=zz", "not a number")


def test_set_largest_value_is_accepted() -> None:
    done = ring1("exec", "--hex", "90", "--set", "eax=0xFFFFFFFF")
    assert done.returncode == 0, done.stderr
    assert "eax=ffffffff" in done.stdout


# ---------------------------------------------------------------- a budget of zero


SNIPPET = fresh_machine.FreshSpec(code=bytes.fromhex("40 40 40"))  # inc eax three times


def _zero_budget(mode: str):
    if mode == "interp":
        return run_interp(SNIPPET, 0)
    if mode == "bare":
        return run_unicorn(SNIPPET, 0)
    return run_vmm(SNIPPET, mode, 0)


@pytest.mark.parametrize("mode", MODES)
def test_zero_budget_runs_nothing(mode: str) -> None:
    result = _zero_budget(mode)
    assert result.stop == "limit"
    assert result.regs["eip"] == fresh_machine.CODE
    assert result.regs["eax"] == SNIPPET.initial_regs()["eax"]


def test_zero_budget_agrees_in_every_mode_on_the_command_line() -> None:
    outputs = {mode: ring1("exec", "--hex", "40 40 40", "--mode", mode, "--max-insns", "0") for mode in MODES}
    for mode, done in outputs.items():
        assert done.returncode == 0, (mode, done.stderr)
        assert "stop=limit" in done.stdout, (mode, done.stdout)
        assert "eip=00008000" in done.stdout, (mode, done.stdout)
    registers = {mode: done.stdout.splitlines()[:3] for mode, done in outputs.items()}
    assert all(lines == registers["interp"] for lines in registers.values()), registers


def test_bare_machine_zero_budget_runs_nothing() -> None:
    # `ring1 run --mode bare` runs through BareMachine, whose unicorn count of 0 meant "no limit".
    from ring1.runtime.engines.bare import BareMachine
    from ring1.runtime.tools.snippet import interp_machine

    bm = BareMachine(fresh_machine.MEMORY_SIZE)
    interp_machine(SNIPPET, bm.interp)
    bm.load_from_interp()
    assert bm.run(0).reason == "limit"
    assert bm.interp.state.eip == fresh_machine.CODE
    assert bm.interp.regs[0] == 0


# ---------------------------------------------------------------- spec files that are not text


def _spec_dir(tmp_path: Path) -> Path:
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir()
    (spec_dir / "prelude.r1").write_text(PRELUDE)
    return spec_dir


def test_spec_file_not_utf8(tmp_path: Path) -> None:
    spec_dir = _spec_dir(tmp_path)
    (spec_dir / "bad.r1").write_bytes(b"// fine\n// caf\xe9 in Latin-1\n")
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path, spec_dir)
    assert str(info.value) == "spec/bad.r1:2:7: error: not UTF-8 (byte 0xe9); spec files are UTF-8 text"


def test_directory_named_like_a_spec_file(tmp_path: Path) -> None:
    spec_dir = _spec_dir(tmp_path)
    (spec_dir / "extra.r1").mkdir()
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path, spec_dir)
    assert str(info.value).startswith("spec/extra.r1: error: is a directory")
    assert "\n" not in str(info.value)


def test_a_reader_that_goes_away_is_no_traceback() -> None:
    """`ring1 spec coverage | head -1`: the pipe closes after one line; ring1 ends quietly."""
    import subprocess

    done = subprocess.run(
        f"{sys.executable} -m ring1.runtime.cli spec coverage | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
        executable="/bin/bash",
    )
    assert done.stdout.startswith("mnemonic") and len(done.stdout.splitlines()) == 1
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
