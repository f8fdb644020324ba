"""`make linux-guest`: Debian's i386 kernel and busybox, obtained the way a user would, into
build/guests/linux/ (vmlinuz, initrd.gz). Nothing of them is committed.

The machine's package tools fetch the two packages without installing them: the i386
architecture is added to dpkg when the machine lacks it (then `apt-get update`), the kernel
package is the one `linux-image-686:i386` depends on now, `apt-get download` fetches it and
`busybox-static:i386`, `dpkg-deb -x` unpacks them. The initrd is ring1's own (initramfs.py):
/init mounts proc, sys and devtmpfs, installs busybox's applets, prints MARKER and starts a
shell on the console.

    python -m ring1.runtime.tools.linux_guest build/guests/linux
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ring1.runtime.tools.initramfs import Entry, initramfs
from ring1.runtime.tools.progress import Progress

KERNEL_META, BUSYBOX = "linux-image-686:i386", "busybox-static:i386"
MARKER = "ring1-linux-guest: init is up"
INIT = f"""#!/bin/sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s /bin
echo "{MARKER}"
exec /bin/sh
"""


class GuestError(Exception):
    """A step failed; the message says which and why, in one line."""


def _run(what: str, *command: str, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise GuestError(f"{what}: `{command[0]}` is not on this machine (a Debian system is needed)") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise GuestError(f"{what}: {' '.join(command)} failed: {last}")
    return done.stdout


def kernel_package() -> str:
    """The versioned kernel package the metapackage depends on, e.g. linux-image-6.1.0-57-686:i386."""
    for line in _run("finding the kernel package", "apt-cache", "depends", KERNEL_META).splitlines():
        kind, _, name = line.strip().partition(": ")
        if kind == "Depends" and name.startswith("linux-image-"):
            return name if name.endswith(":i386") else f"{name}:i386"
    raise GuestError(f"finding the kernel package: {KERNEL_META} depends on no linux-image package")


def ensure_i386() -> None:
    if "i386" in _run("checking dpkg's architectures", "dpkg", "--print-foreign-architectures").split():
        return
    _run("adding the i386 architecture", "dpkg", "--add-architecture", "i386")
    _run("updating the package lists", "apt-get", "update")


def build(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with Progress("linux-guest", 5) as progress, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        progress.step("i386 packages")
        ensure_i386()
        kernel = kernel_package()
        progress.step(f"apt-get download {kernel} {BUSYBOX}")
        _run("downloading", "apt-get", "download", kernel, BUSYBOX, cwd=work)
        progress.step("dpkg-deb -x")
        for deb in sorted(work.glob("*.deb")):
            _run(f"unpacking {deb.name}", "dpkg-deb", "-x", str(deb), str(work / "root"))
        vmlinuz = sorted((work / "root" / "boot").glob("vmlinuz-*"))
        busybox = work / "root" / "bin" / "busybox"
        if not vmlinuz or not busybox.is_file():
            raise GuestError("unpacking: the packages hold no /boot/vmlinuz-* or /bin/busybox")
        progress.step("initrd.gz")
        entries = [
            Entry.directory("bin"),
            Entry.directory("dev"),
            Entry.directory("proc"),
            Entry.directory("sys"),
            Entry.file("bin/busybox", busybox.read_bytes(), 0o755),
            Entry.symlink("bin/sh", "busybox"),
            Entry.file("init", INIT.encode(), 0o755),
        ]
        (out / "initrd.gz").write_bytes(initramfs(entries))
        progress.step("vmlinuz")
        shutil.copyfile(vmlinuz[-1], out / "vmlinuz")
        (out / "VERSION").write_text(f"{vmlinuz[-1].name}\n")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m ring1.runtime.tools.linux_guest OUTPUT_DIRECTORY", file=sys.stderr)
        return 2
    try:
        build(Path(args[0]))
    except GuestError as err:
        print(f"make linux-guest: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
