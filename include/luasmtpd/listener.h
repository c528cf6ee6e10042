/* The process around the sessions: listening sockets, accept, signals, privilege drop and the
 * graceful stop. It never parses SMTP. */
#ifndef LUASMTPD_LISTENER_H
#define LUASMTPD_LISTENER_H

#include "luasmtpd/config.h"

/* Binds, drops privileges, loads the handler and serves until SIGTERM/SIGINT. Returns the
 * process exit status. */
int listener_run(struct config *cfg, const char *lua_dir);
/* Loads the script in a throw-away state, as a reload would (--check, and before the workers
 * start). false: the reason was logged. */
bool listener_check_script(const struct config *cfg, const char *lua_dir);

#endif
