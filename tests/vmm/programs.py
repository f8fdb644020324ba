"""Random guest kernel programs for the VMM's equivalence tests.

A program is straight-line code made of *chunks*, each a random instance of a spec form
(drawn by tests/diff/gen.py, so every encoding comes from the spec's tables) preceded by
`mov r32, imm32` loads of the registers that instance needs (so its memory operands land
in the DATA window whatever ran before), wrapped in control flow this module lays out
itself: forward conditional branches, counted loops (DEC/JNZ on a counter in memory, or
LOOP), direct, register-indirect and memory-indirect calls to subroutines that return
with RET or RET imm16, and register- and memory-indirect forward jumps.

What keeps a program meaningful on both engines (every case ends at `end` or at the first
exception, with the stack and all memory accesses inside guest RAM):

- no instance writes ESP or asks for a particular ESP (gen's ESP-based operands), so stack
  ops move ESP by bounded amounts around the fresh stack;
- loop counters, saved ESPs and call pointers live in a bookkeeping area at linear
  0x2000-0x2FFF, addressed through SS (flat), which no random instance touches;
- a subroutine saves ESP and its return address on entry and puts both back before its RET,
  so random stack ops in its body can neither unbalance nor redirect the return;
- subroutines only call subroutines placed after them (no recursion), loops run at most
  3 times and nest at most twice, so a program retires at most a few thousand instructions.

Layout (at fresh_machine.CODE):  jmp main / sub_0 ... sub_k / main: ... / end:
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

from hypothesis import strategies as st

from ring1.generated.forms import FORMS
from ring1.runtime.cpu import descriptors
from ring1.runtime.isa.assembler import AssemblerError, assemble
from ring1.runtime.isa.decoder import Decoded, decode
from ring1.runtime.tools import fresh_machine
from ring1.runtime.tools.snippet import SnippetResult

from ..diff.deviations import ALONE_FORMS, is_locked_neg
from ..diff.gen import MODES, STATUS_AND_DF, instance, registers, stack_image, writes_esp
from ..diff.harness import window_segments
from ..undefined_flags import Follower, counts_in_ecx, hook_ecx, straight_line
from .common import run_delivering

CPL0 = MODES["cpl0"]
BOOK = 0x2000  # bookkeeping (SS-relative, flat): counters, saved ESPs, call pointers
GPR = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")


def _source(form: str) -> str:
    return FORMS[form].source.split(":")[0].removeprefix("spec/").removesuffix(".r1")


# Forms left out of the random pool, and why.
EXCLUDED = {
    # Recorded unicorn deviations (tests/diff/deviations.py) that would make `bare` (unicorn)
    # differ from the architected result, which `bt` gives when it emulates the instruction:
    # tested explicitly against the interpreter in tests/vmm/test_equivalence.py instead.
    **{form: f"deviation {name}" for form, name in ALONE_FORMS.items()},
    # (ENTER also: stack frames of up to 64 KB would take ESP out of guest RAM.)
    # Not guest-kernel code this suite is about (segment loads, I/O, descriptor-table and
    # control-register writes, HLT): covered by the hostile and targeted tests.
    "NOP_RMv": "multi-byte NOP: nothing to compare",
}

ARITH_POOL = sorted(
    name
    for name, f in FORMS.items()
    if f.semantics and _source(name) in ("arith", "logic", "shift", "bit", "datamov", "string") and name not in EXCLUDED
    and f.rule == "ident" and (_source(name) != "string" or name[:3] not in ("INS", "OUT"))
)  # fmt: skip
FLAG_POOL = ["CLC", "STC", "CMC", "CLD", "STD", "LAHF", "SAHF"]
# The sensitive instructions the 1999 design had to virtualize (they do not trap at CPL 1).
STEALTH = [
    "PUSHF",
    "POPF",
    "CLI",
    "STI",
    "MOV_RMw_Sreg",
    "PUSH_CS",
    "PUSH_SS",
    "SGDT",
    "SIDT",
    "SLDT",
    "SMSW",
    "STR",
    "LAR",
    "LSL",
    "VERR",
    "VERW",
]
SELECTOR_TESTS = {"LAR", "LSL", "VERR", "VERW"}
# Selectors worth asking LAR/LSL/VERR/VERW about: the fresh GDT's, null, past its limit, and
# the VMM's own (spec/vmm.r1 SEL_*, and the six slots the VMM loads guest segments from).
PROBE_SELECTORS = (0x00, 0x03, 0x08, 0x0B, 0x10, 0x18, 0x1B, 0x20, 0x23, 0x28, 0x30, 0x38, 0x40, 0x4B, 0x50)
VMM_SELECTORS = (0xFFF0, 0xFFE8, 0xFFE1, 0xFFD9, 0xFFD0, 0xFF00, 0xFF09, 0xFF11, 0xFF19, 0xFF29)


CC_SUFFIXES = ("o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g")


def mov_imm(reg: str, value: int) -> str:
    return f"mov {reg}, {value & 0xFFFFFFFF:#x}"


@dataclass
class Source:
    """A program as Intel-syntax text for the one encoder (ring1.runtime.isa.assembler): the
    scaffolding (loops, calls, jumps, register loads) as instructions, the random instances
    (drawn from the spec's encodings by tests/diff/gen) as their own bytes."""

    items: list[str] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)
    n: int = 0

    def label(self) -> str:
        self.n += 1
        return f"L{self.n}"

    def emit(self, *lines: str) -> None:
        self.items.extend(lines)

    def emit_bytes(self, code: bytes) -> None:
        if code:
            self.items.append(".byte " + ", ".join(f"{b:#04x}" for b in code))

    def here(self, name: str) -> None:
        self.items.append(f"{name}:")

    def assemble(self, origin: int) -> bytes | None:
        """The code at `origin`; None if it cannot be encoded (a LOOP or JECXZ out of reach)."""
        try:
            out = assemble("\n".join(self.items), origin)
        except AssemblerError:
            return None
        self.labels = dict(out.labels)
        return out.code


