"""The VGA text screen: its registers through the ports, the cells in text memory (guest RAM or
its own MMIO buffer), and the renderings: text, ANSI and a PNG decoded back."""

from __future__ import annotations

import struct
import zlib

import pytest

from ring1.runtime.cpu.memory import PhysicalMemory
from ring1.runtime.devices import vga
from ring1.runtime.devices.bus import Bus
from ring1.runtime.devices.clock import NS_PER_INSN, VirtualClock
from ring1.runtime.devices.cp437 import CP437
from ring1.runtime.devices.vga import PORT_BASE, PORT_COUNT, TEXT_BASE, TEXT_SIZE, VgaText
from ring1.runtime.devices.vga_font import GLYPHS


def ram_machine() -> tuple[VirtualClock, Bus, VgaText, PhysicalMemory]:
    clock, bus, memory = VirtualClock(), Bus(), PhysicalMemory(1 << 20)
    screen = VgaText(clock, memory=memory)
    bus.map_ports("VGA", PORT_BASE, PORT_COUNT, screen)
    return clock, bus, screen, memory


def put(memory: PhysicalMemory, row: int, column: int, text: str, attribute: int = 0x07) -> None:
    cells = b"".join(bytes([CP437.index(ch), attribute]) for ch in text)
    memory.write(TEXT_BASE + 2 * (row * 80 + column), cells)


def crtc(bus: Bus, index: int, value: int | None = None) -> int:
    bus.io_out(0x3D4, 1, index)
    if value is not None:
        bus.io_out(0x3D5, 1, value)
    return bus.io_in(0x3D5, 1)


# ---------------------------------------------------------------- registers


def test_reset_state_is_mode_3() -> None:
    _, bus, screen, _ = ram_machine()
    assert bus.io_in(0x3CC, 1) == 0x67  # misc output: colour I/O addresses
    assert (screen.columns, screen.rows, screen.char_height) == (80, 25, 16)
    assert crtc(bus, 0x0A) == 0x0D and crtc(bus, 0x0B) == 0x0E  # cursor on scan lines 13-14
    assert screen.cursor_position() == (0, 0)


def test_cursor_location_registers_move_the_cursor() -> None:
    _, bus, screen, _ = ram_machine()
    position = 12 * 80 + 34
    crtc(bus, 0x0E, position >> 8)
    crtc(bus, 0x0F, position & 0xFF)
    assert screen.cursor_address == position and screen.cursor_position() == (12, 34)
    assert crtc(bus, 0x0E) == position >> 8 and crtc(bus, 0x0F) == position & 0xFF
    bus.io_out(0x3D4, 2, 0x0F | 81 << 8)  # outw: index then data, as Linux's vgacon does
    assert screen.cursor_address == (position & 0xFF00) | 81
    assert screen.cursor_position() == divmod((position & 0xFF00) | 81, 80)
    assert bus.io_in(0x3D4, 1) == 0x0F  # the index reads back


def test_cursor_start_bit_5_hides_the_cursor() -> None:
    _, bus, screen, _ = ram_machine()
    crtc(bus, 0x0A, 0x20 | 0x0D)
    assert screen.cursor_position() is None and "\x1b[?25l" in screen.render_ansi()
    crtc(bus, 0x0A, 0x0D)
    assert screen.cursor_position() == (0, 0) and "\x1b[1;1H\x1b[?25h" in screen.render_ansi()


def test_crtc_registers_0_to_7_are_protected_by_bit_7_of_register_0x11() -> None:
    _, bus, screen, _ = ram_machine()
    assert crtc(bus, 0x01, 0x27) == 0x4F  # protected after the mode set: the write is dropped
    crtc(bus, 0x11, crtc(bus, 0x11) & 0x7F)
    assert crtc(bus, 0x01, 0x27) == 0x27 and screen.columns == 40


def test_mono_crtc_ports_answer_only_when_io_address_select_is_clear() -> None:
    _, bus, _, _ = ram_machine()
    bus.io_out(0x3B4, 1, 0x0E)
    assert bus.io_in(0x3B5, 1) == 0xFF  # colour board: the mono ports float
    bus.io_out(0x3C2, 1, 0x66)  # misc output: I/O address select clear
    bus.io_out(0x3B4, 1, 0x0A)
    assert bus.io_in(0x3B5, 1) == 0x0D
    assert bus.io_in(0x3D5, 1) == 0xFF


