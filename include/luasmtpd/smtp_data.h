/* The DATA decoder: turns the bytes after "354" into the message as handlers see it, while
 * they arrive. It removes dot-stuffing (RFC 5321 4.5.2), makes every line end CRLF, enforces the
 * size limit without storing what is over it, and finds the end of the data. Only CRLF "." CRLF
 * ends a message, so "\n.\n" or "\r.\r" can never split one in two (SMTP smuggling). Pure. */
#ifndef LUASMTPD_SMTP_DATA_H
#define LUASMTPD_SMTP_DATA_H

#include <stdbool.h>
#include <stddef.h>

#include "luasmtpd/buf.h"

enum smtp_data_state {
    SMTP_DATA_BOL_CRLF = 0, /* at a line start after a real CRLF (or at the start) */
    SMTP_DATA_BOL_BARE,     /* at a line start after a bare CR or LF */
    SMTP_DATA_LINE,
    SMTP_DATA_CR,       /* a CR inside a line, waiting to see if LF follows */
    SMTP_DATA_DOT_CRLF, /* "." at a line start after CRLF */
    SMTP_DATA_DOT_BARE,
    SMTP_DATA_DOT_CR_CRLF, /* ".\r" at a line start after CRLF: LF ends the message */
    SMTP_DATA_DOT_CR_BARE,
    SMTP_DATA_DONE,
};

struct smtp_data_decoder {
    enum smtp_data_state state;
    size_t limit;  /* decoded bytes allowed; 0 for none */
    size_t size;   /* decoded bytes seen, stored or not */
    bool overflow; /* over the limit: the rest is read and dropped, the answer is 552 */
    bool failed;   /* out of memory while storing: the answer is 451 */
    /* BDAT's chunks (RFC 3030): no dot is special and nothing in the bytes ends the message;
     * smtp_data_end does, after the last chunk. Line ends are still made CRLF. */
    bool chunked;
};

void smtp_data_init(struct smtp_data_decoder *d, size_t limit);

/* The most one smtp_data_decode call stores for `n` bytes of input: every byte a bare CR or LF
 * stored as CRLF, plus what a dot or CR left pending by the call before adds. A caller that
 * makes this much room first knows what the call may allocate. */
#define SMTP_DATA_DECODED_MAX(n) (2 * (n) + 4)

/* Decodes up to `len` bytes into `out`. Returns how many it consumed: all of them unless the
 * end of the data was among them, in which case the bytes after the final CRLF are left for the
 * command reader and smtp_data_done() turns true. */
size_t smtp_data_decode(struct smtp_data_decoder *d, const char *in, size_t len, struct buf *out);

/* A chunked message is complete: a line left open (or a CR left pending) gets its CRLF, so
 * every line ends CRLF as after DATA; stores at most 2 bytes. The decoder is done. */
void smtp_data_end(struct smtp_data_decoder *d, struct buf *out);

static inline bool
smtp_data_done(const struct smtp_data_decoder *d)
{
    return d->state == SMTP_DATA_DONE;
}

/* The other direction, for sending a message upstream: every line end becomes CRLF (a bare CR
 * or LF too, so nothing a script built can smuggle a terminator), lines starting with "." get
 * another, and the end adds the final line end if missing and "." CRLF. */
struct smtp_data_encoder {
    bool at_line_start;
    bool pending_cr;
};

void smtp_data_encoder_init(struct smtp_data_encoder *e);
/* Appends the encoding of `len` bytes to `out`; -1 when memory ran out. */
int smtp_data_encode(struct smtp_data_encoder *e, const char *in, size_t len, struct buf *out);
/* Appends what ends the message: a last CRLF if needed, then ".\r\n". */
int smtp_data_encode_end(struct smtp_data_encoder *e, struct buf *out);

#endif
