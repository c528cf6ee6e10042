/* The SMTP commands of a session, as one table: each row checks its command, names the hook
 * the script decides it in, and carries it on after. Below the session's I/O (session.c),
 * above the connection primitives (conn.h). */
#ifndef LUASMTPD_COMMANDS_H
#define LUASMTPD_COMMANDS_H

#include <stddef.h>

struct session;

/* One complete command line, without its line end. */
void commands_dispatch(struct session *s, char *line, size_t len);
/* The connection opened: on_connect decides, then the greeting (or a 421). */
void commands_connect(struct session *s);
/* A line over auth_line_cap() was thrown away: its answer. */
void commands_overlong(struct session *s);
/* Frees what the command being carried out holds, and forgets AUTH (the session is going). */
void commands_release(struct session *s);

#endif