@dataclass
class Program:
    code: bytes
    regs: dict[str, int]
    window: bytes
    stack: bytes
    forms: list[str]  # the forms of the random instances, in program order
    marks: list[int]  # the address of each (after the register loads it needs)
    pointers: dict[int, str]  # bookkeeping address -> label whose address it holds
    labels: dict[str, int]

    def spec(self) -> fresh_machine.FreshSpec:
        book = bytearray(0x1000)
        for addr, name in self.pointers.items():
            struct.pack_into("<I", book, addr - BOOK, self.labels[name])
        page = bytearray([0xF4]) * 0x1000
        page[: len(self.code)] = self.code
        memory = {
            fresh_machine.CODE: bytes(page),
            fresh_machine.DATA: self.window,
            fresh_machine.STACK_TOP: self.stack,
            fresh_machine.STACK_TOP - 64: self.stack,
            BOOK: bytes(book),
        }
        return fresh_machine.FreshSpec(
            code=self.code, regs=dict(self.regs), memory=memory, segs=window_segments(0, False)
        )

    def __repr__(self) -> str:
        regs = ", ".join(f"{k}={v:#x}" for k, v in self.regs.items())
        return f"Program({' '.join(self.forms)}; code={self.code.hex()}; {regs})"


class _Builder:
    def __init__(self, draw, pool: list[str], stealth: list[str], max_chunks: int, neutral: bool = True) -> None:
        self.draw = draw
        self.neutral = neutral  # keep recorded unicorn deviations from showing (see chunk)
        self.pool = pool
        self.stealth = stealth
        self.asm = Source()
        self.forms: list[str] = []
        self.marks: list[str] = []  # a label at each random instance
        self.window: dict[int, bytes] = {}
        self.pointers: dict[int, str] = {}
        self.next_slot = BOOK
        self.budget = max_chunks
        self.subs: list[str] = []
        self.extra_kinds: list[str] = []  # statements of a subclass (user programs: syscall, fault)
        self.popf_pushes = False  # always push what POPF pops (never TF), not only sometimes
        self.popf_never_sets = 0x100  # flags a pushed POPF value never has (TF: no single-stepping)
        self.cr0_high = 0  # CR0's high half as the program runs (0x8000 once it turns paging on)

    def slot(self) -> int:
        a = self.next_slot
        self.next_slot += 4
        return a

    # ------------------------------------------------------------ chunks

    def chunk(self) -> None:
        draw = self.draw
        self.budget -= 1
        pick_stealth = self.stealth and draw(st.integers(0, 3)) == 0
        form = draw(st.sampled_from(self.stealth if pick_stealth else self.pool))
        # LOCK NEG: unicorn's flags are wrong (deviation lock-neg-flags) and, lazily computed,
        # differ with block boundaries, so `bare` would say nothing about the VMM there.
        inst = draw(
            instance(form, CPL0).filter(
                lambda i: "esp" not in i.regs and not writes_esp(i.code) and not is_locked_neg(i.code)
            )
        )
        d = decode(inst.code + bytes(16), fresh_machine.CODE, True)
        if form[:3] in ("RCL", "RCR") and d.variant[2] == "mem":
            # Unicorn loses CF when RCL/RCR on memory is restarted after a page fault (see
            # tests/test_physcpu.py::test_rcl_rcr_memory_restarted_after_a_page_fault_lose_cf);
            # under bt every first touch of a page is such a restart: register operands only.
            inst = draw(
                instance(form, CPL0).filter(
                    lambda i: (
                        "esp" not in i.regs
                        and not writes_esp(i.code)
                        and decode(i.code + bytes(16), fresh_machine.CODE, True).variant[2] == "reg"
                    )
                )
            )
            d = decode(inst.code + bytes(16), fresh_machine.CODE, True)
        pre = [mov_imm(r, v) for r, v in sorted(inst.regs.items())]
        # (any address size: a 0x67 prefix on the register form changes nothing but the variant)
        if form == "SMSW" and self.neutral and d.variant[0] == 32 and d.variant[2] == "reg" and d.fields["dst"] != 4:
            # Deviation smsw-r32: unicorn writes only the low word of a 32-bit register. With the
            # register's high half CR0's (zero, or PG with paging) both results agree; the equivalence
            # tests check SMSW r32 with other values against the interpreter instead.
            pre.append(mov_imm(GPR[d.fields["dst"]], self.cr0_high << 16 | draw(st.integers(0, 0xFFFF))))
        if form in SELECTOR_TESTS:
            if d.variant[2] == "reg" and d.fields["src"] != 4:  # (SP stays the stack pointer)
                src = d.fields["src"]
                sel = draw(st.sampled_from(PROBE_SELECTORS + VMM_SELECTORS)) | draw(st.sampled_from((0, 0, 1, 2, 3)))
                pre.append(mov_imm(GPR[src], draw(st.integers(0, 0xFFFF)) << 16 | sel))
            else:
                for off in inst.memory:
                    sel = draw(st.sampled_from(PROBE_SELECTORS + VMM_SELECTORS))
                    inst.memory[off] = sel.to_bytes(2, "little") + inst.memory[off][2:]
        if form == "POPF" and (self.popf_pushes or draw(st.booleans())):
            # Something worth popping: random status flags, IF, IOPL, and the rest of EFLAGS but TF.
            value = draw(st.integers(0, 0xFFFFFFFF)) & (STATUS_AND_DF | 0x3F7200) & ~self.popf_never_sets
            pre.append(f"push {value:#x}")
        mark = self.asm.label()
        self.asm.emit(*pre)
        self.asm.here(mark)
        self.asm.emit_bytes(inst.code)
        self.window.update(inst.memory)
        self.forms.append(form)
        self.marks.append(mark)

    # ------------------------------------------------------------ control flow

    def block(self, depth: int, allow_calls: bool = True) -> None:
        draw = self.draw
        for _ in range(draw(st.integers(1, 4))):
            if self.budget <= 0:
                return
            kinds = ["chunk", "chunk", "chunk"]
            if depth < 2:
                kinds += ["if", "loop", "loop_ecx", "jump"]
            if allow_calls and self.subs:
                kinds += ["call", "call"]
            kinds += self.extra_kinds
            getattr(self, "stmt_" + draw(st.sampled_from(kinds)))(depth)

    def stmt_chunk(self, depth: int) -> None:
        self.chunk()

    def stmt_if(self, depth: int) -> None:
        a, draw = self.asm, self.draw
        skip = a.label()
        cc = draw(st.integers(0, 15))
        width = "{disp8}" if draw(st.booleans()) else "{disp32}"  # both encodings of Jcc
        a.emit(f"{width} j{CC_SUFFIXES[cc]} {skip}")
        self.block(depth + 1)
        a.here(skip)

    def stmt_loop(self, depth: int) -> None:
        a, draw = self.asm, self.draw
        counter = self.slot()
        top = a.label()
        a.emit(f"mov dword ptr ss:[{counter:#x}], {draw(st.integers(1, 3))}")
        a.here(top)
        self.block(depth + 1)
        a.emit(f"dec dword ptr ss:[{counter:#x}]", f"{{disp32}} jnz {top}")

    def stmt_loop_ecx(self, depth: int) -> None:
        # LOOP/LOOPE/LOOPNE/JECXZ are rel8 only: a short body, ECX kept in the bookkeeping area.
        a, draw = self.asm, self.draw
        save = self.slot()
        top, out = a.label(), a.label()
        a.emit(mov_imm("ecx", draw(st.integers(1, 3))))
        a.here(top)
        a.emit(f"mov ss:[{save:#x}], ecx")
        budget = self.budget
        self.budget = min(self.budget, 2)
        self.chunk()
        self.budget = budget - 1
        a.emit(f"mov ecx, ss:[{save:#x}]")
        # LOOP only: unicorn's LOOPE/LOOPNE corrupt lazily computed flags when ECX runs out
        # (tests/test_physcpu.py::test_loope_loopne_corrupt_lazy_flags); on `bare` and `bt` the
        # corruption depends on block boundaries, so it says nothing about the VMM.
        a.emit(f"loop {top}")
        if draw(st.booleans()):
            a.emit(f"jecxz {out}")  # (ECX is 0 when the loop ran out)
            self.chunk()
        a.here(out)

    def stmt_jump(self, depth: int) -> None:
        # A forward jump over junk that must not run: direct, through a register, or through memory.
        a, draw = self.asm, self.draw
        over = a.label()
        how = draw(st.sampled_from(("direct", "reg", "mem")))
        if how == "direct":
            a.emit(f"{{disp32}} jmp {over}")
        elif how == "reg":
            r = draw(st.sampled_from((0, 1, 2, 3, 5, 6, 7)))
            a.emit(f"mov {GPR[r]}, offset {over}", f"jmp {GPR[r]}")
        else:
            ptr = self.slot()
            self.pointers[ptr] = over
            a.emit(f"jmp dword ptr ss:[{ptr:#x}]")
        a.emit("ud2", *["hlt"] * draw(st.integers(0, 3)))  # never reached
        a.here(over)

    def stmt_call(self, depth: int) -> None:
        a, draw = self.asm, self.draw
        name, nargs = draw(st.sampled_from(self.subs))
        for _ in range(nargs):
            a.emit(f"push {draw(st.integers(0, 0xFFFFFFFF)):#x}")  # arguments
        how = draw(st.sampled_from(("direct", "direct", "reg", "mem")))
        if how == "direct":
            a.emit(f"call {name}")
        elif how == "reg":
            r = draw(st.sampled_from((0, 1, 2, 3, 5, 6, 7)))
            a.emit(f"mov {GPR[r]}, offset {name}", f"call {GPR[r]}")
        else:
            ptr = self.slot()
            self.pointers[ptr] = name
            a.emit(f"call dword ptr ss:[{ptr:#x}]")

    def subroutine(self, name: str, nargs: int) -> None:
        # The body's stack ops may pop the return address and push something else over it
        # (POPF then PUSHF rewrites it with the flags): the return address is kept in the
        # bookkeeping area and put back before the RET, with instructions that touch no flag.
        a = self.asm
        save, ret = self.slot(), self.slot()
        a.here(name)
        a.emit(f"pop dword ptr ss:[{ret:#x}]", f"push dword ptr ss:[{ret:#x}]", f"mov ss:[{save:#x}], esp")
        self.block(1)
        a.emit(f"mov esp, ss:[{save:#x}]", "lea esp, [esp + 4]", f"push dword ptr ss:[{ret:#x}]")
        a.emit(f"ret {4 * nargs}" if nargs else "ret")

    def program(self) -> None:
        draw, a = self.draw, self.asm
        main = a.label()
        a.emit(f"{{disp32}} jmp {main}")
        nsubs = draw(st.integers(0, 2))
        subs = [(f"sub{i}", draw(st.sampled_from((0, 0, 1, 2)))) for i in range(nsubs)]
        # Build from the last subroutine back, so each may call the ones after it.
        bodies = []
        for i in reversed(range(nsubs)):
            self.subs = subs[i + 1 :]
            mark = len(a.items)
            self.subroutine(*subs[i])
            bodies.insert(0, a.items[mark:])
            del a.items[mark:]
        for body in bodies:
            a.items.extend(body)
        self.subs = subs
        a.here(main)
        self.block(0)
        if not self.forms:
            self.chunk()


