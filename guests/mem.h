/* The memory routines the compiler may call: guests/mem.c, linked into every C guest and into
   procs's user programs. */
#ifndef RING1_GUEST_MEM_H
#define RING1_GUEST_MEM_H

#include <stddef.h>

void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);

#endif
