/* RFC 3461's MAIL and RCPT parameters, checked and decoded. The replies are RFC 5321's 501
 * for a parameter whose value is wrong, with RFC 3463's 5.5.4 ("invalid command arguments"),
 * as BODY's and SMTPUTF8's are; RFC 5321 4.1.2 allows a parameter once per command. */
#include "luasmtpd/dsn.h"

#include <string.h>
#include <strings.h>

enum dsn_param { DSN_RET, DSN_ENVID, DSN_NOTIFY, DSN_ORCPT, DSN_PARAMS };

static const struct {
    const char *keyword;
    bool mail; /* MAIL's, or RCPT's */
    const char *bad;
    const char *twice;
} params_table[DSN_PARAMS] = {
    [DSN_RET] = {"RET", true, "501 5.5.4 Error: RET can only be one of FULL, HDRS",
                 "501 5.5.4 Error: RET given more than once"},
    [DSN_ENVID] = {"ENVID", true, "501 5.5.4 Error: ENVID must be xtext of at most 100 characters",
                   "501 5.5.4 Error: ENVID given more than once"},
    [DSN_NOTIFY] = {"NOTIFY", false,
                    "501 5.5.4 Error: NOTIFY can only be NEVER, or a list of SUCCESS, FAILURE, "
                    "DELAY",
                    "501 5.5.4 Error: NOTIFY given more than once"},
    [DSN_ORCPT] = {"ORCPT", false,
                   "501 5.5.4 Error: ORCPT must be addr-type;xtext of at most 500 characters",
                   "501 5.5.4 Error: ORCPT given more than once"},
};

static const char *const notify_names[] = {"NEVER", "SUCCESS", "FAILURE", "DELAY"};

