"""`ring1 run IMAGE --gdb PORT`: a GDB remote serial protocol stub for the guest.

A real `gdb` (`target remote :PORT`) debugs the guest kernel as it runs in any mode. What it
sees is the guest's virtual machine, never the VMM's: the registers are the engine's virtual
CPU (`engine.machine`, authoritative between runs), with the segment selectors and EFLAGS the
guest sees; memory is guest-virtual, walked through the guest's own page tables (E14 where
they map nothing).

How the stub drives the engine: the guest runs only inside `engine.run(max_insns)`, which
always stops at a guest instruction boundary with the virtual CPU complete. Breakpoints
(Z0 and Z1 alike) are the engines' stop addresses (`engine.stop_addresses`): nothing is
written into guest memory; under `bt` the translator ends a unit at a stop address. A step is
a run of one instruction; a continue is a run in slices of about SLICE_SECONDS, between which
the stub looks whether gdb sent Ctrl-C (0x03), read by a background thread, or went away.

The packet layer (`PacketParser`, `frame`) is separate from the session (`GdbSession`), so the
tests can drive it over a socket pair without gdb.
"""

from __future__ import annotations

import contextlib
import queue
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ring1.runtime.cpu.events import Fault, VMStop
from ring1.runtime.cpu.state import CS, DS, ES, FS, GS, SS

if TYPE_CHECKING:
    from ring1.runtime.engines import Engine, Outcome, Stop

MAX_PACKET = 0x4000  # what qSupported announces as PacketSize; longer packets are refused
SLICE_SECONDS = 0.02  # a continue runs this long between two looks for Ctrl-C
INTERRUPT = 0x03
SIGINT, SIGILL, SIGTRAP, SIGSEGV = 2, 4, 5, 11

# ---------------------------------------------------------------- packet layer


def checksum(payload: bytes) -> int:
    return sum(payload) & 0xFF


