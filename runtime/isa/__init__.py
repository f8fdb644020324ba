"""The instruction set: decoding (from the spec's tables) and encoding (one assembler)."""
