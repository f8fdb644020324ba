"""16-bit code under the translator (issue 13, item 4; spec/vmm.r1, "16-bit code"): real-mode
snippets run under `bt` with their code translated, and equal `bare` and the interpreter in
everything the guest can see. Also the pieces: the size prefixes toggled, units keyed by CS
base and IP, a fault inside a 16-bit unit, a write to 16-bit code that has been translated."""

from __future__ import annotations

import struct
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from ring1.generated.rules import CONSTS as C
from ring1.runtime.isa.assembler import AssemblerError, assemble
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
    """CALL and RET (and RET imm16, JMP and CALL through a register or memory) in the TC: RET
    looks its target up in lookup16's table, and hits from the second round on."""
    spec = real(
        """
        mov ax, 0x1000
        mov es, ax
        mov cx, 50
        xor dx, dx
    1:  add dx, cx
        call 2f
        push cx
        call 4f
        mov bx, offset 5f
        jmp bx
        hlt
    5:  loop 1b
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
    4:  xor dx, [esp + 2]
        mov bx, offset 6f
        mov [0x9000], bx
        call [0x9000]
        call bx
        ret 2
    6:  ret
    3:  mov bx, cx
        """
    )
    _, vmm = assert_translated_like_bare(spec)
    assert vmm.vmm_read32(C["V_HITS"]) > 100 and vmm.stats["indirect_misses"] < 10


def test_lookup16_keys_by_cs_base() -> None:
    """A routine at 0000:9000 and a copy at 0A08:0000: the near RETs' targets, IPs 0x9003 and
    0x0003 (the same low byte) in two code segments, both stay in lookup16's table and hit.
    (Reached as 0900:0000, the first would alias 0000:9000 linearly: correct, but its entry
    would take the other's place: test_units_are_keyed_by_cs_base_and_ip.)"""
    routine = assemble(".code16\ncall 1f\nretf\n1: mov bx, sp\nmov ax, [bx]\nret").code
    spec = real(
        """
        mov cx, 3
    1:  .byte 0x9a
        .word 0x9000, 0
        mov dx, ax
        .byte 0x9a
        .word 0, 0xa08
        loop 1b
        """,
        memory={0x9000: routine, 0xA080: routine},
    )
    bt, vmm = assert_translated_like_bare(spec)
    assert (bt.regs["edx"] & 0xFFFF, bt.regs["eax"] & 0xFFFF) == (0x9003, 0x0003)
    assert vmm.vmm_read32(C["V_HITS"]) == 4 and vmm.stats["indirect_misses"] == 2


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


# ---------------------------------------------------------------- random real-mode programs

WINDOW = fresh_machine.REAL_WINDOW  # DS and ES: the DATA window, 64 KB of random bytes
R16 = ("ax", "bx", "dx", "si", "di", "bp")  # CX counts loops, SP is the stack
R32 = ("eax", "ebx", "edx", "esi", "edi", "ebp")
R8 = ("al", "ah", "bl", "bh", "dl", "dh")
MEM = ("[bx + si + {d}]", "[bx + di + {d}]", "[si + {d}]", "[di + {d}]", "[bx + {d}]", "[{d}]")
ALU = ("add", "sub", "adc", "sbb", "cmp", "and", "or", "xor", "test")


def _memory(draw, width: str = "") -> str:
    """A memory operand in the window: 16-bit addressing with a small displacement."""
    where = draw(st.sampled_from(MEM)).format(d=draw(st.integers(0, 0x7F)))
    return f"{width} ptr {where}" if width else where


@st.composite
def _operand_pair(draw) -> str:
    size = draw(st.sampled_from((8, 16, 32)))
    regs = {8: R8, 16: R16, 32: R32}[size]
    dst = draw(st.sampled_from(regs))
    mem = _memory(draw, {8: "byte", 16: "word", 32: "dword"}[size])
    kind = draw(st.sampled_from(("reg", "imm", "load", "store")))
    if kind == "reg":
        return f"{dst}, {draw(st.sampled_from(regs))}"
    if kind == "imm":
        return f"{dst}, {draw(st.integers(0, (1 << size) - 1)):#x}"
    return f"{dst}, {mem}" if kind == "load" else f"{mem}, {dst}"


