/* printf's formatting for the guests, kernel and user alike (guests/format.c): %s %c %d %u %x
   %%, with an optional 0 flag and width (%08x, %4u, %6s). Each character goes to put(ctx, c). */
#ifndef RING1_FORMAT_H
#define RING1_FORMAT_H

#include <stdarg.h>

typedef void (*format_put)(void *ctx, char c);

void vformat(format_put put, void *ctx, const char *fmt, va_list ap);

#endif
