"""The page-trace registry (runtime/traces.py) and what subscribes to it: the interpreter's block
cache, the VMM's translation cache and its shadow page tables; translations valid only for the
mapping they were made under (CR3 writes, INVLPG). Every guest run is compared with `bare`."""

from __future__ import annotations

import struct

import pytest

from ring1.runtime.cpu.traces import CodeRanges, PageTraces, instruction_ranges
from ring1.runtime.tools import fresh_machine
from ring1.runtime.vmm import WHY_SHADOW, WHY_TC

from .common import ENABLE_PAGING, PD, PT0, differences, new_vmm, paging_memory, run

MODES = ("interp", "bt", "trap")

# ---------------------------------------------------------------- the registry itself


def test_two_subscribers_of_one_page_are_both_told_with_the_bytes_written() -> None:
    traces = PageTraces()
    heard: list[tuple[str, int, int, int]] = []
    traces.watch(5, "a", lambda p, s, e: heard.append(("a", p, s, e)))
    traces.watch(5, "b", lambda p, s, e: heard.append(("b", p, s, e)))
    traces.notify(5, 0x10, 0x14)
    traces.notify(6, 0, 1)  # nobody watches page 6
    assert heard == [("a", 5, 0x10, 0x14), ("b", 5, 0x10, 0x14)]
    assert traces.whys(5) == ("a", "b") and 5 in traces and 6 not in traces


def test_unwatching_one_subscriber_leaves_the_other() -> None:
    traces = PageTraces()
    heard: list[str] = []
    traces.watch(1, "a", lambda *_: heard.append("a"))
    traces.watch(1, "b", lambda *_: heard.append("b"))
    traces.unwatch(1, "a")
    traces.notify(1, 0, 4)
    assert heard == ["b"]
    traces.unwatch(1, "b")
    assert 1 not in traces and traces.whys(1) == ()
    traces.unwatch(1, "b")  # nothing left: no error


def test_a_second_callback_for_the_same_reason_is_refused_not_silently_replacing() -> None:
    traces = PageTraces()

    def first(*_: int) -> None:
        pass

    traces.watch(2, "tc", first)
    assert traces.watch(2, "tc", first).callback is first  # watching again: the same watch
    with pytest.raises(ValueError, match="already watched"):
        traces.watch(2, "tc", lambda *_: None)


def test_a_subscriber_removed_by_an_earlier_one_during_a_write_is_not_called() -> None:
    traces = PageTraces()
    heard: list[str] = []

    def a(page: int, start: int, end: int) -> None:
        heard.append("a")
        traces.unwatch(page, "b")

    traces.watch(3, "a", a)
    traces.watch(3, "b", lambda *_: heard.append("b"))
    traces.notify(3, 0, 1)
    assert heard == ["a"]


def test_first_watch_of_a_page_is_announced_once_and_unwatch_all_drops_one_reason() -> None:
    traces = PageTraces()
    first: list[int] = []
    traces.on_first_watch.append(first.append)
    traces.watch(7, "a", lambda *_: None)
    traces.watch(7, "b", lambda *_: None)
    traces.watch(8, "a", lambda *_: None)
    assert first == [7, 8]
    traces.unwatch_all("a")
    assert traces.pages("a") == [] and traces.whys(7) == ("b",) and 8 not in traces


def test_code_ranges_of_an_instruction_across_a_page_boundary() -> None:
    # 6 bytes at linear 0x1ffd: 3 on the page fetched first (physical 0x40), 3 on the next (0x77).
    ranges = instruction_ranges(0x1FFD, 6, (0x40, 0x77))
    assert ranges == [(0x40, 0xFFD, 0x1000), (0x77, 0, 3)]
    code = CodeRanges()
    code.add([(0x40, 0xFF0, 0xFFD)])
    code.add(ranges)
    assert code.spans == {0x40: [(0xFF0, 0x1000)], 0x77: [(0, 3)]}
    assert code.pages == {0x40, 0x77}
    assert code.overlaps(0x77, 2, 3) and not code.overlaps(0x77, 3, 8) and not code.overlaps(0x40, 0, 0xFF0)


