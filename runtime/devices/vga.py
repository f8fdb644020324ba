"""The VGA in colour text mode (BIOS mode 3, 80x25): its text memory, its registers, the screen.

Modelled:
- the text memory, 32 KB at 0xB8000: 16 K cells of (CP437 character, attribute). Two ways to
  give it to the VGA: `VgaText(clock, memory=guest_ram)` reads the cells from guest RAM (the
  platform leaves 0xB8000-0xBFFFF as ordinary RAM: guest stores cost nothing, the screen is
  read only when rendered), or `VgaText(clock)` keeps its own buffer, `vga.text_memory`, an
  MMIO device for `bus.map_mmio("VGA text", TEXT_BASE, TEXT_SIZE, vga.text_memory)` (every
  guest store is then an MMIO exit). The first is the recommended one: a kernel's console
  writes every character there, and nothing in the VGA reacts to a store.
- the registers, one bus device for ports 0x3B0-0x3DF (`PORT_BASE`, `PORT_COUNT`, 8-bit,
  `split=True`): CRTC index/data at 0x3D4/0x3D5 (or 0x3B4/0x3B5 when the misc output
  register's I/O address select bit is clear, as on a monochrome board) with its 25
  registers (the write protection of 0-7 by bit 7 of register 0x11 included); the misc output
  register (written at 0x3C2, read at 0x3CC); input status 0 (0x3C2) and 1 (0x3DA / 0x3BA):
  vertical retrace and display-disabled bits from the CRTC's timing on the virtual clock,
  and a read of status 1 resets the attribute controller's index/data flip-flop; the
  attribute controller (0x3C0/0x3C1), sequencer (0x3C4/0x3C5), graphics controller
  (0x3CE/0x3CF), the DAC (0x3C6-0x3C9, 256 colours of 6-bit RGB) and the feature control and
  VGA enable registers as read-back register files. Reset state: what the BIOS leaves after
  setting mode 3 (80x25, 9x16 cells, 720x400 at 70 Hz, the cursor on scan lines 13-14).
- the screen, as the CRTC scans it: start address, columns (register 0x01), rows (vertical
  display end over the character height), row pitch (offset register), cursor location and
  shape; colours through the attribute palette and the DAC.

Rendering, for `--screenshot` and `--display text`: `render_text()` (the characters as Unicode
lines, CP437 decoded), `render_ansi()` (a terminal redraw with SGR colours and the cursor),
`render_png()` (the screen as the monitor shows it: 9x16 cells, the ninth column repeated for
the line-drawing characters 0xC0-0xDF as the attribute controller does, the cursor drawn, the
DAC's colours; glyphs from vga_font.py, the public-domain X11 misc-fixed 8x13 font placed
in 8x16 cells, since the VGA's own ROM font is IBM's). The PNG encoder is zlib and struct.

Not modelled: graphics modes and the planar memory behind them (the A0000-B7FFF window, the
write modes, latches, plane masks: a guest that switches to graphics sees its registers
kept but nothing drawn), fonts loaded by the guest into plane 2 (the PNG always uses the
built-in 16-row font, only its top rows when the character height is smaller), blinking
(blinking characters are drawn in their visible phase), the screen blanking of attribute
bit 5 (PAS) and sequencer "screen off" (a screenshot shows the text anyway: it is for
reading what the guest printed), split screen, smooth scrolling, the light pen, vertical
retrace interrupts (IRQ 2 on EGA, absent on most VGAs).
"""

from __future__ import annotations

import struct
import zlib
from typing import Protocol

from ring1.runtime.devices.clock import VirtualClock
from ring1.runtime.devices.cp437 import CP437
from ring1.runtime.devices.vga_font import GLYPHS

TEXT_BASE = 0xB8000
TEXT_SIZE = 0x8000  # 32 KB: 16 K cells
TEXT_CELLS = TEXT_SIZE // 2
PORT_BASE = 0x3B0
PORT_COUNT = 0x30  # 0x3B0-0x3DF