def test_attribute_controller_flip_flop_is_reset_by_reading_input_status_1() -> None:
    _, bus, screen, _ = ram_machine()
    bus.io_out(0x3C0, 1, 0x01)  # index 1, PAS clear: the CPU owns the palette
    bus.io_out(0x3C0, 1, 0x3B)  # data
    bus.io_out(0x3C0, 1, 0x02)  # index again
    bus.io_in(0x3DA, 1)  # reset: the next write is an index, not data for register 2
    bus.io_out(0x3C0, 1, 0x20 | 0x01)  # index 1 with PAS set
    assert bus.io_in(0x3C1, 1) == 0x3B and bus.io_in(0x3C0, 1) == 0x21
    assert screen.attr[2] == 0x02
    bus.io_out(0x3C0, 1, 0x00)  # data while PAS is set: palette writes are dropped
    assert screen.attr[1] == 0x3B


def test_dac_entries_are_written_and_read_as_three_components() -> None:
    _, bus, screen, _ = ram_machine()
    bus.io_out(0x3C8, 1, 7)
    for value in (0x3F, 0x20, 0x01, 0x11):  # entry 7, then the red of entry 8
        bus.io_out(0x3C9, 1, value)
    assert screen.dac[7] == (0x3F, 0x20, 0x01) and bus.io_in(0x3C8, 1) == 8
    bus.io_out(0x3C7, 1, 7)
    assert [bus.io_in(0x3C9, 1) for _ in range(3)] == [0x3F, 0x20, 0x01]
    assert bus.io_in(0x3C7, 1) == 3  # DAC state: reading
    assert screen.dac[0x3F] == (63, 63, 63) and screen.dac[0x14] == (42, 21, 0)  # white; brown


