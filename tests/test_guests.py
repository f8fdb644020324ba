"""The guests, the Multiboot loader, the virtual platform and `ring1 run`."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from ring1.runtime import engines
from ring1.runtime.boot import multiboot
from ring1.runtime.cpu.events import VMStop
from ring1.runtime.cpu.state import CS, DS, SS
from ring1.runtime.devices.platform import COM1, EXIT_PORT, POST_PORT, GuestExit, GuestPlatform
from ring1.runtime.isa.assembler import assemble
from tests.runs import ring1

ROOT = Path(__file__).resolve().parent.parent
GUESTS = ROOT / "build" / "guests"




def run_image(path: Path, max_insns: int | None = None) -> tuple[engines.Stop, bytes, engines.RunStats, GuestPlatform]:
    out = bytearray()
    platform = GuestPlatform(console=out.extend)
    stats = engines.RunStats("interp")
    stop = engines.run_image("interp", multiboot.load_multiboot(path), platform, max_insns, stats)
    return stop, bytes(out), stats, platform


def ring1_run(*args: str) -> subprocess.CompletedProcess:
    return ring1("run", *args)


# ---------------------------------------------------------------- guests under interp


def test_hello(guests):
    stop, out, stats, platform = run_image(guests / "hello.elf")
    assert stop.kind == "exit" and stop.exit_status == 0
    assert out == b"hello from a ring1 guest\n"
    assert stats.get("instructions") > 25 and stats.get("io_operations") == len(out) + 1
    assert platform.io_counts[(COM1, "out")] == len(out)


def test_demo(guests):
    stop, out, stats, _ = run_image(guests / "demo.elf", max_insns=5_000_000)
    text = out.decode()
    assert stop.kind == "exit", f"{stop.diagnosis('interp')}\n{text}"
    lines = text.splitlines()
    for line in [
        "ring1 demo kernel",
        "serial: 16550 at 3f8, scratch register ok",
        "multiboot: memory 639 KB low, 15360 KB above 1 MB",  # the EBDA takes the last KB below 640
        'multiboot: boot loader "ring1"',
        "primes: 669 below 5000, the largest 4999",
        'checksum: crc32("123456789") = cbf43926',
        'strings: length 21, reversed "enihcam lautriv 1gnir"',
        "calls: fib(15) = 610, recursively",
        "  div by zero: #DE caught by the kernel's handler, 1 time(s)",
        "  ud2: #UD caught, 1 time(s)",
        "  mov fs, 0x38: #GP error code 0x38",
        "  store to 0x00500000: #PF error 0x2 cr2 0x00500000, mapped on demand; read back 0xc0ffee",
        "  int 0x80: wrote 54 bytes; add(40, 2) = 42; caller cs 0x8",
        "redpill verdict: not virtualized (5 of 5 checks match bare metal)",
        "demo: all self-checks passed",
    ]:
        assert line in lines, f"missing {line!r} in:\n{text}"
    redpill = [line for line in lines if line.startswith("redpill ") and "verdict" not in line]
    assert [line.split(":")[0] for line in redpill] == [f"redpill {n}" for n in ("sidt", "popf", "cs", "smsw", "str")]
    assert all(line.endswith(" -> same") for line in redpill)
    assert "FAILED" not in text
    assert stop.exit_status == 0
    assert stats.get("exceptions_by_vector") == {"#DE": 1, "#GP": 1, "#PF": 1, "#UD": 1, "int 0x80": 3, "int3": 1}
    assert stats.get("instructions") < 1_000_000  # the demo stays small enough for the interpreter


def test_fault_is_a_triple_fault(guests):
    stop, out, _, _ = run_image(guests / "fault.elf")
    assert out == b"fault: ud2 with an empty IDT\n"
    assert stop.kind == "triple-fault" and stop.exit_status == engines.EXIT_TRIPLE_FAULT
    line = stop.diagnosis("interp")
    assert line.startswith("ring1 run: triple fault") and "guest eip 0x001" in line and line.endswith("mode interp")
    assert "\n" not in line


def test_halt_and_budget(guests):
    stop, _, _, _ = run_image(guests / "halt.elf")
    assert stop.kind == "halt" and stop.exit_status == engines.EXIT_HALT
    assert stop.code == b"\xf4" and "interrupts disabled" in stop.detail
    stop, out, stats, _ = run_image(guests / "spin.elf", max_insns=1000)
    assert out == b"." and stop.kind == "limit" and stop.exit_status == engines.EXIT_LIMIT
    assert stats.get("instructions") == 1000 and stop.code == b"\xeb\xfe"


# ---------------------------------------------------------------- ring1 run


def test_cli_hello_and_stats(guests, tmp_path):
    stats_file = tmp_path / "stats.json"
    done = ring1_run(str(guests / "hello.elf"), "--mode", "interp", "--stats", "--json-stats", str(stats_file))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello from a ring1 guest\n"
    for label in ("instructions executed", "blocks compiled", "I/O operations", "exceptions delivered", "wall time"):
        assert label in done.stderr
    figures = json.loads(stats_file.read_text())
    for key in ("instructions", "blocks_compiled", "io_operations", "exceptions_delivered", "wall_time_s"):
        assert key in figures
    assert figures["mode"] == "interp" and figures["stop"] == "exit" and figures["exit_status"] == 0


def test_cli_vm_stops(guests):
    done = ring1_run(str(guests / "fault.elf"), "--mode", "interp")
    assert done.returncode == engines.EXIT_TRIPLE_FAULT
    assert done.stdout == "fault: ud2 with an empty IDT\n"
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr and "mode interp" in done.stderr
    done = ring1_run(str(guests / "spin.elf"), "--mode", "interp", "--max-insns", "500")
    assert done.returncode == engines.EXIT_LIMIT and "budget" in done.stderr


def test_cli_errors(guests, tmp_path):
    text = tmp_path / "image.elf"
    text.write_text("not a kernel\n" * 100)
    done = ring1_run(str(text))
    assert done.returncode == 2
    assert done.stderr == f"ring1 run: {text}: not a multiboot image (no header in the first 8 KB)\n"
    done = ring1_run(str(tmp_path / "missing.elf"))
    assert done.returncode == 2 and "cannot read" in done.stderr and "Traceback" not in done.stderr
    done = ring1_run(str(guests / "hello.elf"), "--mode", "warp")
    assert done.returncode == 2 and "invalid choice: 'warp'" in done.stderr and "Traceback" not in done.stderr


def test_cli_fault_under_bt(guests):
    done = ring1_run(str(guests / "fault.elf"))  # bt is the default mode
    assert done.returncode == engines.EXIT_TRIPLE_FAULT
    assert done.stdout == "fault: ud2 with an empty IDT\n"
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr and "mode bt" in done.stderr


# ---------------------------------------------------------------- the demo in every mode

REDPILL = ("sidt", "popf", "cs", "smsw", "str")


@pytest.fixture(scope="module")
def demo_runs(guests, tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, dict]]:
    out = {}
    for mode in ("bare", "bt", "trap", "interp"):
        stats = tmp_path_factory.mktemp(mode) / "stats.json"
        done = ring1_run(str(guests / "demo.elf"), "--mode", mode, "--stats", "--json-stats", str(stats))
        out[mode] = (done, json.loads(stats.read_text()))
    return out


def test_demo_console_identical_under_bt_interp_bare(demo_runs):
    bare = demo_runs["bare"][0]
    assert bare.returncode == 0, bare.stderr
    assert "redpill verdict: not virtualized (5 of 5 checks match bare metal)" in bare.stdout
    for mode in ("bt", "interp"):
        done = demo_runs[mode][0]
        assert done.returncode == 0, done.stderr
        assert done.stdout == bare.stdout, mode


def test_demo_under_trap_differs_exactly_on_the_red_pill(demo_runs):
    bare, trap = demo_runs["bare"][0].stdout.splitlines(), demo_runs["trap"][0].stdout.splitlines()
    assert demo_runs["trap"][0].returncode == 0
    assert len(bare) == len(trap)
    differing = [(b, t) for b, t in zip(bare, trap, strict=True) if b != t]
    checks = [t for _b, t in differing if t.startswith("redpill ") and "verdict" not in t]
    # Each stealth instruction gives the deprivileged kernel away, and nothing else differs;
    # but SMSW: the hardware's CR0 holds the guest's FPU bits in guest context, so the machine
    # status word it shows is the guest's (PE is set in both).
    betraying = [n for n in REDPILL if n != "smsw"]
    assert [c.split(":")[0] for c in checks] == [f"redpill {n}" for n in betraying]
    assert all(c.endswith(" -> DIFFERS") for c in checks)
    assert "redpill verdict: virtualized (4 of 5 checks betray a VMM: sidt popf cs str)" in trap
    assert len(differing) == len(checks) + 1


def test_demo_stats_under_bt(demo_runs):
    done, figures = demo_runs["bt"]
    for label in ("chained links", "indirect lookups that hit in the TC", "callouts", "world switches", "CCFs"):
        assert label in done.stderr
    assert figures["mode"] == "bt" and figures["exit_status"] == 0
    assert figures["chained_links"] > 100 and figures["indirect_hits"] > 1000
    assert figures["ccfs"] > 100 and 50 < figures["ident_share_percent"] <= 100
    assert figures["guest_instructions_translated"] > figures["ccfs"]


# ---------------------------------------------------------------- the loader


def multiboot_header(flags: int = 0x3, checksum: int | None = None, addresses: tuple = ()) -> bytes:
    if checksum is None:
        checksum = -(0x1BADB002 + flags) & 0xFFFFFFFF
    return struct.pack("<III", 0x1BADB002, flags, checksum) + struct.pack(f"<{len(addresses)}I", *addresses)


def flat_kernel(code: bytes, load: int = 0x100000, bss: int = 0) -> bytes:
    """A kernel without ELF: the header's addresses (flag bit 16) say where it goes."""
    header_len = 32
    end = load + header_len + len(code)
    return multiboot_header(0x10003, addresses=(load, load, end, end + bss, load + header_len)) + code


