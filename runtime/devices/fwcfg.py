"""QEMU's firmware configuration device (fw_cfg), the x86 I/O interface, as QEMU's
docs/specs/fw_cfg.rst describes it: test suites and firmware written for QEMU find the CPU count
and the RAM size here.

Ports (x86): the selector at 0x510 (16 bits, little-endian) and the data register at 0x511
(8 bits), one region of two ports taken whole (`split=False`): a 16-bit OUT selects an item
(whichever of the two ports it names, as the two overlap), a byte IN at either port reads the
next byte of the selected item, a byte OUT to the data port is ignored (items are read-only
through it since QEMU 2.4), and other widths are not decoded (reads float high). Selecting
sets the data offset to 0; each byte read advances it; past the item's end reads give 0, as
does any key no item has. Bit 14 of a key (the old write channel) does not change what is read;
bit 15 selects the architecture-specific items (0x8000-0xBFFF).

Items: the signature "QEMU" (0x00), the feature bitmap (0x01: bit 0 the traditional interface,
bit 1 DMA when a memory is given), the UUID (0x02, 16 bytes as given), RAM_SIZE (0x03, 64-bit
little-endian), NB_CPUS (0x05) and MAX_CPUS (0x0F) (16-bit little-endian), the file directory
(0x19: a big-endian count, then per file a big-endian size, a big-endian key, two reserved
bytes and a 56-byte NUL-terminated name, sorted by name), and the files `add_file` registers at
keys 0x20 and up, in the order they are added. `set_item` sets any other item (the kernel
command line, the ACPI tables at 0x8000...) for the platform.

DMA (when the platform gives guest memory): the 64-bit big-endian address register at 0x514
(a region of 8 ports taken whole): reads give "QEMU CFG" in address order; a 32-bit write at
0x514 sets the high half, one at 0x518 the low half and starts the transfer of the
FWCfgDmaAccess (control, length, address; big-endian) at that address: select (bit 3, key in
the upper 16 bits), read (bit 1, zeros past the end), skip (bit 2); write (bit 4) is refused
(every item is read-only) with the error bit (bit 0), which is written back in control, else 0.
"""

from __future__ import annotations

import struct
import uuid as uuid_module
from typing import Protocol

FW_CFG_SIGNATURE = 0x00
FW_CFG_ID = 0x01
FW_CFG_UUID = 0x02
FW_CFG_RAM_SIZE = 0x03
FW_CFG_NB_CPUS = 0x05
FW_CFG_MAX_CPUS = 0x0F
FW_CFG_FILE_DIR = 0x19
FW_CFG_FILE_FIRST = 0x20
FW_CFG_WRITE_CHANNEL = 0x4000
FW_CFG_ARCH_LOCAL = 0x8000
FW_CFG_ENTRY_MASK = 0x3FFF
FILE_NAME_SIZE = 56

ID_TRADITIONAL = 0x01
ID_DMA = 0x02
DMA_SIGNATURE = b"QEMU CFG"
DMA_CTL_ERROR, DMA_CTL_READ, DMA_CTL_SKIP, DMA_CTL_SELECT, DMA_CTL_WRITE = 0x01, 0x02, 0x04, 0x08, 0x10
DMA_ACCESS = struct.Struct(">IIQ")  # FWCfgDmaAccess: control, length, address

SELECTOR_PORT, DATA_PORT = 0x510, 0x511
DMA_PORT = 0x514


class GuestMemory(Protocol):
    """What DMA needs of guest physical memory (runtime/cpu/memory.py PhysicalMemory)."""

    def read(self, pa: int, n: int) -> bytes: ...

    def write(self, pa: int, data: bytes) -> None: ...


