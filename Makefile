# ring1: make demo | test | generate | check | bench | guests | setup | clean
#
# Every target that runs Python first makes a virtualenv in .venv with ring1 installed
# (editable, with the dev tools): a fresh machine needs only python3, gcc, binutils and
# make. `make PYTHON=python3 ...` uses an environment you installed yourself instead.

VENV ?= .venv
ifeq ($(origin PYTHON),command line)
SETUP :=
else
PYTHON := $(VENV)/bin/python
SETUP := $(VENV)/.installed
endif
RING1 := $(PYTHON) -m ring1.runtime.cli
PYTEST_ARGS ?= -n auto

.PHONY: all setup generate test check lint bench clean guests demo linux-guest

all: generate

setup: $(SETUP)

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[dev]'
	touch $@

generate: $(SETUP)
	$(PYTHON) -m ring1.codegen generate

# The whole suite; the guests are built by the tests that boot them.
test: $(SETUP)
	$(PYTHON) -m pytest $(PYTEST_ARGS)

# Lint, the spec's own checks and capstone cross-checks, and generated/ being fresh.
check: lint
	$(RING1) spec check
	$(PYTHON) -m ring1.codegen generate --check

lint: $(SETUP)
	$(PYTHON) -m ruff check codegen runtime tests

# The interpreter's speed against unicorn, the nanobenchmarks in every mode (a minute or two),
# then the start-up time of short commands.
bench: $(SETUP) $(GUEST_OUT)/hello.elf
	$(RING1) bench interp
	$(RING1) bench nano
	$(RING1) bench startup

# ---------------------------------------------------------------- guests
# Freestanding Multiboot kernels for `ring1 run`, built with the host's gcc and ld: C, and
# assembler in .S files that gcc runs through the C preprocessor and GNU as.
GUEST_DIR := guests
GUEST_OUT := build/guests
GUEST_CC ?= gcc
GUEST_LD ?= ld
GUEST_CFLAGS := -m32 -march=i686 -std=gnu11 -O2 -g -Wall -Wextra -ffreestanding -fno-pic -fno-pie -nostdlib \
	-mgeneral-regs-only -fno-stack-protector -fcf-protection=none -fno-asynchronous-unwind-tables \
	-fno-tree-loop-distribute-patterns
GUEST_ASFLAGS := -m32 -Wa,--fatal-warnings
GUEST_LDFLAGS := -m elf_i386 -T $(GUEST_DIR)/linker.ld -nostdlib -z max-page-size=0x1000 --build-id=none -z noexecstack
ASM_GUESTS := hello fault halt spin
C_GUESTS := demo devtest procs tasks
GUEST_LIB := boot isr lib mem format

guests: $(foreach g,$(C_GUESTS) $(ASM_GUESTS),$(GUEST_OUT)/$(g).elf) $(GUEST_OUT)/rom.bin $(GUEST_OUT)/realmode.bin

$(GUEST_OUT)/%.o: $(GUEST_DIR)/%.c $(GUEST_DIR)/lib.h $(GUEST_DIR)/mem.h $(GUEST_DIR)/format.h | $(GUEST_OUT)
	$(GUEST_CC) $(GUEST_CFLAGS) -c $< -o $@

$(GUEST_OUT)/%.o: $(GUEST_DIR)/%.S $(GUEST_DIR)/multiboot.inc | $(GUEST_OUT)
	$(GUEST_CC) $(GUEST_ASFLAGS) -c $< -o $@

# A C guest is its own object linked with the library's (procs has its own rule, below).
$(foreach g,$(filter-out procs,$(C_GUESTS)),$(GUEST_OUT)/$(g).elf): $(GUEST_OUT)/%.elf: $(foreach o,$(GUEST_LIB),$(GUEST_OUT)/$(o).o) \
		$(GUEST_OUT)/%.o $(GUEST_DIR)/linker.ld
	$(GUEST_LD) $(GUEST_LDFLAGS) -o $@ $(filter %.o,$^)

$(GUEST_OUT)/%.elf: $(GUEST_OUT)/%.o $(GUEST_DIR)/linker.ld
	$(GUEST_LD) $(GUEST_LDFLAGS) -o $@ $<

# procs, the multi-process kernel: its own entry stubs (procs_entry.S, not isr.S) and the user
# programs, linked on their own at 0x40000000 (procs_user.ld), flattened to a blob that
# procs_entry.S includes (.incbin) for exec to copy into processes.
$(GUEST_OUT)/procs.o $(GUEST_OUT)/procs_user.o: $(GUEST_DIR)/procs.h

$(GUEST_OUT)/procs_user.elf: $(GUEST_OUT)/procs_user.o $(GUEST_OUT)/mem.o $(GUEST_OUT)/format.o $(GUEST_DIR)/procs_user.ld
	$(GUEST_LD) -m elf_i386 -T $(GUEST_DIR)/procs_user.ld -nostdlib --build-id=none -z noexecstack --no-warn-rwx-segments -o $@ $(filter %.o,$^)

$(GUEST_OUT)/procs_user.bin: $(GUEST_OUT)/procs_user.elf
	objcopy -O binary $< $@

$(GUEST_OUT)/procs_entry.o: $(GUEST_DIR)/procs_entry.S $(GUEST_OUT)/procs_user.bin
	$(GUEST_CC) $(GUEST_ASFLAGS) -Wa,-I,$(GUEST_OUT) -c $< -o $@

$(GUEST_OUT)/procs.elf: $(foreach o,boot lib mem format procs procs_entry,$(GUEST_OUT)/$(o).o) $(GUEST_DIR)/linker.ld
	$(GUEST_LD) $(GUEST_LDFLAGS) -o $@ $(filter %.o,$^)

# The system ROM `ring1 run --bios` starts from: linked at its low copy, written out raw.
$(GUEST_OUT)/rom.bin: $(GUEST_OUT)/rom.o
	$(GUEST_LD) -m elf_i386 -Ttext 0xF0000 --oformat binary -z noexecstack -o $@ $<

# A ROM that stays in real mode (translated as 16-bit code under bt), linked the same way.
$(GUEST_OUT)/realmode.bin: $(GUEST_OUT)/realmode.o
	$(GUEST_LD) -m elf_i386 -Ttext 0xF0000 --oformat binary -z noexecstack -o $@ $<

.PRECIOUS: $(GUEST_OUT)/%.o

$(GUEST_OUT):
	mkdir -p $@

# The README's main job: boot the demo kernel under the binary translator and show what it did.
demo: $(SETUP) $(GUEST_OUT)/demo.elf
	$(RING1) run $(GUEST_OUT)/demo.elf --mode bt --stats

# Debian's i386 kernel and busybox, fetched with the machine's package tools (nothing of them
# is committed), and an initrd of ring1's own: build/guests/linux/{vmlinuz,initrd.gz}. Boot it:
#   ring1 run --kernel build/guests/linux/vmlinuz --initrd build/guests/linux/initrd.gz --append console=ttyS0
linux-guest: $(SETUP)
	$(PYTHON) -m ring1.runtime.tools.linux_guest $(GUEST_OUT)/linux

clean:
	rm -rf build .pytest_cache .hypothesis

# The virtualenv too.
distclean: clean
	rm -rf $(VENV)
