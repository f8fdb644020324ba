"""The `ring1` command."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ring1.codegen.ast import SpecError

if TYPE_CHECKING:
    from ring1.runtime.engines import RunStats


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def _parse_set(text: str | None) -> dict[str, int]:
    out: dict[str, int] = {}
    if not text:
        return out
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects name=value, got {item!r}")
        try:
            number = int(value.strip(), 0)
        except ValueError:
            raise ValueError(f"--set {item}: {value.strip()!r} is not a number") from None
        if not 0 <= number <= 0xFFFFFFFF:
            # Registers are 32 bits wide: a wider value would be silently cut, a negative one guessed at.
            raise ValueError(f"--set {item}: out of range (a register holds 0 to 0xffffffff)")
        out[name.strip().lower()] = number
    return out


def _check_budget(command: str, max_insns: int | None) -> bool:
    """--max-insns must be a count of instructions; prints the one-line error if not."""
    if max_insns is not None and max_insns < 0:
        print(f"ring1 {command}: --max-insns must be zero or positive, not {max_insns}", file=sys.stderr)
        return False
    return True


def _catch_interrupts() -> None:
    """Ctrl-C stops a guest even while it spins in translated code (see ring1.runtime.host.physcpu)."""
    from ring1.runtime.host.physcpu import catch_interrupts

    catch_interrupts()


def cmd_exec(args: argparse.Namespace) -> int:
    from ring1.runtime.tools import fresh_machine
    from ring1.runtime.tools.snippet import run_snippet

    if not _check_budget("exec", args.max_insns):
        return 2
    try:
        code = bytes.fromhex(args.hex.replace(" ", ""))
    except ValueError:
        print('ring1 exec: --hex must be hexadecimal bytes, e.g. "01 d8"', file=sys.stderr)
        return 2
    try:
        regs = _parse_set(args.set)
    except ValueError as err:
        print(f"ring1 exec: {err}", file=sys.stderr)
        return 2
    allowed = set(fresh_machine.GPR_NAMES) | {"eflags"}
    bad = sorted(set(regs) - allowed)
    if bad:
        print(f"ring1 exec: --set can set {', '.join(sorted(allowed))}; not {', '.join(bad)}", file=sys.stderr)
        return 2
    spec = fresh_machine.FreshSpec(code=code, regs=regs, cpl=args.cpl, real=args.real)
    _catch_interrupts()
    result = run_snippet(spec, args.mode, args.max_insns)
    if args.json:
        print(json.dumps(result.as_json()))
    else:
        r = result.regs
        for row in (fresh_machine.GPR_NAMES[:4], fresh_machine.GPR_NAMES[4:]):
            print("  ".join(f"{n}={r[n]:08x}" for n in row))
        print(
            f"eip={r['eip']:08x}  eflags={r['eflags']:08x}  "
            + " ".join(f"{n}={r[n]:04x}" for n in fresh_machine.SEG_NAMES)
        )
        exc = "none" if result.exception is None else str(result.exception)
        print(f"stop={result.stop}  exception={exc}  instructions={result.icount}")
        if result.diagnosis:
            print(result.diagnosis)
    if result.stop == "interrupted":
        from ring1.runtime.engines import EXIT_INTERRUPTED

        print(f"ring1 exec: interrupted (Ctrl-C) at eip {result.regs['eip']:#010x}; mode {args.mode}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def _default_serial_input() -> str:
    """COM1's receiver reads ring1's stdin by default when it is a pipe or a file (`echo x |
    ring1 run ...`); a terminal only with `--serial-input -`, which puts it in raw mode (keys,
    Ctrl-C included, go to the guest; Ctrl-A x quits), so that otherwise Ctrl-C stops the VM."""
    import os
    import stat

    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        return "none"
    return "-" if stat.S_ISFIFO(mode) or stat.S_ISREG(mode) else "none"


def _terminal_writer(stream):
    def write(text: str) -> None:
        stream.write(text)
        stream.flush()

    return write


SIZE_UNITS = {"": 1 << 20, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
MAX_MEMORY = 3 << 30  # below the PCI and APIC holes of the 4 GB physical space
DETERMINISTIC_RTC_BASE = "2025-01-01T00:00:00"


def parse_size(text: str) -> int:
    """A memory size as QEMU's -m takes it: a number of MB, or with a K, M or G suffix."""
    t = text.strip().upper().removesuffix("B")
    unit = t[-1:] if t[-1:] in ("K", "M", "G") else ""
    number = t[: len(t) - len(unit)]
    if not number.isdigit():
        raise ValueError("a size is a number of MB, or a number with K, M or G (e.g. 128M, 1G)")
    size = int(number) * SIZE_UNITS[unit]
    if size % 0x1000 or size < 2 << 20 or size > MAX_MEMORY:
        raise ValueError(f"the VM's memory must be whole pages from 2 MB to {MAX_MEMORY >> 30} GB")
    return size


