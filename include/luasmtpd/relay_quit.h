/* The polite end of an idle relay connection: QUIT, then a wait in the background for the
 * server's reply, its close or a timeout, before our side closes, so the server does not log a
 * lost connection. Nobody waits for it and nothing is reported. */
#ifndef LUASMTPD_RELAY_QUIT_H
#define LUASMTPD_RELAY_QUIT_H

struct event_base;
struct bufferevent;

/* Takes `bev` (its callbacks are replaced; bytes already in its input answer nothing of ours
 * and are left unread) and frees it within `seconds`. When out of memory it closes at once. */
void relay_quit_start(struct event_base *base, struct bufferevent *bev, double seconds);

#endif
