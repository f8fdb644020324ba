"""An initramfs as Linux unpacks it: a "newc" cpio archive (the kernel's
Documentation/driver-api/early-userspace/buffer-format.rst), gzip-compressed, written here
because a fresh machine has no `cpio` and the format is a 110-byte ASCII header per entry.

Each entry: the magic "070701", then thirteen 8-digit hex fields (inode, mode, uid, gid,
nlink, mtime, file size, dev major/minor, rdev major/minor, name size with its NUL, check 0),
the name and its NUL padded to 4 bytes, the data padded to 4 bytes; the archive ends with the
entry "TRAILER!!!". Directories, regular files and symbolic links (the link target as data).
"""

from __future__ import annotations

import gzip
import stat
from dataclasses import dataclass

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One file of the archive: `path` without a leading slash, `mode` with its type bits."""

    path: str
    mode: int
    data: bytes = b""

    @staticmethod
    def directory(path: str, perms: int = 0o755) -> Entry:
        return Entry(path, stat.S_IFDIR | perms)

    @staticmethod
    def file(path: str, data: bytes, perms: int = 0o644) -> Entry:
        return Entry(path, stat.S_IFREG | perms, data)

    @staticmethod
    def symlink(path: str, target: str) -> Entry:
        return Entry(path, stat.S_IFLNK | 0o777, target.encode())


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(ino: int, mode: int, size: int, name: bytes) -> bytes:
    fields = (ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, len(name) + 1, 0)
    head = MAGIC + b"".join(b"%08X" % f for f in fields) + name + b"\0"
    return head + _pad4(len(head))


def newc_archive(entries: list[Entry]) -> bytes:
    """The cpio archive of `entries`, in order (a directory before what it holds)."""
    out = bytearray()
    for ino, e in enumerate(entries, start=1):
        if e.path.startswith("/") or not e.path:
            raise ValueError(f"initramfs path {e.path!r}: relative and not empty")
        out += _header(ino, e.mode, len(e.data), e.path.encode())
        out += e.data + _pad4(len(e.data))
    out += _header(0, 0, 0, TRAILER.encode())
    return bytes(out)


def initramfs(entries: list[Entry]) -> bytes:
    """The gzip-compressed archive, as `--initrd` takes it (mtime 0: the same bytes every time)."""
    return gzip.compress(newc_archive(entries), mtime=0)
