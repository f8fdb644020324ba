"""Code page 437, the character set of the PC's video ROM, as Unicode: one character per byte.

Bytes 0x01-0x1F and 0x7F are the pictures the VGA's font draws for them (smileys, card suits,
arrows; a display adapter has no control characters); 0x00 and 0xFF are blank glyphs, given as
spaces. The rest is Python's own cp437 codec.
"""

from __future__ import annotations

_LOW = " ☺☻♥♦♣♠•◘○◙♂♀♪♫☼►◄↕‼¶§▬↨↑↓→←∟↔▲▼"
CP437 = _LOW + bytes(range(0x20, 0x7F)).decode("ascii") + "⌂" + bytes(range(0x80, 0xFF)).decode("cp437") + " "
assert len(CP437) == 256
