/* BDAT's argument and chunk accounting (see smtp_bdat.h). The size is taken as digits only,
 * with no sign and no limit but 64 bits, so "BDAT -1", "BDAT 1e3" or an overflowing number is
 * no size at all rather than a wrong one. */
#include "luasmtpd/smtp_bdat.h"

#include <string.h>
#include <strings.h>

static bool
is_space(char c)
{
    return c == ' ' || c == '\t';
}

enum smtp_bdat_parse
smtp_bdat_parse(const char *arg, struct smtp_bdat_command *cmd)
{
    cmd->size = 0;
    cmd->last = false;
    const char *p = arg;
    if (*p < '0' || *p > '9')
        return SMTP_BDAT_BAD_SIZE;
    for (; *p >= '0' && *p <= '9'; p++) {
        unsigned digit = (unsigned)(*p - '0');
        if (cmd->size > (UINT64_MAX - digit) / 10)
            return SMTP_BDAT_BAD_SIZE;
        cmd->size = cmd->size * 10 + digit;
    }
    if (*p == '\0')
        return SMTP_BDAT_OK;
    if (!is_space(*p))
        return SMTP_BDAT_BAD_SIZE; /* "12abc": not a size followed by something else */
    while (is_space(*p))
        p++;
    if (strcasecmp(p, "LAST") != 0)
        return SMTP_BDAT_BAD_MARKER;
    cmd->last = true;
    return SMTP_BDAT_OK;
}

bool
smtp_bdat_begin(struct smtp_bdat *b, const struct smtp_bdat_command *cmd, size_t limit)
{
    b->command = *cmd;
    b->left = cmd->size;
    b->total = cmd->size > UINT64_MAX - b->total ? UINT64_MAX : b->total + cmd->size;
    b->chunks++;
    b->in_chunk = true;
    b->discard = false;
    b->reply = NULL;
    /* What is stored is never less than what was announced (line ends only grow), so a total
     * past the limit is a message past it, known before its bytes come. */
    return limit == 0 || b->total <= limit;
}

void
smtp_bdat_begin_discard(struct smtp_bdat *b, uint64_t size, const char *reply)
{
    b->command = (struct smtp_bdat_command){.size = size, .last = false};
    b->left = size;
    b->in_chunk = true;
    b->discard = true;
    b->reply = reply;
}

size_t
smtp_bdat_take(struct smtp_bdat *b, size_t n)
{
    if ((uint64_t)n > b->left)
        n = (size_t)b->left;
    b->left -= n;
    return n;
}

struct smtp_bdat
smtp_bdat_end(struct smtp_bdat *b)
{
    struct smtp_bdat was = *b;
    b->in_chunk = false;
    b->discard = false;
    b->reply = NULL;
    return was;
}