# Port offsets from PORT_BASE.
MONO_CRTC_INDEX, MONO_CRTC_DATA, MONO_STATUS1 = 0x04, 0x05, 0x0A
ATTR_INDEX, ATTR_DATA_READ = 0x10, 0x11
MISC_WRITE_STATUS0, VGA_ENABLE = 0x12, 0x13
SEQ_INDEX, SEQ_DATA = 0x14, 0x15
DAC_MASK, DAC_READ_INDEX, DAC_WRITE_INDEX, DAC_DATA = 0x16, 0x17, 0x18, 0x19
FEATURE_READ, MISC_READ = 0x1A, 0x1C
GC_INDEX, GC_DATA = 0x1E, 0x1F
COLOR_CRTC_INDEX, COLOR_CRTC_DATA, COLOR_STATUS1 = 0x24, 0x25, 0x2A

# CRTC registers.
CRTC_H_TOTAL, CRTC_H_DISPLAY_END = 0x00, 0x01
CRTC_V_TOTAL, CRTC_OVERFLOW, CRTC_MAX_SCAN_LINE = 0x06, 0x07, 0x09
CRTC_CURSOR_START, CRTC_CURSOR_END = 0x0A, 0x0B
CRTC_START_HIGH, CRTC_START_LOW = 0x0C, 0x0D
CRTC_CURSOR_HIGH, CRTC_CURSOR_LOW = 0x0E, 0x0F
CRTC_V_RETRACE_START, CRTC_V_RETRACE_END, CRTC_V_DISPLAY_END, CRTC_OFFSET = 0x10, 0x11, 0x12, 0x13
CURSOR_DISABLE = 0x20  # cursor start register bit 5
CRTC_PROTECT = 0x80  # vertical retrace end bit 7: registers 0-7 are read-only

MISC_IO_COLOR = 0x01  # misc output bit 0: CRTC at 0x3D4, status 1 at 0x3DA
STATUS1_DISPLAY_DISABLED, STATUS1_VRETRACE = 0x01, 0x08
ATTR_PAS = 0x20  # attribute index bit 5: the palette is in use by the display
ATTR_MODE, ATTR_COLOR_PLANE_ENABLE, ATTR_COLOR_SELECT = 0x10, 0x12, 0x14
ATTR_MODE_LGE, ATTR_MODE_BLINK, ATTR_MODE_P54S = 0x04, 0x08, 0x80

# Mode 3 as the BIOS sets it (IBM VGA technical reference, the mode 3 register tables).
_CRTC_MODE3 = bytes.fromhex("5f4f50825581bf1f004f0d0e000000009c8e8f281f96b9a3ff")
_SEQ_MODE3 = bytes.fromhex("0300030002")
_GC_MODE3 = bytes.fromhex("0000000000100e00ff")  # GR06 0x0E: text, odd/even, memory at B8000
_ATTR_MODE3 = bytes.fromhex("000102030405140738393a3b3c3d3e3f") + bytes([0x0C, 0x00, 0x0F, 0x08, 0x00])
_MISC_MODE3 = 0x67  # colour I/O, RAM enabled, 28.322 MHz dot clock, negative h/v sync (400 lines)
DOT_CLOCKS_HZ = (25_175_000, 28_322_000)

# The 16 attribute colours in ANSI SGR order (VGA: blue is bit 0, red bit 2; ANSI the other way).
_ANSI_OF_VGA = (0, 4, 2, 6, 1, 5, 3, 7)


def _ega_dac_entry(index: int) -> tuple[int, int, int]:
    """The DAC's first 64 entries after a mode set: the EGA's colours, where bits 2/1/0 are
    red/green/blue at 2/3 intensity and bits 5/4/3 add 1/3."""
    def level(high_bit: int, low_bit: int) -> int:
        return 42 * (index >> high_bit & 1) + 21 * (index >> low_bit & 1)

    return level(2, 5), level(1, 4), level(0, 3)


class TextMemoryReader(Protocol):
    def read(self, pa: int, n: int) -> bytes: ...


