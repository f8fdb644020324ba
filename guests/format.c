/* printf's formatting, one copy for the kernels (lib.c's kprintf, to the console) and procs's
   user programs (procs_user.c's uprintf, to a buffer written with one system call). */
#include "format.h"

#include <stdint.h>

static void put_number(format_put put, void *ctx, uint32_t v, unsigned base, int width, char pad, int negative)
{
    char buf[12];
    int n = 0;
    do {
        buf[n++] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v);
    if (negative)
        buf[n++] = '-';
    while (n < width--)
        put(ctx, pad);
    while (n)
        put(ctx, buf[--n]);
}

void vformat(format_put put, void *ctx, const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            put(ctx, *fmt);
            continue;
        }
        fmt++;
        char pad = ' ';
        int width = 0;
        if (*fmt == '0') {
            pad = '0';
            fmt++;
        }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        switch (*fmt) {
        case 's': {
            const char *s = va_arg(ap, const char *);
            int len = 0;
            while (s[len])
                len++;
            while (len < width--)
                put(ctx, ' ');
            while (*s)
                put(ctx, *s++);
            break;
        }
        case 'c':
            put(ctx, (char)va_arg(ap, int));
            break;
        case 'd': {
            int v = va_arg(ap, int);
            put_number(put, ctx, v < 0 ? -(uint32_t)v : (uint32_t)v, 10, width, pad, v < 0);
            break;
        }
        case 'u':
            put_number(put, ctx, va_arg(ap, uint32_t), 10, width, pad, 0);
            break;
        case 'x':
            put_number(put, ctx, va_arg(ap, uint32_t), 16, width, pad, 0);
            break;
        case '%':
            put(ctx, '%');
            break;
        default:
            put(ctx, '%');
            put(ctx, *fmt);
            break;
        }
    }
}