@st.composite
def _statement(draw, depth: int, subs: tuple[str, ...] = ()) -> list[str]:
    kinds = ["alu", "alu", "unary", "move", "stack", "rotate", "string", "widen"]
    if depth < 2:
        kinds += ["if", "loop"]
    if subs:
        kinds += ["call"]
    kind = draw(st.sampled_from(kinds))
    if kind == "call":
        # Near CALL, direct, through a register or through memory (SS:6000, below the stack).
        sub = draw(st.sampled_from(subs))
        how = draw(st.sampled_from(("direct", "reg", "mem")))
        if how == "direct":
            return [f"call {sub}"]
        if how == "reg":
            return [f"mov bx, offset {sub}", "call bx"]
        return [f"mov word ptr ss:[0x6000], offset {sub}", "call word ptr ss:[0x6000]"]
    if kind == "alu":
        return [f"{draw(st.sampled_from(ALU))} {draw(_operand_pair())}"]
    if kind == "unary":
        return [f"{draw(st.sampled_from(('inc', 'dec', 'neg', 'not')))} {draw(st.sampled_from(R16 + R32 + R8))}"]
    if kind == "move":
        how = draw(st.sampled_from(("mov", "movzx", "movsx", "lea", "xchg")))
        if how == "mov":
            return [f"mov {draw(_operand_pair())}"]
        if how in ("movzx", "movsx"):
            return [f"{how} {draw(st.sampled_from(R16 + R32))}, {_memory(draw, 'byte')}"]
        if how == "lea":
            return [f"lea {draw(st.sampled_from(R16 + R32))}, {_memory(draw)}"]
        return [f"xchg {draw(st.sampled_from(R16))}, {draw(st.sampled_from(R16))}"]
    if kind == "stack":
        regs = draw(st.sampled_from((R16, R32)))
        return [f"push {draw(st.sampled_from(regs))}", f"pop {draw(st.sampled_from(regs))}"]
    if kind == "rotate":
        return [f"{draw(st.sampled_from(('rol', 'ror')))} {draw(st.sampled_from(R16 + R8))}, 1"]
    if kind == "widen":
        return [draw(st.sampled_from(("cbw", "cwd", "cwde", "cdq")))]
    if kind == "string":
        op = draw(st.sampled_from(("movsb", "movsw", "stosb", "stosw", "lodsb", "lodsw", "cmpsb", "scasw")))
        reps = ("", "rep ", "repe ", "repne ") if op[:3] in ("cmp", "sca") else ("", "rep ")
        return [
            f"mov si, {draw(st.integers(0, 0xFF00)):#x}",
            f"mov di, {draw(st.integers(0, 0xFF00)):#x}",
            f"mov cx, {draw(st.integers(0, 40))}",
            draw(st.sampled_from(("cld", "std"))),
            f"{draw(st.sampled_from(reps))}{op}",
            "cld",
        ]
    if kind == "if":
        cc = draw(st.sampled_from(("z", "nz", "c", "nc", "s", "ns", "o", "no", "p", "np", "l", "ge", "le", "g")))
        return [f"j{cc} 9{depth}f", *draw(_block(depth + 1, subs)), f"9{depth}:"]
    body = draw(_block(depth + 1, subs))
    return [f"mov cx, {draw(st.integers(1, 4))}", f"8{depth}:", "push cx", *body, "pop cx", f"loop 8{depth}b"]


@st.composite
def _block(draw, depth: int, subs: tuple[str, ...] = ()) -> list[str]:
    return [line for _ in range(draw(st.integers(1, 4))) for line in draw(_statement(depth, subs))]