class TextMemory:
    """The VGA's own 32 KB of text memory, as an MMIO device (offsets from 0xB8000)."""

    def __init__(self) -> None:
        self.data = bytearray(TEXT_SIZE)

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.data[offset : offset + size].ljust(size, b"\xff"), "little")

    def write(self, offset: int, size: int, value: int) -> None:
        chunk = value.to_bytes(size, "little")[: max(0, TEXT_SIZE - offset)]
        self.data[offset : offset + len(chunk)] = chunk

    def cells_bytes(self) -> bytes:
        return bytes(self.data)


class _GuestRamText:
    """The text memory as guest RAM at 0xB8000, read when the screen is rendered."""

    def __init__(self, memory: TextMemoryReader, base: int) -> None:
        self.memory, self.base = memory, base

    def cells_bytes(self) -> bytes:
        return self.memory.read(self.base, TEXT_SIZE)


class VgaText:
    """The VGA's registers (a bus device on PORT_BASE..PORT_BASE+PORT_COUNT) and its screen.

    `clock` times the status register's retrace bits; `memory`, when given, is guest RAM
    holding the text at `text_base` (see the module's notes); otherwise `text_memory` is the
    MMIO device to map there."""

    def __init__(self, clock: VirtualClock, memory: TextMemoryReader | None = None, text_base: int = TEXT_BASE) -> None:
        self.clock = clock
        self.text_memory: TextMemory | None = None
        if memory is None:
            self.text_memory = TextMemory()
            self._text: TextMemory | _GuestRamText = self.text_memory
        else:
            self._text = _GuestRamText(memory, text_base)
        self.reset()

    def reset(self) -> None:
        self.crtc = bytearray(_CRTC_MODE3)
        self.crtc_index = 0
        self.seq = bytearray(_SEQ_MODE3)
        self.seq_index = 0
        self.gc = bytearray(_GC_MODE3)
        self.gc_index = 0
        self.attr = bytearray(_ATTR_MODE3)
        self.attr_index = ATTR_PAS
        self.attr_flip_flop_data = False  # False: the next write to 0x3C0 is an index
        self.misc = _MISC_MODE3
        self.feature = 0
        self.vga_enable = 1
        self.dac = [_ega_dac_entry(i) if i < 64 else (0, 0, 0) for i in range(256)]
        self.dac_mask = 0xFF
        self.dac_read_index = self.dac_write_index = 0
        self.dac_component = 0  # which of R, G, B the next data access is
        self.dac_state_read = False  # the last index written was the read index (DAC state 3)
        self._dac_pending: list[int] = []

    # ------------------------------------------------------------------ ports

    def _crtc_ports(self) -> tuple[int, int, int]:
        if self.misc & MISC_IO_COLOR:
            return COLOR_CRTC_INDEX, COLOR_CRTC_DATA, COLOR_STATUS1
        return MONO_CRTC_INDEX, MONO_CRTC_DATA, MONO_STATUS1

    def read(self, offset: int, size: int) -> int:
        index_port, data_port, status1_port = self._crtc_ports()
        if offset == index_port:
            return self.crtc_index
        if offset == data_port:
            return self.crtc[self.crtc_index] if self.crtc_index < len(self.crtc) else 0xFF
        if offset == status1_port:
            self.attr_flip_flop_data = False
            return self.input_status_1()
        if offset == ATTR_INDEX:
            return self.attr_index
        if offset == ATTR_DATA_READ:
            i = self.attr_index & 0x1F
            return self.attr[i] if i < len(self.attr) else 0xFF
        if offset == MISC_WRITE_STATUS0:
            return 0x00  # input status 0: no retrace interrupt pending, no sense line
        if offset == VGA_ENABLE:
            return self.vga_enable
        if offset == SEQ_INDEX:
            return self.seq_index
        if offset == SEQ_DATA:
            return self.seq[self.seq_index] if self.seq_index < len(self.seq) else 0xFF
        if offset == DAC_MASK:
            return self.dac_mask
        if offset == DAC_READ_INDEX:
            return 0x03 if self.dac_state_read else 0x00  # DAC state: in a read or a write sequence
        if offset == DAC_WRITE_INDEX:
            return self.dac_write_index
        if offset == DAC_DATA:
            return self._dac_read()
        if offset == FEATURE_READ:
            return self.feature
        if offset == MISC_READ:
            return self.misc
        if offset == GC_INDEX:
            return self.gc_index
        if offset == GC_DATA:
            return self.gc[self.gc_index] if self.gc_index < len(self.gc) else 0xFF
        return 0xFF  # the mono ports in colour mode and the other way round, unused ports

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        index_port, data_port, status1_port = self._crtc_ports()
        if offset == index_port:
            self.crtc_index = value
        elif offset == data_port:
            self._crtc_write(self.crtc_index, value)
        elif offset == status1_port:
            self.feature = value  # feature control is written at the status 1 address
        elif offset == ATTR_INDEX:
            self._attr_write(value)
        elif offset == MISC_WRITE_STATUS0:
            self.misc = value
        elif offset == VGA_ENABLE:
            self.vga_enable = value & 1
        elif offset == SEQ_INDEX:
            self.seq_index = value
        elif offset == SEQ_DATA and self.seq_index < len(self.seq):
            self.seq[self.seq_index] = value
        elif offset == DAC_MASK:
            self.dac_mask = value
        elif offset == DAC_READ_INDEX:
            self.dac_read_index, self.dac_component, self.dac_state_read = value, 0, True
        elif offset == DAC_WRITE_INDEX:
            self.dac_write_index, self.dac_component, self.dac_state_read = value, 0, False
            self._dac_pending = []
        elif offset == DAC_DATA:
            self._dac_write(value)
        elif offset == GC_INDEX:
            self.gc_index = value
        elif offset == GC_DATA and self.gc_index < len(self.gc):
            self.gc[self.gc_index] = value

    def _crtc_write(self, index: int, value: int) -> None:
        if index >= len(self.crtc):
            return
        if index <= CRTC_OVERFLOW and self.crtc[CRTC_V_RETRACE_END] & CRTC_PROTECT:
            if index == CRTC_OVERFLOW:  # its line compare bit 8 (bit 4) stays writable
                self.crtc[index] = self.crtc[index] & ~0x10 | value & 0x10
            return
        self.crtc[index] = value

    def _attr_write(self, value: int) -> None:
        if not self.attr_flip_flop_data:
            self.attr_index = value & 0x3F
        else:
            i = self.attr_index & 0x1F
            # The palette registers (0-15) take writes only while the CPU owns them (PAS clear).
            if i < len(self.attr) and (i >= 16 or not self.attr_index & ATTR_PAS):
                self.attr[i] = value
        self.attr_flip_flop_data = not self.attr_flip_flop_data

    def _dac_write(self, value: int) -> None:
        self._dac_pending.append(value & 0x3F)
        if len(self._dac_pending) == 3:
            self.dac[self.dac_write_index] = (self._dac_pending[0], self._dac_pending[1], self._dac_pending[2])
            self.dac_write_index = (self.dac_write_index + 1) & 0xFF
            self._dac_pending = []

    def _dac_read(self) -> int:
        value = self.dac[self.dac_read_index][self.dac_component]
        self.dac_component += 1
        if self.dac_component == 3:
            self.dac_component = 0
            self.dac_read_index = (self.dac_read_index + 1) & 0xFF
        return value

    # ------------------------------------------------------------------ timing

    def _vertical(self, low: int, bit8: int, bit9: int) -> int:
        overflow = self.crtc[CRTC_OVERFLOW]
        return self.crtc[low] | (overflow >> bit8 & 1) << 8 | (overflow >> bit9 & 1) << 9

    def input_status_1(self) -> int:
        """Display-disabled (blanking) and vertical-retrace bits, where the beam is now on the
        virtual clock: the frame timing follows the CRTC registers and the dot clock."""
        dot_hz = DOT_CLOCKS_HZ[self.misc >> 2 & 1]
        char_width = 8 if self.seq[1] & 1 else 9
        dots_per_line = (self.crtc[CRTC_H_TOTAL] + 5) * char_width
        lines = self._vertical(CRTC_V_TOTAL, 0, 5) + 2
        active_lines = self._vertical(CRTC_V_DISPLAY_END, 1, 6) + 1
        retrace_start = self._vertical(CRTC_V_RETRACE_START, 2, 7)
        # The retrace ends at the first line whose low 4 bits match register 0x11's.
        retrace_lines = (self.crtc[CRTC_V_RETRACE_END] - retrace_start) & 0x0F or 16
        dots = self.clock.now() * dot_hz // 1_000_000_000
        line, x = divmod(dots % (dots_per_line * lines), dots_per_line)
        status = 0
        if line >= active_lines or x >= (self.crtc[CRTC_H_DISPLAY_END] + 1) * char_width:
            status |= STATUS1_DISPLAY_DISABLED
        if 0 <= line - retrace_start < retrace_lines:
            status |= STATUS1_VRETRACE
        return status

    # ------------------------------------------------------------------ the screen

    @property
    def columns(self) -> int:
        return self.crtc[CRTC_H_DISPLAY_END] + 1

    @property
    def char_height(self) -> int:
        return (self.crtc[CRTC_MAX_SCAN_LINE] & 0x1F) + 1

    @property
    def rows(self) -> int:
        return max(1, (self._vertical(CRTC_V_DISPLAY_END, 1, 6) + 1) // self.char_height)

    @property
    def start_address(self) -> int:
        return self.crtc[CRTC_START_HIGH] << 8 | self.crtc[CRTC_START_LOW]

    @property
    def cursor_address(self) -> int:
        return self.crtc[CRTC_CURSOR_HIGH] << 8 | self.crtc[CRTC_CURSOR_LOW]

    @property
    def cursor_enabled(self) -> bool:
        return not self.crtc[CRTC_CURSOR_START] & CURSOR_DISABLE

    def cursor_position(self) -> tuple[int, int] | None:
        """(row, column) of the cursor on the screen, or None when it is off or off-screen."""
        if not self.cursor_enabled:
            return None
        cell = (self.cursor_address - self.start_address) % TEXT_CELLS
        row, column = divmod(cell, self._pitch())
        if row < self.rows and column < self.columns:
            return row, column
        return None

    def _pitch(self) -> int:
        return max(1, 2 * self.crtc[CRTC_OFFSET])  # cells per row: the offset register counts pairs of cells

    def cells(self) -> list[list[tuple[int, int]]]:
        """The screen's (character, attribute) cells, row by row, as the CRTC scans them."""
        data = self._text.cells_bytes()
        start, pitch, columns = self.start_address, self._pitch(), self.columns
        out = []
        for row in range(self.rows):
            line = []
            for column in range(columns):
                at = (start + row * pitch + column) % TEXT_CELLS * 2
                line.append((data[at], data[at + 1]))
            out.append(line)
        return out

    def text_lines(self) -> list[str]:
        return ["".join(CP437[ch] for ch, _ in row).rstrip() for row in self.cells()]

    def render_text(self) -> str:
        """The screen's characters as Unicode text, one line per row, trailing blanks dropped."""
        return "\n".join(self.text_lines()) + "\n"

    def _blink_enabled(self) -> bool:
        return bool(self.attr[ATTR_MODE] & ATTR_MODE_BLINK)

    def render_ansi(self) -> str:
        """A full redraw for a terminal: home, each row with SGR colours (the terminal's own 16
        colours for the attribute's nibbles), then the cursor placed and shown or hidden."""
        blink = self._blink_enabled()
        parts = ["\x1b[H"]
        for r, row in enumerate(self.cells()):
            parts.append(f"\x1b[{r + 1};1H")
            current = None
            for ch, attribute in row:
                if attribute != current:
                    current = attribute
                    fg, bg = attribute & 0x0F, attribute >> 4
                    sgr = ["0", str((90 if fg & 8 else 30) + _ANSI_OF_VGA[fg & 7])]
                    if blink:
                        sgr.append(str(40 + _ANSI_OF_VGA[bg & 7]))
                        if bg & 8:
                            sgr.append("5")
                    else:
                        sgr.append(str((100 if bg & 8 else 40) + _ANSI_OF_VGA[bg & 7]))
                    parts.append(f"\x1b[{';'.join(sgr)}m")
                parts.append(CP437[ch])
            parts.append("\x1b[0m")
        cursor = self.cursor_position()
        if cursor is None:
            parts.append("\x1b[?25l")
        else:
            parts.append(f"\x1b[{cursor[0] + 1};{cursor[1] + 1}H\x1b[?25h")
        return "".join(parts)

    def _dac_index(self, colour: int) -> int:
        """An attribute's 4-bit colour through the attribute controller to a DAC entry."""
        colour &= self.attr[ATTR_COLOR_PLANE_ENABLE] & 0x0F
        palette = self.attr[colour]
        select = self.attr[ATTR_COLOR_SELECT]
        if self.attr[ATTR_MODE] & ATTR_MODE_P54S:
            index = (select & 0x0F) << 4 | palette & 0x0F
        else:
            index = (select & 0x0C) << 4 | palette & 0x3F
        return index & self.dac_mask

    def render_png(self) -> bytes:
        """The screen as the monitor shows it, as a PNG (8-bit indexed: the DAC is its palette)."""
        cell_width = 8 if self.seq[1] & 1 else 9
        height = self.char_height
        line_graphics_ninth = bool(self.attr[ATTR_MODE] & ATTR_MODE_LGE)
        blink = self._blink_enabled()
        cursor = self.cursor_position()
        cursor_start = self.crtc[CRTC_CURSOR_START] & 0x1F
        cursor_end = self.crtc[CRTC_CURSOR_END] & 0x1F
        scanlines: list[bytes] = []
        spans: dict[tuple[int, int, int, bool], bytes] = {}  # (glyph row, fg, bg, ninth) -> pixels

        def span(bits: int, fg: int, bg: int, ninth: bool) -> bytes:
            key = (bits, fg, bg, ninth)
            pixels = spans.get(key)
            if pixels is None:
                pixels = bytes(fg if bits >> (7 - i) & 1 else bg for i in range(8))
                if cell_width == 9:
                    pixels += bytes([fg if ninth and bits & 1 else bg])
                spans[key] = pixels
            return pixels

        for r, row in enumerate(self.cells()):
            colours = []
            for _, attribute in row:
                bg_nibble = attribute >> 4 & (0x07 if blink else 0x0F)
                colours.append((self._dac_index(attribute & 0x0F), self._dac_index(bg_nibble)))
            for y in range(height):
                line = bytearray()
                for c, (ch, _) in enumerate(row):
                    fg, bg = colours[c]
                    bits = GLYPHS[ch * 16 + y] if y < 16 else 0
                    ninth = line_graphics_ninth and 0xC0 <= ch <= 0xDF
                    if cursor == (r, c) and cursor_start <= y <= cursor_end:
                        bits, ninth = 0xFF, True  # the cursor spans the whole cell
                    line += span(bits, fg, bg, ninth)
                scanlines.append(bytes(line))
        width = self.columns * cell_width
        palette = b"".join(bytes(v << 2 | v >> 4 for v in entry) for entry in self.dac)
        return encode_png_indexed(width, len(scanlines), palette, scanlines)

    def screenshot(self, path: str) -> None:
        """`--screenshot FILE`: PNG when the name ends in .png, the text otherwise."""
        if path.lower().endswith(".png"):
            with open(path, "wb") as f:
                f.write(self.render_png())
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(self.render_text())


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png_indexed(width: int, height: int, palette: bytes, scanlines: list[bytes]) -> bytes:
    """A PNG of 8-bit palette indices (colour type 3), each scanline with filter type 0."""
    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
    raw = b"".join(b"\0" + line for line in scanlines)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"PLTE", palette)
        + _png_chunk(b"IDAT", zlib.compress(raw, 6))
        + _png_chunk(b"IEND", b"")
    )