def _finish(draw, b: _Builder, max_size: int = 0xF00) -> Program:
    code = b.asm.assemble(fresh_machine.CODE)
    if code is None or len(code) > max_size:
        from hypothesis import reject

        reject()
    regs = draw(registers(CPL0))
    window = bytearray(random.Random(draw(st.integers(0, 2**32 - 1))).randbytes(fresh_machine.DATA_SIZE))
    for off, data in b.window.items():
        window[off : off + len(data)] = data
    stack = draw(stack_image(CPL0, 32))
    labels = dict(b.asm.labels)
    return Program(code, regs, bytes(window), stack, b.forms, [labels[m] for m in b.marks], b.pointers, labels)


@st.composite
def programs(
    draw, pool: list[str] | None = None, stealth: list[str] | None = None, max_chunks: int = 10, neutral: bool = True
) -> Program:
    """A random guest kernel program (see the module docstring). `stealth` forms make about a
    quarter of the chunks; `neutral=False` lets recorded unicorn deviations show (SMSW r32)."""
    b = _Builder(draw, pool if pool is not None else ARITH_POOL + FLAG_POOL, stealth or [], max_chunks, neutral)
    b.program()
    return _finish(draw, b)


@st.composite
def program_ending_with(draw, form: str, pool: list[str] | None = None, max_chunks: int = 6) -> Program:
    """A random program whose last instruction (nothing runs after it) is an instance of `form`."""
    b = _Builder(draw, pool if pool is not None else ARITH_POOL + FLAG_POOL, [], max_chunks)
    b.program()
    b.stealth, b.pool, b.budget = [], [form], 1
    b.chunk()
    return _finish(draw, b)