# ---------------------------------------------------------------- guests


def jmp(at: int, target: int) -> bytes:
    return b"\xe9" + struct.pack("<I", (target - (at + 5)) & 0xFFFFFFFF)


def call(at: int, target: int) -> bytes:
    return b"\xe8" + struct.pack("<I", (target - (at + 5)) & 0xFFFFFFFF)


def compare_all(spec: fresh_machine.FreshSpec) -> dict:
    """Run in bare and every mode; each must agree with bare. Returns the VMMs by mode."""
    bare = run(spec, "bare")
    vmms = {}
    for mode in MODES:
        vmm = new_vmm(mode) if mode != "interp" else None
        r = run(spec, mode, vmm)
        assert differences(bare, r) == [], mode
        vmms[mode] = vmm
    return {"bare": bare, **vmms}


# Code on the page-table page PT0 (which maps the first 2 MB with its first half): at PT0+0x800.
SHARED = PT0 + 0x800
PROBE = 0x100000  # a page mapped by PT0's entry 0x100, at PT0 + 0x400
# sub: mov bl, 0x11 (its immediate is rewritten); add esi, ebx; jmp edi (no stack: no page walk)
SUB = b"\xb3\x11\x01\xde\xff\xe7"


def _load(addr: int) -> bytes:
    return b"\xa1" + struct.pack("<I", addr)  # mov eax, [addr]


def _jmp_sub(at: int) -> bytes:
    """mov edi, <after>; jmp SHARED: a call that touches no memory."""
    return b"\xbf" + struct.pack("<I", at + 10) + jmp(at + 5, SHARED)


@pytest.mark.parametrize("order", ["traced first", "translated first"])
def test_translated_code_on_a_traced_page_table_page_drops_both_on_a_write(order: str) -> None:
    """One page holds a page table and translated code; one subscriber must not hide the other,
    whichever subscribed first (the page is traced when the VMM first walks through it, which
    here is either before or after the code on it is translated). A store into the code must
    drop its CCF (the second call adds the new immediate); a later store into a PTE must drop
    the shadow entry (the load after INVLPG faults)."""
    memory = paging_memory()
    pt0 = bytearray(memory[PT0])
    pt0[0x800 : 0x800 + len(SUB)] = SUB
    memory[PT0] = bytes(pt0)
    code = ENABLE_PAGING
    if order == "traced first":
        code += _load(PROBE + 0x1000)  # walks PT0: traced before the code on it is translated
    code += _jmp_sub(fresh_machine.CODE + len(code))  # translated (and run) before any walk through PT0
    code += _load(PROBE)  # the hardware maps PROBE
    code += b"\xc6\x05" + struct.pack("<I", SHARED + 1) + b"\x42"  # mov byte [sub+1], 0x42
    code += _load(PROBE)  # mapped again after whatever the write dropped
    code += b"\xc7\x05" + struct.pack("<II", PT0 + 0x400, 0)  # mov dword [PROBE's PTE], 0
    code += _jmp_sub(fresh_machine.CODE + len(code))
    code += b"\x0f\x01\x3d" + struct.pack("<I", PROBE)  # invlpg [PROBE]
    code += _load(PROBE)  # #PF
    runs = compare_all(fresh_machine.FreshSpec(code=code, memory=memory))
    bare = runs["bare"]
    assert bare.exception == 14 and bare.cr2 == PROBE and bare.regs["esi"] == 0x11 + 0x42
    vmm = runs["bt"]
    assert vmm.stats["traced_writes"] >= 2 and vmm.stats["units_invalidated"] >= 1
    assert vmm.stats["tc_flushes"] == 0


