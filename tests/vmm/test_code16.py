"""16-bit code under the translator (issue 13, item 4; spec/vmm.r1, "16-bit code"): real-mode
snippets run under `bt` with their code translated, and equal `bare` and the interpreter in
everything the guest can see. Also the pieces: the size prefixes toggled, units keyed by CS
base and IP, a fault inside a 16-bit unit, a write to 16-bit code that has been translated."""

from __future__ import annotations

import struct

import pytest

from ring1.runtime.isa.assembler import assemble
from ring1.runtime.isa.decoder import Truncated, decode
from ring1.runtime.tools import fresh_machine
from ring1.runtime.vmm import KEY16, MANDATORY_PREFIX_FORMS, same_in_32bit_code
from tests.vmm.common import differences, new_vmm, run

CODE = fresh_machine.CODE


def real(src: str, memory: dict[int, bytes] | None = None, regs: dict[str, int] | None = None):
    code = assemble(".code16\n" + src, origin=CODE).code
    return fresh_machine.FreshSpec(code=code, real=True, memory=memory or {}, regs=regs or {})


def assert_translated_like_bare(spec: fresh_machine.FreshSpec, against: tuple[str, ...] = ("bare", "interp")):
    """Run `spec` under bt, assert it equals the other modes, return (result, the Vmm)."""
    vmm = new_vmm()
    bt = run(spec, "bt", vmm=vmm)
    for mode in against:
        other = run(spec, mode)
        assert differences(other, bt) == [], mode
    assert vmm.stats["units_16bit"] > 0 and vmm.stats["interpreted_instructions"] == 0
    return bt, vmm


# ---------------------------------------------------------------- the size prefixes


@pytest.mark.parametrize(
    ("code16", "code32"),
    [
        ("89 d8", "66 67 89 d8"),  # mov ax, bx: 16-bit operands need 66 (the 67 is harmless)
        ("66 89 d8", "67 89 d8"),  # mov eax, ebx: its 66 goes
        ("8a 00", "66 67 8a 00"),  # mov al, [bx+si]: 16-bit addressing needs 67 (66 is harmless)
        ("67 66 8b 03", "8b 03"),  # mov eax, [ebx]: both go
        ("f3 a4", "66 67 f3 a4"),  # rep movsb: CX, SI and DI
        ("26 ff 07", "66 67 26 ff 07"),  # inc word es:[bx]: the segment prefix stays
        ("0f 58 c1", "67 0f 58 c1"),  # addps: a 66 would make it ADDPD (a mandatory prefix)
        ("66 0f 58 c1", "66 67 0f 58 c1"),  # addpd: the 66 is mandatory, kept
    ],
)
def test_ident_instructions_get_their_size_prefixes_toggled(code16: str, code32: str) -> None:
    d = decode(bytes.fromhex(code16) + bytes(15), 0, False)
    out = same_in_32bit_code(d)
    assert out == bytes.fromhex(code32)
    e = decode(out + bytes(15), 0, True)
    assert (e.form, e.variant[1:]) == (d.form, d.variant[1:])


def test_every_form_toggled_decodes_to_itself_or_is_refused() -> None:
    """Over every opcode byte of 16-bit code, with and without the size prefixes: what
    same_in_32bit_code gives decodes in 32-bit code to the same form and operands."""
    checked = 0
    for prefixes in (b"", b"\x66", b"\x67", b"\x66\x67"):
        for op in range(256):
            for tail in (b"\x00" * 8, b"\xc1" + b"\x00" * 7, b"\x0f\x58\xc1" + b"\x00" * 5):
                try:
                    d = decode(prefixes + bytes((op,)) + tail, 0, False)
                except Truncated:
                    continue
                if d.form is None:
                    continue
                out = same_in_32bit_code(d)
                if out is None:
                    continue
                e = decode(out + bytes(15), 0, True)
                assert e.form == d.form and e.variant[1:] == d.variant[1:], (d.raw.hex(), out.hex())
                assert e.variant[0] == d.variant[0] or d.form in MANDATORY_PREFIX_FORMS
                checked += 1
    assert checked > 500


# ---------------------------------------------------------------- snippets, bt against bare


def test_segment_bases_of_real_mode_reach_the_same_bytes() -> None:
    spec = real(
        """
        mov ax, 0x1000
        mov ds, ax
        mov es, ax
        mov byte ptr [0x123], 0x5a
        mov ax, 0x1012
        mov fs, ax
        mov bl, fs:[3]
        mov bp, 0x6000
        mov word ptr [bp + 4], 0x7777      # SS-relative by default (SS = 0)
        mov cx, [bp + 4]
        push ds
        pop ss
        mov sp, 0x200
        push 0x4242                        # onto 1000:01fe now
        mov dx, [0x1fe]
        xor ax, ax
        mov ss, ax
        mov sp, 0x7000
        """
    )
    bt, _ = assert_translated_like_bare(spec)
    assert (bt.regs["ebx"] & 0xFF, bt.regs["ecx"], bt.regs["edx"]) == (0x5A, 0x7777, 0x4242)


def test_esp_keeps_its_upper_half_with_a_16_bit_stack() -> None:
    """IRET to CPL 1 with a 16-bit SS loads only SP (the stub enter_tc16 loads the rest)."""
    spec = real("mov ebx, esp\npush ax\npop ax\nmov ecx, esp", regs={"esp": 0x12347000})
    bt, _ = assert_translated_like_bare(spec)
    assert bt.regs["ebx"] == bt.regs["ecx"] == 0x12347000


