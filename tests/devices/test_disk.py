"""Disk images: the errors a bad file gives at start, write-through and snapshot writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ring1.runtime.devices.ata import AtaChannel
from ring1.runtime.devices.bus import Bus
from ring1.runtime.devices.disk import DiskError, DiskImage
from ring1.runtime.devices.irq import IrqLine


def image_file(tmp_path: Path, sectors: int = 16, name: str = "disk.img") -> Path:
    path = tmp_path / name
    path.write_bytes(b"".join(bytes([i]) * 512 for i in range(sectors)))
    return path


def test_reads_sectors(tmp_path: Path) -> None:
    with DiskImage(image_file(tmp_path)) as disk:
        assert disk.sectors == 16 and disk.size == 16 * 512
        assert disk.read(3, 2) == b"\x03" * 512 + b"\x04" * 512
        assert disk.read(15, 1) == b"\x0f" * 512


def test_writes_reach_the_file(tmp_path: Path) -> None:
    path = image_file(tmp_path)
    disk = DiskImage(path)
    disk.write(2, b"\xaa" * 1024)
    # In the file as soon as write returns (the page cache), before any flush.
    assert path.read_bytes()[1024:2048] == b"\xaa" * 1024
    disk.write(5, b"\xbb" * 512, durable=True)
    disk.close()
    assert disk.closed
    disk.close()  # twice is harmless
    data = path.read_bytes()
    assert data[2560:3072] == b"\xbb" * 512 and data[3072:3584] == b"\x06" * 512 and len(data) == 16 * 512


def test_snapshot_keeps_writes_in_memory(tmp_path: Path) -> None:
    path = image_file(tmp_path)
    before = path.read_bytes()
    mtime = os.stat(path).st_mtime_ns
    with DiskImage(path, snapshot=True) as disk:
        disk.write(1, b"\x11" * 1024)
        disk.write(2, b"\x22" * 512)  # over a sector already in the snapshot
        assert disk.read(0, 4) == b"\x00" * 512 + b"\x11" * 512 + b"\x22" * 512 + b"\x03" * 512
        disk.flush()
    assert path.read_bytes() == before and os.stat(path).st_mtime_ns == mtime


def test_snapshot_of_a_read_only_file_is_fine(tmp_path: Path) -> None:
    path = image_file(tmp_path)
    path.chmod(0o444)
    with DiskImage(path, snapshot=True) as disk:
        disk.write(0, bytes(512))
        assert disk.read(0, 1) == bytes(512)


def test_out_of_range_accesses_are_refused(tmp_path: Path) -> None:
    with DiskImage(image_file(tmp_path)) as disk:
        with pytest.raises(ValueError):
            disk.read(15, 2)
        with pytest.raises(ValueError):
            disk.write(0, b"x" * 100)  # not whole sectors


@pytest.mark.parametrize(
    ("make", "snapshot", "message"),
    [
        (lambda p: p, False, "does not exist"),
        (lambda p: (p.write_bytes(b""), p)[1], False, "is empty"),
        (lambda p: (p.write_bytes(b"x" * 1000), p)[1], False, "not a whole number of 512-byte sectors"),
        (lambda p: (p.mkdir(), p)[1], False, "is a directory"),
        (lambda p: (p.write_bytes(bytes(512)), p.chmod(0o444), p)[2], False, "is read-only"),
    ],
    ids=["missing", "empty", "partial-sector", "directory", "read-only"],
)
def test_bad_files_give_one_clear_error(tmp_path: Path, make, snapshot: bool, message: str) -> None:
    path = make(tmp_path / "bad.img")
    with pytest.raises(DiskError) as info:
        DiskImage(path, snapshot=snapshot)
    text = str(info.value)
    assert message in text and str(path) in text and "\n" not in text
    if message == "is read-only":
        assert "--snapshot" in text


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_file(tmp_path: Path) -> None:
    path = image_file(tmp_path)
    path.chmod(0)
    with pytest.raises(DiskError, match="cannot be read"):
        DiskImage(path, snapshot=True)


def test_one_writer_per_image(tmp_path: Path) -> None:
    path = image_file(tmp_path)
    with DiskImage(path):
        with pytest.raises(DiskError, match="in use"):
            DiskImage(path)
        with pytest.raises(DiskError, match="in use"):
            DiskImage(path, snapshot=True)
    with DiskImage(path, snapshot=True), DiskImage(path, snapshot=True):
        pass  # readers share
    DiskImage(path).close()  # the lock went with the close


def test_a_guest_write_through_the_controller_survives_a_reopen(tmp_path: Path) -> None:
    """Sectors written by PIO are in the file after close, and a snapshot run leaves it as it was."""
    path = image_file(tmp_path)

    def write_sector_zero(snapshot: bool, fill: int) -> None:
        bus, channel = Bus(), AtaChannel(IrqLine("ide0"), DiskImage(path, snapshot=snapshot))
        channel.map_on(bus)
        for port, value in ((0x1F6, 0xE0), (0x1F2, 1), (0x1F3, 0), (0x1F4, 0), (0x1F5, 0), (0x1F7, 0x30)):
            bus.io_out(port, 1, value)
        for _ in range(256):
            bus.io_out(0x1F0, 2, fill * 0x0101)
        bus.io_out(0x1F7, 1, 0xE7)  # FLUSH CACHE
        assert bus.io_in(0x1F7, 1) == 0x50
        channel.close()

    write_sector_zero(snapshot=False, fill=0x42)
    assert path.read_bytes()[:512] == b"\x42" * 512
    write_sector_zero(snapshot=True, fill=0x99)
    assert path.read_bytes()[:512] == b"\x42" * 512
