"""Disk images: the raw files behind the ATA drives (`--disk FILE`, `--snapshot`).

A `DiskImage` is a raw image (sector n at byte n * 512) opened when the platform is built, so
every problem with the file is one clear `DiskError` before the guest runs: missing, a
directory, unreadable, read-only when writes must reach it, empty, a size that is not whole
sectors, or already opened for writing by another run (an advisory `flock`, as QEMU locks its
images: two writers of one image corrupt it).

Writes:
- `snapshot=True` (QEMU's `-snapshot`): the file is opened read-only and never changes; every
  sector written lives in a dict over it, for the rest of the run.
- otherwise each write reaches the file with one `os.pwrite` per command's block of whole
  sectors (retried until complete), before the drive reports the block done. A write that
  returned is in the kernel's page cache, which a stop, a Ctrl-C or a crash of ring1 cannot
  tear; `flush()` (the drive's FLUSH CACHE, and `close()`) adds `fsync` so the host's disk has
  it too. A drive whose write cache the guest disabled asks for `write(..., durable=True)`,
  which syncs before the command completes, as a disabled cache promises.

What is not modelled: image formats other than raw (qcow2 and friends), sparse-file
optimisation, growing an image.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

SECTOR_SIZE = 512


class DiskError(Exception):
    """A disk image cannot be used as asked; the message is one line for the user."""


class DiskImage:
    """A raw disk image of whole 512-byte sectors, written through or kept in a snapshot."""

    def __init__(self, path: str | os.PathLike[str], *, snapshot: bool = False) -> None:
        self.path = os.fspath(path)
        self.snapshot = snapshot
        self._overlay: dict[int, bytes] = {}  # snapshot mode: sector -> its 512 bytes
        self._dirty = False  # written since the last fsync
        self._fd = self._open()
        try:
            size = os.fstat(self._fd).st_size
            if size == 0:
                raise DiskError(f"disk image {self.path} is empty (an image holds at least one 512-byte sector)")
            if size % SECTOR_SIZE:
                raise DiskError(
                    f"disk image {self.path} is {size} bytes, not a whole number of 512-byte sectors "
                    f"({size % SECTOR_SIZE} bytes too many)"
                )
            self.sectors = size // SECTOR_SIZE
            self._lock()
        except BaseException:
            os.close(self._fd)
            raise

    def _open(self) -> int:
        flags = os.O_RDONLY if self.snapshot else os.O_RDWR
        try:
            fd = os.open(self.path, flags | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise DiskError(f"disk image {self.path} does not exist") from None
        except IsADirectoryError:
            raise DiskError(f"disk image {self.path} is a directory, not an image file") from None
        except PermissionError:
            if not self.snapshot and os.access(self.path, os.R_OK):
                raise DiskError(
                    f"disk image {self.path} is read-only; the guest's writes could not reach it "
                    "(use --snapshot to keep them in memory)"
                ) from None
            raise DiskError(f"disk image {self.path} cannot be read (permission denied)") from None
        except OSError as e:
            if e.errno == errno.EROFS:
                raise DiskError(
                    f"disk image {self.path} is on a read-only file system; the guest's writes could not "
                    "reach it (use --snapshot to keep them in memory)"
                ) from None
            raise DiskError(f"disk image {self.path} cannot be opened: {e.strerror}") from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise DiskError(f"disk image {self.path} is not a regular file")
        if not self.snapshot and not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
            # Marked read-only (chmod a-w): root could open it for writing anyway, but the mark
            # says the image must not change, so it is refused as for any other user.
            os.close(fd)
            raise DiskError(
                f"disk image {self.path} is read-only; the guest's writes could not reach it "
                "(use --snapshot to keep them in memory)"
            )
        return fd

    def _lock(self) -> None:
        """One writer per image: a shared lock for a snapshot (it only reads), exclusive otherwise."""
        kind = fcntl.LOCK_SH if self.snapshot else fcntl.LOCK_EX
        try:
            fcntl.flock(self._fd, kind | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DiskError(
                f"disk image {self.path} is in use by another writer (another run, or the same image given twice)"
            ) from None
        except OSError:
            pass  # a file system without locks: use the image unlocked, as QEMU does there

    # ------------------------------------------------------------ sectors

    @property
    def closed(self) -> bool:
        return self._fd < 0

    @property
    def size(self) -> int:
        return self.sectors * SECTOR_SIZE

    def _check_range(self, lba: int, count: int) -> None:
        if self.closed:
            raise ValueError(f"disk image {self.path} is closed")
        if lba < 0 or count < 0 or lba + count > self.sectors:
            raise ValueError(f"sectors {lba}+{count} are outside {self.path} ({self.sectors} sectors)")

    def read(self, lba: int, count: int) -> bytes:
        """`count` sectors from `lba` on (the snapshot's copies where it has them).

        Raises OSError when the host cannot read the file (the drive reports it to the guest)."""
        self._check_range(lba, count)
        data = _pread_all(self._fd, count * SECTOR_SIZE, lba * SECTOR_SIZE)
        if self._overlay:
            buffer = bytearray(data)
            for i in range(count):
                sector = self._overlay.get(lba + i)
                if sector is not None:
                    buffer[i * SECTOR_SIZE : (i + 1) * SECTOR_SIZE] = sector
            data = bytes(buffer)
        return data

    def write(self, lba: int, data: bytes, *, durable: bool = False) -> None:
        """Whole sectors from `lba` on, in the file (one pwrite) or the snapshot.

        `durable`: the host's disk has them when this returns (fsync), for a drive without
        a write cache. Raises OSError when the host cannot write (a full disk, an I/O error)."""
        if len(data) % SECTOR_SIZE:
            raise ValueError(f"a write of {len(data)} bytes is not whole sectors")
        count = len(data) // SECTOR_SIZE
        self._check_range(lba, count)
        if self.snapshot:
            for i in range(count):
                self._overlay[lba + i] = bytes(data[i * SECTOR_SIZE : (i + 1) * SECTOR_SIZE])
            return
        _pwrite_all(self._fd, data, lba * SECTOR_SIZE)
        self._dirty = True
        if durable:
            self.flush()

    def flush(self) -> None:
        """What was written is on the host's disk (fsync); nothing to do for a snapshot."""
        if self.closed or self.snapshot or not self._dirty:
            return
        os.fsync(self._fd)
        self._dirty = False

    def close(self) -> None:
        """Flush and close; the snapshot's writes are dropped with it. Closing twice is harmless."""
        if self.closed:
            return
        try:
            self.flush()
        finally:
            os.close(self._fd)  # closing releases the flock
            self._fd = -1
            self._overlay.clear()

    def __enter__(self) -> DiskImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "snapshot" if self.snapshot else "write-through"
        return f"DiskImage({self.path!r}, {self.sectors} sectors, {mode})"


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    chunks: list[bytes] = []
    while length:
        chunk = os.pread(fd, length, offset)
        if not chunk:  # the file shrank under us: read what a drive would, zeros
            chunks.append(bytes(length))
            break
        chunks.append(chunk)
        length -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written
