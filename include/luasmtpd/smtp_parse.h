/* Pure parsing of SMTP command lines (RFC 5321 4.1), reverse/forward paths and ESMTP
 * parameters. Bytes in, structs out: no I/O, no allocation, so it is unit-tested and fuzzed
 * without sockets. Parsing is done in place in the caller's line buffer. */
#ifndef LUASMTPD_SMTP_PARSE_H
#define LUASMTPD_SMTP_PARSE_H

#include <stdbool.h>
#include <stddef.h>

/* Python's smtpd limit on a command line, counted without the CRLF. */
#define SMTP_COMMAND_LINE_LIMIT 512
/* What Python allows MAIL on top of that after EHLO (RFC 1870 SIZE, RFC 6531 SMTPUTF8). */
#define SMTP_SIZE_EXTRA 26
#define SMTP_SMTPUTF8_EXTRA 10
/* RFC 3461 5: what DSN's parameters add to MAIL (RET, ENVID) and to RCPT (NOTIFY, ORCPT). */
#define SMTP_DSN_MAIL_EXTRA 100
#define SMTP_DSN_RCPT_EXTRA 500
#define SMTP_VERB_MAX 32

enum smtp_verb {
    SMTP_VERB_UNKNOWN = 0,
    SMTP_VERB_HELO,
    SMTP_VERB_EHLO,
    SMTP_VERB_MAIL,
    SMTP_VERB_RCPT,
    SMTP_VERB_DATA,
    SMTP_VERB_RSET,
    SMTP_VERB_NOOP,
    SMTP_VERB_QUIT,
    SMTP_VERB_VRFY,
    SMTP_VERB_EXPN,
    SMTP_VERB_HELP,
    SMTP_VERB_STARTTLS, /* RFC 3207 */
    SMTP_VERB_AUTH,     /* RFC 4954 */
    SMTP_VERB_LHLO,     /* RFC 2033: taken only by an LMTP listener */
    SMTP_VERB_BDAT,     /* RFC 3030 */
    SMTP_VERB_COUNT     /* not a verb: the size of every table indexed by verb */
};

enum smtp_parse_status {
    SMTP_PARSE_OK = 0,
    SMTP_PARSE_EMPTY, /* nothing on the line: "500 Error: bad syntax" */
    SMTP_PARSE_BAD,   /* NUL or another control byte, or a verb too long to be one */
};

struct smtp_command {
    enum smtp_verb verb;
    char verb_text[SMTP_VERB_MAX + 1]; /* upper-cased, for "command "X" not recognized" */
    char *arg;                         /* never NULL: "" when there was none; trimmed */
};

/* Splits `line` (len bytes, no CRLF; it is modified and NUL-terminated in place, so it needs
 * len+1 bytes) into an exactly-matched verb and its argument, as Python's smtpd does. */
enum smtp_parse_status smtp_parse_command(char *line, size_t len, struct smtp_command *cmd);

/* "FROM:" or "TO:", case-insensitively, then optional spaces. NULL when absent. */
char *smtp_strip_keyword(char *arg, const char *keyword);

struct smtp_path {
    char *address;  /* NUL-terminated, without brackets or source route; "" for <> */
    char *params;   /* the rest of the line, trimmed; "" when none */
    bool null_path; /* "<>" */
    bool non_ascii; /* the address holds UTF-8: needs SMTPUTF8 (RFC 6531) */
};

/* Parses a path ("<a@b>", "<@route:a@b>", "<>", or a bare "a@b" as Python accepts) at the
 * start of `arg`, in place. Returns false when it is not an address. */
bool smtp_parse_path(char *arg, struct smtp_path *path);

#define SMTP_PARAMS_MAX 16

struct smtp_param {
    char *keyword; /* upper-cased */
    char *value;   /* upper-cased as Python does, but for ENVID's and ORCPT's (RFC 3461
                    * xtext); NULL for a bare keyword */
};

/* Splits ESMTP parameters (RFC 5321 4.1.2 esmtp-param) in place, upper-casing them.
 * Returns the count, or -1 when one is malformed or there are more than `max`. */
int smtp_parse_params(char *params, struct smtp_param *out, int max);

#endif
