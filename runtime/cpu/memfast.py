"""The interpreter's hot memory accesses.

These functions are not called from this module: ring1.runtime.cpu.machine rebinds them into
each machine's namespace, where the names below are that machine's objects:

  S        the CpuState          MEM     the physical memory (memoryview)
  BASE     S.base                LO, RHI, WHI  per segment: lowest valid offset, highest
                                          readable and writable last-byte offset (-1: none)
  TLBR     page -> physical page base, for reads at the current privilege
  TLBW     the same for writes; pages holding translated code are never in it
  M        the Machine, for the slow paths (page walks, page-crossing accesses, faults)

The fast path is a segment check, one dict lookup and one struct access.
"""

# ruff: noqa: F821  -- the free names are bound per machine, see above

import struct

_u16 = struct.Struct("<H")
_u32 = struct.Struct("<I")
unpack16 = _u16.unpack_from
unpack32 = _u32.unpack_from
pack16 = _u16.pack_into
pack32 = _u32.pack_into


def rd8(s, off):
    if off < LO[s] or off > RHI[s]:
        M.segment_fault(s, off)
    la = (BASE[s] + off) & 0xFFFFFFFF
    p = TLBR.get(la >> 12)
    if p is not None:
        return MEM[p | (la & 0xFFF)]
    return M.read_linear(la, 1, M.user)


def rd16(s, off):
    if off < LO[s] or off + 1 > RHI[s]:
        M.segment_fault(s, off)
    la = (BASE[s] + off) & 0xFFFFFFFF
    p = TLBR.get(la >> 12)
    if p is not None and (la & 0xFFF) != 0xFFF:
        return unpack16(MEM, p | (la & 0xFFF))[0]
    return M.read_linear(la, 2, M.user)


def rd32(s, off):
    if off < LO[s] or off + 3 > RHI[s]:
        M.segment_fault(s, off)
    la = (BASE[s] + off) & 0xFFFFFFFF
    p = TLBR.get(la >> 12)
    if p is not None and (la & 0xFFF) <= 0xFFC:
        return unpack32(MEM, p | (la & 0xFFF))[0]
    return M.read_linear(la, 4, M.user)


def wr8(s, off, v):
    if off < LO[s] or off > WHI[s]:
        M.segment_fault(s, off)
    la = (BASE[s] + off) & 0xFFFFFFFF
    p = TLBW.get(la >> 12)
    if p is not None:
        MEM[p | (la & 0xFFF)] = v & 0xFF
        return
    M.write_linear(la, 1, v, M.user)


def wr16(s, off, v):
    if off < LO[s] or off + 1 > WHI[s]:
        M.segment_fault(s, off)
    la = (BASE[s] + off) & 0xFFFFFFFF
    p = TLBW.get(la >> 12)
    if p is not None and (la & 0xFFF) != 0xFFF:
        pack16(MEM, p | (la & 0xFFF), v & 0xFFFF)
        return
    M.write_linear(la, 2, v, M.user)


def wr32(s, off, v):
    if off < LO[s] or off + 3 > WHI[s]:
        M.segment_fault(s, off)
    la = (BASE[s] + off) & 0xFFFFFFFF
    p = TLBW.get(la >> 12)
    if p is not None and (la & 0xFFF) <= 0xFFC:
        pack32(MEM, p | (la & 0xFFF), v & 0xFFFFFFFF)
        return
    M.write_linear(la, 4, v, M.user)


def b_load(s, off, bits):
    n = bits >> 3
    if off < LO[s] or off + n - 1 > RHI[s]:
        M.segment_fault(s, off)
    return M.read_linear((BASE[s] + off) & 0xFFFFFFFF, n, M.user)


def b_store(s, off, bits, v):
    n = bits >> 3
    if off < LO[s] or off + n - 1 > WHI[s]:
        M.segment_fault(s, off)
    M.write_linear((BASE[s] + off) & 0xFFFFFFFF, n, v, M.user)


def b_check_write(s, off, bits):
    n = bits >> 3
    if off < LO[s] or off + n - 1 > WHI[s]:
        M.segment_fault(s, off)
    M.probe_write((BASE[s] + off) & 0xFFFFFFFF, n, M.user)


def b_load_sys(la, bits):
    return M.read_linear(la & 0xFFFFFFFF, bits >> 3, False)


def b_store_sys(la, bits, v):
    M.write_linear(la & 0xFFFFFFFF, bits >> 3, v, False)