# ---------------------------------------------------------------- flags left undefined


def run_bare_traced(spec: fresh_machine.FreshSpec, max_insns: int = 100_000) -> tuple[SnippetResult, Follower]:
    """`bare` (tests/vmm/common.run) with the undefined flags followed along the path it took.

    Which flags a program leaves undefined depends on the path: an `if` body runs or not as the
    data decide. The path is what unicorn reports through a block hook (one Python call per
    executed translation block, the cheap way to know it); along it, each instruction's effect
    is its decoded form's flag declarations (tests/undefined_flags.py), looked up once per
    address. A block that stopped at an exception ran up to the instruction at the final EIP."""
    from unicorn import UC_HOOK_BLOCK

    from ring1.runtime.host.physcpu import UcError
    from ring1.runtime.tools.snippet import unicorn_machine

    cpu = unicorn_machine(spec)
    events: list[tuple[int, int, int]] = []  # (BLOCK, address, size), (ECX, address, value)
    cpu.uc.hook_add(UC_HOOK_BLOCK, lambda _uc, address, size, _user: events.append((BLOCK, address, size)))
    hook_ecx(cpu.uc, counted_in_ecx(spec), lambda address, value: events.append((ECX, address, value)))
    end = fresh_machine.CODE + len(spec.code)
    diagnosis = None
    try:
        ev = cpu.run(fresh_machine.CODE, end, count=max_insns)
    except UcError as err:
        ev, diagnosis = None, f"unicorn stopped: {err}"
    names = (*fresh_machine.GPR_NAMES, "eip", "eflags", *fresh_machine.SEG_NAMES)
    regs = dict(zip(names, cpu.read_state(), strict=True))
    stop = "vmstop" if diagnosis else "exception" if ev else "end" if regs["eip"] == end else "limit"
    result = SnippetResult(
        regs, ev.vector if ev else None, None, ev.cr2 if ev else None, stop, 0, diagnosis, bytes(cpu.memory.view)
    )
    # (Decoded from memory as it is at the end: the programs do not write their code.)
    return result, follow_blocks(result.memory, events, regs["eip"])