def test_the_vmm_subscribes_to_a_page_under_both_reasons() -> None:
    # The shared page after the guest above has translated its code and walked its tables
    # (stopped before the write): both subscriptions are on it.
    memory = paging_memory()
    pt0 = bytearray(memory[PT0])
    shared = _load(PROBE) + b"\xf4"  # mov eax, [PROBE]; hlt
    pt0[0x800 : 0x800 + len(shared)] = shared
    memory[PT0] = bytes(pt0)
    code = ENABLE_PAGING + jmp(fresh_machine.CODE + len(ENABLE_PAGING), SHARED)
    vmm = new_vmm("bt")
    run(fresh_machine.FreshSpec(code=code, memory=memory), "bt", vmm)
    assert set(vmm.m.traces.whys(PT0 >> 12)) >= {WHY_TC, WHY_SHADOW}


# ---------------------------------------------------------------- TC coherency, page by page


def test_a_write_drops_only_the_units_made_from_the_bytes_written() -> None:
    # A routine on the code page is called in a loop; the loop also stores into a counter on the
    # same page. The counter's bytes are code of no unit: no unit is dropped, nothing retranslated.
    routine = fresh_machine.CODE + 0x100
    counter = fresh_machine.CODE + 0x200
    code = b"\xb9" + struct.pack("<I", 50)  # mov ecx, 50
    top = fresh_machine.CODE + len(code)
    code += call(top, routine)
    code += b"\xff\x05" + struct.pack("<I", counter)  # inc dword [counter]
    code += b"\x49" + b"\x0f\x85" + struct.pack("<I", (top - (fresh_machine.CODE + len(code) + 7)) & 0xFFFFFFFF)
    page = bytearray(0x300)
    page[: len(code)] = code
    page[0x100:0x104] = b"\x83\xc0\x03\xc3"  # add eax, 3; ret
    spec = fresh_machine.FreshSpec(code=code, memory={fresh_machine.CODE: bytes(page)})
    runs = compare_all(spec)
    assert runs["bare"].regs["eax"] == 150
    assert int.from_bytes(runs["bare"].memory[counter : counter + 4], "little") == 50
    vmm = runs["bt"]
    assert vmm.stats["code_writes"] >= 1
    assert vmm.stats["units_invalidated"] == 0 and vmm.stats["tc_flushes"] == 0


def test_chained_jumps_into_a_dropped_unit_reach_its_new_translation() -> None:
    # A loop whose back edge is chained to the unit it rewrites: after the write, the chained
    # jump must not reach the dropped CCF (it would add the old immediate).
    code = b"\xb9" + struct.pack("<I", 6)  # mov ecx, 6
    top = fresh_machine.CODE + len(code)
    code += b"\x05" + struct.pack("<I", 1)  # top: add eax, imm32
    imm = top + 1
    code += b"\x49"  # dec ecx
    code += b"\x83\xf9\x03"  # cmp ecx, 3
    code += b"\x75\x0a"  # jne skip (the write happens once, half way)
    code += b"\xc7\x05" + struct.pack("<II", imm, 0x100)  # mov dword [imm], 0x100
    code += b"\x85\xc9"  # skip: test ecx, ecx
    code += b"\x0f\x85" + struct.pack("<I", (top - (fresh_machine.CODE + len(code) + 6)) & 0xFFFFFFFF)
    runs = compare_all(fresh_machine.FreshSpec(code=code))
    assert runs["bare"].regs["eax"] == 3 + 3 * 0x100
    vmm = runs["bt"]
    assert vmm.stats["units_invalidated"] >= 1 and vmm.stats["chained_links"] >= 2


def test_a_dropped_unit_is_not_live_and_the_flag_survives_a_full_flush() -> None:
    vmm = new_vmm("bt")
    code = b"\xc6\x05" + struct.pack("<I", fresh_machine.CODE + 8) + b"\x42" + b"\xb3\x11"  # rewrite the next MOV
    r = run(fresh_machine.FreshSpec(code=code), "bt", vmm)
    assert r.regs["ebx"] & 0xFF == 0x42
    dropped = vmm.stats["units_invalidated"]
    assert dropped >= 1
    live = list(vmm.by_host.values())
    assert live and all(u.live for u in live)
    vmm.flush_translations()
    assert all(not u.live for u in live) and not vmm.by_host and not vmm.units


