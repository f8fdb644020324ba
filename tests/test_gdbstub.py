"""The GDB stub (`ring1 run --gdb`): the packet layer, the session over a socket pair, and
a real `gdb -batch` session against `ring1 run --gdb --wait` under bt and interp."""

from __future__ import annotations

import hashlib
import io
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ring1.runtime import engines
from ring1.runtime.boot import multiboot
from ring1.runtime.devices.platform import ConsoleSink, GuestPlatform
from ring1.runtime.tools.gdbstub import (
    EIP,
    REGISTERS,
    GdbSession,
    PacketParser,
    Received,
    checksum,
    escape,
    frame,
    target_xml,
    unescape,
)

ROOT = Path(__file__).resolve().parent.parent
RING1 = [sys.executable, "-m", "ring1.runtime.cli"]

# ---------------------------------------------------------------- the packet layer


def test_frame_and_checksum() -> None:
    assert frame(b"OK") == b"$OK#9a"
    assert checksum(b"") == 0 and frame(b"") == b"$#00"
    assert PacketParser().feed(b"+$OK#9a-\x03$g#67") == [
        Received("ack"),
        Received("packet", b"OK"),
        Received("nack"),
        Received("interrupt"),
        Received("packet", b"g"),
    ]


def test_parser_rejects_bad_checksums_and_truncated_packets() -> None:
    p = PacketParser()
    assert p.feed(b"$OK#9b") == [Received("bad-checksum")]
    assert p.feed(b"$OK#+a") == [Received("bad-checksum")]  # int() would take "+a"
    assert p.feed(b"$OK#zz") == [Received("bad-checksum")]
    # a packet cut short by the next one: the rest of the first is gone, the second stands
    assert p.feed(b"$m1000,$g#67") == [Received("packet", b"g")]
    assert p.feed(b"$" + b"a" * 0x5000 + b"#00") == [Received("too-long")]
    assert p.feed(b"garbage without a dollar") == []


@given(st.binary(max_size=200))
def test_escape_round_trips(data: bytes) -> None:
    escaped = escape(data)
    assert not set(escaped) & set(b"#$*") and unescape(escaped) == data