BLOCK, ECX, INTR = 0, 1, 2  # the kinds of events a traced run records


def counted_in_ecx(spec: fresh_machine.FreshSpec) -> list[int]:
    """The addresses of the code's instructions whose flag effect depends on ECX (CL shifts and
    rotates, REP string instructions), by a linear sweep from the start: a Program is a
    sequence of whole instructions (its junk after jumps is UD2 and HLTs)."""
    return [d.eip for d in straight_line(spec.code, fresh_machine.CODE, True) if counts_in_ecx(d)]


def follow_blocks(memory: bytes, events: list[tuple[int, int, int]], stop_eip: int) -> Follower:
    """The undefined flags along the (BLOCK, linear address, size) events in execution order
    (flat segments, and linear addresses that are physical) of the code in `memory`, each
    followed by the (ECX, address, value) events of the instructions in it that count in ECX,
    and by an (INTR, EIP, vector) event if an exception or interrupt cut it there; the last
    block ran up to `stop_eip`."""
    decoded: dict[int, Decoded] = {}
    ran = Follower()
    starts = [i for i, e in enumerate(events) if e[0] == BLOCK]
    for n, i in enumerate(starts):
        _, address, size = events[i]
        last = n == len(starts) - 1
        ecx: dict[int, int] = {}
        cut = None
        for kind, at, value in events[i + 1 : None if last else starts[n + 1]]:
            if kind == ECX:
                ecx.setdefault(at, value)  # (a REP's later iterations are blocks of their own)
            elif kind == INTR and cut is None:
                cut = (at, value)
        stop = cut[0] if cut else stop_eip if last else None
        at, block_end = address, address + size
        while at < block_end and at != stop:
            d = decoded.get(at)
            if d is None:
                d = decoded[at] = decode(memory[at : at + 16] + bytes(16), at, True)
            ran.step(d, ecx.get(at))
            at += d.length or 1  # (an undecodable byte raised #UD: the block ends there)
        if cut and ran.undefined & STATUS_FLAGS:
            ran.reads.append((cut[0], f"(delivery of vector {cut[1]})", ran.undefined & STATUS_FLAGS))
    return ran


# ---------------------------------------------------------------- user-mode programs and system calls

# A user program is a guest kernel that drops to CPL 3 and a random user program run there,
# which makes system calls and takes exceptions that the kernel handles:
#
#   CODE:  kernel entry (CPL 0): [paging on]; IRET to user_main at CPL 3 (CS 0x1B, SS 0x23,
#          a random EFLAGS: status flags, DF, IF, IOPL) through the fresh TSS (ESP0 0x3000)
#          k_syscall: INT 0x80 (DPL-3 gate) lands here: random kernel code (the kernel pool
#          with the stealth instructions) on the kernel stack, then IRET back to CPL 3
#          f_<vector>: one stub per exception (a dummy error code where the CPU pushes none)
#          k_fault: logs vector, error code, EIP, CS and CR2 in the fault log, then IRETs to
#          the resume point, the end of the chunk or statement that faulted
#          user code: jmp main / sub_0 ... / main: ... / end: (the run ends at `end`, at CPL 3)
#
# Every user and kernel chunk first stores its resume point (the address after it) in RESUME,
# so a fault anywhere resumes after the chunk that raised it. The user statements besides the
# kernel programs' ones: `int 0x80`, and a deliberate fault (a privileged instruction, a
# selector it may not load, #DE, INT3, INTO, UD2, INT to a DPL-0 gate, and with paging a user
# access to a supervisor page or a page not present).
#
# DS, ES, FS and GS are the DPL-3 DATA window (0x4B) in both rings; SS is flat in both, so the
# bookkeeping area (0x2000-0x2FFF, with the fault log and RESUME) is user-accessible. The
# kernel stack grows down from 0x3000 in the same page, far above the bookkeeping slots.
# With paging, guest RAM is identity-mapped user-accessible, but for SUPERVISOR_PAGE (U/S = 0)
# and ABSENT_PAGE (not present).

USER_CODE_SIZE = 0x3000  # CODE .. CODE + 0x3000: below the DATA window
RESUME, SYSCALLS, KSAVE, LOG_INDEX = 0x2700, 0x2704, 0x2708, 0x270C
FAULT_LOG, FAULT_LOG_ENTRY, FAULT_LOG_ENTRIES = 0x2800, 32, 32
KERNEL_STACK_ROOM = 128  # the syscall handler's random stack ops run this far below its frame
USER_PD, USER_PT0 = 0x20000, 0x21000
SUPERVISOR_PAGE, ABSENT_PAGE = 0x30000, 0x31000
ERROR_CODE_VECTORS = frozenset((8, 10, 11, 12, 13, 14, 17))
SYSCALL_VECTOR, KERNEL_ONLY_VECTOR = 0x80, 0x81  # the second has a DPL-0 gate: INT from CPL 3 is #GP
SEL_USER_WINDOW = fresh_machine.SEL_WINDOW3
USER_POPF_NEVER_SETS = 0x100  # TF (see _UserBuilder)

