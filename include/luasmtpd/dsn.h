/* The parameters of RFC 3461's DSN extension: RET and ENVID on MAIL, NOTIFY and ORCPT on RCPT.
 * Checks them (xtext, lengths, each at most once), decodes them, and encodes them again for a
 * relay. Pure: no I/O, no allocation but in the buffer a caller gives; the session refuses
 * with the reply given here, the Lua runtime shows the decoded values to the handler. */
#ifndef LUASMTPD_DSN_H
#define LUASMTPD_DSN_H

#include <stdbool.h>
#include <stddef.h>

#include "luasmtpd/buf.h"
#include "luasmtpd/smtp_parse.h"

#define DSN_ENVID_MAX 100 /* RFC 3461 4.4, counted as sent (xtext) */
#define DSN_ORCPT_MAX 500 /* RFC 3461 4.2, "addr-type;xtext" as sent */

enum dsn_ret {
    DSN_RET_UNSET = 0,
    DSN_RET_FULL,
    DSN_RET_HDRS,
};

enum {
    DSN_NOTIFY_NEVER = 1 << 0,
    DSN_NOTIFY_SUCCESS = 1 << 1,
    DSN_NOTIFY_FAILURE = 1 << 2,
    DSN_NOTIFY_DELAY = 1 << 3,
};

struct dsn_mail {
    enum dsn_ret ret;
    bool has_envid;
    char envid[DSN_ENVID_MAX + 1]; /* decoded */
};

struct dsn_rcpt {
    unsigned notify; /* DSN_NOTIFY_* bits; 0 when not given */
    bool has_orcpt;
    char orcpt[DSN_ORCPT_MAX + 1]; /* "addr-type;address", the address decoded */
};

/* Checks the DSN parameters among `params` (as smtp_parse_params left them) of MAIL (`mail`)
 * or RCPT, marking each in `known`, where the caller marked those it took itself. Returns
 * NULL, or the reply refusing the command: 501 5.5.4 for a bad value or a parameter given
 * twice, then RFC 5321's 555 for one left unmarked (the other command's DSN ones too). */
const char *dsn_check_params(const struct smtp_param *params, int n, bool mail, bool *known);

/* Decodes what was accepted, from the parameters as the envelope keeps them: MAIL's as a
 * list of "KEYWORD=value" words, one RCPT's as those words joined by spaces. Words that are
 * not DSN parameters are skipped. */
void dsn_mail_decode(struct dsn_mail *d, const char *const *words, size_t n);
void dsn_rcpt_decode(struct dsn_rcpt *d, const char *words);

/* RFC 3461 4's xtext ("+XX" for what is not printable ASCII, "+" or "="): decodes `in` into
 * `out` (room for strlen(in)+1 bytes). false when it is not xtext, or decodes to a byte that
 * is not printable US-ASCII, which 4.2 and 4.4 forbid. */
bool dsn_xtext_decode(const char *in, char *out);

/* The names of the bits in `notify`, in RFC 3461's order; returns how many (at most 4). */
size_t dsn_notify_names(unsigned notify, const char *names[4]);

/* Decoded values given by a script (smtpd.relay's dsn and rcpt_dsn), checked as a client's
 * would be: `ret` "FULL" or "HDRS" (any case), `envid` printable ASCII; `notify` n names
 * (NEVER alone), `orcpt` "addr-type;address". NULL for a value not given. Returns NULL, or
 * what is wrong ("ret must be FULL or HDRS"). */
const char *dsn_mail_set(struct dsn_mail *d, const char *ret, const char *envid);
const char *dsn_rcpt_set(struct dsn_rcpt *d, const char *const *notify, size_t n,
                         const char *orcpt);

/* Appends " RET=... ENVID=..." (MAIL) or " NOTIFY=... ORCPT=..." (RCPT) for what `d` holds,
 * with ENVID and ORCPT's address xtext-encoded: the parameters as a relay sends them on.
 * -1 when out of memory. */
int dsn_mail_format(const struct dsn_mail *d, struct buf *out);
int dsn_rcpt_format(const struct dsn_rcpt *d, struct buf *out);

#endif
