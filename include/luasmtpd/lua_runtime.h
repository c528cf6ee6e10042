/* The Lua runtime: generations of lua_State, loading the handler script, and running
 * process_message in a coroutine of its own. It hands results back as plain C values and knows
 * nothing of the SMTP grammar: the session decides what a returned string means. */
#ifndef LUASMTPD_LUA_RUNTIME_H
#define LUASMTPD_LUA_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>

#include "luasmtpd/buf.h"
#include "luasmtpd/config.h"
#include "luasmtpd/envelope.h"

struct event_base;
struct lrt;
struct lrt_call;

struct lrt_options {
    const struct config *cfg; /* settings, remote, debug, script path */
    const char *lua_dir;      /* the bundled scripts and helpers */
    const char *hostname;
};

struct lrt_message {
    unsigned long session_id;
    const char *peer_addr;
    int peer_port;
    const char *helo;
    const struct envelope *env;
    struct buf *data; /* taken: the runtime frees it once Lua holds its copy */
};

enum lrt_outcome {
    LRT_DEFAULT,  /* nil or false: the default success reply */
    LRT_REPLY,    /* a string the session must check */
    LRT_FAILED,   /* a Lua error or a return of the wrong type; already logged */
};

/* Called once per call that was not cancelled, possibly before lrt_process_message returns. */
typedef void (*lrt_done_fn)(void *arg, enum lrt_outcome outcome, const char *reply, size_t len);

struct lrt *lrt_new(struct event_base *base, const struct lrt_options *opts);
/* Loads the script as the first generation. false: the reason was logged. */
bool lrt_load(struct lrt *rt);
/* Loads a script in a throw-away state and reports whether a reload would accept it. */
bool lrt_check(const struct lrt_options *opts);
unsigned lrt_generation_id(const struct lrt *rt);

/* Runs process_message. Returns the pending call, or NULL when `done` already ran. */
struct lrt_call *lrt_process_message(struct lrt *rt, const struct lrt_message *msg,
                                     lrt_done_fn done, void *arg);
/* The client went away: `done` will not be called. */
void lrt_call_cancel(struct lrt_call *call);

void lrt_free(struct lrt *rt);

#endif