def test_loader_errors(tmp_path):
    def error(data: bytes) -> str:
        path = tmp_path / "k.elf"
        path.write_bytes(data)
        with pytest.raises(multiboot.ImageError) as exc:
            multiboot.load_multiboot(path)
        return str(exc.value)

    assert error(b"") == "not a multiboot image (no header in the first 8 KB)"
    assert error(bytes(8192) + multiboot_header()) == "not a multiboot image (no header in the first 8 KB)"
    assert "bad checksum" in error(multiboot_header(checksum=1))
    assert "video mode" in error(multiboot_header(flags=0x7))
    assert "flag bit 5" in error(multiboot_header(flags=0x23))
    assert "not an ELF file" in error(multiboot_header() + bytes(64))
    elf64 = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack("<HHI", 2, 62, 1) + bytes(48) + multiboot_header()
    assert "64-bit" in error(elf64)
    too_big = flat_kernel(b"\xf4", bss=32 << 20)
    assert "does not fit" in error(too_big)
    path = tmp_path / "k.elf"
    path.write_bytes(flat_kernel(b"\xf4"))
    with pytest.raises(multiboot.ModuleError, match=r"module .*missing.img: cannot read"):
        multiboot.load_multiboot(path, modules=[str(tmp_path / "missing.img")])
    big = tmp_path / "big.img"
    big.write_bytes(bytes(3 << 20))
    with pytest.raises(multiboot.ModuleError, match=r"big.img .* does not fit"):
        multiboot.load_multiboot(path, 2 << 20, modules=[str(big)])
    with pytest.raises(multiboot.ImageError, match=r"is a directory|cannot read"):
        multiboot.load_multiboot(tmp_path)