def test_loops_strings_and_calls() -> None:
    spec = real(
        """
        mov ax, 0x1000
        mov es, ax
        mov cx, 50
        xor dx, dx
    1:  add dx, cx
        call 2f
        loop 1b
        mov si, 0x8000
        xor di, di
        mov cx, 32
        rep movsb
        mov cx, 16
        mov al, 0x90
        repne scasb
        jmp 3f
    2:  rol dx, 1
        pushf
        popf
        ret
    3:  mov bx, cx
        """
    )
    assert_translated_like_bare(spec)


def test_a_jump_target_wraps_at_64_kb() -> None:
    """JMP rel16 at 0x8003 to 0x8006 + 0x7ffa = 0x1_0000: IP 0 (the decoder and the CPU wrap it
    to 16 bits). The code there jumps back, by 0x8006 - 6 = -0x8000, wrapping again below 0."""
    spec = real("mov ax, 1\n.byte 0xe9\n.word 0x7ffa")
    spec.memory[0] = bytes.fromhex("b8 57 57 e9 00 80")  # mov ax, 0x5757; jmp -0x8000 (to 0x8006)
    bt, vmm = assert_translated_like_bare(spec)
    assert bt.regs["eax"] & 0xFFFF == 0x5757 and bt.regs["eip"] == CODE + 6
    assert KEY16 | 0 in vmm.units


@pytest.mark.parametrize("mode", ["bare", "interp"])
def test_a_fault_inside_a_16_bit_unit_maps_back_to_its_instruction(mode: str) -> None:
    spec = real("mov ax, 0x10\nmov bx, 3\nxor dx, dx\nxor cx, cx\ndiv cx\nmov bx, 9")
    vmm = new_vmm()
    bt = run(spec, "bt", vmm=vmm)
    assert differences(run(spec, mode), bt) == []
    assert bt.exception == 0 and bt.regs["eip"] == CODE + 10 and bt.regs["ebx"] == 3
    assert vmm.stats["units_16bit"] == 1


def test_a_write_to_translated_16_bit_code_is_seen() -> None:
    """The routine at 0x9000 runs (translated), its immediate is rewritten, it runs again."""
    spec = real(
        """
        mov cx, 3
    1:  call 0x9000
        mov dx, ax
        loop 1b
        mov word ptr [0x9001], 0x2222
        call 0x9000
        """,
        memory={0x9000: bytes.fromhex("b8 11 11 c3")},  # mov ax, 0x1111; ret
    )
    bt, vmm = assert_translated_like_bare(spec)
    assert (bt.regs["edx"] & 0xFFFF, bt.regs["eax"] & 0xFFFF) == (0x1111, 0x2222)
    assert vmm.stats["code_writes"] > 0 and vmm.stats["units_invalidated"] > 0


def test_units_are_keyed_by_cs_base_and_ip() -> None:
    """The same bytes reached as 0000:9000 and as 0900:0000 push different IPs: two units."""
    spec = real(
        """
        .byte 0x9a
        .word 0x9000, 0
        mov bx, ax
        .byte 0x9a
        .word 0, 0x900
        """,
        memory={0x9000: assemble(".code16\ncall 1f\n1: pop ax\nretf").code},
    )
    bt, vmm = assert_translated_like_bare(spec)
    assert (bt.regs["ebx"] & 0xFFFF, bt.regs["eax"] & 0xFFFF) == (0x9003, 0x0003)
    keys = [key for key in vmm.units if key >= KEY16 and key & 0xFFFF in (0x9000, 0)]
    assert sorted((key >> 16) & 0xFFFFFFFF for key in keys) == [0, 0x9000]


def test_16_bit_and_32_bit_units_at_one_address_never_mix() -> None:
    """The same bytes at 0x9000 run as real-mode code, then, after the switch to protected mode,
    as 32-bit code: B8 34 12 90 90 is `mov ax, 0x1234; nop; nop`, then `mov eax, 0x90901234`."""
    gdtr = struct.pack("<HI", len(fresh_machine.gdt_bytes()) - 1, fresh_machine.GDT)
    spec = real(
        f"""
        .byte 0x9a
        .word 0x9000, 0
        mov bx, ax
        lgdt [0x9100]
        mov eax, cr0
        or al, 1
        mov cr0, eax
        .byte 0x66, 0xea
        .long pm
        .word {fresh_machine.SEL_CODE0}
        .code32
    pm: mov ax, {fresh_machine.SEL_DATA0}
        mov ds, ax
        mov ss, ax
        mov es, ax
        mov ecx, 300                       # past the interpreter's stretch: then translated
    1:  loop 1b
        .byte 0x9a
        .long 0x9000
        .word {fresh_machine.SEL_CODE0}
        mov ecx, eax
        """,
        memory={0x9000: bytes.fromhex("b8 34 12 90 90 cb"), 0x9100: gdtr},  # ... retf
    )
    vmm = new_vmm()
    bt = run(spec, "bt", vmm=vmm)
    for mode in ("interp", "bare"):
        assert differences(run(spec, mode), bt) == [], mode
    assert (bt.regs["ebx"] & 0xFFFF, bt.regs["ecx"]) == (0x1234, 0x90901234)
    assert 0x9000 in vmm.units and KEY16 | 0x9000 in vmm.units
