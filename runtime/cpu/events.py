"""What can interrupt the execution of guest code, as Python exceptions.

Fault  an exception at an instruction: the guest EIP is the faulting instruction's own
       address and no part of it has taken effect (vector, error code).
Trap   a software interrupt (INT n, INT3, INTO): the instruction completed, EIP is the next one;
       an ExternalInterrupt is one from the platform, taken between two instructions.
VMStop the virtual machine cannot go on (triple fault, an unimplemented case, a bad image):
       a clean stop with a diagnosis, never a Python traceback.
"""

from __future__ import annotations

EXCEPTION_NAMES = {
    0: "#DE",
    1: "#DB",
    2: "NMI",
    3: "#BP",
    4: "#OF",
    5: "#BR",
    6: "#UD",
    7: "#NM",
    8: "#DF",
    10: "#TS",
    11: "#NP",
    12: "#SS",
    13: "#GP",
    14: "#PF",
    16: "#MF",
    17: "#AC",
    18: "#MC",
}


class GuestEvent(Exception):
    pass


class Fault(GuestEvent):
    __slots__ = ("error_code", "vector")

    def __init__(self, vector: int, error_code: int | None = None) -> None:
        self.vector = vector
        self.error_code = error_code

    def __str__(self) -> str:
        name = EXCEPTION_NAMES.get(self.vector, f"vector {self.vector}")
        return name if self.error_code is None else f"{name}({self.error_code:#x})"


class Trap(GuestEvent):
    """INT n (kind 2), INT3 (3), INTO (4), ICEBP (5): delivered with EIP at the next instruction.
    `start`: the EIP of the instruction that raised it, when known: a fault while delivering it
    (a gate's DPL, a stack that faults) is that instruction's, reported at its address."""

    __slots__ = ("kind", "start", "vector")

    def __init__(self, vector: int, kind: int, start: int | None = None) -> None:
        self.vector = vector
        self.kind = kind
        self.start = start

    def __str__(self) -> str:
        return f"int {self.vector:#x}"


class ExternalInterrupt(Trap):
    """A maskable interrupt from the platform's controller, taken at an instruction boundary:
    delivered like a trap (EIP at the next instruction), with no gate-DPL check."""

    __slots__ = ()

    def __init__(self, vector: int) -> None:
        super().__init__(vector, 0)  # EVENT_EXTERNAL (spec/interrupts.r1)

    def __str__(self) -> str:
        return f"interrupt {self.vector:#x}"


class VMStop(Exception):
    """The virtual machine stops; `reason` is for people, `kind` for programs."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