def test_boot_state(guests):
    from elftools.elf.elffile import ELFFile

    image = multiboot.load_multiboot(guests / "hello.elf")
    with open(guests / "hello.elf", "rb") as f:
        assert image.entry == ELFFile(f)["e_entry"]
    assert image.cmdline == "hello.elf" and image.segments[0].paddr == 0x100000
    m = multiboot.interp_boot(image)
    S = m.state
    assert m.regs[0] == 0x2BADB002 and m.regs[3] == multiboot.MBI_ADDR
    assert S.eip == image.entry and S.cr[0] & 0x80000001 == 1 and not m.eflags() & 0x200
    assert S.mode == 1 and S.cpl == 0 and S.code32 == 1 and S.stack32 == 1
    assert S.sel[CS] == 0x08 and S.sel[DS] == 0x10 and S.sel[SS] == 0x10
    assert S.base[CS] == 0 and S.limit[CS] == 0xFFFFFFFF and S.limit[DS] == 0xFFFFFFFF
    assert (S.gdtr_base, S.gdtr_limit) == (multiboot.LOADER_GDT, 23) and S.idtr_limit == 0
    flags, mem_lower, mem_upper = struct.unpack_from("<III", m.mem.read(multiboot.MBI_ADDR, 12))
    assert flags & 0x245 == 0x245 and (mem_lower, mem_upper) == (639, 15360)  # the EBDA: the KB below 640
    name_addr = struct.unpack("<I", m.mem.read(multiboot.MBI_ADDR + 64, 4))[0]
    assert m.mem.read(name_addr, 6) == b"ring1\0"
    mmap_len, mmap_addr = struct.unpack("<II", m.mem.read(multiboot.MBI_ADDR + 44, 8))
    entries = [struct.unpack_from("<IQQI", m.mem.read(mmap_addr + i, 24)) for i in range(0, mmap_len, 24)]
    assert entries[:3] == [
        (20, 0, 0x9FC00, 1),
        (20, 0x9FC00, 0x100000 - 0x9FC00, 2),
        (20, 0x100000, (16 << 20) - 0x100000, 1),
    ]
    assert (20, 0xFEE00000, 0x1000, 2) in entries  # the local APIC's page, reserved as a BIOS reports it
    assert m.mem.read(0x100000, 4) == struct.pack("<I", 0x1BADB002)


