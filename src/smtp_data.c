/* The DATA decoder's state machine (see smtp_data.h). Runs of ordinary bytes are found with
 * memchr and copied in one piece; only line starts and line ends are looked at byte by byte.
 * Any CR or LF that is not part of a CRLF pair is stored as CRLF, so handlers and upstreams
 * only ever see CRLF line ends. */
#include "luasmtpd/smtp_data.h"

#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

void
smtp_data_init(struct smtp_data_decoder *d, size_t limit)
{
    memset(d, 0, sizeof(*d));
    d->state = SMTP_DATA_BOL_CRLF;
    d->limit = limit;
}

static void
emit(struct smtp_data_decoder *d, struct buf *out, const char *bytes, size_t n)
{
    d->size += n;
    if (d->overflow || d->failed)
        return;
    if (d->limit != 0 && d->size > d->limit) {
        d->overflow = true;
        return;
    }
    if (buf_append(out, bytes, n) == -1)
        d->failed = true;
}

/* The first CR or LF in [p, end), or end. Every byte of a message passes here, so on x86 it
 * looks at 16 bytes a step; elsewhere two memchr calls do. */
static const char *
find_line_end(const char *p, const char *end)
{
#ifdef __SSE2__
    const __m128i cr = _mm_set1_epi8('\r'), lf = _mm_set1_epi8('\n');
    for (; end - p >= 16; p += 16) {
        __m128i chunk = _mm_loadu_si128((const __m128i *)(const void *)p);
        int mask =
            _mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(chunk, cr), _mm_cmpeq_epi8(chunk, lf)));
        if (mask != 0)
            return p + __builtin_ctz((unsigned)mask);
    }
    for (; p < end; p++)
        if (*p == '\r' || *p == '\n')
            return p;
    return end;
#else
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    const char *limit = nl ? nl : end;
    const char *cr = memchr(p, '\r', (size_t)(limit - p));
    return cr ? cr : limit;
#endif
}

static const char crlf[] = "\r\n";
static const char dot_crlf[] = ".\r\n";

size_t
smtp_data_decode(struct smtp_data_decoder *d, const char *in, size_t len, struct buf *out)
{
    const char *p = in, *end = in + len;

    while (p < end && d->state != SMTP_DATA_DONE) {
        char c = *p;
        switch (d->state) {
        case SMTP_DATA_BOL_CRLF:
        case SMTP_DATA_BOL_BARE:
            if (c == '.' && !d->chunked) {
                d->state = d->state == SMTP_DATA_BOL_CRLF ? SMTP_DATA_DOT_CRLF : SMTP_DATA_DOT_BARE;
                p++;
            } else {
                d->state = SMTP_DATA_LINE;
            }
            break;
        case SMTP_DATA_DOT_CRLF:
        case SMTP_DATA_DOT_BARE:
            if (c == '\r') {
                d->state =
                    d->state == SMTP_DATA_DOT_CRLF ? SMTP_DATA_DOT_CR_CRLF : SMTP_DATA_DOT_CR_BARE;
                p++;
            } else if (c == '\n') {
                /* A lone "." ended by a bare LF is not the end, and not stuffing either:
                 * RFC 5321 4.5.2 only removes a dot when other characters follow it. */
                emit(d, out, dot_crlf, 3);
                d->state = SMTP_DATA_BOL_BARE;
                p++;
            } else {
                d->state = SMTP_DATA_LINE; /* the stuffed dot is dropped */
            }
            break;
        case SMTP_DATA_DOT_CR_CRLF:
        case SMTP_DATA_DOT_CR_BARE:
            if (c == '\n' && d->state == SMTP_DATA_DOT_CR_CRLF) {
                d->state = SMTP_DATA_DONE;
                p++;
            } else if (c == '\n') {
                /* "\n.\r\n": the line before ended bare, so this is no terminator. */
                emit(d, out, dot_crlf, 3);
                d->state = SMTP_DATA_BOL_CRLF;
                p++;
            } else {
                emit(d, out, dot_crlf, 3); /* ".\r" then a bare CR's worth of line end */
                d->state = SMTP_DATA_BOL_BARE;
            }
            break;
        case SMTP_DATA_CR:
            emit(d, out, crlf, 2);
            if (c == '\n') {
                d->state = SMTP_DATA_BOL_CRLF;
                p++;
            } else {
                d->state = SMTP_DATA_BOL_BARE;
            }
            break;
        case SMTP_DATA_LINE: {
            /* The common case in one copy: a run of whole lines that end in CRLF, hold no
             * other CR, and whose successors do not start with a dot. */
            const char *run = p;
            for (;;) {
                const char *cr = find_line_end(p, end);
                if (cr == end || *cr != '\r' || cr + 1 == end || cr[1] != '\n')
                    break;
                p = cr + 2;
                if (p == end || *p == '.')
                    break;
            }
            if (p > run) {
                emit(d, out, run, (size_t)(p - run));
                if (p[-1] == '\n') {
                    d->state = SMTP_DATA_BOL_CRLF;
                    break;
                }
            }
            /* A partial line, or one with a bare CR or LF: up to its first CR or LF. */
            const char *stop = find_line_end(p, end);
            if (stop > p)
                emit(d, out, p, (size_t)(stop - p));
            p = stop;
            if (p == end)
                break;
            if (*p == '\r') {
                d->state = SMTP_DATA_CR;
            } else {
                emit(d, out, crlf, 2);
                d->state = SMTP_DATA_BOL_BARE;
            }
            p++;
            break;
        }
        case SMTP_DATA_DONE:
            break;
        }
    }
    return (size_t)(p - in);
}

void
smtp_data_end(struct smtp_data_decoder *d, struct buf *out)
{
    /* Only LINE and CR can be pending: a chunked decoder never enters the dot states. */
    if (d->state == SMTP_DATA_LINE || d->state == SMTP_DATA_CR)
        emit(d, out, crlf, 2);
    d->state = SMTP_DATA_DONE;
}

void
smtp_data_encoder_init(struct smtp_data_encoder *e)
{
    e->at_line_start = true;
    e->pending_cr = false;
}

int
smtp_data_encode(struct smtp_data_encoder *e, const char *in, size_t len, struct buf *out)
{
    const char *p = in, *end = in + len;
    /* Worst case every byte is a line end that doubles, or a dot that doubles. */
    if (buf_reserve(out, len * 2 + 4) == -1)
        return -1;
    char *o = out->data + out->len;
    while (p < end) {
        if (e->pending_cr) {
            e->pending_cr = false;
            *o++ = '\r';
            *o++ = '\n';
            e->at_line_start = true;
            if (*p == '\n') {
                p++;
                continue;
            }
        }
        if (e->at_line_start && *p == '.')
            *o++ = '.';
        e->at_line_start = false;
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *limit = nl ? nl : end;
        const char *cr = memchr(p, '\r', (size_t)(limit - p));
        const char *stop = cr ? cr : limit;
        memcpy(o, p, (size_t)(stop - p));
        o += stop - p;
        p = stop;
        if (p == end)
            break;
        if (*p == '\r') {
            e->pending_cr = true;
        } else {
            *o++ = '\r';
            *o++ = '\n';
            e->at_line_start = true;
        }
        p++;
    }
    out->len = (size_t)(o - out->data);
    return 0;
}

int
smtp_data_encode_end(struct smtp_data_encoder *e, struct buf *out)
{
    if (e->pending_cr || !e->at_line_start) {
        if (buf_append(out, "\r\n", 2) == -1)
            return -1;
    }
    e->pending_cr = false;
    e->at_line_start = true;
    return buf_append(out, ".\r\n", 3);
}
