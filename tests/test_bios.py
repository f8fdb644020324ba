"""`ring1 run --bios ROM`: the machine starts from reset with a system ROM, in every mode."""

from __future__ import annotations

import subprocess

import pytest

from ring1.runtime import engines
from ring1.runtime.boot import bios
from ring1.runtime.boot.multiboot import ImageError
from ring1.runtime.cpu.state import CS
from ring1.runtime.devices.platform import GuestPlatform
from tests.runs import ring1

MODES = ("interp", "bare", "bt", "trap")
MESSAGE = b"rom: reset vector, real mode, protected mode\n"


def _boot(rom_path, mode: str, max_insns: int | None = None):
    out = bytearray()
    image = bios.load_bios(rom_path, 16 << 20)
    platform = GuestPlatform(console=out.extend, memory_size=16 << 20)
    platform.map_rom(image.rom)
    stats = engines.RunStats(mode)
    engine = engines.create(mode, image.memory_size, platform)
    from ring1.runtime.boot.multiboot import interp_boot

    interp_boot(image, platform, engine.machine)
    S = engine.machine.state
    assert (S.mode, S.sel[CS], S.base[CS], S.eip, S.cr[0]) == (0, 0xF000, 0xFFFF0000, 0xFFF0, 0x60000010)
    engine.start()
    outcome = engine.run(max_insns)
    engine.figures(stats, 0.0)
    platform.figures(stats)
    return engine.stop(outcome, max_insns), bytes(out), platform, engine


@pytest.mark.parametrize("mode", MODES)
def test_the_rom_boots_from_reset_to_protected_mode(guests, mode: str) -> None:
    stop, out, platform, _ = _boot(guests / "rom.bin", mode)
    assert (stop.kind, stop.exit_status) == ("exit", 0), stop.detail
    assert out == MESSAGE
    assert platform.post.codes == [0x01, 0x02, 0x03, 0x04]


def test_the_first_fetch_is_at_the_top_of_4_gb(guests) -> None:
    # One instruction: the reset vector's far jump, fetched at FFFFFFF0 (the ROM's top copy,
    # a device on the bus), lands at F000:0000 in the low copy.
    stop, _, platform, engine = _boot(guests / "rom.bin", "interp", max_insns=1)
    S = engine.machine.state
    assert stop.kind == "limit" and (S.sel[CS], S.base[CS], S.eip) == (0xF000, 0xF0000, 0)
    assert platform.unclaimed() == {}


def test_bad_roms_are_one_line_errors(tmp_path) -> None:
    for size, why in ((0, "empty"), (5000, "multiple of 4 KB"), (512 << 10, "up to 256 KB")):
        path = tmp_path / f"rom{size}.bin"
        path.write_bytes(bytes(size))
        with pytest.raises(ImageError, match=why):
            bios.load_bios(path, 16 << 20)


def _ring1_run(*args: str) -> subprocess.CompletedProcess:
    return ring1("run", *args)


def test_the_command_line(guests, tmp_path) -> None:
    rom = str(guests / "rom.bin")
    done = _ring1_run("--bios", rom, "--stats")
    assert done.returncode == 0 and done.stdout == MESSAGE.decode()
    assert "POST codes" in done.stderr and "01 02 03 04" in done.stderr
    # Another POST port: the ROM's writes to 0x80 now reach no device, and say so.
    done = _ring1_run("--bios", rom, "--post-port", "0x84", "--stats")
    assert done.returncode == 0 and "POST codes" not in done.stderr and "port 0x80" in done.stderr
    neither = _ring1_run()
    both = _ring1_run(str(guests / "hello.elf"), "--bios", rom)
    for done in (neither, both):
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--bios" in done.stderr
    bad = tmp_path / "bad.rom"
    bad.write_bytes(b"\x90" * 100)
    done = _ring1_run("--bios", str(bad))
    assert done.returncode == 2 and done.stderr.startswith(f"ring1 run: {bad}: a ROM is a multiple of 4 KB")
