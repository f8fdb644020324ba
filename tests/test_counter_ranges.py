"""Code hooks that ride on the instruction counter's (host/counter.py, `hook_ranges`): the VMM's
pad and stub hooks. Unicorn runs every instruction slower for each code hook it holds, wherever
the hook's range is (seen as the gap between translated code and bare's guest code in `ring1
bench boot`'s split), so the VMM's are range tests in the counter's C hook.
They must behave as unicorn's own hooks did: called once before each instruction of the range
that runs, with unicorn's arguments, never for one the counter stops before, and an exception
out of one ends emu_start with that exception."""

from __future__ import annotations

import pytest
from unicorn import UC_ARCH_X86, UC_MODE_32, Uc
from unicorn.x86_const import UC_X86_REG_EAX, UC_X86_REG_ECX

from ring1.runtime.host.counter import InstructionCounter

BASE = 0x1000
# mov ecx, 5 ; l: inc eax ; dec ecx ; jnz l ; nop ; hlt
CODE = bytes.fromhex("b9 05 00 00 00 40 49 75 fc 90 f4")
INC_EAX, NOP = BASE + 5, BASE + 9


def cpu() -> tuple[Uc, InstructionCounter]:
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(BASE, 0x1000)
    uc.mem_write(BASE, CODE)
    return uc, InstructionCounter(uc)


def test_a_range_hook_sees_each_instruction_of_its_range_that_runs() -> None:
    uc, counter = cpu()
    seen: list[tuple[int, int, int]] = []
    counter.hook_ranges(
        [
            (INC_EAX, INC_EAX, lambda u, a, s, _: seen.append((a, s, u.reg_read(UC_X86_REG_EAX)))),
            (NOP, NOP, lambda u, a, s, _: seen.append((a, s, -1))),
        ]
    )
    counter.start(None)
    uc.emu_start(BASE, BASE + len(CODE) - 1)
    # Before each INC (EAX not yet incremented), then the NOP: unicorn's order and arguments.
    assert seen == [(INC_EAX, 1, i) for i in range(5)] + [(NOP, 1, -1)]
    assert counter.counts.calls == 1 + 5 * 3 + 1


def test_no_call_for_an_instruction_the_counter_stops_before() -> None:
    uc, counter = cpu()
    seen: list[int] = []
    counter.hook_ranges([(INC_EAX, INC_EAX, lambda u, a, s, _: seen.append(u.reg_read(UC_X86_REG_ECX)))])
    counter.start(4)  # MOV, then the first loop's INC, DEC, JNZ: stops before the second INC
    uc.emu_start(BASE, BASE + len(CODE) - 1)
    assert seen == [5]
    counter.start(None)
    uc.emu_start(INC_EAX, BASE + len(CODE) - 1)  # restarted there: called then, once
    assert seen == [5, 4, 3, 2, 1]


def test_an_exception_in_a_range_hook_stops_the_cpu_and_is_raised() -> None:
    uc, counter = cpu()

    def fail(u, a, s, _):
        raise ValueError("from the hook")

    counter.hook_ranges([(NOP, NOP, fail)])
    counter.start(None)
    uc.emu_start(BASE, BASE + len(CODE) - 1)  # (a bare Uc: the caller raises it, as PhysicalCpu does)
    with pytest.raises(ValueError, match="from the hook"):
        counter.raise_hook_error()
    counter.raise_hook_error()  # raised once
    assert uc.reg_read(UC_X86_REG_EAX) == 5


def test_a_new_set_replaces_the_old_and_the_limit_is_checked() -> None:
    uc, counter = cpu()
    seen: list[str] = []
    counter.hook_ranges([(INC_EAX, INC_EAX, lambda *a: seen.append("old"))])
    counter.hook_ranges([(NOP, NOP, lambda *a: seen.append("new"))])
    counter.start(None)
    uc.emu_start(BASE, BASE + len(CODE) - 1)
    assert seen == ["new"]
    with pytest.raises(ValueError):
        counter.hook_ranges([(0, 0, lambda *a: None)] * 9)