class FirmwareConfig:
    """fw_cfg's selector and data ports; map at 0x510, 2 ports, `split=False`. With `memory`,
    also `dma_port` at 0x514, 8 ports, `split=False`."""

    def __init__(
        self,
        *,
        ram_size: int,
        cpus: int = 1,
        max_cpus: int | None = None,
        uuid: bytes | uuid_module.UUID = bytes(16),
        memory: GuestMemory | None = None,
    ) -> None:
        self.memory = memory
        self._items: dict[int, bytes] = {}
        self._files: dict[str, int] = {}  # name -> key
        self._selected: int | None = None  # the key, without the write-channel bit
        self._offset = 0
        uuid_bytes = uuid.bytes if isinstance(uuid, uuid_module.UUID) else bytes(uuid)
        if len(uuid_bytes) != 16:
            raise ValueError("the fw_cfg UUID is 16 bytes")
        self.set_item(FW_CFG_SIGNATURE, b"QEMU")
        self.set_item(FW_CFG_ID, struct.pack("<I", ID_TRADITIONAL | (ID_DMA if memory is not None else 0)))
        self.set_item(FW_CFG_UUID, uuid_bytes)
        self.set_item(FW_CFG_RAM_SIZE, struct.pack("<Q", ram_size))
        self.set_item(FW_CFG_NB_CPUS, struct.pack("<H", cpus))
        self.set_item(FW_CFG_MAX_CPUS, struct.pack("<H", max_cpus if max_cpus is not None else cpus))
        self._update_directory()
        self.dma_port = FirmwareConfigDma(self) if memory is not None else None

    # ------------------------------------------------------------------ the platform's side

    def set_item(self, key: int, data: bytes) -> None:
        """Set (or replace) the item at `key` (0-0x3FFF generic, 0x8000-0xBFFF x86-specific)."""
        if key & ~(FW_CFG_ENTRY_MASK | FW_CFG_ARCH_LOCAL):
            raise ValueError(f"fw_cfg key {key:#x} is out of range")
        self._items[key] = bytes(data)

    def add_file(self, name: str, data: bytes) -> int:
        """Register a file item and list it in the directory; returns its key."""
        encoded = name.encode("ascii")
        if not encoded or len(encoded) >= FILE_NAME_SIZE or b"\0" in encoded:
            raise ValueError(f"fw_cfg file name {name!r}: 1 to {FILE_NAME_SIZE - 1} ASCII characters")
        if name in self._files:
            raise ValueError(f"fw_cfg file {name!r} is already registered")
        key = FW_CFG_FILE_FIRST + len(self._files)
        if key > FW_CFG_ENTRY_MASK:
            raise ValueError("the fw_cfg file directory is full")
        self._files[name] = key
        self.set_item(key, data)
        self._update_directory()
        return key

    def item(self, key: int) -> bytes | None:
        return self._items.get(key & ~FW_CFG_WRITE_CHANNEL)

    def _update_directory(self) -> None:
        entries = [struct.pack(">I", len(self._files))]
        for name in sorted(self._files):
            key = self._files[name]
            entries.append(struct.pack(">IHH56s", len(self._items[key]), key, 0, name.encode("ascii")))
        self._items[FW_CFG_FILE_DIR] = b"".join(entries)

    # ------------------------------------------------------------------ the bus (0x510-0x511)

    def read(self, offset: int, size: int) -> int:
        if size != 1:
            return (1 << (8 * size)) - 1  # the data register is 8 bits wide
        return self._next_byte()

    def write(self, offset: int, size: int, value: int) -> None:
        if size == 2:
            self.select(value)
        # A byte to the data register: ignored (read-only items); other widths: not decoded.

    def select(self, key: int) -> None:
        self._selected = key & 0xFFFF & ~FW_CFG_WRITE_CHANNEL
        self._offset = 0

    def _next_byte(self) -> int:
        data = self._items.get(self._selected) if self._selected is not None else None
        if data is None or self._offset >= len(data):
            return 0
        self._offset += 1
        return data[self._offset - 1]

    # ------------------------------------------------------------------ DMA

    def dma_transfer(self, address: int) -> None:
        """Run the FWCfgDmaAccess at guest physical `address` and write its control word back."""
        assert self.memory is not None
        control, length, target = DMA_ACCESS.unpack(self.memory.read(address, DMA_ACCESS.size))
        if control & DMA_CTL_SELECT:
            self.select(control >> 16)
        error = False
        if control & DMA_CTL_READ:
            data = self._items.get(self._selected, b"") if self._selected is not None else b""
            chunk = data[self._offset : self._offset + length]
            zeros = length - len(chunk)  # past the item's end the transfer reads zeros
            size = getattr(self.memory, "size", None)
            if size is not None:  # bytes beyond guest RAM go nowhere: do not build them
                zeros = max(0, min(zeros, size - target - len(chunk)))
            self.memory.write(target, chunk + bytes(zeros))
            self._offset += length
        elif control & DMA_CTL_WRITE:
            error = True  # every item is read-only
        elif control & DMA_CTL_SKIP:
            self._offset += length
        self.memory.write(address, struct.pack(">I", DMA_CTL_ERROR if error else 0))


class FirmwareConfigDma:
    """fw_cfg's DMA address register (0x514-0x51B), big-endian."""

    def __init__(self, device: FirmwareConfig) -> None:
        self.device = device
        self.address = 0

    def read(self, offset: int, size: int) -> int:
        window = DMA_SIGNATURE[offset : offset + size].ljust(size, b"\xff")
        return int.from_bytes(window, "little")  # the bytes in address order

    def write(self, offset: int, size: int, value: int) -> None:
        if size != 4 or offset not in (0, 4):
            return  # only the two 32-bit halves are decoded
        half = int.from_bytes(value.to_bytes(4, "little"), "big")  # a big-endian register
        if offset == 0:
            self.address = half << 32 | self.address & 0xFFFFFFFF
            return
        self.address = self.address & ~0xFFFFFFFF | half
        address, self.address = self.address, 0  # the register reads 0 after an operation
        self.device.dma_transfer(address)
