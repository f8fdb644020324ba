"""The initramfs writer (runtime/tools/initramfs.py) and `make linux-guest`'s package logic
(runtime/tools/linux_guest.py), without the network: the archive is read back by a reader of
the newc format written from the kernel's buffer-format description, not from the writer."""

from __future__ import annotations

import gzip
import stat

import pytest

from ring1.runtime.tools import linux_guest
from ring1.runtime.tools.initramfs import Entry, initramfs, newc_archive


def read_newc(archive: bytes) -> list[tuple[str, int, bytes]]:
    """(name, mode, data) of each entry before the trailer; checks magic, padding and the end."""
    out, at = [], 0
    while True:
        assert archive[at : at + 6] == b"070701", f"no magic at {at}"
        fields = [int(archive[at + 6 + 8 * i : at + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = archive[at + 110 : at + 110 + namesize]
        assert name.endswith(b"\0")
        at += 110 + namesize
        at += -at % 4
        data = archive[at : at + size]
        at += size
        at += -at % 4
        if name[:-1] == b"TRAILER!!!":
            assert at == len(archive)
            return out
        out.append((name[:-1].decode(), mode, data))


def test_directories_files_and_links_read_back() -> None:
    entries = [
        Entry.directory("bin"),
        Entry.file("bin/busybox", b"\x7fELF" + bytes(13), 0o755),
        Entry.symlink("bin/sh", "busybox"),
        Entry.file("init", b"#!/bin/sh\necho hi\n", 0o755),
    ]
    back = read_newc(newc_archive(entries))
    assert back == [
        ("bin", stat.S_IFDIR | 0o755, b""),
        ("bin/busybox", stat.S_IFREG | 0o755, b"\x7fELF" + bytes(13)),
        ("bin/sh", stat.S_IFLNK | 0o777, b"busybox"),
        ("init", stat.S_IFREG | 0o755, b"#!/bin/sh\necho hi\n"),
    ]


def test_the_gzip_is_the_same_every_time() -> None:
    entries = [Entry.file("init", b"x")]
    assert initramfs(entries) == initramfs(entries)
    assert read_newc(gzip.decompress(initramfs(entries))) == [("init", stat.S_IFREG | 0o644, b"x")]


@pytest.mark.parametrize("path", ["/init", ""])
def test_a_path_must_be_relative(path: str) -> None:
    with pytest.raises(ValueError):
        newc_archive([Entry.file(path, b"")])


def test_the_kernel_package_is_the_one_the_metapackage_depends_on(monkeypatch: pytest.MonkeyPatch) -> None:
    apt_cache = "linux-image-686:i386\n  Depends: linux-image-6.1.0-57-686:i386\n"
    monkeypatch.setattr(linux_guest, "_run", lambda what, *command, cwd=None: apt_cache)
    assert linux_guest.kernel_package() == "linux-image-6.1.0-57-686:i386"
    monkeypatch.setattr(linux_guest, "_run", lambda what, *command, cwd=None: "linux-image-686:i386\n")
    with pytest.raises(linux_guest.GuestError):
        linux_guest.kernel_package()


def test_a_missing_tool_is_a_one_line_error() -> None:
    with pytest.raises(linux_guest.GuestError, match="is not on this machine"):
        linux_guest._run("checking", "ring1-no-such-command-anywhere")