# The sensitive instructions that do not trap at CPL 3 either, where user code runs directly on
# the hardware: PUSHF shows IF and IOPL, POPF changes IF only with IOPL 3 (CLI and STI are #GP
# below it), SGDT, SIDT, SLDT, SMSW, STR, the selector reads, LAR, LSL, VERR and VERW show the
# descriptor tables, selectors and CR0 the hardware holds (the guest's, issue 10 items 1 and 3).
USER_STEALTH = STEALTH

# name -> the instructions of a fault a user program raises on purpose (some only sometimes:
# CLI and STI run with IOPL 3, INTO traps only with OF set).
USER_FAULTS: dict[str, tuple[str, ...]] = {
    "cli": ("cli",),
    "sti": ("sti",),
    "hlt": ("hlt",),
    "mov from cr0": ("mov eax, cr0",),
    "mov to cr3": ("mov cr3, eax",),
    "lgdt": (f"lgdt ss:[{RESUME:#x}]",),
    "invlpg": (f"invlpg ss:[{fresh_machine.DATA:#x}]",),
    "clts": ("clts",),
    "wrmsr": ("mov ecx, 0x174", "wrmsr"),
    "rdmsr": ("mov ecx, 0x176", "rdmsr"),
    "ud2": ("ud2",),
    "int3": ("int3",),
    "int 3": ("int 3",),
    "into": ("into",),
    "int to a DPL-0 gate": (f"int {KERNEL_ONLY_VECTOR:#x}",),
    "divide by zero": ("mov ecx, 0", "div ecx"),
    "idiv byte by zero": ("mov bl, 0", "idiv bl"),
    "load the kernel's data selector": (f"mov ax, {fresh_machine.SEL_DATA0:#x}", "mov ds, ax"),
    "load the kernel's code selector": (f"mov ax, {fresh_machine.SEL_CODE0:#x}", "mov es, ax"),
}
PAGING_FAULTS: dict[str, tuple[str, ...]] = {
    "read a supervisor page": (f"mov eax, ss:[{SUPERVISOR_PAGE + 0x124:#x}]",),
    "write a supervisor page": (f"mov ss:[{SUPERVISOR_PAGE + 0x800:#x}], ebx",),
    "add to a supervisor page": (f"add dword ptr ss:[{SUPERVISOR_PAGE + 0xFFC:#x}], 7",),
    "read a page not present": (f"mov eax, ss:[{ABSENT_PAGE + 0x10:#x}]",),
    "write a page not present": (f"mov byte ptr ss:[{ABSENT_PAGE + 0x3:#x}], 1",),
}


@dataclass
class UserProgram(Program):
    paging: bool = False
    gates: dict[int, tuple[str, int, int]] = field(default_factory=dict)  # vector -> (label, kind, dpl)

    def spec(self) -> fresh_machine.FreshSpec:
        spec = super().spec()
        code = bytearray([0xF4]) * USER_CODE_SIZE
        code[: len(self.code)] = self.code
        spec.memory[fresh_machine.CODE] = bytes(code)
        idt = bytearray()
        for vector in range(256):
            label, kind, dpl = self.gates.get(vector, self.gates[-1])
            idt += descriptors.gate(self.labels[label], fresh_machine.SEL_CODE0, kind, dpl)
        spec.memory[fresh_machine.IDT] = bytes(idt)
        if self.paging:
            spec.memory.update(user_page_tables())
        spec.segs = dict.fromkeys(("ds", "es", "fs", "gs"), SEL_USER_WINDOW)
        return spec

    def __repr__(self) -> str:
        return "User" + super().__repr__().removesuffix(")") + f"; paging={self.paging})"


def user_page_tables() -> dict[int, bytes]:
    pd, pt0 = bytearray(4096), bytearray(4096)
    struct.pack_into("<I", pd, 0, USER_PT0 | 7)
    for i in range(fresh_machine.MEMORY_SIZE >> 12):
        flags = 7  # P RW US
        if i << 12 == SUPERVISOR_PAGE:
            flags = 3
        elif i << 12 == ABSENT_PAGE:
            flags = 0
        struct.pack_into("<I", pt0, i * 4, (i << 12) | flags)
    return {USER_PD: bytes(pd), USER_PT0: bytes(pt0)}