def rtc_base(text: str | None, clock: str):
    """The RTC's time at power-on: `utc` (the host's time now), an ISO 8601 date and time, or
    by default a fixed date under the guest clock (runs reproduce) and the host's under --clock host."""
    from datetime import UTC, datetime

    if text is None:
        text = "utc" if clock == "host" else DETERMINISTIC_RTC_BASE
    if text == "utc":
        return datetime.now(UTC)
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("expected utc or a date and time such as 2025-01-01T00:00:00") from None


def cmd_run(args: argparse.Namespace) -> int:
    """Boot a Multiboot image and run it; the exit status is the guest's (see ring1.runtime.engines)."""
    import os

    from ring1.runtime import engines
    from ring1.runtime.boot import bios, linux, multiboot
    from ring1.runtime.devices.bus import BusConflict
    from ring1.runtime.devices.clock import VirtualClock
    from ring1.runtime.devices.disk import DiskError, DiskImage
    from ring1.runtime.devices.platform import GuestPlatform
    from ring1.runtime.devices.serial import ConsoleSink
    from ring1.runtime.devices.serial_input import SerialInput

    if args.max_insns is not None and args.max_insns <= 0:
        print("ring1 run: --max-insns must be positive", file=sys.stderr)
        return engines.EXIT_USAGE
    try:
        memory_size = parse_size(args.memory)
    except ValueError as err:
        print(f"ring1 run: --memory {args.memory}: {err}", file=sys.stderr)
        return engines.EXIT_USAGE
    try:
        rtc_start = rtc_base(args.rtc_base, args.clock)
    except ValueError as err:
        print(f"ring1 run: --rtc-base {args.rtc_base}: {err}", file=sys.stderr)
        return engines.EXIT_USAGE
    if args.wait and args.gdb is None:
        print("ring1 run: --wait waits for a debugger: it needs --gdb PORT", file=sys.stderr)
        return engines.EXIT_USAGE
    if args.gdb is not None and not 0 <= args.gdb <= 0xFFFF:
        print("ring1 run: --gdb must be a TCP port, 0 to 65535", file=sys.stderr)
        return engines.EXIT_USAGE
    if args.gdb is not None and args.max_insns is not None:
        print(
            "ring1 run: --max-insns and --gdb do not combine (the debugger decides how far the guest runs)",
            file=sys.stderr,
        )
        return engines.EXIT_USAGE
    if len(args.disk or ()) > 2:
        print("ring1 run: at most two --disk images (the primary IDE channel's master and slave)", file=sys.stderr)
        return engines.EXIT_USAGE
    if sum(x is not None for x in (args.image, args.bios, args.kernel)) != 1:
        print(
            "ring1 run: give one of a kernel IMAGE, --kernel BZIMAGE (Linux) or --bios ROM (a ROM boots the "
            "machine by itself)",
            file=sys.stderr,
        )
        return engines.EXIT_USAGE
    if args.kernel is not None and len(args.initrd or ()) > 1:
        print("ring1 run: a Linux kernel takes one --initrd", file=sys.stderr)
        return engines.EXIT_USAGE
    if not 0 <= args.post_port <= 0xFFFF:
        print("ring1 run: --post-port must be an I/O port, 0 to 0xffff", file=sys.stderr)
        return engines.EXIT_USAGE
    try:
        if args.bios is not None:
            image = bios.load_bios(args.bios, memory_size)
        elif args.kernel is not None:
            image = linux.load_bzimage(args.kernel, memory_size, args.append, (args.initrd or [None])[0])
        else:
            image = multiboot.load_multiboot(args.image, memory_size, args.append, args.initrd)
    except multiboot.ModuleError as err:
        print(f"ring1 run: --initrd: {err}", file=sys.stderr)
        return engines.EXIT_USAGE
    except multiboot.ImageError as err:
        print(f"ring1 run: {args.bios or args.kernel or args.image}: {err}", file=sys.stderr)
        return engines.EXIT_USAGE
    disks: list[DiskImage] = []
    try:
        for path in args.disk or ():
            disks.append(DiskImage(path, snapshot=args.snapshot))
    except DiskError as err:
        for disk in disks:
            disk.close()
        print(f"ring1 run: {err}", file=sys.stderr)
        return engines.EXIT_USAGE
    console: ConsoleSink | None = None
    if args.serial != "stdio":
        try:
            console = ConsoleSink(open(os.devnull if args.serial == "none" else args.serial, "wb"))  # noqa: SIM115
        except OSError as err:
            for disk in disks:
                disk.close()
            print(f"ring1 run: --serial {args.serial}: {err.strerror}", file=sys.stderr)
            return engines.EXIT_USAGE
    wanted = args.serial_input if args.serial_input is not None else _default_serial_input()

    def power_on() -> tuple[GuestPlatform, SerialInput | None]:
        """The machine as at power-on: a new platform (the same disks, console and clock
        source), and COM1's input attached to it."""
        platform = GuestPlatform(
            console,
            clock=VirtualClock(args.clock),
            memory_size=memory_size,
            disks=disks,
            rtc_start=rtc_start,
            post_port=args.post_port,
        )
        if image.rom is not None:
            platform.map_rom(image.rom)
        if wanted == "none":
            return platform, None
        return platform, SerialInput.open(None if wanted == "-" else wanted, platform.com1, platform.clock)

    try:
        platform, serial_input = power_on()
    except BusConflict as err:
        for disk in disks:
            disk.close()
        print(f"ring1 run: --post-port {args.post_port:#x}: {err}", file=sys.stderr)
        return engines.EXIT_USAGE
    except OSError as err:
        for disk in disks:
            disk.close()
        print(f"ring1 run: --serial-input {wanted}: {err.strerror}", file=sys.stderr)
        return engines.EXIT_USAGE
    stats = engines.RunStats(args.mode, timed=bool(args.stats or args.json_stats))
    _report_on_sigusr1(stats, args.stats, args.json_stats)
    gdb = None
    if args.gdb is not None:
        from ring1.runtime.tools.gdbstub import GdbServer, describe_figures

        try:
            gdb = GdbServer(args.gdb, args.wait)
        except OSError as err:
            for disk in disks:
                disk.close()
            platform.close()
            print(f"ring1 run: --gdb {args.gdb}: {err.strerror or err}", file=sys.stderr)
            return engines.EXIT_USAGE
        gdb.figures = lambda engine: describe_figures(engine, platform, args.mode)
    _catch_interrupts()
    try:
        while True:
            if serial_input is not None:
                serial_input.start()
            if args.display == "text":
                platform.show_screen(_terminal_writer(sys.stderr))
            stop = engines.run_image(
                args.mode, image, platform, args.max_insns, stats, gdb.drive if gdb is not None else None
            )
            if stop.kind != "reset" or not args.reboot:
                break
            # --reboot: the reset line restarts the machine from power-on (RAM, chips, CPU);
            # the disks keep what was written.
            print(f"ring1 run: {stop.detail}: rebooting", file=sys.stderr)
            if serial_input is not None:
                serial_input.close()
            platform.flush()
            cmos = platform.rtc.nvram()
            platform, serial_input = power_on()
            platform.rtc.restore_nvram(cmos)  # battery-backed: it survives the reset
    except Exception as err:  # a bug in ring1, not in the guest: one line unless asked for more
        platform.flush()
        if os.environ.get("RING1_TRACEBACK"):
            raise
        print(
            f"ring1 run: internal error: {type(err).__name__}: {err}; mode {args.mode} "
            "(RING1_TRACEBACK=1 shows the traceback)",
            file=sys.stderr,
        )
        return engines.EXIT_VMSTOP
    finally:
        if serial_input is not None:
            serial_input.close()
        if gdb is not None:
            gdb.close()
        platform.close()
        platform.flush()
    if args.screenshot and platform.vga is not None:
        try:
            platform.vga.screenshot(args.screenshot)
        except OSError as err:
            print(f"ring1 run: --screenshot {args.screenshot}: {err.strerror}", file=sys.stderr)
    diagnosis = stop.diagnosis(args.mode)
    if diagnosis:
        print(diagnosis, file=sys.stderr)
    stats.add("stop", "stop", stop.kind)
    stats.add("exit_status", "exit status", stop.exit_status)
    if args.stats:
        print(stats.format(), file=sys.stderr)
    if args.json_stats:
        try:
            _write_json_stats(args.json_stats, stats)
        except OSError as err:
            print(f"ring1 run: cannot write {args.json_stats}: {err.strerror or err}", file=sys.stderr)
            return engines.EXIT_USAGE
    return stop.exit_status