def test_input_status_1_retrace_bits_follow_virtual_time() -> None:
    clock, bus, _, _ = ram_machine()
    # Mode 3: 900 dots a line at 28.322 MHz, 449 lines, 400 displayed, retrace on lines 412-413.
    def at_line(line: int, dot: int = 0) -> int:
        ns = (line * 900 + dot) * 1_000_000_000 // 28_322_000 + 1
        clock.advance(-(-(ns - clock.now()) // NS_PER_INSN))
        return bus.io_in(0x3DA, 1)

    assert at_line(0) == 0  # displaying
    assert at_line(5, 800) == vga.STATUS1_DISPLAY_DISABLED  # horizontal blanking
    assert at_line(405) == vga.STATUS1_DISPLAY_DISABLED  # below the picture
    assert at_line(412, 100) == vga.STATUS1_DISPLAY_DISABLED | vga.STATUS1_VRETRACE
    assert at_line(414, 100) == vga.STATUS1_DISPLAY_DISABLED  # the retrace is over
    assert at_line(449 + 3) == 0  # the next frame
    assert at_line(449 + 413) & vga.STATUS1_VRETRACE


def test_unclaimed_ports_and_registers_float_high() -> None:
    _, bus, _, _ = ram_machine()
    assert bus.io_in(0x3B0, 1) == 0xFF and bus.io_in(0x3DF, 1) == 0xFF
    crtc(bus, 0x40, 0x12)  # no such CRTC register
    assert bus.io_in(0x3D5, 1) == 0xFF


# ---------------------------------------------------------------- the screen


def test_render_text_shows_what_the_guest_wrote_in_ram() -> None:
    _, _, screen, memory = ram_machine()
    put(memory, 0, 0, "Linux version 6.1")
    put(memory, 24, 70, "bottom")
    put(memory, 3, 2, "╔══╗ ☺ é")
    lines = screen.render_text().split("\n")
    assert lines[0] == "Linux version 6.1"
    assert lines[3] == "  ╔══╗ ☺ é"
    assert lines[24] == " " * 70 + "bottom" and len(lines) == 26 and lines[25] == ""


def test_start_address_scrolls_the_screen() -> None:
    _, bus, screen, memory = ram_machine()
    put(memory, 0, 0, "first")
    put(memory, 1, 0, "second")
    crtc(bus, 0x0D, 80)  # start at row 1
    assert screen.text_lines()[0] == "second"
    crtc(bus, 0x0C, 0x3F)
    crtc(bus, 0x0D, 0xFF - 79)  # 0x3F00 - 79 + 80 rows wrap around the 16 K cells
    assert screen.text_lines()[1] == "first"


def test_mmio_text_memory_when_the_vga_keeps_its_own() -> None:
    bus, screen = Bus(), VgaText(VirtualClock())
    assert screen.text_memory is not None
    bus.map_mmio("VGA text", TEXT_BASE, TEXT_SIZE, screen.text_memory)
    bus.mmio_write(TEXT_BASE, 4, 0x0F69_0748)  # "H" grey, "i" white, in one 32-bit store
    bus.mmio_write(TEXT_BASE + 160, 2, 0x1F00 | ord("x"))
    assert bus.mmio_read(TEXT_BASE + 2, 2) == 0x0F69
    assert screen.text_lines()[:2] == ["Hi", "x"]
    assert bus.mmio_read(TEXT_BASE + TEXT_SIZE - 2, 2) == 0  # the last cell: still inside


def test_render_ansi_colours_and_cursor() -> None:
    _, bus, screen, memory = ram_machine()
    put(memory, 2, 0, "A", 0x1E)  # yellow on blue
    put(memory, 2, 1, "B", 0xCF)  # bright white on red, blinking (blink is on after a mode set)
    crtc(bus, 0x0F, 2 * 80 + 5)
    out = screen.render_ansi()
    assert "\x1b[3;1H\x1b[0;93;44mA\x1b[0;97;41;5mB" in out
    assert out.endswith("\x1b[3;6H\x1b[?25h")


def _png_chunks(png: bytes) -> dict[bytes, bytes]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, at = {}, 8
    while at < len(png):
        (length,) = struct.unpack_from(">I", png, at)
        kind, data = png[at + 4 : at + 8], png[at + 8 : at + 8 + length]
        (crc,) = struct.unpack_from(">I", png, at + 8 + length)
        assert crc == zlib.crc32(kind + data), f"{kind!r} CRC"
        chunks[kind] = chunks.get(kind, b"") + data
        at += 12 + length
    assert kind == b"IEND"
    return chunks


def test_png_is_720x400_and_shows_the_glyphs_in_the_dac_colours() -> None:
    _, bus, screen, memory = ram_machine()
    put(memory, 0, 0, "A", 0x1F)  # bright white on blue
    put(memory, 1, 0, "─", 0x07)  # 0xC4: line graphics fill the ninth column
    crtc(bus, 0x0A, 0x20)  # cursor off
    chunks = _png_chunks(screen.render_png())
    width, height, depth, colour_type = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (width, height, depth, colour_type) == (720, 400, 8, 3)
    palette = chunks[b"PLTE"]
    assert len(palette) == 256 * 3
    raw = zlib.decompress(chunks[b"IDAT"])
    assert len(raw) == height * (1 + width)
    rows = [raw[y * (width + 1) + 1 : (y + 1) * (width + 1)] for y in range(height)]

    def rgb(index: int) -> bytes:
        return palette[3 * index : 3 * index + 3]

    for y in range(16):  # the glyph of "A", bit 7 leftmost, in white on blue; the ninth column blue
        glyph = GLYPHS[ord("A") * 16 + y]
        assert [rgb(p) for p in rows[y][:9]] == [
            b"\xff\xff\xff" if glyph >> (7 - x) & 1 else b"\x00\x00\xaa" for x in range(8)
        ] + [b"\x00\x00\xaa"]
    line_row = next(y for y in range(16) if GLYPHS[0xC4 * 16 + y] == 0xFF)
    assert rgb(rows[16 + line_row][8]) == rgb(rows[16 + line_row][0]) == b"\xaa\xaa\xaa"
    assert set(rows[399]) == {0}  # the bottom row is black on black


def test_png_draws_the_cursor_on_its_scan_lines() -> None:
    _, _, screen, memory = ram_machine()
    put(memory, 0, 0, " ", 0x07)
    raw = zlib.decompress(_png_chunks(screen.render_png())[b"IDAT"])
    scanline = lambda y: raw[y * 721 + 1 : y * 721 + 10]  # noqa: E731
    assert set(scanline(12)) == {0} and set(scanline(13)) == set(scanline(14)) == {0x07}  # grey
    assert set(scanline(15)) == {0}


@pytest.mark.parametrize("name", ["screen.txt", "screen.PNG"])
def test_screenshot_writes_text_or_png_by_the_file_name(tmp_path, name: str) -> None:
    _, _, screen, memory = ram_machine()
    put(memory, 0, 0, "panic: ☺ no init")
    path = tmp_path / name
    screen.screenshot(str(path))
    data = path.read_bytes()
    if name.endswith(".txt"):
        assert data.decode("utf-8").startswith("panic: ")
    else:
        assert data.startswith(b"\x89PNG") and b"IHDR" in data[:16]


def test_font_has_a_glyph_per_byte_and_line_graphics_reach_the_cell_edges() -> None:
    assert len(GLYPHS) == 256 * 16
    glyph = lambda code: GLYPHS[code * 16 : code * 16 + 16]  # noqa: E731
    assert glyph(0x20) == glyph(0x00) == bytes(16)  # blanks
    assert glyph(0xDB) == b"\xff" * 16  # the full block
    assert all(glyph(0xB3))  # the vertical line has a pixel on every scan line: rows join up
    assert glyph(0xDF)[:8] == b"\xff" * 8 and glyph(0xDF)[8:] == bytes(8)  # upper half block
    assert glyph(ord("A")) != glyph(ord("B")) and any(glyph(ord("A")))
