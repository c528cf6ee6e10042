/* The Lua runtime: generations of lua_State, loading the handler script, and running
 * process_message in a coroutine of its own. It hands results back as plain C values and knows
 * nothing of the SMTP grammar: the session decides what a returned string means. */
#ifndef LUASMTPD_LUA_RUNTIME_H
#define LUASMTPD_LUA_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>

#include "luasmtpd/buf.h"
#include "luasmtpd/envelope.h"
#include "luasmtpd/lua_load.h"
#include "luasmtpd/lua_wait.h"

struct lrt;
struct lrt_session;

struct lrt_options {
    struct lrt_env env;        /* what the bindings see; lrt_new adds env.pipes */
    struct lload_options load; /* the script, the helpers' directory, the trust checks */
    unsigned lua_instructions; /* per entry into Lua, then it fails; 0: no limit */
    unsigned lua_memory_mb;    /* per state; 0: no limit */
    unsigned max_children;     /* smtpd.pipe children at once; the rest queue */
};

struct lrt_message {
    const struct envelope *env;
    struct buf *data; /* taken: the runtime frees it once Lua holds its copy */
    const char *id;   /* the transaction's id, options.id */
};

enum lrt_outcome {
    LRT_DEFAULT, /* nil or false: go on, or the default success reply */
    LRT_REPLY,   /* a string the session must check */
    LRT_FAILED,  /* a Lua error or a return of the wrong type; already logged */
    LRT_ACCEPT,  /* true, from a hook whose yes must be said (authenticate) */
};

/* Called once per call that was not cancelled, possibly before the call returned NULL. */
typedef void (*lrt_done_fn)(void *arg, enum lrt_outcome outcome, const char *reply, size_t len);

/* With the pipe pool on opts->env.base; NULL when out of memory. */
struct lrt *lrt_new(const struct lrt_options *opts);
/* Loads the script as a new generation: a fresh lua_State runs the script and its on_load();
 * only when that worked and process_message is a function does it become current. Calls in
 * flight finish on the generation they began on; it closes (on_unload(), then lua_close) when
 * the last of them ends. false: the reason was logged and the current generation goes on. */
bool lrt_load(struct lrt *rt);
/* Loads a script in a throw-away state and reports whether a reload would accept it. */
bool lrt_check(const struct lrt_options *opts);
unsigned lrt_generation_id(const struct lrt *rt);
/* After the last session was freed (its calls cancelled): closes the generation, then kills and
 * reaps the children still running. Before the event base is freed. */
void lrt_free(struct lrt *rt);

/* A connection's side of the runtime: the `session` table scripts keep state in. A
 * transaction runs on one generation from MAIL to the end of DATA; between transactions the
 * session moves to the current one (its table then starts afresh). */
struct lrt_session *lrt_session_new(struct lrt *rt, unsigned long id, const char *peer_addr,
                                    int peer_port, bool trusted);
/* helo NULL: forgotten (after STARTTLS the client greets again). */
void lrt_session_set_helo(struct lrt_session *ls, const char *helo, bool esmtp);
/* The handshake is done: the script sees session.tls {version, cipher, bits, subject}
 * (subject: the client certificate's, unverified; NULL when it sent none). */
void lrt_session_set_tls(struct lrt_session *ls, const char *version, const char *cipher, int bits,
                         const char *subject);
/* AUTH succeeded (user) or is forgotten (NULL, after STARTTLS): the script sees session.auth. */
void lrt_session_set_auth(struct lrt_session *ls, const char *user);
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
    LRT_HOOK_AUTH,    /* authenticate(session, mechanism, username, password): true accepts */
};

/* Whether the current generation's script defines the hook (AUTH is offered only then). */
bool lrt_session_has_hook(const struct lrt_session *ls, enum lrt_hook hook);

/* Runs an optional hook (for LRT_HOOK_AUTH, params holds the username and the password). Returns
 * the pending call, or NULL when `done` already ran (the hook is not defined, or finished without
 * waiting). */
struct lrt_call *lrt_call_hook(struct lrt_session *ls, enum lrt_hook hook, const char *arg,
                               const struct strv *params, lrt_done_fn done, void *done_arg);
/* Runs process_message(peer, mailfrom, rcpttos, data, options). */
struct lrt_call *lrt_process_message(struct lrt_session *ls, const struct lrt_message *msg,
                                     lrt_done_fn done, void *done_arg);
/* The client went away: `done` will not be called, and what the call waits on is cancelled. */
void lrt_call_cancel(struct lrt_call *call);

#endif
