"""A system ROM on the bus: its copy at the top of the 4 GB physical space (boot/bios.py
loads the image; the platform maps this region, `GuestPlatform.map_rom`)."""

from __future__ import annotations


class Rom:
    """The ROM's top-of-4 GB copy on the bus: reads as the image, writes go nowhere."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.data[offset : offset + size].ljust(size, b"\xff"), "little")

    def write(self, offset: int, size: int, value: int) -> None:
        return None  # a ROM: the write goes nowhere
