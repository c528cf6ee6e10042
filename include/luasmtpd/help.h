/* HELP's answers: Python smtpd's texts, with the commands this connection offers beyond them
 * (STARTTLS, AUTH) added where they are offered. Replies only; the command table runs it. */
#ifndef LUASMTPD_HELP_H
#define LUASMTPD_HELP_H

struct session;

/* Answers HELP with `arg` (the topic, "" for none). */
void help_answer(struct session *s, const char *arg);

#endif