# ---------------------------------------------------------------- translations and mappings

ROUTINE = 0x50000  # one linear page, two physical pages of code
OTHER = 0x60000
PD_B, PT_B = 0x23000, 0x24000


def _two_routines() -> dict[int, bytes]:
    # mov ebx, n; add esi, ebx; ret: n is 1 at ROUTINE, 2 at OTHER
    return {ROUTINE: b"\xbb\x01\x00\x00\x00\x01\xde\xc3", OTHER: b"\xbb\x02\x00\x00\x00\x01\xde\xc3"}


def test_two_address_spaces_with_different_code_at_one_linear_address() -> None:
    memory = paging_memory()
    pt_b = bytearray(memory[PT0])
    struct.pack_into("<I", pt_b, (ROUTINE >> 12) * 4, OTHER | 3)
    memory[PT_B] = bytes(pt_b)
    memory[PD_B] = struct.pack("<I", PT_B | 7) + memory[PD][4:]
    memory.update(_two_routines())
    code = ENABLE_PAGING
    for pd in (PD, PD_B, PD, PD_B):
        code += b"\xb8" + struct.pack("<I", pd) + b"\x0f\x22\xd8"  # mov eax, pd; mov cr3, eax
        code += call(fresh_machine.CODE + len(code), ROUTINE)
    runs = compare_all(fresh_machine.FreshSpec(code=code, memory=memory))
    assert runs["bare"].regs["esi"] == 1 + 2 + 1 + 2
    vmm = runs["bt"]
    assert vmm.stats["units_remapped"] >= 3 and vmm.stats["tc_flushes"] == 0


def test_a_pte_remap_and_invlpg_runs_the_new_code() -> None:
    memory = paging_memory()
    memory.update(_two_routines())
    code = ENABLE_PAGING + call(fresh_machine.CODE + len(ENABLE_PAGING), ROUTINE)
    code += b"\xc7\x05" + struct.pack("<II", PT0 + (ROUTINE >> 12) * 4, OTHER | 3)  # remap the page
    code += b"\x0f\x01\x3d" + struct.pack("<I", ROUTINE)  # invlpg [ROUTINE]
    code += call(fresh_machine.CODE + len(code), ROUTINE)
    runs = compare_all(fresh_machine.FreshSpec(code=code, memory=memory))
    assert runs["bare"].regs["esi"] == 1 + 2
    assert runs["bt"].stats["units_remapped"] >= 1


def test_a_cr3_write_keeps_the_translations_of_code_mapped_alike() -> None:
    # The same CR3 written in a loop: the loop's own code maps alike after every write, so its
    # units stay (the translation work does not grow with the iteration count).
    counts = {}
    for n in (2, 40):
        code = ENABLE_PAGING + b"\xb9" + struct.pack("<I", n)  # mov ecx, n
        top = fresh_machine.CODE + len(code)
        code += b"\xb8" + struct.pack("<I", PD) + b"\x0f\x22\xd8" + b"\x46"  # mov eax, PD; mov cr3, eax; inc esi
        code += b"\x49\x0f\x85" + struct.pack("<I", (top - (fresh_machine.CODE + len(code) + 7)) & 0xFFFFFFFF)
        vmm = new_vmm("bt")
        spec = fresh_machine.FreshSpec(code=code, memory=paging_memory())
        r = run(spec, "bt", vmm)
        assert differences(run(spec, "bare"), r) == []
        counts[n] = vmm.stats["ccfs"], vmm.stats["units_remapped"]
    assert counts[2] == counts[40] and counts[40][1] == 0