def test_a_kernel_linked_where_the_loader_keeps_its_data_loads(tmp_path):
    # Linked at 0x8000, over the loader's own addresses: the loader's GDT, stack and
    # information structure move to a free window, and EBX, ESP and GDTR say where.
    code = bytes([0x66, 0xBA, 0xF8, 0x03, 0xB0, 0x41, 0xEE, 0xB0, 0x07, 0xE6, 0xF4])  # out 'A' to COM1; exit 7
    path = tmp_path / "low.bin"
    path.write_bytes(flat_kernel(code, load=0x8000, bss=0x4000))
    image = multiboot.load_multiboot(path)
    assert image.loader_base not in range(0, 0x10000)
    assert image.cpu.regs["ebx"] == image.loader_base + multiboot.MBI_ADDR
    assert image.cpu.gdtr[0] == image.loader_base + multiboot.LOADER_GDT
    stop, out, _, _ = run_image(path)
    assert (stop.kind, stop.exit_status, out) == ("exit", 7, b"A")


def test_multiboot_modules(tmp_path):
    # The kernel reports the module count (exit status) and each module's first byte (COM1).
    kernel = assemble(
        """
        mov esi, [ebx + 20]        # mods_count
        mov edi, [ebx + 24]        # mods_addr
        mov ecx, esi
        mov dx, 0x3f8
    1:  mov eax, [edi]             # mod_start
        mov al, [eax]
        out dx, al
        add edi, 16
        loop 1b
        mov eax, esi
        out 0xf4, al
        """,
        0x100000 + 32,
    ).code
    path = tmp_path / "mods.bin"
    path.write_bytes(flat_kernel(kernel))
    first, second = tmp_path / "first.img", tmp_path / "second.img"
    first.write_bytes(b"X" * 5000)
    second.write_bytes(b"Y")
    image = multiboot.load_multiboot(path, modules=[str(first), f"{second} root=/dev/ram0"])
    mods = image.modules
    assert [m.string for m in mods] == ["first.img", "second.img root=/dev/ram0"]
    assert mods[0].start % 0x1000 == 0 and mods[1].start % 0x1000 == 0 and mods[1].start >= mods[0].end
    assert (mods[0].end - mods[0].start, mods[1].end - mods[1].start) == (5000, 1)
    out = bytearray()
    platform = GuestPlatform(console=out.extend)
    stop = engines.run_image("interp", image, platform, None, engines.RunStats("interp"))
    assert (stop.kind, stop.exit_status, bytes(out)) == ("exit", 2, b"XY")