class _UserBuilder(_Builder):
    def __init__(self, draw, paging: bool, max_chunks: int, kernel_chunks: int) -> None:
        super().__init__(draw, ARITH_POOL + FLAG_POOL, USER_STEALTH, max_chunks)
        self.paging = paging
        self.cr0_high = 0x8000 if paging else 0  # PG: the kernel turns paging on first
        self.kernel_chunks = kernel_chunks
        self.faults = sorted({**USER_FAULTS, **(PAGING_FAULTS if paging else {})})
        self.gates: dict[int, tuple[str, int, int]] = {}
        # What the stack holds may have TF set (an IRET frame's EIP, a pushed immediate): a POPF
        # of it would single-step, and `bare` cannot be the reference there (it takes the #DB
        # trap for a fault). Every POPF pops a value pushed for it, without TF.
        self.popf_pushes = True
        self.popf_never_sets = USER_POPF_NEVER_SETS

    def chunk(self) -> None:
        # The resume point first: an exception in the chunk resumes after it (k_fault).
        after = self.asm.label()
        self.asm.emit(f"mov dword ptr ss:[{RESUME:#x}], offset {after}")
        super().chunk()
        self.asm.here(after)

    def define_flags(self) -> None:
        """Sometimes a CMP that defines all six status flags before an event: the frame an
        event pushes holds EFLAGS, and a flag left undefined there makes the run no evidence."""
        if self.draw(st.booleans()):
            self.asm.emit(f"cmp dword ptr ss:[{RESUME:#x}], {self.draw(st.integers(0, 0xFFFFFFFF)):#x}")

    def stmt_syscall(self, depth: int) -> None:
        self.budget -= 1
        self.define_flags()
        mark = self.asm.label()
        self.asm.here(mark)
        self.asm.emit(f"int {SYSCALL_VECTOR:#x}")
        self.forms.append("(int 0x80)")
        self.marks.append(mark)

    def stmt_fault(self, depth: int) -> None:
        self.budget -= 1
        name = self.draw(st.sampled_from(self.faults))
        self.fault(name, define_flags=True)

    def fault(self, name: str, define_flags: bool = False) -> None:
        """The fault `name` (USER_FAULTS, PAGING_FAULTS), resumed after."""
        after, mark = self.asm.label(), self.asm.label()
        self.asm.emit(f"mov dword ptr ss:[{RESUME:#x}], offset {after}")
        if define_flags:
            self.define_flags()
        *setup, faulting = USER_FAULTS.get(name) or PAGING_FAULTS[name]
        self.asm.emit(*setup)
        self.asm.here(mark)
        self.asm.emit(faulting)
        self.asm.here(after)
        self.forms.append(f"({name})")
        self.marks.append(mark)

    def kernel(self, eflags: int | None = None, syscall_code: list[str] | None = None) -> None:
        """The kernel; with `eflags` for user mode and the system call's `syscall_code` given,
        nothing is drawn (fixed_user_program): an interrupt gate for INT 0x80."""
        a, draw = self.asm, self.draw
        user_main = a.label()
        if self.paging:
            a.emit(
                "push eax",
                f"mov eax, {USER_PD:#x}",
                "mov cr3, eax",
                "mov eax, cr0",
                "or eax, 0x80000000",
                "mov cr0, eax",
                "pop eax",
            )
        eflags = draw(registers(CPL0))["eflags"] if eflags is None else eflags
        a.emit(
            f"push {fresh_machine.SEL_DATA3:#x}",
            f"push {fresh_machine.STACK_TOP:#x}",
            f"push {eflags:#x}",
            f"push {fresh_machine.SEL_CODE3:#x}",
            f"push offset {user_main}",
            "iretd",
        )
        # The system call: random kernel code on the kernel stack, below its frame.
        kind = descriptors.GATE_INTERRUPT32
        if syscall_code is None:
            kind = draw(st.sampled_from((descriptors.GATE_INTERRUPT32, descriptors.GATE_TRAP32)))
        self.gates[SYSCALL_VECTOR] = ("k_syscall", kind, 3)
        self.gates[KERNEL_ONLY_VECTOR] = ("k_syscall", kind, 0)
        a.here("k_syscall")
        a.emit(f"mov ss:[{KSAVE:#x}], esp", f"lea esp, [esp - {KERNEL_STACK_ROOM}]")
        if syscall_code is None:
            user = (self.pool, self.stealth, self.budget, self.extra_kinds, self.popf_never_sets)
            self.pool = ARITH_POOL + FLAG_POOL
            self.stealth, self.budget, self.extra_kinds, self.popf_never_sets = STEALTH, self.kernel_chunks, [], 0x100
            self.block(1, allow_calls=False)
            self.pool, self.stealth, self.budget, self.extra_kinds, self.popf_never_sets = user
        else:
            a.emit(*syscall_code)
        a.emit(
            f"inc dword ptr ss:[{SYSCALLS:#x}]",
            f"mov esp, ss:[{KSAVE:#x}]",
            # NT and TF off for the IRET (a random POPF may have set them): a return, not a task switch.
            "pushfd",
            "and dword ptr [esp], 0xFFFFBEFF",
            "popfd",
            "iretd",
        )
        # The exceptions: stubs, and the handler that logs them and resumes.
        for vector in (*range(32), -1):
            stub = f"f_{vector}" if vector >= 0 else "f_other"
            self.gates[vector] = (stub, descriptors.GATE_TRAP32, 3 if vector in (3, 4) else 0)
            a.here(stub)
            if vector not in ERROR_CODE_VECTORS:
                a.emit("push 0")
            a.emit(f"push {vector & 0xFF:#x}", "jmp k_fault")
        log = [f"mov ss:[{FAULT_LOG + 4 * i:#x} + ebx], eax" for i in range(5)]
        a.here("k_fault")
        a.emit(
            "push eax",
            "push ebx",
            f"mov ebx, ss:[{LOG_INDEX:#x}]",
            f"and ebx, {(FAULT_LOG_ENTRIES - 1) * FAULT_LOG_ENTRY:#x}",
            "mov eax, [esp + 8]",  # vector
            log[0],
            "mov eax, [esp + 12]",  # error code
            log[1],
            "mov eax, [esp + 16]",  # EIP
            log[2],
            "mov eax, [esp + 20]",  # CS
            log[3],
            "mov eax, cr2",
            log[4],
            f"add dword ptr ss:[{LOG_INDEX:#x}], {FAULT_LOG_ENTRY}",
            f"mov eax, ss:[{RESUME:#x}]",
            "mov [esp + 16], eax",
            "pop ebx",
            "pop eax",
            "add esp, 8",
            "iretd",
        )
        a.here(user_main)

    def user_program(self) -> None:
        self.kernel()
        kernel_forms = len(self.forms)
        self.extra_kinds = ["syscall", "syscall", "fault", "fault"]
        self.program()
        if len(self.forms) == kernel_forms:
            self.chunk()  # (at the end of main: a user program does something)
        self.asm.here("end")


