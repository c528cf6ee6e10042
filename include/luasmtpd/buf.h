/* A growable byte buffer: the one place that owns amortised growth, so message bodies and
 * reply text are never copied quadratically. It never does I/O. */
#ifndef LUASMTPD_BUF_H
#define LUASMTPD_BUF_H

#include <stddef.h>

struct buf {
    char *data;
    size_t len;
    size_t cap;
};

/* Make room for at least `extra` more bytes; -1 (errno ENOMEM) when memory ran out. */
int buf_reserve(struct buf *b, size_t extra);
/* Make the capacity exactly `cap` (not less than the length; 0 frees): for a caller that must
 * know what will be allocated before it is. -1 (errno ENOMEM or EINVAL) leaves b as it was. */
int buf_set_capacity(struct buf *b, size_t cap);
int buf_append(struct buf *b, const void *bytes, size_t n);
int buf_append_str(struct buf *b, const char *s);
int buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_reset(struct buf *b);
void buf_free(struct buf *b);

#endif
