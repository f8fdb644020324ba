"""Guest physical memory: one page-aligned host buffer.

The buffer is a ctypes array so that the VMM can hand the same bytes to unicorn with
`mem_map_ptr`: the interpreter (callouts) and the physical CPU then share guest memory
without copying. Physical addresses past the end read as all-ones and ignore writes,
as an unpopulated bus does.
"""

from __future__ import annotations

import ctypes
import mmap
import struct

PAGE = 0x1000
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")


class PhysicalMemory:
    def __init__(self, size: int, share: PhysicalMemory | None = None) -> None:
        """A new zeroed buffer, or (with `share`) the first `size` bytes of another one."""
        if size <= 0 or size % PAGE:
            raise ValueError("guest memory size must be a positive multiple of 4 KB")
        self.size = size
        if share is not None:
            if size > share.size:
                raise ValueError("a shared window cannot be larger than the memory it shares")
            self.buffer = share.buffer
            self.view = share.view[:size]
        else:
            # Anonymous mapped memory: zero pages the host allocates when first touched, so a
            # 1 GB guest that uses 10 MB costs about 10 MB.
            self._mapping = mmap.mmap(-1, size)
            self.buffer = (ctypes.c_ubyte * size).from_buffer(self._mapping)
            self.view = memoryview(self.buffer).cast("B")

    @property
    def address(self) -> int:
        """Host address of the buffer (for unicorn's mem_map_ptr)."""
        return ctypes.addressof(self.buffer)

    def read(self, pa: int, n: int) -> bytes:
        if pa >= 0 and pa + n <= self.size:
            return bytes(self.view[pa : pa + n])
        return bytes(self.view[pa + i] if 0 <= pa + i < self.size else 0xFF for i in range(n))

    def write(self, pa: int, data: bytes) -> None:
        if pa >= 0 and pa + len(data) <= self.size:
            self.view[pa : pa + len(data)] = data
            return
        for i, b in enumerate(data):
            if 0 <= pa + i < self.size:
                self.view[pa + i] = b

    def read32(self, pa: int) -> int:
        if 0 <= pa <= self.size - 4:
            return _U32.unpack_from(self.view, pa)[0]
        return int.from_bytes(self.read(pa, 4), "little")

    def write32(self, pa: int, value: int) -> None:
        if 0 <= pa <= self.size - 4:
            _U32.pack_into(self.view, pa, value & 0xFFFFFFFF)
        else:
            self.write(pa, (value & 0xFFFFFFFF).to_bytes(4, "little"))

    def write16(self, pa: int, value: int) -> None:
        self.write(pa, (value & 0xFFFF).to_bytes(2, "little"))

    def clear(self) -> None:
        ctypes.memset(self.buffer, 0, self.size)
