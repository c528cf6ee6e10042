/* AUTH for the server (RFC 4954, with PLAIN and LOGIN): when it is offered, the SASL exchange
 * and its base64, and the AUTH row of the command table. The script's authenticate() decides
 * (the table runs it); this file only gets the credentials there and keeps them out of logs. */
#ifndef LUASMTPD_AUTH_H
#define LUASMTPD_AUTH_H

#include <stdbool.h>
#include <stddef.h>

struct session;

/* RFC 4954 4: the longest AUTH command line or response a server must take. */
#define AUTH_LINE_MAX 12288

/* EHLO offers AUTH: the script defines authenticate, and TLS is on (or --no-requiretls). */
bool auth_offered(const struct session *s);
/* The longest line the session frames now: AUTH's while AUTH could be used. */
size_t auth_line_cap(const struct session *s);
/* How much of a command line the debug log may show: an AUTH line up to its mechanism. */
size_t auth_loggable(const char *line, size_t len);
/* The AUTH row: check answers or challenges (334) or, with whole credentials in s->cmd,
 * lets the hook decide; proceed and refused answer the hook. */
bool auth_check(struct session *s, char *arg);
void auth_proceed(struct session *s, const char *reply, size_t len);
void auth_refused(struct session *s, const char *reply, size_t len);
/* A line answering a 334 (s->sasl set). true: the credentials are whole in s->cmd and the
 * hook decides; false: it was answered (a further 334, or the exchange ended). */
bool auth_response(struct session *s, const char *line, size_t len);
/* A line over auth_line_cap() was thrown away. true: it answered a 334, and that was said. */
bool auth_overlong(struct session *s);
/* --auth-required: false when MAIL was answered 530. */
bool auth_mail_allowed(struct session *s);
/* STARTTLS's reset (RFC 3207 4.2), or the session is going: the user is forgotten. */
void auth_forget(struct session *s);

#endif