def test_a_pte_changed_without_invlpg_takes_effect_at_a_reload_of_cr3() -> None:
    # Remapped with no INVLPG: the old code may still run (a stale TLB entry), but writing CR3
    # again flushes the TLB, and then the new code must run: its 4 KB region is walked again.
    memory = paging_memory()
    memory.update(_two_routines())
    code = ENABLE_PAGING + call(fresh_machine.CODE + len(ENABLE_PAGING), ROUTINE)
    code += b"\xc7\x05" + struct.pack("<II", PT0 + (ROUTINE >> 12) * 4, OTHER | 3)  # remap the page
    code += b"\x0f\x20\xd8\x0f\x22\xd8"  # mov eax, cr3; mov cr3, eax
    code += call(fresh_machine.CODE + len(code), ROUTINE)
    runs = compare_all(fresh_machine.FreshSpec(code=code, memory=memory))
    assert runs["bare"].regs["esi"] == 1 + 2
    assert runs["bt"].stats["units_remapped"] >= 1


def test_a_global_tlb_flush_keeps_the_units_of_code_on_a_4mb_page() -> None:
    # Linux flushes global TLB entries by toggling CR4.PGE; its text is mapped by 4 MB pages.
    # Neither the toggle nor a reload of CR3 can change what an unchanged 4 MB PDE maps: the
    # units stay and their pages are not walked (each was a walk of every page of translated
    # code), however many flushes.
    pd = bytearray(4096)
    struct.pack_into("<I", pd, 0, 0x83)  # a 4 MB page at 0: present, writable, PS
    enable = b"\x0f\x20\xe0\x83\xc8\x10\x0f\x22\xe0"  # mov eax, cr4; or eax, PSE; mov cr4, eax
    enable += ENABLE_PAGING
    counts = {}
    for n in (2, 40):
        code = enable + b"\xb9" + struct.pack("<I", n)  # mov ecx, n
        top = fresh_machine.CODE + len(code)
        code += b"\x0f\x20\xe0\x35\x80\x00\x00\x00\x0f\x22\xe0"  # mov eax, cr4; xor eax, PGE; mov cr4, eax
        code += b"\x0f\x20\xd8\x0f\x22\xd8\x46"  # mov eax, cr3; mov cr3, eax; inc esi
        code += b"\x49\x0f\x85" + struct.pack("<I", (top - (fresh_machine.CODE + len(code) + 7)) & 0xFFFFFFFF)
        vmm = new_vmm("bt")
        spec = fresh_machine.FreshSpec(code=code, memory={PD: bytes(pd)})
        r = run(spec, "bt", vmm)
        assert differences(run(spec, "bare"), r) == []
        assert r.regs["esi"] == n
        counts[n] = vmm.stats["ccfs"], vmm.stats["units_remapped"], vmm.stats["address_space_regions_kept"]
    assert counts[2][:2] == counts[40][:2] and counts[40][1] == 0
    assert counts[40][2] >= 2 * 40  # the region kept at each toggle and each reload


# ---------------------------------------------------------------- self-modifying code under callouts

SGDT_VAR = fresh_machine.CODE + 0x100  # on the code page, past the code


@pytest.mark.parametrize("adds", [1, 12])
def test_a_callout_storing_into_its_own_code_page(adds: int) -> None:
    # SGDT (a callout) into a variable on its own code page; the ADDs after it are in the unit
    # that follows. On main this flushed the whole TC inside the callout and resumed in it:
    # a spurious #UD with one ADD, wrong EAX with twelve.
    code = b"\x0f\x01\x05" + struct.pack("<I", SGDT_VAR) + b"\x05\x01\x00\x00\x00" * adds
    spec = fresh_machine.FreshSpec(code=code)
    bare = run(spec, "bare")
    assert bare.regs["eax"] == adds
    for mode in ("interp", "bt"):
        assert differences(bare, run(spec, mode, new_vmm(mode) if mode == "bt" else None)) == [], mode


