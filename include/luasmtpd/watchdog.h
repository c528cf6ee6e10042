/* --watchdog SECONDS: ends a process whose event loop is stuck, as Postfix's watchdog(3). The
 * loop re-arms a process timer (ITIMER_REAL) from a libevent timer, and the Lua runtime re-arms
 * it each time it enters Lua; when neither happened for SECONDS, SIGALRM logs one line and the
 * process exits with WATCHDOG_EXIT_STATUS, so the worker supervisor or systemd brings it back.
 * What it guards against is what the instruction budget cannot stop: a Lua finalizer (Lua runs
 * no hooks inside __gc) or a C call that never returns. */
#ifndef LUASMTPD_WATCHDOG_H
#define LUASMTPD_WATCHDOG_H

#include <stdbool.h>

struct event_base;

/* EX_SOFTWARE (sysexits.h): distinct from 1 (a start that failed) and from a signal. */
#define WATCHDOG_EXIT_STATUS 70

/* Arms the watchdog for `seconds` (0: off) and re-arms it from `base`'s loop. Call it just
 * before the loop runs: loading the script first is bounded by the instruction budget.
 * false: it could not be set up (logged), and the server runs without it. */
bool watchdog_start(struct event_base *base, unsigned seconds);
/* Progress: the next `seconds` start now. Cheap enough to call on every entry into Lua. */
void watchdog_kick(void);
/* Disarms it and frees its timer; the process is about to leave its loop for good. */
void watchdog_stop(void);

#endif
