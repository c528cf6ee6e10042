/* BDAT (RFC 3030 CHUNKING): the command's argument, and the accounting of one transaction's
 * chunks: how many bytes of the chunk being read are still to come, how many all its chunks
 * announced (the size limit's measure), whether the chunk is the last or is read only to be
 * dropped. Pure: no I/O, no allocation; the session reads the bytes and decodes them. */
#ifndef LUASMTPD_SMTP_BDAT_H
#define LUASMTPD_SMTP_BDAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct smtp_bdat_command {
    uint64_t size;
    bool last;
};

enum smtp_bdat_parse {
    SMTP_BDAT_OK,
    /* The size is good but what follows it is not "LAST": the chunk's end is still known, so
     * its bytes can be read and dropped and the session stays in step. */
    SMTP_BDAT_BAD_MARKER,
    /* No size (missing, not digits, or more than 64 bits hold): nobody can tell where the
     * chunk ends, so nothing after this line can be told from commands. */
    SMTP_BDAT_BAD_SIZE,
};

/* `arg`: BDAT's argument as the command parser left it (trimmed). RFC 3030 3: chunk-size
 * [SP "LAST"], LAST in any case (SMTP keywords are case-insensitive); spaces or tabs between. */
enum smtp_bdat_parse smtp_bdat_parse(const char *arg, struct smtp_bdat_command *cmd);

struct smtp_bdat {
    struct smtp_bdat_command command; /* the current chunk's, from its command's check on */
    uint64_t left;                    /* bytes of the current chunk still to read */
    uint64_t total;                   /* bytes this transaction's chunks announced so far */
    unsigned chunks;                  /* chunks taken into this transaction's message */
    bool in_chunk;     /* a chunk's bytes are being read (the session is in its DATA state) */
    bool discard;      /* the current chunk was refused: its bytes are read and dropped */
    const char *reply; /* a refused chunk's answer, sent once its bytes are read */
};

/* A chunk of the message begins. Returns false when the transaction's chunks now pass `limit`
 * (0: none): what is stored of them can go, the answer will be 552. */
bool smtp_bdat_begin(struct smtp_bdat *b, const struct smtp_bdat_command *cmd, size_t limit);
/* A refused chunk begins: its `size` bytes are dropped, then `reply` is sent. The transaction's
 * own chunks are not touched. */
void smtp_bdat_begin_discard(struct smtp_bdat *b, uint64_t size, const char *reply);
/* How many of `n` bytes at hand belong to the current chunk; they are counted as read. */
size_t smtp_bdat_take(struct smtp_bdat *b, size_t n);
/* The current chunk is over; returns what it was (its command, `discard`, `reply`). */
struct smtp_bdat smtp_bdat_end(struct smtp_bdat *b);

#endif