def _bench_boot(args: argparse.Namespace) -> int:
    from ring1.runtime.engines import MODES
    from ring1.runtime.tools import bench_boot
    from ring1.runtime.tools.progress import Progress

    bad = [m for m in args.modes if m not in MODES]
    if bad or args.forks < 1 or args.timeout <= 0:
        what = f"unknown mode {', '.join(bad)} (modes: {', '.join(MODES)})" if bad else "--forks, --timeout: positive"
        print(f"ring1 bench boot: {what}", file=sys.stderr)
        return 2
    paths = {
        "kernel": Path(args.kernel) if args.kernel else bench_boot.KERNEL,
        "initrd": Path(args.initrd) if args.initrd else bench_boot.INITRD,
    }
    try:
        with Progress("boot", len(args.modes)) as progress:
            result = bench_boot.run_boot_bench(
                tuple(args.modes), args.forks, boot_timeout=args.timeout, progress=progress, **paths
            )
    except bench_boot.BenchError as err:
        print(f"ring1 bench boot: {err}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=1) if args.json else bench_boot.format_boot(result))
    return 0


def _write_json_stats(path: str, stats: RunStats) -> None:
    """Whole or not at all: a reader polling the file never sees half of it."""
    tmp = f"{path}.tmp"
    Path(tmp).write_text(json.dumps(stats.as_json(), indent=1) + "\n")
    os.replace(tmp, path)


def _report_on_sigusr1(stats: RunStats, to_stderr: bool, json_path: str | None) -> None:
    """SIGUSR1 makes a run report its statistics so far, as dd reports its progress: on stderr
    with --stats, into the --json-stats file (replaced whole) with that, and runs on. The
    handler runs between two Python steps of the engine (every exit from unicorn is one)."""
    if not (to_stderr or json_path) or not hasattr(signal, "SIGUSR1"):
        return

    def report(_signum: int, _frame: object) -> None:
        snapshot = stats.snapshot() if stats.snapshot is not None else None
        if snapshot is None:
            return  # (before the guest starts or after it ended: the final report follows)
        snapshot.add("snapshot", "snapshot", "while running")
        if to_stderr:
            print(snapshot.format(), file=sys.stderr)
        if json_path:
            try:
                _write_json_stats(json_path, snapshot)
            except OSError as err:
                print(f"ring1 run: cannot write {json_path}: {err.strerror or err}", file=sys.stderr)

    signal.signal(signal.SIGUSR1, report)


def _symbol_address(image_path: str, name: str) -> int | None:
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    try:
        with open(image_path, "rb") as f:
            for section in ELFFile(f).iter_sections():
                if isinstance(section, SymbolTableSection):
                    for sym in section.get_symbol_by_name(name) or []:
                        return int(sym["st_value"])
    except (ELFError, OSError):
        return None
    return None


def cmd_inspect(args: argparse.Namespace) -> int:
    import io

    from ring1.runtime import engines
    from ring1.runtime.boot import multiboot
    from ring1.runtime.devices.platform import ConsoleSink, GuestExit, GuestPlatform
    from ring1.runtime.tools.inspector import InspectError, Inspector, format_list, format_view
    from ring1.runtime.vmm import Vmm

    if not _check_budget("inspect", args.max_insns):
        return engines.EXIT_USAGE
    try:
        image = multiboot.load_multiboot(args.image)
    except multiboot.ImageError as err:
        print(f"ring1 inspect: {args.image}: {err}", file=sys.stderr)
        return engines.EXIT_USAGE
    at = image.entry
    if args.at:
        try:
            at = int(args.at, 16)
        except ValueError:
            found = _symbol_address(args.image, args.at)
            if found is None:
                print(
                    f"ring1 inspect: --at {args.at}: neither a hex address nor a symbol of the image", file=sys.stderr
                )
                return engines.EXIT_USAGE
            at = found
    platform = GuestPlatform(ConsoleSink(io.BytesIO()))
    vmm = Vmm(image.memory_size, platform, "bt")
    multiboot.interp_boot(image, platform, vmm.m)
    _catch_interrupts()
    try:
        why, what = vmm.run(args.max_insns)
    except KeyboardInterrupt:  # show what was translated up to the Ctrl-C
        why, what = "interrupted (Ctrl-C)", None
    if isinstance(what, GuestExit):
        why = f"guest exit {what.status}"
    inspector = Inspector(vmm)
    if args.list:
        units = inspector.units()
        if args.json:
            print(
                json.dumps(
                    {
                        "stop": why,
                        "units": [
                            {
                                "guest": u.guest,
                                "host": u.host,
                                "instructions": len(u.insns),
                                "size": u.size,
                                "rules": sorted({rule for _g, _h, _e, rule, _a in u.insns}),
                            }
                            for u in units
                        ],
                    }
                )
            )
        else:
            print(f"the run ended ({why}) after making {len(units)} CCFs")
            print(format_list(units))
        return 0
    try:
        unit, now = inspector.unit_at(at)
        view = inspector.view(unit, now)
    except InspectError as err:
        print(f"ring1 inspect: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"stop": why, **view.as_json()}))
    else:
        print(format_view(view))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from ring1.runtime.tools import bench

    if args.bench_command == "interp":
        result = bench.run_interp_bench(quick=args.quick, repeats=args.repeats)
        print(json.dumps(result, indent=1) if args.json else bench.format_interp(result))
        return 0
    if args.bench_command == "boot":
        return _bench_boot(args)
    if args.bench_command == "startup":
        if args.repeats < 1:
            print("ring1 bench startup: --repeats must be at least 1", file=sys.stderr)
            return 2
        try:
            result = bench.run_startup(args.repeats, args.guest)
        except bench.BenchError as err:
            print(f"ring1 bench startup: {err}", file=sys.stderr)
            return 2
        print(json.dumps(result, indent=1) if args.json else bench.format_startup(result))
        return 0

    def listed(values: list[str] | None, default: tuple[str, ...]) -> tuple[str, ...]:
        if not values:
            return default
        return tuple(v for item in values for v in item.split(",") if v)

    modes = listed(args.modes, bench.MODES)
    names = listed(args.only, bench.NANO_NAMES)
    bad = sorted(set(modes) - set(bench.MODES)) + sorted(set(names) - set(bench.NANO_NAMES))
    if bad:
        print(
            f"ring1 bench nano: unknown {', '.join(bad)} (modes: {', '.join(bench.MODES)}; "
            f"benchmarks: {', '.join(bench.NANO_NAMES)})",
            file=sys.stderr,
        )
        return 2
    result = bench.run_nano(modes, names, quick=args.quick, repeats=args.repeats, ladder=not args.no_ladder)
    print(json.dumps(result, indent=1) if args.json else bench.format_nano(result))
    if args.plot:
        from ring1.runtime.tools import nano_plot

        try:
            nano_plot.plot_nano(result, args.plot)
        except OSError as err:
            print(f"ring1 bench nano: cannot write {args.plot}: {err.strerror or err}", file=sys.stderr)
            return 1
    return 0


def cmd_spec_check(args: argparse.Namespace) -> int:
    from ring1.codegen.generate import render_all
    from ring1.codegen.model import load_spec
    from ring1.codegen.xcheck import check_spec

    root = repo_root()
    spec = load_spec(root)
    generated = root / "generated"
    stale = [
        name
        for name, text in render_all(spec).items()
        if not (generated / name).exists() or (generated / name).read_text() != text
    ]
    disagreements = check_spec(spec)
    kept = [d for d in disagreements if d.accepted]
    open_ = [d for d in disagreements if not d.accepted]
    mnemonics = {m for f in spec.forms for m in f.base_mnemonics}
    print(
        f"spec: {len(spec.files)} files, {len(spec.forms)} forms, {len(mnemonics)} mnemonics, "
        f"{sum(f.has_semantics for f in spec.forms)} forms with semantics"
    )
    if args.verbose:
        for d in kept:
            print(f"note: {d}")
    print(f"capstone cross-check: {len(open_)} disagreement(s), {len(kept)} recorded with a reason")
    for d in open_:
        print(f"{d.form.source}: error: {d.form.name}: capstone {d.kind}: {d.message}")
    if stale:
        print(f"error: generated/ is stale ({', '.join(sorted(stale))}); run `make generate`")
    return 1 if open_ or stale else 0


def cmd_spec_coverage(args: argparse.Namespace) -> int:
    from ring1.codegen.coverage import coverage

    records = coverage()
    if args.json:
        print(json.dumps({"instructions": records}, indent=1 if args.pretty else None))
        return 0
    from ring1.runtime.tools import tables

    rows = []
    for r in records:
        sens = "stealth" if r["stealth"] else ("yes" if r["sensitive"] else "")
        rows.append(
            (
                r["mnemonic"],
                str(r["forms"]),
                "yes" if r["semantics"] else "no",
                sens,
                r["privilege"],
                ", ".join(r["translate"]),
                r["source"],
            )
        )
    header = ("mnemonic", "forms", "sem", "sensitive", "privilege", "translate", "source")
    print("\n".join(tables.render(header, rows, "lllllll")))
    with_sem = sum(r["semantics"] for r in records)
    print(
        f"\n{len(records)} mnemonics, {with_sem} with semantics in every form, "
        f"{sum(r['stealth'] for r in records)} stealth (sensitive, never trapping)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ring1", description="A specification-driven x86 virtualizer.")
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("spec", help="check the spec or report its coverage")
    spsub = sp.add_subparsers(dest="spec_command", required=True)
    chk = spsub.add_parser("check", help="validate the spec and cross-check it against capstone")
    chk.add_argument("-v", "--verbose", action="store_true", help="also list the disagreements the spec records")
    chk.set_defaults(func=cmd_spec_check)
    cov = spsub.add_parser("coverage", help="one line (or JSON record) per mnemonic")
    cov.add_argument("--json", action="store_true")
    cov.add_argument("--pretty", action="store_true", help="indent the JSON")
    cov.set_defaults(func=cmd_spec_coverage)

    ex = sub.add_parser("exec", help="run a snippet of machine code from a fresh machine")
    ex.add_argument("--hex", required=True, help='the code bytes, e.g. "01 d8"')
    ex.add_argument("--set", help="initial registers, e.g. eax=1,ebx=2,eflags=0x202")
    ex.add_argument("--mode", default="interp", choices=["interp", "bt", "trap", "bare"])
    ex.add_argument("--cpl", type=int, default=0, choices=[0, 3])
    ex.add_argument("--real", action="store_true", help="start in real mode")
    ex.add_argument("--max-insns", type=int, default=100_000)
    ex.add_argument("--json", action="store_true")
    ex.set_defaults(func=cmd_exec)

    run = sub.add_parser(
        "run",
        help="boot a Multiboot kernel image and run it",
        description="Boot a Multiboot (v1) kernel image on ring1's virtual platform (COM1 console on stdout, "
        "exit port 0xF4) and exit with the status the guest writes to the exit port.",
        epilog="Exit statuses when the guest does not write the exit port: 2 bad image or usage, "
        "121 triple fault, 122 an instruction ring1 cannot run yet, 123 HLT for ever, "
        "124 instruction budget exhausted, 125 another VM stop, 130 interrupted, 141 console closed. "
        "A VM stop prints one diagnosis line on stderr; --stats prints on stderr too.",
    )
    run.add_argument("image", nargs="?", help="the kernel: an ELF32 file with a Multiboot header")
    run.add_argument("--bios", metavar="ROM", help="start from reset with this system ROM instead of a kernel")
    run.add_argument(
        "--kernel",
        metavar="BZIMAGE",
        help="a Linux kernel (bzImage), booted by the Linux boot protocol's 32-bit entry, with --initrd and --append",
    )
    run.add_argument(
        "--post-port", type=lambda t: int(t, 0), default=0x80, metavar="PORT", help="the POST-code port (default 0x80)"
    )
    run.add_argument("--mode", default="bt", choices=["bt", "trap", "interp", "bare"], help="default: bt")
    run.add_argument("--stats", action="store_true", help="print run statistics on stderr after the run")
    run.add_argument("--json-stats", metavar="FILE", help="write the statistics to FILE as JSON")
    run.add_argument("--max-insns", type=int, metavar="N", help="stop after N guest instructions")
    run.add_argument(
        "--clock",
        default="guest",
        choices=["guest", "host"],
        help="virtual time follows the guest's instructions (reproducible; default) or the host's clock",
    )
    run.add_argument(
        "--initrd",
        action="append",
        metavar="FILE",
        help='a Multiboot module, "FILE" or "FILE ARGS" (repeatable, in order; QEMU\'s -initrd)',
    )
    run.add_argument("--append", metavar="CMDLINE", help="the kernel command line (default: the image's file name)")
    run.add_argument("-m", "--memory", default="128M", help="guest RAM: MB, or with K/M/G (default 128M)")
    run.add_argument(
        "--disk",
        action="append",
        metavar="FILE",
        help="a raw disk image on the primary IDE channel (master, then slave; repeatable)",
    )
    run.add_argument("--snapshot", action="store_true", help="keep disk writes in memory; the files stay unchanged")
    run.add_argument(
        "--rtc-base",
        metavar="WHEN",
        help=f"RTC time at power-on: utc or an ISO date (default {DETERMINISTIC_RTC_BASE}; utc with --clock host)",
    )
    run.add_argument(
        "--serial", default="stdio", metavar="WHERE", help="COM1's output: stdio (default), none, or a FILE"
    )
    reboot = run.add_mutually_exclusive_group()
    reboot.add_argument("--reboot", action="store_true", help="a guest's reset restarts the machine (disks kept)")
    reboot.add_argument("--no-reboot", action="store_true", help="a guest's reset ends the run, status 0 (default)")
    run.add_argument(
        "--display", choices=["none", "text"], default="none", help="text: show the VGA text screen on stderr"
    )
    run.add_argument(
        "--screenshot", metavar="FILE", help="save the last text screen at the end (PNG if FILE ends in .png)"
    )
    run.add_argument(
        "--serial-input",
        metavar="FILE",
        help="what COM1 receives: a FILE, - for stdin (a terminal in raw mode; Ctrl-A x quits), or none "
        "(default: stdin when it is a pipe or a file)",
    )
    run.add_argument(
        "--gdb",
        type=int,
        metavar="PORT",
        help="serve the GDB remote protocol on 127.0.0.1:PORT (gdb: target remote :PORT)",
    )
    run.add_argument("--wait", action="store_true", help="with --gdb: the guest starts only once gdb connects")
    run.set_defaults(func=cmd_run)

    ins = sub.add_parser(
        "inspect",
        help="show a translation unit beside the CCF the binary translator made of it",
        description="Boot the image and run it under bt (its console output is not shown), then print one "
        "translation unit: each guest instruction, the rule that translated it with its spec file:line, and "
        "the host code in the translation cache, followed by the continuation stubs and where each exit leads.",
    )
    ins.add_argument("image", help="the kernel: an ELF32 file with a Multiboot header")
    ins.add_argument("--at", metavar="ADDR", help="guest address (hex) or ELF symbol of the unit (default: the entry)")
    ins.add_argument("--list", action="store_true", help="list every CCF the run made instead")
    ins.add_argument("--max-insns", type=int, metavar="N", help="stop the run after N guest instructions")
    ins.add_argument("--json", action="store_true", help="one JSON document on stdout")
    ins.set_defaults(func=cmd_inspect)

    bench = sub.add_parser("bench", help="benchmarks: the interpreter's speed, the nanobenchmarks")
    bsub = bench.add_subparsers(dest="bench_command", required=True)
    bi = bsub.add_parser(
        "interp",
        help="guest instructions per second of the interpreter, and of unicorn on the same loop",
    )
    bn = bsub.add_parser(
        "nano",
        help="Adams & Agesen nanobenchmarks in every mode, and the CLI ladder",
        description="Each benchmark is a loop on the fresh machine of `ring1 exec` (kernel mode, or user "
        "processes on a small guest kernel: syscall, pgfault_user, ptemod_user, forkwait), timed in each "
        "mode; the loop overhead (a baseline loop) is measured and subtracted. ns per operation and the "
        "ratio of each mode to bare; irq and the process rows also in exits (one unicorn-to-Python exit, "
        "measured in the same run) with the exits the engine counted. The ladder: one CLI by "
        "trap-and-emulate (trap mode), by callout (bt, CLI forced to a callout) and emulated in the TC "
        "(bt as the spec says).",
    )
    for sp_ in (bi, bn):
        sp_.add_argument("--json", action="store_true", help="one JSON document on stdout")
        sp_.add_argument("--quick", action="store_true", help="short measurements, one repeat (for tests)")
        sp_.add_argument("--repeats", type=int, metavar="N", help="measurements per figure; the median is kept")
    bn.add_argument("--modes", nargs="+", metavar="MODE", help="bare, bt, trap, interp (default: all)")
    bn.add_argument("--only", nargs="+", metavar="NAME", help="benchmark names (default: all)")
    bn.add_argument("--no-ladder", action="store_true", help="skip the CLI ladder")
    bn.add_argument(
        "--plot",
        metavar="FILE",
        help="also draw the table as a PNG: time per op per mode (log scale), and bt/bare beside VMware's "
        "published BT/native ratios (ASPLOS 2006)",
    )
    bs = bsub.add_parser(
        "startup",
        help="wall time of short commands (exec of one instruction, run of the hello guest) against python -c pass",
    )
    bs.add_argument("--json", action="store_true", help="one JSON document on stdout")
    bs.add_argument("--repeats", type=int, default=7, metavar="N", help="runs per command; the median is kept")
    bs.add_argument("--guest", default="build/guests/hello.elf", help="the image `run` boots (make guests)")
    bb = bsub.add_parser(
        "boot",
        help="Debian's Linux (make linux-guest) to its shell and a fork+exec loop, bt against bare, time by cause",
        description="Boots the Linux guest under each mode (ring1 run --kernel ... --append console=ttyS0), "
        "times the boot to init's marker on the console and a loop of N fork+exec of /bin/true typed into "
        "its shell, then powers it off; the time of each phase split by cause from ring1's own ledger "
        "(snapshots on SIGUSR1), with the exits to Python per cause. Minutes per mode.",
    )
    bb.add_argument("--json", action="store_true", help="one JSON document on stdout")
    bb.add_argument("--modes", nargs="+", default=["bt", "bare"], metavar="MODE", help="modes (default: bt bare)")
    bb.add_argument("--forks", type=int, default=200, metavar="N", help="fork+exec of /bin/true in the loop (200)")
    bb.add_argument("--kernel", default=None, help="the bzImage (default: build/guests/linux/vmlinuz)")
    bb.add_argument("--initrd", default=None, help="the initramfs (default: build/guests/linux/initrd.gz)")
    bb.add_argument("--timeout", type=float, default=3600.0, metavar="S", help="seconds allowed per phase")
    bench.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SpecError as err:
        print(err, file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C outside a guest run (a run reports its own stop)
        from ring1.runtime.engines import EXIT_INTERRUPTED

        print(f"ring1 {args.command}: interrupted (Ctrl-C)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`ring1 spec coverage | head`): what it read is all it wanted.
        # Python would complain again at exit, flushing stdout into the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