@given(st.lists(st.binary(max_size=60), max_size=8), st.data())
def test_parser_finds_the_packets_however_the_stream_is_cut(payloads: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(frame(escape(p)) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    parser, found = PacketParser(), []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        found += parser.feed(stream[start:end])
    assert [unescape(r.payload) for r in found] == payloads
    assert all(r.kind == "packet" for r in found)


def test_target_description_lists_the_registers_in_g_order() -> None:
    xml = target_xml()
    names = re.findall(r'<reg name="(\w+)"', xml)
    assert names == [name for name, _ in REGISTERS]
    assert names[:16] == "eax ecx edx ebx esp ebp esi edi eip eflags cs ss ds es fs gs".split()
    assert 'feature name="org.gnu.gdb.i386.core"' in xml


# ---------------------------------------------------------------- a session over a socket pair


def booted(guests: Path, mode: str, image: str = "demo.elf") -> engines.Engine:
    """`image` booted in `mode`, stopped at its entry (as `ring1 run --gdb --wait` starts)."""
    loaded = multiboot.load_multiboot(guests / image)
    platform = GuestPlatform(ConsoleSink(io.BytesIO()), memory_size=loaded.memory_size)
    engine = engines.create(mode, loaded.memory_size, platform)
    platform.install_firmware(engine.machine.mem)
    multiboot.interp_boot(loaded, platform, engine.machine)
    engine.start()
    return engine


class Client:
    """The gdb side: sends packets, reads acks and replies."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(20)
        self.parser = PacketParser()
        self.pending: list[Received] = []

    def next(self) -> Received:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError
            self.pending += self.parser.feed(data)
        return self.pending.pop(0)

    def reply(self) -> bytes:
        """The next packet from the stub (acks skipped)."""
        while True:
            r = self.next()
            if r.kind == "packet":
                return r.payload

    def ask(self, payload: bytes) -> bytes:
        self.sock.sendall(frame(payload))
        return self.reply()


class Session:
    def __init__(self, engine: engines.Engine, listener: socket.socket | None = None) -> None:
        if listener is None:
            ours, theirs = socket.socketpair()
        else:
            theirs = socket.create_connection(listener.getsockname())
            ours, _ = listener.accept()
        self.logs: list[str] = []
        self.stub = GdbSession(engine, ours, listener, lambda: "figures", self.logs.append)
        self.client = Client(theirs)
        self.end: list[object] = []
        self.thread = threading.Thread(target=lambda: self.end.append(self.stub.serve()), daemon=True)
        self.thread.start()

    def finish(self) -> object:
        self.client.sock.close()
        self.thread.join(20)
        assert not self.thread.is_alive()
        assert self.stub.internal_errors == []
        return self.end[0]


@pytest.fixture
def demo_interp(guests: Path):
    session = Session(booted(guests, "interp"))
    yield session
    session.finish()


def guest_state(engine: engines.Engine) -> tuple:
    m = engine.machine
    return (tuple(m.regs), m.state.eip, m.eflags(), tuple(m.state.sel), hashlib.sha1(m.mem.view).hexdigest())


def test_packets_answered_with_acks_and_errors(demo_interp: Session) -> None:
    c, engine = demo_interp.client, demo_interp.stub.engine
    assert b"qXfer:features:read+" in c.ask(b"qSupported:multiprocess+;swbreak+")
    assert c.pending == [] or c.pending[0].kind != "nack"
    regs = c.ask(b"g")
    assert len(regs) == 2 * sum(size for _, size in REGISTERS)
    assert int.from_bytes(bytes.fromhex(regs[EIP * 8 : EIP * 8 + 8].decode()), "little") == engine.machine.state.eip
    assert c.ask(b"?").startswith(b"T05")
    before = guest_state(engine)
    for malformed in (b"m", b"mzz,4", b"m100000", b"P", b"P0=12", b"p999", b"G12", b"M100000,4:zz", b"Z0,zz,1", b"Z0"):
        assert c.ask(malformed) == b"E01", malformed
    assert c.ask(b"qXfer:features:read:other.xml:0,100") == b"E00"
    assert c.ask(b"m7ffff000,4") == b"E14"  # past the end of RAM (paging is off at the entry)
    assert c.ask(b"vCont?") == b"" and c.ask(b"bogus") == b""
    assert guest_state(engine) == before


def test_bad_checksum_gets_a_nack_and_changes_nothing(demo_interp: Session) -> None:
    c, engine = demo_interp.client, demo_interp.stub.engine
    before = guest_state(engine)
    payload = b"P0=78563412"
    c.sock.sendall(b"$" + payload + b"#%02x" % ((checksum(payload) + 1) & 0xFF))
    assert c.next() == Received("nack")
    assert guest_state(engine) == before
    assert c.ask(payload) == b"OK"  # the same packet with its checksum right
    assert engine.machine.regs[0] == 0x12345678


def test_registers_memory_and_breakpoints(guests: Path, demo_interp: Session) -> None:
    c, engine = demo_interp.client, demo_interp.stub.engine
    assert c.ask(b"M200000,4:deadbeef") == b"OK"
    assert c.ask(b"m200000,4") == b"deadbeef"
    assert engine.machine.mem.read(0x200000, 4) == bytes.fromhex("deadbeef")
    regs = bytes.fromhex(c.ask(b"g").decode())
    changed = bytearray(regs)
    changed[4:8] = (0x1234).to_bytes(4, "little")  # ECX
    assert c.ask(b"G" + changed.hex().encode()) == b"OK"
    assert engine.machine.regs[1] == 0x1234
    changed[40:44] = (0x18).to_bytes(4, "little")  # CS: a selector load is the guest's to do
    assert c.ask(b"G" + changed.hex().encode()) == b"E01"
    assert engine.machine.state.sel[1] != 0x18
    # a step is one guest instruction; a breakpoint stops before its instruction
    start = engine.machine.state.eip
    assert c.ask(b"s").startswith(b"T05")
    assert engine.machine.state.eip != start
    kmain = _symbol(guests / "demo.elf", "kmain")
    assert c.ask(b"Z0,%x,1" % kmain) == b"OK"
    reply = c.ask(b"c")
    assert reply.startswith(b"T05") and b"swbreak" in reply
    assert engine.machine.state.eip == kmain
    assert c.ask(b"z0,%x,1" % kmain) == b"OK"
    assert c.ask(b"qRcmd," + b"mode".hex().encode()).startswith(b"O")


def test_fuzzed_packets_never_raise_nor_change_the_guest(guests: Path, demo_interp: Session) -> None:
    """10,000 random, truncated and malformed packets, in ack mode: no exception out of the
    stub, no change to the guest (the fuzz leaves out the packets that may change it: the
    writes and the resumes, tested above)."""
    c, stub = demo_interp.client, demo_interp.stub
    engine = stub.engine
    before = guest_state(engine)
    rng = random.Random(12)
    heads = [b"g", b"m", b"p", b"?", b"q", b"Q", b"H", b"T", b"v", b"Z", b"z", b"x", b"", b"qRcmd,", b"qXfer:"]
    changes = (b"G", b"P", b"M", b"X", b"c", b"s", b"C", b"S", b"k", b"D", b"R", b"vCont;", b"vKill", b"Z2", b"z2")
    alphabet = b"0123456789abcdef,:;=#$}*-+\x03 gmMpPZz"
    sent = 0
    synced = threading.Event()

    def drain() -> None:  # every reply read, until the one to the last packet
        tail = b""
        try:
            while data := c.sock.recv(65536):
                tail = (tail + data)[-64:]
                if frame(b"QC1") in tail:
                    synced.set()
                    return
        except OSError:
            pass

    stream = bytearray()
    while sent < 10_000:
        body = rng.choice(heads) + bytes(rng.choice(alphabet) for _ in range(rng.randrange(24)))
        # Z0/Z1 with a valid checksum would set a breakpoint: harmless; a Z2 (a watchpoint) too
        safe = body.replace(b"$", b"").replace(b"#", b"").replace(b"\x03", b"")
        if any(safe.startswith(h) for h in changes) or b"QStartNoAckMode" in safe:
            continue
        kind = rng.randrange(4)
        if kind == 0:
            stream += frame(safe)  # well formed
        elif kind == 1:
            stream += b"$" + safe + b"#%02x" % ((checksum(safe) + 1) & 0xFF)  # bad checksum
        elif kind == 2:
            stream += frame(safe)[: rng.randrange(len(safe) + 4)]  # truncated
        else:
            stream += bytes(rng.randrange(256) for _ in range(rng.randrange(12)))  # noise
        sent += 1
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    # Noise could carry a '$' that swallows what follows, a stray 0x03 or '+': a last packet
    # that surely parses, and then the guest and the stub are looked at.
    c.sock.sendall(bytes(stream) + b"#00" + frame(b"qC"))
    assert synced.wait(60)
    print(f"fuzz: {stub.packets_handled} packets answered, {stub.rejected} refused")
    assert stub.packets_handled > 2_000 and stub.rejected > 1_000  # (most reached the stub)
    assert stub.internal_errors == []
    assert demo_interp.thread.is_alive()
    assert guest_state(engine) == before


def test_a_second_client_is_refused(guests: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    session = Session(booted(guests, "interp"), listener)
    try:
        other = socket.create_connection(listener.getsockname(), timeout=10)
        assert other.recv(100) == b""  # closed at once
        other.close()
        assert session.client.ask(b"qC") == b"QC1"  # the first one still has its session
        assert any("refused a second debugger" in line for line in session.logs)
    finally:
        assert session.finish().why == "gone"
        listener.close()


@pytest.mark.parametrize("mode", ["bt", "interp"])
def test_ctrl_c_stops_a_spinning_guest_and_a_vanished_client_ends_cleanly(guests: Path, mode: str) -> None:
    session = Session(booted(guests, mode, "spin.elf"))
    c = session.client
    c.sock.sendall(frame(b"c"))
    assert c.next() == Received("ack")
    time.sleep(0.3)
    c.sock.sendall(b"\x03")
    reply = c.reply()
    assert reply.startswith(b"T02"), reply
    # the guest stopped between two of its instructions: stepping goes on from there
    assert c.ask(b"s").startswith(b"T05")
    c.sock.sendall(frame(b"c"))
    time.sleep(0.2)
    end = session.finish()  # gone while the guest runs
    assert end.why == "gone"


def _symbol(path: Path, name: str) -> int:
    from ring1.runtime.cli import _symbol_address

    address = _symbol_address(str(path), name)
    assert address is not None
    return address


def test_cli_reports_a_debugger_that_went_away(guests: Path) -> None:
    proc = subprocess.Popen(
        [*RING1, "run", str(guests / "spin.elf"), "--gdb", "0", "--wait", "--serial", "none"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    port = _wait_for_port(proc)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(frame(b"qSupported") + b"+" + frame(b"c"))
        time.sleep(0.3)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == engines.EXIT_VMSTOP, err
    assert "the debugger's connection closed mid-session" in err and "Traceback" not in err


def _wait_for_port(proc: subprocess.Popen) -> int:
    assert proc.stderr is not None
    line = proc.stderr.readline()
    found = re.search(r"waiting for gdb on 127\.0\.0\.1:(\d+)", line)
    assert found, line
    return int(found.group(1))


# ---------------------------------------------------------------- the real client


def _sti_in_kmain(elf: Path) -> int:
    """The STI of the demo's red pill (an inline asm sequence STI, PUSHF, ..., POPF, ..., CLI)."""
    done = subprocess.run(["objdump", "-d", str(elf)], capture_output=True, text=True, check=True)
    inside = False
    for line in done.stdout.splitlines():
        if line.endswith("<kmain>:"):
            inside = True
        elif inside and re.match(r"\s+[0-9a-f]+:\s.*\bsti\b", line):
            return int(line.split(":")[0], 16)
    raise AssertionError("no STI in kmain")


GDB_SCRIPT = """\
set pagination off
set confirm off
target remote :{port}
watch last_eip
continue
delete
break redpill_result
continue
bt
info registers
x/4i $pc
p failures
p fault_count[0]
delete
break *{sti:#x}
continue
display/i $pc
p $eflags
stepi
p $eflags
stepi 5
stepi
p $eflags
stepi 2
monitor tc
monitor mode
kill
"""


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed (.ci/run installs it)")
@pytest.mark.parametrize("mode", ["bt", "interp"])
def test_gdb_batch_session(guests: Path, tmp_path: Path, mode: str) -> None:
    elf = guests / "demo.elf"
    proc = subprocess.Popen(
        [*RING1, "run", str(elf), "--gdb", "0", "--wait", "--mode", mode],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = _wait_for_port(proc)
        script = tmp_path / "session.gdb"
        script.write_text(GDB_SCRIPT.format(port=port, sti=_sti_in_kmain(elf)))
        done = subprocess.run(
            ["gdb", "-nx", "-batch", "-x", str(script), str(elf)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=120,
        )
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    out = done.stdout
    (tmp_path / "transcript.txt").write_text(out)
    redpill_result = _symbol(elf, "redpill_result")
    # the watchpoint: the first exception's handler records where it came from
    assert "Hardware watchpoint 1: last_eip" in out and "Old value = 0" in out, out
    assert re.search(r"New value = [1-9]", out) and "trap_dispatch" in out, out
    # the breakpoint, the call stack, the registers, the disassembly, a global
    assert "Breakpoint 2, redpill_result" in out
    assert re.search(r"#1 .* in redpill \(\)", out) and re.search(r"#\d .* in _start \(\)", out), out
    assert re.search(rf"eip\s+{redpill_result:#x}\s+{redpill_result:#x} <redpill_result>", out), out
    assert re.search(r"cs\s+0x8\s+8\n", out) and re.search(r"ss\s+0x10\s+16\n", out), out
    assert f"=> {redpill_result:#x} <redpill_result>:" in out
    assert "$1 = 0\n" in out and "$2 = 1\n" in out  # no self-check failed; one #DE so far
    # stepping through STI, PUSHF, ..., POPF with IF clear: the flags as the guest sees them
    eflags = re.findall(r"\$\d+ = \[ ([A-Z ]*)\]", out)
    assert len(eflags) == 3, out
    assert "IF" not in eflags[0].split() and "IF" in eflags[1].split() and "IF" not in eflags[2].split(), eflags
    assert re.search(r"=> 0x[0-9a-f]+ <kmain\+\d+>:\s+cli", out), out
    if mode == "bt":
        assert "inline sti_virtual" in out and "inline popf_virtual" in out, out
        assert "translated (BT)" in out
    else:
        assert "no translation cache in mode interp" in out and "interpreted: the generated interpreter" in out
    assert "[Inferior 1 (Remote target) killed]" in out
    assert proc.returncode == engines.EXIT_INTERRUPTED and "killed by the debugger" in err, err
    assert "Traceback" not in out + err


@pytest.mark.parametrize("mode", ["bt", "bare"])
def test_several_breakpoints_in_user_code_run_directly(guests: Path, mode: str) -> None:
    """User processes of the procs guest run directly on unicorn (bt) or all of it does
    (bare): a run's `until` holds one stop address, the stub's breakpoints are several."""
    session = Session(booted(guests, mode, "procs.elf"))
    c, engine = session.client, session.stub.engine
    user = guests / "procs_user.elf"
    wanted = {_symbol(user, name) for name in ("prog_init", "prog_hello", "uvprintf")}
    for address in wanted:
        assert c.ask(b"Z0,%x,1" % address) == b"OK"
    hits = []
    for _ in range(3):
        assert c.ask(b"c").startswith(b"T05")
        hits.append(engine.machine.state.eip)
        assert engine.machine.state.sel[1] & 3 == 3  # stopped in user code
    assert set(hits) <= wanted and len(set(hits)) >= 2, [hex(h) for h in hits]
    # a step in user code is one instruction there (the budget reads user code through the
    # guest's page tables: unicorn's mem_read, physical, once failed there under bt)
    at = engine.machine.state.eip
    assert c.ask(b"s").startswith(b"T05")
    assert engine.machine.state.eip != at and engine.machine.state.sel[1] & 3 == 3
    if mode == "bt":
        mode_text = bytes.fromhex(c.ask(b"qRcmd," + b"mode".hex().encode())[1:].decode()).decode()
        assert "direct execution (DE): user code at CPL 3" in mode_text, mode_text
    session.finish()


def test_detach_lets_the_guest_run_to_its_end(guests: Path) -> None:
    proc = subprocess.Popen(
        [*RING1, "run", str(guests / "demo.elf"), "--gdb", "0", "--wait"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    port = _wait_for_port(proc)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        client = Client(sock)
        assert client.ask(b"?").startswith(b"T05")
        assert client.ask(b"D") == b"OK"
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "demo: all self-checks passed" in out and "debugger detached; the guest runs on" in err


def test_without_wait_the_guest_runs_until_gdb_attaches(guests: Path) -> None:
    proc = subprocess.Popen(
        [*RING1, "run", str(guests / "spin.elf"), "--gdb", "0", "--serial", "none"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    port = int(re.search(r":(\d+)", proc.stderr.readline()).group(1))  # "listening on ..."
    time.sleep(0.3)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        client = Client(sock)
        regs = bytes.fromhex(client.ask(b"g").decode())
        eip = int.from_bytes(regs[EIP * 4 : EIP * 4 + 4], "little")
        assert eip != _symbol(guests / "spin.elf", "_start")  # it ran before gdb came
        sock.sendall(frame(b"k"))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == engines.EXIT_INTERRUPTED and "killed by the debugger" in err, err
