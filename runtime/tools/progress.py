"""A progress line for long runs (`ring1 bench`): "nano: syscall bt 3/28" on stderr, rewritten
in place with a carriage return, and erased at the end.

Only when stderr is a terminal: in a pipe, a log or a test the line would be noise between
the results, so the run is silent there.
"""

from __future__ import annotations

import sys
from typing import TextIO


class Progress:
    """Counts the steps of a run of `total` and shows the current one; a context manager that
    erases its line on the way out."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.stream = sys.stderr if stream is None else stream
        isatty = getattr(self.stream, "isatty", None)
        self.live = bool(isatty and isatty())
        self._shown = 0  # the length of the line on the terminal now

    def step(self, what: str) -> None:
        """The next step starts: show it as "label: what done/total"."""
        self.done += 1
        if not self.live:
            return
        text = f"{self.label}: {what} {self.done}/{self.total}"
        # Pad over the previous line's tail: \r moves back without erasing.
        self.stream.write("\r" + text.ljust(self._shown))
        self.stream.flush()
        self._shown = len(text)

    def close(self) -> None:
        if self.live and self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self.stream.flush()
            self._shown = 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