def test_flat_kernel_with_load_addresses(tmp_path):
    code = bytes([0x66, 0xBA, 0xF8, 0x03, 0xB0, 0x41, 0xEE, 0xB0, 0x07, 0xE6, 0xF4])  # out 'A' to COM1; exit 7
    path = tmp_path / "flat.bin"
    path.write_bytes(flat_kernel(code, bss=0x1000))
    stop, out, _, _ = run_image(path)
    assert out == b"A" and stop.kind == "exit" and stop.exit_status == 7


# ---------------------------------------------------------------- the platform


def test_serial_console():
    out = bytearray()
    p = GuestPlatform(console=out.extend)
    assert p.io_in(COM1 + 5, 1) == 0x60  # LSR: transmitter empty, no data
    for ch in b"ok\n":
        p.io_out(COM1, 1, ch)
    assert out == b"ok\n"
    p.io_out(COM1 + 3, 1, 0x80)  # DLAB: the data register is the divisor latch
    p.io_out(COM1, 1, 0x01)
    p.io_out(COM1 + 1, 1, 0x00)
    assert p.io_in(COM1, 1) == 0x01 and out == b"ok\n"
    p.io_out(COM1 + 3, 1, 0x03)
    assert p.io_in(COM1 + 3, 1) == 0x03
    p.io_out(COM1 + 7, 1, 0x5A)
    assert p.io_in(COM1 + 7, 1) == 0x5A  # scratch
    assert p.io_in(COM1, 1) == 0  # nothing received
    assert p.io_in(COM1 + 2, 1) == 0x01  # IIR: no interrupt pending
    p.io_out(COM1 + 2, 1, 0x07)
    assert p.io_in(COM1 + 2, 1) == 0xC1  # FIFOs on
    assert p.io_in(COM1 + 6, 1) == 0xB0  # MSR: a ready terminal (CTS, DSR, DCD), as QEMU shows it
    p.io_out(COM1 + 4, 1, 0x1B)  # loopback, OUT2, RTS, DTR
    assert p.io_in(COM1 + 6, 1) == 0xB0
    p.io_out(COM1, 1, ord("x"))
    assert out == b"ok\n" and p.io_in(COM1 + 5, 1) & 0x01 and p.io_in(COM1, 1) == ord("x")
    assert p.io_counts[(COM1, "out")] == 5 and p.io_counts[(COM1 + 5, "in")] == 2


def test_exit_post_and_other_ports():
    p = GuestPlatform(console=bytearray().extend)
    p.io_out(POST_PORT, 1, 0x42)
    assert p.post_code == 0x42 and p.io_in(POST_PORT, 1) == 0xFF
    assert p.io_in(0x2E8, 1) == 0xFF and p.io_in(0x170, 2) == 0xFFFF  # COM4, the secondary IDE: nothing
    p.io_out(0x170, 4, 0x12345678)  # ignored
    with pytest.raises(GuestExit) as exc:
        p.io_out(EXIT_PORT, 1, 3)
    assert isinstance(exc.value, VMStop) and exc.value.kind == "exit" and exc.value.status == 3
    with pytest.raises(GuestExit) as exc:
        p.io_out(EXIT_PORT, 2, 0x1FF)
    assert exc.value.status == 0x1FF
    assert engines.Stop("exit", "", guest_status=0x1FF).exit_status == 255
    assert p.io_total() == 7 and p.io_by_port()["0xf4"] == {"out": 2}


def test_stats_extensible():
    stats = engines.RunStats("bt")
    stats.add("instructions", "instructions executed", 1234)
    stats.add("translated_instructions", "translated instructions", 56)
    stats.add("ident_share", "IDENT share", 93.5, "%")
    stats.add("by_port", "by port", {"0x80": 1})
    text = stats.format()
    assert "translated instructions  56" in text and "93.5 %" in text and "by port" not in text
    assert stats.as_json() == {
        "mode": "bt",
        "instructions": 1234,
        "translated_instructions": 56,
        "ident_share": 93.5,
        "by_port": {"0x80": 1},
    }


