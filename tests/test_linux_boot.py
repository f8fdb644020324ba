"""The Linux boot protocol's 32-bit entry (runtime/boot/linux.py), with a bzImage of our own.

The image has a real setup header and a protected-mode "kernel" that checks what the protocol
promises it at entry (ESI at the zero page with the setup header copied in, the command line
and the initrd where the header says, an e820 map, __BOOT_CS and __BOOT_DS, interrupts off,
EBP EDI EBX zero) and reports the first check that fails through the exit port (status 0: all
held). Bad images, an initrd that does not fit and a command line over the limit are one-line
errors.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from ring1.runtime.boot import linux
from ring1.runtime.boot.firmware import e820_map
from ring1.runtime.isa.assembler import assemble
from tests.runs import ring1

CMDLINE = "console=ttyS0 quiet"
INITRD_MAGIC = 0x44524E49  # "INRD"

KERNEL = f"""
    mov esp, 0x90000
    mov al, 1
    cmp esi, {linux.ZERO_PAGE:#x}
    jne fail
    mov al, 2
    cmp dword ptr [esi + 0x202], 0x53726448     # "HdrS"
    jne fail
    mov al, 3
    mov edx, [esi + 0x228]                      # cmd_line_ptr
    cmp dword ptr [edx], 0x736e6f63             # "cons"
    jne fail
    mov al, 4
    mov edx, [esi + 0x218]                      # ramdisk_image
    test edx, edx
    jz fail
    cmp dword ptr [edx], {INITRD_MAGIC:#x}
    jne fail
    mov al, 5
    cmp dword ptr [esi + 0x21c], 8              # ramdisk_size
    jne fail
    mov al, 6
    cmp byte ptr [esi + 0x1e8], 0               # e820_entries
    je fail
    mov al, 7
    cmp byte ptr [esi + 0x210], 0xff            # type_of_loader
    jne fail
    mov al, 8
    mov dx, cs
    cmp dx, 0x10
    jne fail
    mov dx, ds
    cmp dx, 0x18
    jne fail
    mov dx, ss
    cmp dx, 0x18
    jne fail
    mov al, 9
    or ebx, edi
    or ebx, ebp
    jnz fail
    mov al, 10
    pushfd
    pop edx
    test edx, 0x200
    jnz fail
    mov al, 0
fail:
    out 0xf4, al
    hlt
"""


def bzimage(version: int = 0x020F, loadflags: int = 0x01, cmdline_size: int = 2047, setup_sects: int = 1) -> bytes:
    """A bzImage: boot sector with its setup header, one sector of (unused) setup code, and the
    protected-mode kernel above."""
    boot = bytearray(512)
    boot[0x1F1] = setup_sects
    struct.pack_into("<H", boot, 0x1FE, 0xAA55)
    header = bytearray(0x70)  # 0x200..0x26F
    header[0:2] = b"\xeb\x66"  # the jump over the header: it ends at 0x202 + 0x66
    header[2:6] = b"HdrS"
    struct.pack_into("<H", header, 0x06, version)
    header[0x11] = loadflags
    struct.pack_into("<I", header, 0x14, linux.KERNEL_ADDR)  # code32_start
    struct.pack_into("<I", header, 0x2C, 0x37FFFFFF)  # initrd_addr_max
    struct.pack_into("<I", header, 0x38, cmdline_size)
    struct.pack_into("<I", header, 0x60, 0x20000)  # init_size
    setup = bytes(header) + bytes(512 * setup_sects - len(header))
    return bytes(boot) + setup + assemble(KERNEL, linux.KERNEL_ADDR).code


def ring1_run(*args: str) -> subprocess.CompletedProcess:
    return ring1("run", *args, "--serial-input", "none", timeout=120)


@pytest.fixture()
def files(tmp_path: Path) -> tuple[Path, Path]:
    kernel, initrd = tmp_path / "bzImage", tmp_path / "initrd"
    kernel.write_bytes(bzimage())
    initrd.write_bytes(struct.pack("<II", INITRD_MAGIC, 0))
    return kernel, initrd


@pytest.mark.parametrize("mode", ["bt", "interp", "bare"])
def test_the_kernel_finds_what_the_protocol_promises(files: tuple[Path, Path], mode: str) -> None:
    kernel, initrd = files
    done = ring1_run("--kernel", str(kernel), "--initrd", str(initrd), "--append", CMDLINE, "--mode", mode)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)


def test_the_zero_page_and_the_initrd_placement(files: tuple[Path, Path]) -> None:
    kernel, initrd = files
    image = linux.load_bzimage(kernel, 64 << 20, CMDLINE, str(initrd))
    writes = dict(image.writes)
    zero = writes[linux.ZERO_PAGE]
    ramdisk, size = struct.unpack_from("<II", zero, 0x218)
    assert (size, ramdisk % 0x1000, ramdisk + size <= 64 << 20) == (8, 0, True)
    assert ramdisk >= (64 << 20) - 0x1000  # as high as RAM allows
    assert writes[linux.CMDLINE_ADDR] == CMDLINE.encode() + b"\0"
    assert zero[0x202:0x206] == b"HdrS"
    regions = e820_map(64 << 20)
    assert zero[linux.E820_ENTRIES] == len(regions)
    first = struct.unpack_from("<QQI", zero, linux.E820_TABLE)
    assert first == (regions[0].base, regions[0].length, regions[0].type)
    assert image.cpu.regs["esi"] == linux.ZERO_PAGE and image.cpu.eip == linux.KERNEL_ADDR
    assert image.cpu.segs["cs"].selector == linux.BOOT_CS and image.cpu.segs["ss"].selector == linux.BOOT_DS


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\0" * 100, "too short for a Linux kernel image"),
        (b"\0" * 4096, "not a Linux kernel image"),
        (bzimage(version=0x0204), "older than 2.06"),
        (bzimage(loadflags=0), "a zImage"),
        (bzimage()[:1000], "truncated"),
    ],
    ids=["short", "no-header", "old-protocol", "zimage", "truncated"],
)
def test_a_bad_kernel_image_is_a_one_line_error(tmp_path: Path, content: bytes, message: str) -> None:
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(content)
    done = ring1_run("--kernel", str(kernel))
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_command_line_over_the_limit_is_a_one_line_error(tmp_path: Path) -> None:
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(bzimage(cmdline_size=16))
    done = ring1_run("--kernel", str(kernel), "--append", CMDLINE)
    assert done.returncode == 2 and "over this kernel's limit of 16" in done.stderr, done.stderr


def test_an_initrd_that_does_not_fit_is_a_one_line_error(files: tuple[Path, Path], tmp_path: Path) -> None:
    kernel, _ = files
    big = tmp_path / "big"
    big.write_bytes(bytes(3 << 20))
    done = ring1_run("--kernel", str(kernel), "--initrd", str(big), "-m", "4M")
    assert done.returncode == 2 and "does not fit" in done.stderr and len(done.stderr.strip().splitlines()) == 1
