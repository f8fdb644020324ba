"""The virtual platform's devices: one bus that routes port and MMIO accesses to named regions,
and one module per chip. `ring1.runtime.devices.platform` assembles the PC a guest gets from them."""