# ---------------------------------------------------------------- ring1 inspect


def ring1_inspect(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ring1.runtime.cli", "inspect", *args], capture_output=True, text=True, timeout=300
    )


def elf_symbol(path: Path, name: str) -> int:
    from elftools.elf.elffile import ELFFile

    with path.open("rb") as f:
        return int(ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name(name)[0]["st_value"])


def test_inspect_a_unit_beside_its_ccf(guests):
    done = ring1_inspect(str(guests / "demo.elf"), "--at", "fib", "--json")
    assert done.returncode == 0, done.stderr
    view = json.loads(done.stdout)
    assert view["stop"] == "guest exit 0" and not view["translated_now"]
    rows = view["instructions"]
    assert rows[0]["guest"] == elf_symbol(guests / "demo.elf", "fib")
    assert 1 <= len(rows) <= 12
    for row in rows:
        if row["rule"] == "ident":  # copied byte for byte
            assert [h["bytes"] for h in row["host"]] == [row["bytes"]] and row["source"] is None
        else:
            assert re.fullmatch(r"spec/\w+\.r1:\d+", row["source"]), row
    # The unit ends at its control transfer, whose exits were chained to other CCFs by the run.
    assert rows[-1]["rule"].startswith(("direct", "indirect", "callout"))
    assert any("(chained)" in e for e in view["exits"])
    text = ring1_inspect(str(guests / "demo.elf"), "--at", hex(rows[0]["guest"]))
    assert text.returncode == 0 and "IDENT" in text.stdout and "\nexits:\n" in text.stdout


def test_inspect_list_shows_every_rule_kind_of_the_demo(guests):
    done = ring1_inspect(str(guests / "demo.elf"), "--list", "--json")
    assert done.returncode == 0, done.stderr
    units = json.loads(done.stdout)["units"]
    kinds = set().union(*(u["rules"] for u in units))
    assert {"ident", "direct", "indirect", "inline", "callout"} <= kinds
    assert all(1 <= u["instructions"] <= 12 for u in units)


def test_inspect_errors(guests):
    done = ring1_inspect(str(guests / "demo.elf"), "--at", "no_such_symbol")
    assert done.returncode == 2 and "neither a hex address nor a symbol" in done.stderr
    done = ring1_inspect(str(guests / "demo.elf"), "--at", "0x12345678")
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "raises vector 14" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("budget", [5, 3000, 20000])
def test_instruction_budget_stops_every_mode_at_the_same_instruction(guests, budget):
    stops = {}
    for mode in ("bare", "bt", "trap", "interp"):
        done = ring1_run(str(guests / "demo.elf"), "--mode", mode, "--max-insns", str(budget))
        assert done.returncode == engines.EXIT_LIMIT, (mode, done.stderr)
        assert f"the instruction budget ran out after {budget:,} instructions" in done.stderr
        stops[mode] = (re.search(r"guest eip 0x[0-9a-f]+", done.stderr).group(0), done.stdout)
    assert stops["bt"] == stops["trap"] == stops["interp"] == stops["bare"]


REBOOT_ONCE = """
        mov al, 0x0f               # CMOS 0x0F: the shutdown status byte (battery-backed)
        out 0x70, al
        in al, 0x71
        cmp al, 0x5a
        je 1f
        mov al, 0x0f
        out 0x70, al
        mov al, 0x5a
        out 0x71, al
        mov al, 0xfe               # the i8042's reset pulse
        out 0x64, al
        hlt
    1:  mov dx, 0x3f8
        mov al, 0x42
        out dx, al
        mov al, 5
        out 0xf4, al
"""


def test_a_reset_ends_the_run_or_reboots(tmp_path):
    path = tmp_path / "reboot.bin"
    path.write_bytes(flat_kernel(assemble(REBOOT_ONCE, 0x100000 + 32).code))
    done = ring1_run(str(path), "--no-reboot")
    assert done.returncode == 0 and done.stdout == "" and "the guest reset the system" in done.stderr
    done = ring1_run(str(path), "--reboot")  # the second boot finds its mark in the CMOS
    assert done.returncode == 5 and done.stdout == "B" and "rebooting" in done.stderr
