/* One client connection's SMTP state machine over a bufferevent: framing, command dispatch,
 * DATA streaming, replies, timeouts. It parses through smtp_parse/smtp_data and runs handlers
 * through the Lua runtime's plain C interface; it never touches a lua_State. */
#ifndef LUASMTPD_SESSION_H
#define LUASMTPD_SESSION_H

#include <stdbool.h>
#include <sys/socket.h>

#include "luasmtpd/session_group.h"

/* Takes the accepted socket: greets (after the TLS handshake when `implicit_tls`), then serves
 * it until it closes. */
void session_start(struct session_group *g, int fd, const struct sockaddr *addr, int addrlen,
                   bool implicit_tls);
/* Stop taking new transactions: idle sessions get 421 now, busy ones after their transaction. */
void session_group_drain(struct session_group *g);
/* Closes every session at once (the shutdown grace period is over). */
void session_group_close_all(struct session_group *g);
/* Closes every session and frees what the group holds. */
void session_group_free(struct session_group *g);

#endif