static int
hex_digit(char c)
{
    /* RFC 3461 4: "two upper case hexadecimal digits" */
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

bool
dsn_xtext_decode(const char *in, char *out)
{
    for (; *in; in++) {
        unsigned char c = (unsigned char)*in;
        if (c == '+') {
            int hi = hex_digit(in[1]);
            int lo = hi < 0 ? -1 : hex_digit(in[2]);
            if (lo < 0)
                return false;
            c = (unsigned char)(hi * 16 + lo);
            in += 2;
            if (c < 0x20 || c > 0x7e)
                return false;
        } else if (c < 33 || c > 126 || c == '=') {
            return false;
        }
        *out++ = (char)c;
    }
    *out = '\0';
    return true;
}

/* RFC 5322 atext, what addr-type (an atom) is made of. */
static bool
is_atext(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

/* "addr-type;xtext" into `out` with the xtext decoded. */
static bool
orcpt_decode(const char *value, char *out)
{
    const char *semi = strchr(value, ';');
    if (semi == NULL || semi == value || strlen(value) > DSN_ORCPT_MAX)
        return false;
    for (const char *p = value; p < semi; p++)
        if (!is_atext(*p))
            return false;
    size_t type_len = (size_t)(semi - value) + 1;
    memcpy(out, value, type_len);
    return semi[1] != '\0' && dsn_xtext_decode(semi + 1, out + type_len);
}

static unsigned
notify_parse(const char *value)
{
    unsigned bits = 0;
    for (const char *p = value;;) {
        size_t n = strcspn(p, ",");
        unsigned bit = 0;
        for (size_t i = 0; i < 4 && bit == 0; i++)
            if (strlen(notify_names[i]) == n && strncasecmp(p, notify_names[i], n) == 0)
                bit = 1u << i;
        if (bit == 0)
            return 0;
        bits |= bit;
        if (p[n] == '\0')
            break;
        p += n + 1;
    }
    /* RFC 3461 4.1: NEVER stands alone. */
    return (bits & DSN_NOTIFY_NEVER) && bits != DSN_NOTIFY_NEVER ? 0 : bits;
}

/* Takes one parameter into `m` (MAIL) or `r` (RCPT), whichever is not NULL. Returns the
 * parameter it was, DSN_PARAMS when none of ours; `*ok` false when its value is wrong. */
static enum dsn_param
take(struct dsn_mail *m, struct dsn_rcpt *r, const char *keyword, const char *value, bool *ok)
{
    enum dsn_param p = 0;
    while (p < DSN_PARAMS &&
           (params_table[p].mail != (m != NULL) || strcasecmp(keyword, params_table[p].keyword)))
        p++;
    *ok = value != NULL;
    if (p == DSN_PARAMS || value == NULL)
        return p;
    switch (p) {
    case DSN_RET:
        m->ret = strcasecmp(value, "FULL") == 0   ? DSN_RET_FULL
                 : strcasecmp(value, "HDRS") == 0 ? DSN_RET_HDRS
                                                  : DSN_RET_UNSET;
        *ok = m->ret != DSN_RET_UNSET;
        break;
    case DSN_ENVID:
        *ok = strlen(value) <= DSN_ENVID_MAX && dsn_xtext_decode(value, m->envid);
        m->has_envid = *ok;
        break;
    case DSN_NOTIFY:
        r->notify = notify_parse(value);
        *ok = r->notify != 0;
        break;
    case DSN_ORCPT:
        *ok = orcpt_decode(value, r->orcpt);
        r->has_orcpt = *ok;
        break;
    case DSN_PARAMS:
        break;
    }
    return p;
}

const char *
dsn_check_params(const struct smtp_param *params, int n, bool mail, bool *known)
{
    struct dsn_mail m;
    struct dsn_rcpt r;
    bool seen[DSN_PARAMS] = {false};
    for (int i = 0; i < n; i++) {
        bool ok;
        enum dsn_param p =
            take(mail ? &m : NULL, mail ? NULL : &r, params[i].keyword, params[i].value, &ok);
        if (p == DSN_PARAMS)
            continue;
        if (seen[p])
            return params_table[p].twice;
        if (!ok)
            return params_table[p].bad;
        seen[p] = true;
        known[i] = true;
    }
    for (int i = 0; i < n; i++)
        if (!known[i])
            return mail ? "555 5.5.4 MAIL FROM parameters not recognized or not implemented"
                        : "555 5.5.4 RCPT TO parameters not recognized or not implemented";
    return NULL;
}

/* One "KEYWORD=value" word (of at most `len` bytes) into `m` or `r`. */
static void
decode_word(struct dsn_mail *m, struct dsn_rcpt *r, const char *word, size_t len)
{
    char keyword[8];
    char value[DSN_ORCPT_MAX + 1];
    const char *eq = memchr(word, '=', len);
    size_t klen = eq ? (size_t)(eq - word) : 0;
    size_t vlen = eq ? len - klen - 1 : 0;
    if (klen == 0 || klen >= sizeof(keyword) || vlen >= sizeof(value))
        return;
    memcpy(keyword, word, klen);
    keyword[klen] = '\0';
    memcpy(value, eq + 1, vlen);
    value[vlen] = '\0';
    bool ok;
    take(m, r, keyword, value, &ok);
}

void
dsn_mail_decode(struct dsn_mail *d, const char *const *words, size_t n)
{
    memset(d, 0, sizeof(*d));
    for (size_t i = 0; i < n; i++)
        decode_word(d, NULL, words[i], strlen(words[i]));
}

void
dsn_rcpt_decode(struct dsn_rcpt *d, const char *words)
{
    memset(d, 0, sizeof(*d));
    for (const char *p = words; *p;) {
        size_t len = strcspn(p, " ");
        decode_word(NULL, d, p, len);
        p += len;
        p += *p == ' ';
    }
}

/* The length of `s` as xtext, or 0 when it holds what xtext cannot carry. */
static size_t
xtext_length(const char *s)
{
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p < 0x20 || *p > 0x7e)
            return 0;
        n += *p <= 0x20 || *p == '+' || *p == '=' ? 3 : 1;
    }
    return n;
}

