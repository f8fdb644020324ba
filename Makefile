# ring1: make generate | test | check | bench | guests | demo
PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: all generate test check lint bench clean guests demo

all: generate

generate:
	$(PYTHON) -m ring1.codegen generate

test:
	$(PYTHON) -m pytest $(PYTEST_ARGS)

# Lint, the spec's own checks and capstone cross-checks, and generated/ being fresh.
check: lint
	ring1 spec check

lint:
	$(PYTHON) -m ruff check codegen runtime tests

# The interpreter's speed against unicorn, then the nanobenchmarks in every mode (a minute or two).
bench:
	ring1 bench interp
	ring1 bench nano

# ---------------------------------------------------------------- guests
# Freestanding Multiboot kernels for `ring1 run`, built with the host's gcc, nasm and ld.
GUEST_DIR := guests
GUEST_OUT := build/guests
GUEST_CC ?= gcc
NASM ?= nasm
GUEST_LD ?= ld
GUEST_CFLAGS := -m32 -march=i686 -std=gnu11 -O2 -Wall -Wextra -ffreestanding -fno-pic -fno-pie -nostdlib \
	-mgeneral-regs-only -fno-stack-protector -fcf-protection=none -fno-asynchronous-unwind-tables \
	-fno-tree-loop-distribute-patterns
GUEST_LDFLAGS := -m elf_i386 -T $(GUEST_DIR)/linker.ld -nostdlib -z max-page-size=0x1000 --build-id=none -z noexecstack
ASM_GUESTS := hello fault halt spin
C_GUESTS := demo
GUEST_LIB := boot isr lib

guests: $(foreach g,$(C_GUESTS) $(ASM_GUESTS),$(GUEST_OUT)/$(g).elf)

$(GUEST_OUT)/%.o: $(GUEST_DIR)/%.c $(GUEST_DIR)/lib.h | $(GUEST_OUT)
	$(GUEST_CC) $(GUEST_CFLAGS) -c $< -o $@

$(GUEST_OUT)/%.o: $(GUEST_DIR)/%.asm $(GUEST_DIR)/multiboot.inc | $(GUEST_OUT)
	$(NASM) -f elf32 -I $(GUEST_DIR)/ $< -o $@

$(GUEST_OUT)/demo.elf: $(foreach o,$(GUEST_LIB) demo,$(GUEST_OUT)/$(o).o) $(GUEST_DIR)/linker.ld
	$(GUEST_LD) $(GUEST_LDFLAGS) -o $@ $(filter %.o,$^)

$(GUEST_OUT)/%.elf: $(GUEST_OUT)/%.o $(GUEST_DIR)/linker.ld
	$(GUEST_LD) $(GUEST_LDFLAGS) -o $@ $<

.PRECIOUS: $(GUEST_OUT)/%.o

$(GUEST_OUT):
	mkdir -p $@

# The README's main job. For now on the generated interpreter; the VMM owner switches it
# to `--mode bt` once the binary translator is wired into `ring1 run`.
demo: $(GUEST_OUT)/demo.elf
	ring1 run $(GUEST_OUT)/demo.elf --mode interp --stats

clean:
	rm -rf build .pytest_cache .hypothesis