def test_push_cs_with_the_stack_on_the_code_page() -> None:
    code = b"\xbc" + struct.pack("<I", fresh_machine.CODE + 0x200) + b"\x0e\x58" + b"\x05\x01\x00\x00\x00" * 3
    spec = fresh_machine.FreshSpec(code=code)  # mov esp, CODE+0x200; push cs; pop eax; add eax, 1 (x3)
    bare = run(spec, "bare")
    assert bare.regs["eax"] == fresh_machine.SEL_CODE0 + 3
    for mode in ("interp", "bt"):
        assert differences(bare, run(spec, mode, new_vmm(mode) if mode == "bt" else None)) == [], mode


def test_the_smc_loop_stops_trapping_and_never_flushes_the_tc() -> None:
    # The `smc` benchmark's loop, 300 rewrites: after the first few traps its stores are
    # callouts (the adaptive retranslation), and each rewrite drops one unit, not the TC.
    from ring1.runtime.tools.bench import SMC_BODY, SMC_COUNTER, Loop, build

    built = build(Loop(SMC_BODY, regs={"ecx": 300}))
    # The snippet ends where the loop ends (the benchmark's machine has more code after it).
    spec = fresh_machine.FreshSpec(code=built.spec.code[: built.end - fresh_machine.CODE], regs=built.spec.regs)
    bare = run(spec, "bare")
    assert int.from_bytes(bare.memory[SMC_COUNTER : SMC_COUNTER + 4], "little") == 300
    vmm = new_vmm("bt")
    assert differences(bare, run(spec, "bt", vmm)) == []
    assert vmm.stats["traps"] <= 2 * 8 + 4 and vmm.stats["tc_flushes"] == 0
    assert 300 <= vmm.stats["units_invalidated"] <= 310


def test_a_unit_spanning_two_pages_is_dropped_by_a_write_to_its_second_page() -> None:
    # mov eax, imm32 straddles a page boundary: its immediate's last bytes are on the next page.
    # The loop rewrites them there (a page holding no other code), then runs the MOV again.
    start = fresh_machine.CODE + 0xFFD  # mov eax at 0x8ffd..0x9001: opcode and 2 bytes on page 8
    body = b"\xb8" + struct.pack("<I", 0x01010101)  # mov eax, 0x01010101
    body += b"\x01\xc6"  # add esi, eax
    body += b"\xc6\x05" + struct.pack("<I", start + 4) + b"\x07"  # mov byte [imm's top byte], 7
    body += b"\x49\x0f\x85" + struct.pack("<I", (start - (start + len(body) + 7)) & 0xFFFFFFFF)  # dec; jnz
    code = b"\xb9" + struct.pack("<I", 2) + jmp(fresh_machine.CODE + 5, start)
    spec = fresh_machine.FreshSpec(
        code=code,
        memory={
            start: body
            + b"\xe9"
            + struct.pack("<I", (fresh_machine.CODE + len(code)) - (start + len(body) + 5) & 0xFFFFFFFF)
        },
    )
    runs = compare_all(spec)
    assert runs["bare"].regs["esi"] == 0x01010101 + 0x07010101
    assert runs["bt"].stats["units_invalidated"] >= 1


def test_a_block_of_the_vmms_interpreter_is_checked_against_code_written_directly() -> None:
    # Trap mode runs the kernel on the CPU, and the interpreter emulates what traps: CLI the first
    # time round; the kernel then rewrites it into STI by a store the interpreter never sees.
    # The second emulation must not run the CLI it compiled the first time.
    top = fresh_machine.CODE + 5
    code = b"\xb9" + struct.pack("<I", 2)  # mov ecx, 2
    code += b"\xfa"  # top: cli (sti the second time)
    code += b"\xc6\x05" + struct.pack("<I", top) + b"\xfb"  # mov byte [top], sti
    code += b"\x49\x0f\x85" + struct.pack("<I", (top - (fresh_machine.CODE + len(code) + 7)) & 0xFFFFFFFF)
    runs = compare_all(fresh_machine.FreshSpec(code=code))
    assert runs["bare"].regs["eflags"] & 0x200