def escape(data: bytes) -> bytes:
    """Binary data in a packet: '#', '$', '}' and '*' are sent as '}' and the byte xor 0x20."""
    out = bytearray()
    for b in data:
        if b in b"#$}*":
            out += bytes((0x7D, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    """The inverse of `escape`. A trailing lone '}' is malformed: ValueError."""
    out = bytearray()
    it = iter(data)
    for b in it:
        if b == 0x7D:
            nxt = next(it, None)
            if nxt is None:
                raise ValueError("escape at the end of a packet")
            out.append(nxt ^ 0x20)
        else:
            out.append(b)
    return bytes(out)


def frame(payload: bytes) -> bytes:
    """One packet as sent: $payload#checksum (the payload already escaped where it must be)."""
    return b"$" + payload + b"#" + b"%02x" % checksum(payload)


@dataclass(frozen=True)
class Received:
    """What the parser found in the byte stream: "packet" (with its payload, checksum good),
    "bad-checksum", "too-long", "interrupt" (0x03), "ack" (+) or "nack" (-)."""

    kind: str
    payload: bytes = b""


class PacketParser:
    """The byte stream from gdb, cut into packets, acks and interrupts. A '$' inside a packet
    starts a new one (the rest of a truncated packet is dropped, as gdb's own stubs do);
    bytes between packets that mean nothing are skipped."""

    def __init__(self) -> None:
        self._body: bytearray | None = None  # inside a packet: its payload so far
        self._sum: bytearray | None = None  # after '#': the checksum digits so far
        self._overflow = False

    def feed(self, data: bytes) -> list[Received]:
        out: list[Received] = []
        for b in data:
            if self._sum is not None:
                self._sum.append(b)
                if len(self._sum) == 2:
                    out.append(self._finish())
                continue
            if self._body is not None:
                if b == ord("$"):  # a truncated packet, then a new one
                    self._body, self._overflow = bytearray(), False
                elif b == ord("#"):
                    self._sum = bytearray()
                elif len(self._body) >= MAX_PACKET:
                    self._overflow = True
                else:
                    self._body.append(b)
                continue
            if b == ord("$"):
                self._body, self._overflow = bytearray(), False
            elif b == INTERRUPT:
                out.append(Received("interrupt"))
            elif b == ord("+"):
                out.append(Received("ack"))
            elif b == ord("-"):
                out.append(Received("nack"))
        return out

    def _finish(self) -> Received:
        body, digits, overflow = bytes(self._body or b""), bytes(self._sum or b""), self._overflow
        self._body = self._sum = None
        self._overflow = False
        if overflow:
            return Received("too-long")
        try:
            given = int(digits, 16)
        except ValueError:
            return Received("bad-checksum")
        if given != checksum(body) or not all(c in b"0123456789abcdefABCDEF" for c in digits):
            return Received("bad-checksum")
        return Received("packet", body)


# ---------------------------------------------------------------- the i386 target description

_GPRS = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
_SEGS = (("cs", CS), ("ss", SS), ("ds", DS), ("es", ES), ("fs", FS), ("gs", GS))
_X87_CONTROL = ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")

# (name, size in bytes) in gdb's register numbering: the i386 core feature, then SSE.
REGISTERS: tuple[tuple[str, int], ...] = (
    *((n, 4) for n in _GPRS),
    ("eip", 4),
    ("eflags", 4),
    *((n, 4) for n, _ in _SEGS),
    *((f"st{i}", 10) for i in range(8)),
    *((n, 4) for n in _X87_CONTROL),
    *((f"xmm{i}", 16) for i in range(8)),
    ("mxcsr", 4),
)
REGISTER_NUMBER = {name: i for i, (name, _) in enumerate(REGISTERS)}
EIP, EFLAGS = REGISTER_NUMBER["eip"], REGISTER_NUMBER["eflags"]

_EFLAGS_FIELDS = (
    ("CF", 0), ("", 1), ("PF", 2), ("AF", 4), ("ZF", 6), ("SF", 7), ("TF", 8), ("IF", 9), ("DF", 10),
    ("OF", 11), ("NT", 14), ("RF", 16), ("VM", 17), ("AC", 18), ("VIF", 19), ("VIP", 20), ("ID", 21),
)  # fmt: skip


def target_xml() -> str:
    """gdb's i386 description (features org.gnu.gdb.i386.core and .sse, gdb's own names and
    types), so that gdb lays out `g` packets as the stub does."""
    flags = "".join(f'<field name="{n}" start="{b}" end="{b}"/>' for n, b in _EFLAGS_FIELDS)
    gpr_types = {"esp": "data_ptr", "ebp": "data_ptr"}
    core = [f'<flags id="i386_eflags" size="4">{flags}</flags>']
    for i, name in enumerate(_GPRS):
        core.append(f'<reg name="{name}" bitsize="32" type="{gpr_types.get(name, "int32")}" regnum="{i}"/>')
    core.append('<reg name="eip" bitsize="32" type="code_ptr"/>')
    core.append('<reg name="eflags" bitsize="32" type="i386_eflags"/>')
    core += [f'<reg name="{n}" bitsize="32" type="int32"/>' for n, _ in _SEGS]
    core += [f'<reg name="st{i}" bitsize="80" type="i387_ext"/>' for i in range(8)]
    core += [f'<reg name="{n}" bitsize="32" type="int" group="float"/>' for n in _X87_CONTROL]
    sse = [
        '<vector id="v4f" type="ieee_single" count="4"/>',
        '<vector id="v2d" type="ieee_double" count="2"/>',
        '<vector id="v16i8" type="int8" count="16"/>',
        '<vector id="v8i16" type="int16" count="8"/>',
        '<vector id="v4i32" type="int32" count="4"/>',
        '<vector id="v2i64" type="int64" count="2"/>',
        '<union id="vec128"><field name="v4_float" type="v4f"/><field name="v2_double" type="v2d"/>'
        '<field name="v16_int8" type="v16i8"/><field name="v8_int16" type="v8i16"/>'
        '<field name="v4_int32" type="v4i32"/><field name="v2_int64" type="v2i64"/>'
        '<field name="uint128" type="uint128"/></union>',
    ]
    sse += [f'<reg name="xmm{i}" bitsize="128" type="vec128"/>' for i in range(8)]
    sse.append('<reg name="mxcsr" bitsize="32" type="int" group="vector"/>')
    return (
        '<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd">'
        "<target><architecture>i386</architecture>"
        f'<feature name="org.gnu.gdb.i386.core">{"".join(core)}</feature>'
        f'<feature name="org.gnu.gdb.i386.sse">{"".join(sse)}</feature>'
        "</target>"
    )


# ---------------------------------------------------------------- the session


WHY_WATCH = "debugger watchpoints"  # the stub's reason in the page-trace registry


class StopSet(set):
    """The stop addresses of one run, and "stop here, wherever here is" once a watchpoint
    was hit: every engine asks `eip in stop_addresses` at each guest instruction boundary it
    can stop at, so a hit stops the run at the next one (the interpreter's block leaves after
    the writing instruction, as after a store into its own code)."""

    def __init__(self, addresses: set[int]) -> None:
        super().__init__(addresses)
        self.hit: int | None = None  # the watched address a write touched

    def __contains__(self, address: object) -> bool:
        return self.hit is not None or set.__contains__(self, address)


@dataclass(frozen=True)
class Watchpoint:
    """A write watchpoint: `length` bytes at guest-linear `address`, as the physical ranges
    it covered when it was set (page, start, end)."""

    address: int
    length: int
    ranges: tuple[tuple[int, int, int], ...]


class ProtocolError(Exception):
    """A packet the stub cannot act on: the reply is `code` (an `Enn`)."""

    def __init__(self, code: str = "E01") -> None:
        super().__init__(code)
        self.code = code


def _hex_int(text: bytes) -> int:
    if not text or len(text) > 16 or not all(c in b"0123456789abcdefABCDEF" for c in text):
        raise ProtocolError("E01")
    return int(text, 16)


def _hex_bytes(text: bytes) -> bytes:
    try:
        return bytes.fromhex(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("E01") from None


@dataclass
class SessionEnd:
    """Why a session ended: "detach" (the guest runs on), "kill", "gone" (the connection
    closed), "ended" (the guest's run ended: `stop`)."""

    why: str
    stop: Stop | None = None


class GdbSession:
    """One gdb connected to one engine. `serve()` answers packets until gdb detaches, kills,
    goes away, or the guest's run ends; the guest runs only inside `c` and `s`."""

    def __init__(
        self,
        engine: Engine,
        conn: socket.socket,
        listener: socket.socket | None = None,
        figures: Callable[[], str] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.engine = engine
        self.machine = engine.machine
        self.conn = conn
        self.listener = listener  # a second client connecting here is refused
        self.figures = figures
        self.log = log or (lambda text: print(f"ring1 run: --gdb: {text}", file=sys.stderr))
        self.parser = PacketParser()
        self.events: queue.Queue[Received | None] = queue.Queue()  # None: the connection closed
        self.interrupted = threading.Event()
        self.gone = threading.Event()
        self.ack = True  # until QStartNoAckMode
        self.last_sent = b""
        self.breakpoints: set[int] = set()  # Z0 and Z1 alike: stop addresses
        self.watchpoints: dict[tuple[int, int], Watchpoint] = {}  # Z2, by (address, length)
        self._stops = StopSet(set())  # the stop addresses of the run in progress
        self._running = False
        self._covered: set[int] | None = None  # the stop addresses translations made so far honour
        self.ended: tuple[int, Stop] | None = None  # the guest's run is over: (signal, how)
        self.internal_errors: list[str] = []
        self.packets_handled = 0
        self.rejected = 0  # packets refused for their checksum or length
        self.slice = 20_000  # instructions per continue slice, adapted to SLICE_SECONDS
        self.stop_signal = SIGTRAP
        self._send_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="ring1-gdb-reader", daemon=True)

    # ------------------------------------------------------------ the connection

    def _read(self) -> None:
        """The background reader: packets into the queue; Ctrl-C and a closed connection also
        set their flags at once (a continue in progress looks at them between slices)."""
        watched = [self.conn] + ([self.listener] if self.listener is not None else [])
        try:
            while True:
                ready, _, _ = select.select(watched, [], [])
                if self.listener is not None and self.listener in ready:
                    self._refuse_second_client()
                if self.conn not in ready:
                    continue
                data = self.conn.recv(4096)
                if not data:
                    break
                for item in self.parser.feed(data):
                    if item.kind == "interrupt":
                        self.interrupted.set()  # looked at between the slices of a continue
                    else:
                        self.events.put(item)
        except (OSError, ValueError):
            pass  # the socket was closed under us (the session ended)
        self.gone.set()
        self.events.put(None)

    def _refuse_second_client(self) -> None:
        try:
            other, address = self.listener.accept()
        except OSError:
            return
        other.close()
        self.log(f"refused a second debugger from {address[0]}:{address[1]} (one session at a time)")

    def _send_raw(self, data: bytes) -> None:
        with self._send_lock:
            try:
                self.conn.sendall(data)
            except OSError:
                self.gone.set()

    def send(self, payload: bytes | str) -> None:
        if isinstance(payload, str):
            payload = payload.encode("latin-1")
        self.last_sent = frame(payload)
        self._send_raw(self.last_sent)

    # ------------------------------------------------------------ the loop

    def serve(self) -> SessionEnd:
        self._reader.start()
        try:
            while True:
                item = self.events.get()
                if item is None:  # (packets that came before the close are answered first: a k)
                    return self._end_gone()
                if item.kind == "nack":
                    if self.ack and self.last_sent:
                        self._send_raw(self.last_sent)  # gdb asks for the last packet again
                    continue
                if item.kind == "ack":
                    continue
                if item.kind in ("bad-checksum", "too-long"):
                    self.rejected += 1
                    if self.ack:
                        self._send_raw(b"-")
                    continue
                if self.ack:
                    self._send_raw(b"+")
                end = self.handle(item.payload)
                if end is not None:
                    return end
        finally:
            self._forget_watchpoints()
            self.engine.stop_addresses = set()
            with contextlib.suppress(OSError):
                self.conn.shutdown(socket.SHUT_RDWR)
            self.conn.close()

    def _end_gone(self) -> SessionEnd:
        if self.ended is not None:
            return SessionEnd("ended", self.ended[1])
        return SessionEnd("gone")

    def handle(self, payload: bytes) -> SessionEnd | None:
        """Answer one packet; never raises. Returns how the session ends, when it does."""
        self.packets_handled += 1
        try:
            try:
                payload = unescape(payload)  # (only binary data is escaped; other packets never hold '}')
            except ValueError:
                raise ProtocolError("E01") from None
            return self._dispatch(payload)
        except ProtocolError as err:
            self.send(err.code)
        except Exception as err:  # a bug in the stub: an error reply, the session goes on
            self.internal_errors.append(f"{type(err).__name__}: {err}")
            self.log(f"internal error on packet {payload[:40]!r}: {type(err).__name__}: {err}")
            self.send("E01")
        return None

    def _dispatch(self, payload: bytes) -> SessionEnd | None:
        if not payload:
            self.send("")
            return None
        head, rest = payload[:1], payload[1:]
        if head == b"?":
            self.send(self._stop_reply(self.stop_signal))
        elif head == b"g":
            self.send(self.read_registers().hex())
        elif head == b"G":
            self.write_registers(_hex_bytes(rest))
            self.send("OK")
        elif head == b"p":
            self.send(self.read_register(_hex_int(rest)).hex())
        elif head == b"P":
            number, sep, value = rest.partition(b"=")
            if not sep:
                raise ProtocolError("E01")
            self.write_register(_hex_int(number), _hex_bytes(value))
            self.send("OK")
        elif head == b"m":
            address, length = self._address_length(rest)
            self.send(self.read_memory(address, length).hex())
        elif head == b"M":
            where, sep, data = rest.partition(b":")
            if not sep:
                raise ProtocolError("E01")
            address, length = self._address_length(where)
            data = _hex_bytes(data)
            if len(data) != length:
                raise ProtocolError("E01")
            self.write_memory(address, data)
            self.send("OK")
        elif head in (b"Z", b"z"):
            self._breakpoint(head == b"Z", rest)
        elif head in (b"c", b"s"):
            if rest:
                raise ProtocolError("E01")  # (resuming elsewhere: gdb writes EIP instead)
            self.send(self.resume(step=head == b"s"))
            return self._after_resume()
        elif head == b"D":
            self.send("OK")
            return SessionEnd("detach")
        elif head == b"k":
            return SessionEnd("kill")
        elif head == b"H":
            self.send("OK")  # one thread
        elif head == b"T":
            self.send("OK")
        elif head == b"q":
            self._query(payload)
        elif head == b"Q":
            if payload == b"QStartNoAckMode":
                self.send("OK")
                self.ack = False
            else:
                self.send("")
        elif head == b"v":
            if payload.startswith(b"vCont?"):
                self.send("")  # s and c do
            elif payload.startswith(b"vKill"):
                self.send("OK")
                return SessionEnd("kill")
            else:
                self.send("")
        else:
            self.send("")  # not supported: gdb knows the empty reply
        return None

    def _after_resume(self) -> SessionEnd | None:
        if self.gone.is_set():
            return self._end_gone()
        if self.ended is not None and self.ended[1].kind in ("exit", "poweroff", "reset"):
            return SessionEnd("ended", self.ended[1])
        return None

    @staticmethod
    def _address_length(text: bytes) -> tuple[int, int]:
        address, sep, length = text.partition(b",")
        if not sep:
            raise ProtocolError("E01")
        a, n = _hex_int(address), _hex_int(length)
        if a > 0xFFFFFFFF or n > MAX_PACKET // 2:
            raise ProtocolError("E01")
        return a, n

    # ------------------------------------------------------------ queries

    def _query(self, payload: bytes) -> None:
        if payload.startswith(b"qSupported"):
            self.send(f"PacketSize={MAX_PACKET:x};qXfer:features:read+;QStartNoAckMode+;swbreak+;hwbreak+")
        elif payload == b"qAttached":
            self.send("1")  # quitting gdb detaches: the guest runs on
        elif payload == b"qC":
            self.send("QC1")
        elif payload == b"qfThreadInfo":
            self.send("m1")
        elif payload == b"qsThreadInfo":
            self.send("l")
        elif payload.startswith(b"qXfer:features:read:"):
            self._xfer(payload[len(b"qXfer:features:read:") :])
        elif payload.startswith(b"qRcmd,"):
            self._monitor(_hex_bytes(payload[len(b"qRcmd,") :]))
        elif payload == b"qSymbol::":
            self.send("OK")
        else:
            self.send("")

    def _xfer(self, rest: bytes) -> None:
        annex, sep, span = rest.partition(b":")
        if not sep:
            raise ProtocolError("E01")
        if annex != b"target.xml":
            raise ProtocolError("E00")
        offset, length = self._address_length(span)
        document = target_xml().encode()
        chunk = document[offset : offset + length]
        self.send((b"m" if offset + length < len(document) else b"l") + escape(chunk))

    def _monitor(self, command: bytes) -> None:
        words = command.decode("latin-1").split()
        name = words[0] if words else "help"
        handlers = {"tc": self.monitor_tc, "stats": self.monitor_stats, "mode": self.monitor_mode}
        handler = handlers.get(name)
        if handler is None:
            text = "ring1 monitor commands: tc (the CCF of the current instruction), stats, mode\n"
        else:
            text = handler()
        for start in range(0, len(text), 512):  # console output in O packets, then OK
            self.send(b"O" + text[start : start + 512].encode("latin-1", "replace").hex().encode())
        self.send("OK")

    # ------------------------------------------------------------ registers

    def read_register(self, number: int) -> bytes:
        if number >= len(REGISTERS):
            raise ProtocolError("E01")
        m, S = self.machine, self.machine.state
        name, size = REGISTERS[number]
        if number < 8:
            value = m.regs[number]
        elif number == EIP:
            value = S.eip
        elif number == EFLAGS:
            value = m.eflags()
        elif number < 16:
            value = S.sel[_SEGS[number - 10][1]]
        elif name.startswith("xmm"):
            return S.xmm[int(name[3:])].to_bytes(16, "little")
        elif name == "mxcsr":
            value = S.mxcsr
        elif name == "fctrl":
            value = 0x37F  # ring1 models no x87 state: its registers read as after FNINIT
        elif name == "ftag":
            value = 0xFFFF
        else:
            value = 0
        return (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def read_registers(self) -> bytes:
        return b"".join(self.read_register(i) for i in range(len(REGISTERS)))

    def write_register(self, number: int, raw: bytes) -> None:
        """Set one register. General registers, EIP, EFLAGS and the SSE registers are written;
        a segment register or x87 register can only be written with the value it has (a
        selector load needs a descriptor, which is the guest's to do): E01 otherwise."""
        if number >= len(REGISTERS) or len(raw) != REGISTERS[number][1]:
            raise ProtocolError("E01")
        self._check_register(number, raw)
        self._apply_register(number, raw)

    def write_registers(self, raw: bytes) -> None:
        """`G`: every register, in order; nothing changes unless all of it can be written."""
        if len(raw) != sum(size for _, size in REGISTERS):
            raise ProtocolError("E01")
        parts, at = [], 0
        for number, (_, size) in enumerate(REGISTERS):
            parts.append((number, raw[at : at + size]))
            at += size
        for number, part in parts:
            self._check_register(number, part)
        for number, part in parts:
            if part != self.read_register(number):
                self._apply_register(number, part)

    def _check_register(self, number: int, raw: bytes) -> None:
        name = REGISTERS[number][0]
        writable = number <= EFLAGS or name.startswith("xmm") or name == "mxcsr"
        if not writable and raw != self.read_register(number):
            raise ProtocolError("E01")
        if self.engine.mode == "bare" and number >= EFLAGS and raw != self.read_register(number):
            raise ProtocolError("E01")  # bare keeps the rest in unicorn: only set_registers reaches it

    def _apply_register(self, number: int, raw: bytes) -> None:
        m, S = self.machine, self.machine.state
        value = int.from_bytes(raw, "little")
        if number < 8:
            self.engine.set_registers(S.eip, {number: value})
        elif number == EIP:
            self.engine.set_registers(value, {})
        elif number == EFLAGS:
            m.set_eflags(value)
        elif REGISTERS[number][0].startswith("xmm"):
            S.xmm[int(REGISTERS[number][0][3:])] = value
        elif REGISTERS[number][0] == "mxcsr":
            S.mxcsr = value & 0xFFFF

    # ------------------------------------------------------------ memory

    def _physical(self, address: int) -> int:
        """The guest-physical address of a guest-linear one, by the guest's own page tables
        (no accessed or dirty bit set); E14 where nothing is mapped or outside RAM."""
        walk = self.machine.walk(address & 0xFFFFFFFF)
        if walk is None:
            raise ProtocolError("E14")
        pa = walk[0] | (address & 0xFFF)
        if pa >= self.machine.mem.size:
            raise ProtocolError("E14")  # device memory: a read could change the device
        return pa

    def _pieces(self, address: int, length: int) -> list[tuple[int, int, int]]:
        """(physical address, offset in the buffer, length) page by page; every page first."""
        out, done = [], 0
        while done < length:
            la = (address + done) & 0xFFFFFFFF
            n = min(length - done, 0x1000 - (la & 0xFFF))
            pa = self._physical(la)
            if pa + n > self.machine.mem.size:
                raise ProtocolError("E14")
            out.append((pa, done, n))
            done += n
        return out

    def read_memory(self, address: int, length: int) -> bytes:
        if address + length > 1 << 32:
            raise ProtocolError("E14")
        return b"".join(self.machine.mem.read(pa, n) for pa, _, n in self._pieces(address, length))

    def write_memory(self, address: int, data: bytes) -> None:
        """Write as a device would: whoever caches something made from these bytes (the
        interpreter's blocks, the VMM's CCFs, shadow page tables) hears of it."""
        if address + len(data) > 1 << 32:
            raise ProtocolError("E14")
        pieces = self._pieces(address, len(data))
        for pa, at, n in pieces:
            self.machine._write_phys(pa, data[at : at + n])
        vmm = getattr(self.engine, "vmm", None)
        cpu = vmm.cpu if vmm is not None else getattr(self.engine, "cpu", None)
        if cpu is not None:  # unicorn's own translations of guest code it runs directly
            cpu.forget_code(address, address + len(data))

    # ------------------------------------------------------------ breakpoints

    def _breakpoint(self, insert: bool, rest: bytes) -> None:
        fields = rest.split(b",")
        if len(fields) < 3:
            raise ProtocolError("E01")
        kind = fields[0]
        address = _hex_int(fields[1])
        length = _hex_int(fields[2].split(b";")[0])
        if address > 0xFFFFFFFF:
            raise ProtocolError("E01")
        if kind == b"2":
            if getattr(self.engine, "vmm", None) is None and self.engine.mode != "interp":
                self.send("")  # bare: unicorn's stores reach no trace (gdb then watches by steps)
                return
            self._watchpoint(insert, address, length)
        elif kind not in (b"0", b"1"):
            self.send("")  # read and access watchpoints: writes are all the trace registry sees
            return
        elif insert:
            self.breakpoints.add(address)
        else:
            self.breakpoints.discard(address)
        self.send("OK")

    # ------------------------------------------------------------ watchpoints

    def _watchpoint(self, insert: bool, address: int, length: int) -> None:
        key = (address, length)
        if not insert:
            if self.watchpoints.pop(key, None) is not None:
                self._sync_watched_pages()
            return
        if not 1 <= length <= 0x1000 or address + length > 1 << 32:
            raise ProtocolError("E01")
        ranges = []
        for pa, _at, n in self._pieces(address, length):  # (E14 where the guest maps nothing)
            ranges.append((pa >> 12, pa & 0xFFF, (pa & 0xFFF) + n))
        self.watchpoints[key] = Watchpoint(address, length, tuple(ranges))
        self._sync_watched_pages()

    def _sync_watched_pages(self) -> None:
        """Subscribe to writes to exactly the pages the watchpoints cover (and, under the VMM,
        keep those pages read-only in the hardware so that every write is seen)."""
        traces = self.machine.traces
        wanted = {page for w in self.watchpoints.values() for page, _, _ in w.ranges}
        vmm = getattr(self.engine, "vmm", None)
        for page in set(traces.pages(WHY_WATCH)) - wanted:
            traces.unwatch(page, WHY_WATCH)
            if vmm is not None:
                vmm.protect_for_debugger(page, False)
        for page in wanted:
            traces.watch(page, WHY_WATCH, self._on_watched_write)
            if vmm is not None:
                vmm.protect_for_debugger(page, True)

    def _forget_watchpoints(self) -> None:
        self.watchpoints.clear()
        self._sync_watched_pages()

    def _on_watched_write(self, page: int, start: int, end: int) -> None:
        """The page-trace registry: bytes [start, end) of a watched page were written."""
        if not self._running:
            return  # gdb's own M packets
        for w in self.watchpoints.values():
            if any(p == page and s < end and start < e for p, s, e in w.ranges):
                self._stops.hit = w.address
                self.machine.state.smc = True  # the interpreter's block leaves after this instruction
                return

    def _flush_caches(self) -> None:
        """Forget what was translated or compiled before a new stop address: a CCF or a block
        made then may run past it (or be chained past it)."""
        vmm = getattr(self.engine, "vmm", None)
        if vmm is not None:
            vmm.flush_translations(counted=False)
        self.machine.flush_blocks()

    def _run(self, max_insns: int, stops: set[int], keep: int | None = None) -> Outcome:
        """One engine run with `stops`. Before it, if a stop address is new to the caches,
        they are flushed; `keep` is the address a step starts at, left out of the stops only
        so that the step leaves it (the caches still honour it)."""
        if self._covered is None or not stops <= self._covered:
            self._flush_caches()
            self._covered = set(stops)
        self._stops = StopSet(stops)
        self.engine.stop_addresses = self._stops
        self._running = True
        try:
            return self.engine.run(max_insns)
        finally:
            self._running = False
            self.machine.state.smc = False
            self._covered &= stops | ({keep} if keep is not None else set())

    # ------------------------------------------------------------ running

    def resume(self, step: bool) -> str:
        """`s` or `c`: run the guest, and the stop reply."""
        if self.ended is not None:
            return self._stop_reply(self.ended[0])
        self.interrupted.clear()
        eip = self._linear_eip()
        first = self._run(1, self.breakpoints - {eip}, keep=eip)  # leave a breakpoint we are at
        if first.reason != "limit" or self._stops.hit is not None:
            return self._outcome_reply(first)
        if step:
            self.stop_signal = SIGTRAP
            return self._stop_reply(SIGTRAP)
        while True:
            if self.interrupted.is_set() or self.gone.is_set():
                self.interrupted.clear()
                self.stop_signal = SIGINT
                return self._stop_reply(SIGINT)
            started = time.perf_counter()
            outcome = self._run(self.slice, self.breakpoints)
            if outcome.reason != "limit" or self._stops.hit is not None:
                return self._outcome_reply(outcome)
            took = time.perf_counter() - started
            self.slice = max(1_000, min(5_000_000, int(self.slice * SLICE_SECONDS / max(took, 1e-4))))

    def _linear_eip(self) -> int:
        S = self.machine.state
        return (S.base[CS] + S.eip) & 0xFFFFFFFF

    def _outcome_reply(self, outcome: Outcome) -> str:
        if self._stops.hit is not None and outcome.reason in ("stop-address", "limit"):
            self.stop_signal = SIGTRAP
            return self._stop_reply(SIGTRAP, f"watch:{self._stops.hit:x};")
        if outcome.reason == "stop-address":
            self.stop_signal = SIGTRAP
            return self._stop_reply(SIGTRAP, "swbreak:;")
        if outcome.reason == "limit":
            self.stop_signal = SIGTRAP
            return self._stop_reply(SIGTRAP)
        stop = self.engine.stop(outcome, None)
        if stop.kind in ("exit", "poweroff", "reset"):
            self.ended = (0, stop)
            return f"W{stop.exit_status & 0xFF:02x}"
        signal = {"triple-fault": SIGSEGV, "no-semantics": SIGILL, "unsupported": SIGILL}.get(stop.kind, SIGTRAP)
        if outcome.reason == "interrupted":
            signal = SIGINT
        self.ended = (signal, stop)  # the run cannot go on: registers stay readable, c repeats this
        self.stop_signal = signal
        self.log(f"the guest's run ended: {stop.detail}")
        return self._stop_reply(signal)

    def _stop_reply(self, signal: int, reason: str = "") -> str:
        if self.ended is not None and self.ended[1].kind in ("exit", "poweroff", "reset"):
            return f"W{self.ended[1].exit_status & 0xFF:02x}"
        eip = self.read_register(EIP).hex()
        esp = self.read_register(4).hex()
        ebp = self.read_register(5).hex()
        return f"T{signal:02x}{EIP:02x}:{eip};04:{esp};05:{ebp};thread:1;{reason}"

    # ------------------------------------------------------------ monitor commands

    def monitor_mode(self) -> str:
        return describe_mode(self.engine)

    def monitor_stats(self) -> str:
        if self.figures is None:
            return "no figures for this run\n"
        return self.figures() + "\n"

    def monitor_tc(self) -> str:
        return describe_translation(self.engine)


def describe_mode(engine: Engine) -> str:
    """`monitor mode`: how the guest's current instruction runs, and why."""
    S = engine.machine.state
    where = (
        f"mode {engine.mode}; guest eip {S.eip:#010x}, CPL {S.cpl}, "
        f"{('real', 'protected', 'v86')[S.mode]} mode, CS base {S.base[CS]:#x}, "
        f"{'32' if S.code32 else '16'}-bit code, TF {S.eflags >> 8 & 1}"
    )
    vmm = getattr(engine, "vmm", None)
    if vmm is None:
        how = {
            "interp": "interpreted: the generated interpreter runs every guest instruction (full emulation)",
            "bare": "on unicorn at the guest's own CPL, the VMM out of the way",
        }.get(engine.mode, engine.mode)
        return f"{where}\n{how}\n"
    if vmm.can_translate():
        how = "translated (BT): the kernel at CPL 0 in flat 32-bit protected mode runs as CCFs at CPL 1"
    elif vmm.can_run_direct():
        if S.mode == 2:
            why = "v86 code"
        elif S.cpl == 3:
            why = "user code at CPL 3 with the guest's own descriptor tables usable"
        else:
            why = "trap mode: the kernel untranslated at CPL 1"
        how = f"direct execution (DE): {why}"
    else:
        reasons = []
        if S.eflags & 0x100:
            reasons.append("TF is set")
        if S.mode == 0:
            reasons.append("real mode")
        if S.mode == 1 and S.cpl == 3:
            reasons.append("user code whose segments or tables forbid direct execution")
        if S.mode == 1 and S.cpl != 3 and (S.base[CS] != 0 or not S.code32):
            reasons.append("a kernel CS that is not flat 32-bit")
        if S.mode == 1 and S.cpl in (1, 2):
            reasons.append(f"CPL {S.cpl}")
        how = "interpreted: " + (", ".join(reasons) or "neither translation nor direct execution applies")
    return f"{where}\n{how}\n"


def describe_translation(engine: Engine) -> str:
    """`monitor tc`: the translation unit of the current guest instruction beside its CCF."""
    vmm = getattr(engine, "vmm", None)
    S = engine.machine.state
    if vmm is None or vmm.mode != "bt":
        return f"no translation cache in mode {engine.mode}: the instruction at {S.eip:#010x} is not translated\n"
    if not vmm.can_translate():
        return describe_mode(engine) + "no CCF: this instruction does not run translated\n"
    from ring1.runtime.tools.inspector import InspectError, Inspector, format_view

    inspector = Inspector(vmm)
    try:
        unit, now = inspector.unit_at(S.eip)
        view = inspector.view(unit, now)
    except (InspectError, Fault, VMStop) as err:
        return f"no CCF at {S.eip:#010x}: {err}\n"
    mark = next((r for r in view.rows if r.guest == S.eip), None)
    head = f"guest eip {S.eip:#010x}" + (f": {mark.guest_text}, rule {mark.rule}" if mark else "") + "\n"
    return head + format_view(view) + "\n"


# ---------------------------------------------------------------- ring1 run --gdb


class GdbServer:
    """`ring1 run --gdb PORT [--wait]`: listens on the loopback interface; drives one engine
    at a time, with at most one debugger connected."""

    def __init__(self, port: int, wait: bool, log: Callable[[str], None] | None = None) -> None:
        self.wait = wait
        self.log = log or (lambda text: print(f"ring1 run: --gdb: {text}", file=sys.stderr, flush=True))
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(1)
        self.port = self.listener.getsockname()[1]
        self.figures: Callable[[Engine], str] | None = None

    def close(self) -> None:
        self.listener.close()

    def _accept(self, timeout: float | None) -> socket.socket | None:
        ready, _, _ = select.select([self.listener], [], [], timeout)
        if not ready:
            return None
        conn, address = self.listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.log(f"debugger connected from {address[0]}:{address[1]}")
        return conn

    def drive(self, engine: Engine) -> Stop:
        """Run `engine` (booted, started) to its end, under a debugger whenever one is connected.
        With `wait`, the guest does not run before the first one connects."""
        from ring1.runtime.engines import _stop_at

        if self.wait:
            self.log(f"waiting for gdb on 127.0.0.1:{self.port} (target remote :{self.port})")
        else:
            self.log(f"listening on 127.0.0.1:{self.port} (target remote :{self.port}); the guest runs")
        conn = self._accept(None) if self.wait else None
        slice_ = 100_000
        while True:
            if conn is not None:
                session = GdbSession(
                    engine, conn, self.listener, (lambda: self.figures(engine)) if self.figures else None, self.log
                )
                end = session.serve()
                engine.stop_addresses = set()
                if end.why == "ended":
                    assert end.stop is not None
                    return end.stop
                m = engine.machine
                if end.why == "kill":
                    return _stop_at(m, "user-quit", "killed by the debugger", m.state.eip)
                if end.why == "gone":
                    return _stop_at(m, "debugger-gone", "the debugger's connection closed mid-session", m.state.eip)
                self.log("debugger detached; the guest runs on")
                conn = None
            # No debugger: run in slices, looking for one between them.
            started = time.perf_counter()
            outcome = engine.run(slice_)
            if outcome.reason != "limit":
                return engine.stop(outcome, None)
            took = time.perf_counter() - started
            slice_ = max(1_000, min(5_000_000, int(slice_ * SLICE_SECONDS / max(took, 1e-4))))
            conn = self._accept(0)


def describe_figures(engine: Engine, platform: object, mode: str) -> str:
    """`monitor stats`: the figures of the run so far, as `ring1 run --stats` prints them."""
    from ring1.runtime.engines import RunStats

    stats = RunStats(mode)
    engine.figures(stats, 0.0)
    figures = getattr(platform, "figures", None)
    if figures is not None:
        figures(stats)
    stats.figures = [f for f in stats.figures if f.key not in ("wall_time_s", "instructions_per_s")]
    return stats.format()
