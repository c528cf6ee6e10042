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
struct evdns_base;
struct lrt;
struct lrt_call;
struct lrt_session;
typedef struct lua_State lua_State;

struct lrt_options {
    const struct config *cfg; /* settings, remote, debug, script path */
    const char *lua_dir;      /* the bundled scripts and helpers */
    const char *hostname;
    struct event_base *base;  /* for the bindings that wait on events */
    struct evdns_base *dns;
    /* Told of every Lua file a generation loads with require, so it can be watched. */
    void (*on_file)(void *arg, const char *path);
    void *on_file_arg;
};

struct lrt_message {
    const struct envelope *env;
    struct buf *data; /* taken: the runtime frees it once Lua holds its copy */
    const char *id;   /* the transaction's id, options.id */
};

enum lrt_outcome {
    LRT_DEFAULT,  /* nil or false: go on, or the default success reply */
    LRT_REPLY,    /* a string the session must check */
    LRT_FAILED,   /* a Lua error or a return of the wrong type; already logged */
};

/* Called once per call that was not cancelled, possibly before the call returned NULL. */
typedef void (*lrt_done_fn)(void *arg, enum lrt_outcome outcome, const char *reply, size_t len);

struct lrt *lrt_new(const struct lrt_options *opts);
/* Loads the script as a new generation: a fresh lua_State runs the script and its on_load();
 * only when that worked and process_message is a function does it become current. Calls in
 * flight finish on the generation they began on; it closes (on_unload(), then lua_close) when
 * the last of them ends. false: the reason was logged and the current generation goes on. */
bool lrt_load(struct lrt *rt);
/* Loads a script in a throw-away state and reports whether a reload would accept it. */
bool lrt_check(const struct lrt_options *opts);
unsigned lrt_generation_id(const struct lrt *rt);
void lrt_free(struct lrt *rt);

/* A connection's side of the runtime: the `session` table scripts keep state in. A
 * transaction runs on one generation from MAIL to the end of DATA; between transactions the
 * session moves to the current one (its table then starts afresh). */
struct lrt_session *lrt_session_new(struct lrt *rt, unsigned long id, const char *peer_addr,
                                    int peer_port);
void lrt_session_set_helo(struct lrt_session *ls, const char *helo, bool esmtp);
/* MAIL: the transaction starts on the current generation; the script sees `id` as
 * session.transaction_id until it ends. */
void lrt_session_begin_transaction(struct lrt_session *ls, const char *id);
void lrt_session_end_transaction(struct lrt_session *ls);
unsigned lrt_session_generation(const struct lrt_session *ls);
void lrt_session_free(struct lrt_session *ls);

enum lrt_hook {
    LRT_HOOK_CONNECT, /* on_connect(session) */
    LRT_HOOK_HELO,    /* on_helo(session, name) */
    LRT_HOOK_MAIL,    /* on_mail(session, address, params) */
    LRT_HOOK_RCPT,    /* on_rcpt(session, address, params) */
};

/* Runs an optional hook. Returns the pending call, or NULL when `done` already ran (the hook
 * is not defined, or finished without waiting). */
struct lrt_call *lrt_call_hook(struct lrt_session *ls, enum lrt_hook hook, const char *arg,
                               const struct strv *params, lrt_done_fn done, void *done_arg);
/* Runs process_message(peer, mailfrom, rcpttos, data, options). */
struct lrt_call *lrt_process_message(struct lrt_session *ls, const struct lrt_message *msg,
                                     lrt_done_fn done, void *done_arg);
/* The client went away: `done` will not be called, and what the call waits on is cancelled. */
void lrt_call_cancel(struct lrt_call *call);

/* For bindings that wait: only a handler's own coroutine may (NULL elsewhere). */
struct lrt_call *lrt_call_of(lua_State *L);
typedef void (*lrt_cancel_fn)(void *arg);
/* Suspends the call until lrt_call_resume; `cancel` runs instead if the client leaves first.
 * Use as `return lrt_wait(L, call, cancel, arg);`.
 *
 * The rule for `cancel`: once it returns, nothing may use memory Lua owns. Right after it the
 * coroutine is let go, and with it the generation may close (a reload made a new one current),
 * freeing every string, table and userdata in it at once. So a cancel ends every use of them
 * before it returns: it stops (not merely flags) the work that reads a Lua string in place (a
 * message being fed or sent), unregisters every callback whose argument is or points into a
 * userdata, and drops its registry references last. Work that must outlive the cancel (a child
 * being killed, a QUIT being said) may go on only on memory C owns. The completion callback
 * never runs after a cancel. */
int lrt_wait(lua_State *L, struct lrt_call *call, lrt_cancel_fn cancel, void *cancel_arg);
/* The coroutine to push the results on before resuming. */
lua_State *lrt_call_thread(struct lrt_call *call);
void lrt_call_resume(struct lrt_call *call, int nresults);

#endif