@st.composite
def user_programs(draw, paging: bool | None = None, max_chunks: int = 10, kernel_chunks: int = 4) -> UserProgram:
    """A random guest kernel that drops to CPL 3 and runs a random user program there, with
    system calls into random kernel code and exceptions handled by the kernel (see above)."""
    paging = draw(st.booleans()) if paging is None else paging
    b = _UserBuilder(draw, paging, max_chunks, kernel_chunks)
    b.user_program()
    p = _finish(draw, b, USER_CODE_SIZE - 0x100)
    assert b.next_slot < RESUME, "bookkeeping slots run into the fixed ones"
    return UserProgram(**vars(p), paging=paging, gates=b.gates)


# ---------------------------------------------------------------- runs that deliver events

STATUS_FLAGS = 0x8D5  # CF PF AF ZF SF OF: what an event's frame holds that an instruction may leave undefined


def run_bare_delivering_traced(
    spec: fresh_machine.FreshSpec, max_insns: int = 100_000
) -> tuple[SnippetResult, Follower]:
    """`bare` with events delivered (run_delivering), and the undefined flags followed along the
    path it took (as run_bare_traced): its translation blocks, cut where an event came (its
    deliverer tells where: a fault's EIP is the faulting instruction, a software interrupt's
    the one after it; unicorn's interrupt hook would miss #UD, which comes as an invalid
    instruction). Delivering an event pushes EFLAGS: a status flag undefined there is read
    (into the frame in memory, and back by the handler's IRET)."""
    from unicorn import UC_HOOK_BLOCK
    from unicorn import x86_const as X

    from ring1.runtime import engines

    engine = engines.create("bare", fresh_machine.MEMORY_SIZE)
    bare = engine.bare
    uc = bare.cpu.uc
    events: list[tuple[int, int, int]] = []
    uc.hook_add(UC_HOOK_BLOCK, lambda _uc, address, size, _user: events.append((BLOCK, address, size)))
    hook_ecx(uc, counted_in_ecx(spec), lambda address, value: events.append((ECX, address, value)))
    deliver = bare.deliver

    def deliver_and_record(vector: int) -> None:
        events.append((INTR, uc.reg_read(X.UC_X86_REG_EIP), vector))  # (flat CS: EIP is linear)
        deliver(vector)

    bare.deliver = deliver_and_record
    result = run_delivering(spec, "bare", max_insns=max_insns, engine=engine)
    return result, follow_blocks(result.memory or b"", events, result.regs["eip"])


def fixed_user_program(
    statements: list[str], paging: bool = True, eflags: int = 0x202, syscall_code: tuple[str, ...] = ("add eax, 0x100",)
) -> UserProgram:
    """A user program with nothing drawn: the kernel of user_programs with `syscall_code` as its
    system call, user mode entered with `eflags`, and user code made of `statements`, each a
    fault of USER_FAULTS or PAGING_FAULTS, "syscall" (INT 0x80), or an instruction."""
    b = _UserBuilder(None, paging, 0, 0)
    b.kernel(eflags, list(syscall_code))
    for statement in statements:
        if statement in USER_FAULTS or statement in PAGING_FAULTS:
            b.fault(statement)
        else:
            b.asm.emit(f"int {SYSCALL_VECTOR:#x}" if statement == "syscall" else statement)
    b.asm.here("end")
    code = b.asm.assemble(fresh_machine.CODE)
    assert code is not None
    window, stack = bytes(fresh_machine.DATA_SIZE), bytes(64)
    labels = dict(b.asm.labels)
    marks = [labels[m] for m in b.marks]  # where each fault statement's faulting instruction is
    return UserProgram(code, {}, window, stack, statements, marks, {}, labels, paging=paging, gates=b.gates)
