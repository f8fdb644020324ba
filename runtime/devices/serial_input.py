"""The host side of a COM port's receiver: ring1's stdin (or a file) typed into the guest's UART.

`SerialInput(source, uart, clock)` reads a file descriptor (or a binary file) without ever
blocking the VM and feeds the bytes to a Serial16550 (`uart.feed`), one at a time:

- Delivery runs on the VirtualClock, never on host threads: a timer polls the source (a
  `select` with no wait, then one `os.read`) and delivers one character per character time at
  the UART's current baud rate, and only while the UART has room (`uart.rx_room()`: its
  receive FIFO, or holding register, is not full). Nothing is ever lost to an overrun, and
  when the source is a file (`--serial-input FILE`), or a pipe whose writer has already
  written, the guest sees the same characters at the same virtual times run after run. (A pipe
  still being written delivers the same bytes, but when they arrive depends on the host.)
  While nothing is delivered the poll backs off, doubling up to IDLE_POLL_NS, and it returns
  to one character time as soon as a character goes in. The same timer serves `--clock host`.
- End of file (a read of nothing, or EIO from a terminal whose other side closed) is noted in
  `eof`, and polling stops once the bytes read before it are delivered.
- A terminal source is put in raw, non-echoing mode at `start()` (no line editing, no signals
  from the keyboard: Ctrl-C and Ctrl-Z go to the guest; output post-processing kept so the
  guest's "\\n" still starts a new line), and restored by `close()`, at interpreter exit, on
  SIGTERM, SIGHUP and SIGQUIT (before whatever handled the signal before), and when the escape
  is typed. It also works as a context manager.
- On a terminal, Ctrl-A is the escape key, as QEMU's: Ctrl-A x stops the VM (VMStop of kind
  "user-quit", raised from the timer, that is out of the engine's `clock.advance` or
  `clock.skip_to_deadline`, and kept in `escape`); Ctrl-A Ctrl-A sends one Ctrl-A; Ctrl-A b
  sends a break; Ctrl-A h or ? prints the keys on stderr; any other key after Ctrl-A is
  swallowed. A pipe or a file is delivered as it is, escape bytes included.

Not modelled: flow control from the guest (RTS/CTS, XON/XOFF): the receiver's room is the only
pacing. Job control (Ctrl-Z) is not offered, since the keyboard sends no signals in raw mode.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import select
import signal
import sys
import termios
import threading
from collections import deque
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any, BinaryIO, TextIO

from ring1.runtime.cpu.events import VMStop
from ring1.runtime.devices.clock import VirtualClock
from ring1.runtime.devices.serial import Serial16550

ESCAPE_KEY = 0x01  # Ctrl-A
QUIT_KEY = ord("x")
BREAK_KEY = ord("b")
HELP_KEYS = (ord("h"), ord("?"))
IDLE_POLL_NS = 10_000_000  # the longest wait between two polls of an idle source: 10 ms
READ_CHUNK = 4096
RESTORE_ON_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)

HELP_TEXT = "\r\n".join(
    ["", "C-a x    stop the VM", "C-a C-a  send C-a to the guest", "C-a b    send a break", "C-a h    this help", ""]
)

BREAK = -1  # in the queue of what is to be delivered: a break, not a byte

SignalHandler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def raw_mode(attributes: list) -> list:
    """A terminal's attributes made raw as a serial line needs them: 8-bit characters in, no
    echo, no line editing, no input translation, no flow control, no keyboard signals; output
    processing kept (the guest writes "\\n" and the terminal still returns the carriage)."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = attributes
    iflag &= ~(
        termios.IGNBRK
        | termios.BRKINT
        | termios.PARMRK
        | termios.ISTRIP
        | termios.INLCR
        | termios.IGNCR
        | termios.ICRNL
        | termios.IXON
    )
    oflag |= termios.OPOST
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cflag = (cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    cc = list(cc)
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    return [iflag, oflag, cflag, lflag, ispeed, ospeed, cc]


class SerialInput:
    """Bytes from `source` (a file descriptor or a binary file) into `uart`, paced by `clock`.

    `escapes` (default: whether the source is a terminal) turns the Ctrl-A keys on.
    `owns_source` closes the source at `close()`. Help for the escape keys goes to `notices`
    (default stderr)."""

    def __init__(
        self,
        source: int | BinaryIO,
        uart: Serial16550,
        clock: VirtualClock,
        *,
        escapes: bool | None = None,
        owns_source: bool = False,
        notices: TextIO | None = None,
    ) -> None:
        self.source = source
        self.fd = source if isinstance(source, int) else source.fileno()
        self.uart = uart
        self.clock = clock
        self.owns_source = owns_source
        self.notices = notices
        self.is_terminal = _is_terminal(self.fd)
        self.escapes = self.is_terminal if escapes is None else escapes
        self.pending: deque[int] = deque()  # read from the source, not yet delivered (or BREAK)
        self.eof = False
        self.escape: VMStop | None = None
        self.delivered = 0
        self.interval_ns = 0  # the current wait between polls
        self.timer = clock.timer(self._poll, f"{uart.name} input")
        self._after_escape_key = False
        self._saved_attributes: list | None = None
        self._saved_handlers: dict[int, SignalHandler] = {}
        self.started = False
        self.closed = False

    @classmethod
    def open(cls, path: str | None, uart: Serial16550, clock: VirtualClock) -> SerialInput:
        """`--serial-input FILE` (owned, closed at `close()`), or ring1's stdin without one."""
        if path is None:
            return cls(sys.stdin.buffer, uart, clock)
        return cls(open(path, "rb"), uart, clock, owns_source=True)  # closed by close()

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        if self.started or self.closed:
            return
        self.started = True
        if self.is_terminal:
            self._enter_raw_mode()
        self.interval_ns = self.uart.char_time_ns()
        self.timer.arm(self.clock.now() + self.interval_ns)

    def close(self) -> None:
        """Stop polling, give the terminal back its mode, close an owned source. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self.timer.cancel()
        self._restore_terminal()
        if self.owns_source:
            if isinstance(self.source, int):
                os.close(self.source)
            else:
                self.source.close()

    def __enter__(self) -> SerialInput:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ the terminal

    def _enter_raw_mode(self) -> None:
        try:
            saved = termios.tcgetattr(self.fd)
        except termios.error:
            self.is_terminal = False  # isatty said yes but it has no attributes: read it as it is
            return
        self._saved_attributes = saved
        atexit.register(self._restore_terminal)
        if threading.current_thread() is threading.main_thread():
            for signum in RESTORE_ON_SIGNALS:
                self._saved_handlers[signum] = signal.signal(signum, self._restore_on_signal)
        termios.tcsetattr(self.fd, termios.TCSADRAIN, raw_mode(saved))

    def _restore_terminal(self) -> None:
        saved, self._saved_attributes = self._saved_attributes, None
        if saved is None:
            return
        atexit.unregister(self._restore_terminal)
        for signum, handler in self._saved_handlers.items():
            if signal.getsignal(signum) == self._restore_on_signal:
                signal.signal(signum, handler)  # type: ignore[arg-type]
        self._saved_handlers.clear()
        with contextlib.suppress(termios.error, OSError):  # the terminal may be gone already
            termios.tcsetattr(self.fd, termios.TCSADRAIN, saved)

    def _restore_on_signal(self, signum: int, frame: FrameType | None) -> None:
        previous = self._saved_handlers.get(signum, signal.SIG_DFL)
        self._restore_terminal()  # also puts `previous` back in place
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            os.kill(os.getpid(), signum)  # what the signal would have done: now with a sane terminal

    # ------------------------------------------------------------------ delivery

    def _poll(self, deadline: int) -> None:
        if self.closed:
            return
        room = self.uart.rx_room()
        # A file or pipe is read only when its bytes can go somewhere; a terminal always, so the
        # escape is seen even by a guest that never reads its UART.
        if not self.eof and (self.escapes or (room > 0 and not self.pending)):
            self._read_source()
        if self.escape is not None:
            self.close()  # the terminal is itself again before the stop is reported
            raise self.escape
        delivered = False
        if room > 0 and self.pending:
            item = self.pending.popleft()
            if item == BREAK:
                self.uart.receive_break()
            else:
                self.uart.feed(bytes((item,)))
            self.delivered += 1
            delivered = True
        if self.eof and not self.pending:
            return  # nothing more will ever come
        if delivered:
            self.interval_ns = self.uart.char_time_ns()
        else:
            self.interval_ns = min(IDLE_POLL_NS, max(self.interval_ns * 2, self.uart.char_time_ns()))
        self.timer.arm(deadline + self.interval_ns)

    def _read_source(self) -> None:
        try:
            ready, _, _ = select.select([self.fd], [], [], 0)
            if not ready:
                return
            data = os.read(self.fd, READ_CHUNK)
        except OSError as err:
            if err.errno in (errno.EAGAIN, errno.EINTR):
                return
            if err.errno != errno.EIO:  # EIO: a terminal whose other side has gone
                raise
            data = b""
        if not data:
            self.eof = True
            return
        if self.escapes:
            self._queue_with_escapes(data)
        else:
            self.pending.extend(data)

    def _queue_with_escapes(self, data: bytes) -> None:
        for byte in data:
            if not self._after_escape_key:
                if byte == ESCAPE_KEY:
                    self._after_escape_key = True
                else:
                    self.pending.append(byte)
                continue
            self._after_escape_key = False
            if byte == ESCAPE_KEY:
                self.pending.append(ESCAPE_KEY)
            elif byte == QUIT_KEY:
                self.escape = VMStop("user-quit", "the user typed the escape (Ctrl-A x)")
                return  # what follows it is never delivered
            elif byte == BREAK_KEY:
                self.pending.append(BREAK)
            elif byte in HELP_KEYS:
                notices = self.notices if self.notices is not None else sys.stderr
                notices.write(HELP_TEXT)
                notices.flush()


def _is_terminal(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False
