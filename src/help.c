/* HELP (see help.h). The general answer and the 501 for an unknown topic list the same
 * commands: Python's nine (LHLO for EHLO and HELO on an LMTP listener), then BDAT,
 * STARTTLS and AUTH when EHLO would offer them now, so a client reading HELP learns no more
 * and no less than it could use. */
#include "luasmtpd/help.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <strings.h>

#include "luasmtpd/auth.h"
#include "luasmtpd/config.h"
#include "luasmtpd/conn.h"
#include "luasmtpd/tls.h"

struct topic {
    const char *verb;
    const char *syntax;
    bool mail_params; /* after EHLO, Python adds " [SP <mail-parameters>]" */
};

static const struct topic python_topics[] = {
    {"EHLO", "EHLO hostname", false},
    {"HELO", "HELO hostname", false},
    {"MAIL", "MAIL FROM: <address>", true},
    {"RCPT", "RCPT TO: <address>", true},
    {"DATA", "DATA", false},
    {"RSET", "RSET", false},
    {"NOOP", "NOOP", false},
    {"QUIT", "QUIT", false},
    {"VRFY", "VRFY <address>", false},
};
/* An LMTP listener's greeting in place of the first two (RFC 2033 4.1). */
static const struct topic lhlo_topic = {"LHLO", "LHLO hostname", false};
/* RFC 3030 3's form; CHUNKING is offered after EHLO. */
static const struct topic bdat_topic = {"BDAT", "BDAT chunk-size [LAST]", false};
static const struct topic starttls_topic = {"STARTTLS", "STARTTLS", false};
/* RFC 4954 4's form of the command. */
static const struct topic auth_topic = {"AUTH", "AUTH mechanism [initial-response]", false};

void
help_answer(struct session *s, const char *arg)
{
    bool bdat = s->esmtp;
    bool starttls = !s->in_tls && tls_server_offers(s->g->tls, TLS_STARTTLS);
    bool auth = auth_offered(s);
    char more[32];
    snprintf(more, sizeof(more), "%s%s%s", bdat ? " BDAT" : "", starttls ? " STARTTLS" : "",
             auth ? " AUTH" : "");
    bool lmtp = s->g->cfg->lmtp;
    const char *commands = lmtp
                               ? "Supported commands: LHLO MAIL RCPT DATA RSET NOOP QUIT VRFY"
                               : "Supported commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY";
    if (*arg == '\0') {
        conn_reply(s, "250 2.0.0 %s%s", commands, more);
        return;
    }
    const struct topic *found = NULL;
    for (size_t i = lmtp ? 2 : 0; i < sizeof(python_topics) / sizeof(python_topics[0]); i++)
        if (strcasecmp(arg, python_topics[i].verb) == 0)
            found = &python_topics[i];
    if (lmtp && strcasecmp(arg, lhlo_topic.verb) == 0)
        found = &lhlo_topic;
    if (bdat && strcasecmp(arg, bdat_topic.verb) == 0)
        found = &bdat_topic;
    if (starttls && strcasecmp(arg, starttls_topic.verb) == 0)
        found = &starttls_topic;
    if (auth && strcasecmp(arg, auth_topic.verb) == 0)
        found = &auth_topic;
    if (found == NULL) {
        conn_reply(s, "501 5.5.4 %s%s", commands, more);
        return;
    }
    conn_reply(s, "250 2.0.0 Syntax: %s%s", found->syntax,
               s->esmtp && found->mail_params ? " [SP <mail-parameters>]" : "");
}