static int
xtext_append(struct buf *out, const char *s)
{
    int rc = 0;
    for (const unsigned char *p = (const unsigned char *)s; rc == 0 && *p; p++)
        rc = *p <= 0x20 || *p == '+' || *p == '=' ? buf_printf(out, "+%02X", *p)
                                                  : buf_append(out, p, 1);
    return rc;
}

const char *
dsn_mail_set(struct dsn_mail *d, const char *ret, const char *envid)
{
    memset(d, 0, sizeof(*d));
    if (ret != NULL) {
        d->ret = strcasecmp(ret, "FULL") == 0   ? DSN_RET_FULL
                 : strcasecmp(ret, "HDRS") == 0 ? DSN_RET_HDRS
                                                : DSN_RET_UNSET;
        if (d->ret == DSN_RET_UNSET)
            return "ret must be FULL or HDRS";
    }
    if (envid != NULL) {
        size_t n = xtext_length(envid);
        if (n == 0 || n > DSN_ENVID_MAX)
            return "envid must be printable ASCII, at most 100 characters as xtext";
        strcpy(d->envid, envid);
        d->has_envid = true;
    }
    return NULL;
}

const char *
dsn_rcpt_set(struct dsn_rcpt *d, const char *const *notify, size_t n, const char *orcpt)
{
    memset(d, 0, sizeof(*d));
    for (size_t i = 0; i < n; i++) {
        unsigned bit = 0;
        for (size_t k = 0; k < 4 && bit == 0; k++)
            if (strcasecmp(notify[i], notify_names[k]) == 0)
                bit = 1u << k;
        d->notify |= bit;
        if (bit == 0 || ((d->notify & DSN_NOTIFY_NEVER) && d->notify != DSN_NOTIFY_NEVER))
            return "notify must be NEVER, or a list of SUCCESS, FAILURE, DELAY";
    }
    if (orcpt != NULL) {
        const char *semi = strchr(orcpt, ';');
        bool ok = semi != NULL && semi > orcpt && semi[1] != '\0';
        for (const char *p = orcpt; ok && p < semi; p++)
            ok = is_atext(*p);
        size_t len = ok ? xtext_length(semi + 1) : 0;
        if (len == 0 || (size_t)(semi - orcpt) + 1 + len > DSN_ORCPT_MAX)
            return "orcpt must be addr-type;address, at most 500 characters as xtext";
        strcpy(d->orcpt, orcpt);
        d->has_orcpt = true;
    }
    return NULL;
}

int
dsn_mail_format(const struct dsn_mail *d, struct buf *out)
{
    int rc = 0;
    if (d->ret != DSN_RET_UNSET)
        rc = buf_append_str(out, d->ret == DSN_RET_FULL ? " RET=FULL" : " RET=HDRS");
    if (rc == 0 && d->has_envid)
        rc = buf_append_str(out, " ENVID=") == 0 ? xtext_append(out, d->envid) : -1;
    return rc;
}

int
dsn_rcpt_format(const struct dsn_rcpt *d, struct buf *out)
{
    int rc = 0;
    const char *names[4];
    size_t n = dsn_notify_names(d->notify, names);
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = buf_printf(out, "%s%s", i == 0 ? " NOTIFY=" : ",", names[i]);
    if (rc == 0 && d->has_orcpt) {
        const char *semi = strchr(d->orcpt, ';');
        rc = buf_printf(out, " ORCPT=%.*s", (int)(semi - d->orcpt + 1), d->orcpt);
        rc = rc == 0 ? xtext_append(out, semi + 1) : -1;
    }
    return rc;
}

size_t
dsn_notify_names(unsigned notify, const char *names[4])
{
    size_t n = 0;
    for (size_t i = 0; i < 4; i++)
        if (notify & (1u << i))
            names[n++] = notify_names[i];
    return n;
}