@st.composite
def real_mode_programs(draw) -> fresh_machine.FreshSpec:
    """Straight-line and looping real-mode code: ALU, moves, the stack, strings, branches and
    near calls (direct, through a register or memory) of subroutines that RET, over the DATA
    window (DS = ES), with 8-, 16- and 32-bit operands and 16-bit addressing. AND, OR, XOR and
    TEST leave AF undefined: a CMP at the end defines every flag, and nothing reads AF before it."""
    subs = tuple(f"sub{i}" for i in range(draw(st.integers(0, 2))))
    lines = ["mov ax, 0x1000", "mov ds, ax", "mov es, ax", *draw(_block(0, subs)), "cmp ax, bx", "jmp 99f"]
    for i, name in enumerate(subs):  # (a subroutine calls only those after it: no recursion)
        lines += [f"{name}:", *draw(_block(1, subs[i + 1 :])), "ret"]
    lines.append("99:")
    regs = {r: draw(st.integers(0, 0xFFFFFFFF)) for r in ("eax", "ebx", "edx", "esi", "edi", "ebp")}
    window = draw(st.binary(min_size=256, max_size=256)) * (fresh_machine.DATA_SIZE // 256)
    try:
        return real("\n".join(lines), memory={fresh_machine.DATA: window}, regs=regs)
    except AssemblerError:
        reject()  # a LOOP whose body grew past rel8's reach


def test_random_real_mode_code_bt_equals_bare(diff_settings: dict) -> None:
    translated = Counter()

    @settings(
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        max_examples=max(1, diff_settings["max_examples"] * 5),
        derandomize=diff_settings["derandomize"],
    )
    @given(real_mode_programs())
    def check(spec: fresh_machine.FreshSpec) -> None:
        vmm = new_vmm()
        bt = run(spec, "bt", vmm=vmm)
        assert differences(run(spec, "bare"), bt) == []
        translated["units"] += vmm.stats["units_16bit"]
        translated["interpreted"] += vmm.stats["interpreted_instructions"]

    check()
    assert translated["units"] > diff_settings["max_examples"] and translated["interpreted"] == 0


# ---------------------------------------------------------------- 16-bit protected mode, 16-bit stacks

SEL_CODE16, SEL_DATA16 = fresh_machine.SEL_CODE16, fresh_machine.SEL_DATA16


def protected(src: str, memory: dict[int, bytes] | None = None) -> fresh_machine.FreshSpec:
    code = assemble(src, origin=CODE).code
    return fresh_machine.FreshSpec(code=code, memory=memory or {})


def test_16_bit_protected_mode_code_is_translated() -> None:
    """The kernel far-jumps to a 16-bit code segment (GDT 0x30), loads a 16-bit stack segment,
    runs loops, calls, RETs and string instructions there, and comes back to 32-bit code."""
    spec = protected(
        f"""
        .byte 0xea
        .long c16
        .word {SEL_CODE16}
        .code16
    c16:
        mov ax, {SEL_DATA16}
        mov ss, ax
        mov sp, 0x6000
        mov cx, 20
        xor dx, dx
    1:  call 2f
        loop 1b
        mov si, 0x8000
        mov di, 0x9000
        mov cx, 16
        rep movsw
        .byte 0x66, 0xea
        .long c32
        .word {fresh_machine.SEL_CODE0}
    2:  add dx, cx
        ret
        .code32
    c32:
        mov ax, {fresh_machine.SEL_DATA0}
        mov ss, ax
        mov esp, 0x7000
        """
    )
    vmm = new_vmm()
    bt = run(spec, "bt", vmm=vmm)
    for mode in ("bare", "interp"):
        assert differences(run(spec, mode), bt) == [], mode
    assert bt.regs["edx"] & 0xFFFF == sum(range(1, 21))
    assert vmm.stats["units_16bit"] > 0 and vmm.stats["interpreted_instructions"] == 0


def test_32_bit_kernel_code_on_a_16_bit_stack_is_translated() -> None:
    """32-bit code with SS a 16-bit segment: its pushes and pops wrap SP, its PUSHFD and
    POPFD and RET are callouts (`stack=32` templates), and ESP's upper half survives."""
    spec = protected(
        f"""
        mov ax, {SEL_DATA16}
        mov ss, ax
        mov esp, 0xabcd0010
        mov ecx, 5
    1:  call 2f
        pushfd
        popfd
        loop 1b
        mov ebx, esp
        jmp 3f
    2:  push ecx
        pop edx
        ret
    3:
        """
    )
    vmm = new_vmm()
    bt = run(spec, "bt", vmm=vmm)
    for mode in ("bare", "interp"):
        assert differences(run(spec, mode), bt) == [], mode
    assert bt.regs["ebx"] == 0xABCD0010
    assert vmm.stats["interpreted_instructions"] == 0 and vmm.stats["units_16bit"] == 0
