"""Page traces: who must hear about a write to a guest-physical page.

Several components cache something derived from guest memory and must drop it when the guest
writes the bytes it came from: the interpreter's block cache (compiled Python blocks), the
VMM's translation cache (CCFs) and its shadow page tables (hardware PTEs built from the
guest's). Each subscribes to the pages it depends on, under a reason (`why`); one page may
have many subscribers, and each is told about every emulated write to the page, with the
byte range written, so that it can keep what the write did not touch.

The registry does not decide how writes are caught. The interpreter keeps watched pages out
of its write TLB (the slow path calls `notify`); the VMM maps the pages it needs to hear about
read-only in the hardware, so that a store traps and is emulated by the interpreter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

PAGE_SIZE = 0x1000

# callback(page, first byte offset written, offset one past the last byte written)
WriteCallback = Callable[[int, int, int], None]


@dataclass(frozen=True)
class Watch:
    """One subscriber of one page."""

    page: int
    why: str
    callback: WriteCallback


class PageTraces:
    """guest-physical page -> its subscribers, one per reason."""

    def __init__(self) -> None:
        # page -> why -> watch. Public for hot paths: `page in traces.watched` is the test that
        # a write must be told (the same as `page in traces`, without a method call).
        self.watched: dict[int, dict[str, Watch]] = {}
        # Called with the page when it gets its first subscriber (to stop fast writes to it).
        self.on_first_watch: list[Callable[[int], None]] = []
        self.told = 0  # writes told to subscribers so far (a caller compares before and after)

    def watch(self, page: int, why: str, callback: WriteCallback) -> Watch:
        """Subscribe `callback` to writes to `page`. Watching again for the same reason with the
        same callback is a no-op; with another callback it is a programming error (two
        components must not share a reason, or one would silence the other)."""
        subs = self.watched.get(page)
        if subs is None:
            subs = self.watched[page] = {}
        old = subs.get(why)
        if old is not None:
            if old.callback != callback:
                raise ValueError(f"page {page:#x} is already watched for {why!r} by another callback")
            return old
        w = subs[why] = Watch(page, why, callback)
        if len(subs) == 1:
            for listener in self.on_first_watch:
                listener(page)
        return w

    def unwatch(self, page: int, why: str) -> None:
        """Drop the subscriber of `page` for `why` (nothing if there is none)."""
        subs = self.watched.get(page)
        if subs is None:
            return
        subs.pop(why, None)
        if not subs:
            del self.watched[page]

    def unwatch_all(self, why: str) -> None:
        """Drop every subscription made for `why`."""
        for page in [p for p, subs in self.watched.items() if why in subs]:
            self.unwatch(page, why)

    def __contains__(self, page: object) -> bool:
        return page in self.watched

    def whys(self, page: int) -> tuple[str, ...]:
        return tuple(self.watched.get(page, {}))

    def pages(self, why: str) -> list[int]:
        return [p for p, subs in self.watched.items() if why in subs]

    def notify(self, page: int, start: int, end: int) -> None:
        """Tell every subscriber of `page` that bytes [start, end) of it were written. A
        subscriber that an earlier one removed in the meantime is not called."""
        subs = self.watched.get(page)
        if not subs:
            return
        self.told += 1
        if len(subs) == 1:  # the common case, without the copy
            next(iter(subs.values())).callback(page, start, end)
            return
        for why, w in list(subs.items()):
            current = self.watched.get(page)
            if current is not None and current.get(why) is w:
                w.callback(page, start, end)


# ---------------------------------------------------------------- the code a cached thing came from


def instruction_ranges(linear: int, length: int, pages: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """The bytes one instruction came from, as (physical page, start, end) within each page:
    `linear` is its linear address and `pages` the physical pages its fetch touched, in order."""
    offset = linear & (PAGE_SIZE - 1)
    first = min(length, PAGE_SIZE - offset)
    out = [(pages[0], offset, offset + first)]
    if first < length and len(pages) > 1:
        out.append((pages[1], 0, length - first))
    return out


class CodeRanges:
    """The bytes, per physical page, that one cached translation was made from."""

    __slots__ = ("spans",)

    def __init__(self) -> None:
        self.spans: dict[int, list[tuple[int, int]]] = {}

    def add(self, ranges: Iterable[tuple[int, int, int]]) -> None:
        for page, start, end in ranges:
            spans = self.spans.setdefault(page, [])
            if spans and spans[-1][1] == start:
                spans[-1] = (spans[-1][0], end)  # the next instruction: one span
            else:
                spans.append((start, end))

    @property
    def pages(self) -> set[int]:
        return set(self.spans)

    def read(self, mem: memoryview) -> tuple[tuple[int, bytes], ...]:
        """(physical address, bytes) of every span, as `mem` holds them now."""
        return tuple(
            (page * PAGE_SIZE + s, bytes(mem[page * PAGE_SIZE + s : page * PAGE_SIZE + e]))
            for page, spans in self.spans.items()
            for s, e in spans
        )

    def overlaps(self, page: int, start: int, end: int) -> bool:
        return any(s < end and start < e for s, e in self.spans.get(page, ()))
