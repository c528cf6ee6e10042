/* Generations of lua_State and the calls into them. Each call runs in a coroutine of its own,
 * anchored in the registry while it lives, so a yielding binding can suspend it and the loop
 * can resume it later; a call's state says whether a late resume is still allowed. It turns Lua
 * values into plain C results; what a reply string means is the session's business. Reading
 * the script's files (and refusing untrusted ones) is lua_load.c's; each runtime owns the pool
 * of smtpd.pipe children its bindings share. */
#include "luasmtpd/lua_runtime.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdlib.h>
#include <string.h>

#include "luasmtpd/log.h"
#include "luasmtpd/lua_dsn.h"
#include "luasmtpd/lua_smtpd.h"
#include "luasmtpd/pipe.h"
#include "luasmtpd/watchdog.h"

/* What one Lua state may spend: memory at any time, instructions per entry into Lua (a
 * handler or hook call, one step of it between two waits, or a load). Only counted while Lua
 * code runs: C pushing arguments and results must never fail halfway. */
struct lrt_budget {
    size_t used, cap;             /* bytes; cap 0: no limit */
    unsigned long counted, limit; /* instructions in this entry; limit 0: no limit */
    bool enforcing;
};

/* How often the count hook runs: rarely enough to cost nothing, often enough to stop a loop
 * within a few microseconds of its budget. */
#define HOOK_STEP 10000

/* A lua_State and everything loaded into it. It lives while it is current or a call uses it. */
struct lrt_generation {
    struct lrt_budget *budget;
    lua_State *L;
    unsigned id;
    unsigned refs;
};

struct lrt {
    struct lrt_options opts;
    struct lrt_generation *current;
    unsigned last_id;
    struct lrt_session *sessions;
};

enum lrt_call_state {
    LRT_CALL_RUNNING, /* inside lua_resume */
    LRT_CALL_WAITING, /* suspended in a binding until its event arrives */
};

struct lrt_call {
    struct lrt_generation *gen;
    lua_State *co;
    int co_ref;
    enum lrt_call_state state;
    const char *what; /* the function it runs, for the log */
    unsigned long session_id;
    lrt_done_fn done;
    void *arg;
    lrt_cancel_fn cancel;
    void *cancel_arg;
    size_t message_bytes; /* process_message: the size of the message it was given */
    bool takes_true;      /* `true` is an answer (LRT_ACCEPT), not a wrong return type */
};

/* Once a call that was given a message this big ends, its string is garbage: Lua would keep it
 * until the heap doubles, so the memory of messages already answered could reach the DATA
 * budget again. A full collection then costs the live objects, not the bytes of strings. */
#define COLLECT_AFTER_MESSAGE_BYTES (1024 * 1024)

struct lrt_session {
    struct lrt_session *prev, *next;
    bool in_transaction;
    struct lrt *rt;
    struct lrt_generation *gen; /* the generation `table_ref` lives in */
    int table_ref;
    unsigned long id;
    char *peer_addr;
    int peer_port;
    bool trusted; /* peer_addr is in --trusted-networks */
    char *helo;
    bool esmtp; /* the greeting was EHLO (LHLO), not HELO: Received: says ESMTP or SMTP */
    struct {
        char *version; /* NULL: not in TLS */
        char *cipher;
        int bits;
        char *subject;
    } tls;
    char *auth; /* the user AUTH accepted; NULL: none */
};

static int traceback_handler(lua_State *L);

static void *
budget_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    struct lrt_budget *b = ud;
    size_t old = ptr != NULL ? osize : 0;
    if (nsize == 0) {
        free(ptr);
        b->used -= old;
        return NULL;
    }
    if (nsize > old && b->enforcing && b->cap != 0 && b->used + (nsize - old) > b->cap)
        return NULL; /* Lua collects garbage, then raises "not enough memory" */
    void *p = realloc(ptr, nsize);
    if (p != NULL)
        b->used = b->used - old + nsize;
    return p;
}

static void
count_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    void *ud;
    lua_getallocf(L, &ud);
    struct lrt_budget *b = ud;
    if (!b->enforcing || b->limit == 0)
        return;
    b->counted += HOOK_STEP;
    if (b->counted > b->limit) {
        /* From now on every instruction raises, so a pcall in a loop cannot swallow it: the
         * error reaches the top within a few instructions. */
        lua_sethook(L, count_hook, LUA_MASKCOUNT, 1);
        luaL_error(L, "the script ran past its budget of %I Lua instructions (--lua-instructions)",
                   (lua_Integer)b->limit);
    }
}

/* `L` is the thread about to run: its hook may have been left raising by a past overrun. */
static void
budget_enter(struct lrt_budget *b, lua_State *L)
{
    b->counted = 0;
    b->enforcing = true;
    lua_sethook(L, count_hook, LUA_MASKCOUNT, HOOK_STEP);
    /* The budget bounds what follows, except a finalizer (Lua runs no hook inside __gc): the
     * watchdog's period starts afresh, so it measures one entry, not a turn of many. */
    watchdog_kick();
}

static void
budget_leave(struct lrt_budget *b)
{
    b->enforcing = false;
}

static int
lrt_on_panic(lua_State *L)
{
    log_error("Lua panic: %s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
    abort();
}

/* Calls a global of the main chunk's, if defined, in protected mode with a traceback.
 * Returns false (the error message on the stack) when it raised. */
static bool
call_global(lua_State *L, const char *name)
{
    lua_pushcfunction(L, traceback_handler);
    if (lua_getglobal(L, name) != LUA_TFUNCTION) {
        lua_pop(L, 2);
        return true;
    }
    void *ud;
    lua_getallocf(L, &ud);
    budget_enter(ud, L);
    int status = lua_pcall(L, 0, 0, -2);
    budget_leave(ud);
    if (status != LUA_OK) {
        lua_remove(L, -2);
        return false;
    }
    lua_pop(L, 1);
    return true;
}

static void
gen_release(struct lrt_generation *gen)
{
    if (--gen->refs > 0)
        return;
    if (!call_global(gen->L, "on_unload")) {
        log_error("generation %u: on_unload failed: %s", gen->id, lua_tostring(gen->L, -1));
        lua_pop(gen->L, 1);
    }
    if (gen->id != 0) /* 0: a --check load, never served */
        log_info("generation %u closed", gen->id);
    lua_close(gen->L);
    free(gen->budget);
    free(gen);
}

/* Message handler for loading: the traceback goes with the error. */
static int
traceback_handler(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL)
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/* Builds a state and runs the script in it. NULL when the script does not load, raises, or
 * defines no process_message; the reason is logged. */
static struct lrt_generation *
gen_load(const struct lrt_options *opts, unsigned id)
{
    struct lrt_budget *budget = calloc(1, sizeof(*budget));
    lua_State *L = budget ? lua_newstate(budget_alloc, budget) : NULL;
    if (L == NULL) {
        free(budget);
        log_error("cannot create a Lua state: out of memory");
        return NULL;
    }
    budget->cap = (size_t)opts->lua_memory_mb * 1024 * 1024;
    budget->limit = opts->lua_instructions;
    lua_atpanic(L, lrt_on_panic);
    *(struct lrt_call **)lua_getextraspace(L) = NULL; /* the main thread runs no handler */
    luaL_openlibs(L);
    lload_install(L, &opts->load);
    lsmtpd_register(L, &opts->env);

    lua_pushcfunction(L, traceback_handler);
    budget_enter(budget, L);
    bool refused;
    int status = lload_file(L, &opts->load, opts->load.script_path, &refused);
    if (status == LUA_OK)
        status = lua_pcall(L, 0, 0, 1);
    budget_leave(budget);
    const char *failure = NULL;
    if (refused) {
        lua_close(L); /* said once, by lload_file */
        free(budget);
        return NULL;
    }
    if (status != LUA_OK)
        failure = lua_tostring(L, -1);
    else if (lua_getglobal(L, "process_message") != LUA_TFUNCTION)
        failure = "defines no function process_message";
    else if (lua_settop(L, 0), !call_global(L, "on_load"))
        failure = lua_pushfstring(L, "on_load failed: %s", lua_tostring(L, -1));
    if (failure != NULL) {
        log_error("%s: %s", opts->load.script_path, failure);
        lua_close(L);
        free(budget);
        return NULL;
    }

    struct lrt_generation *gen = calloc(1, sizeof(*gen));
    if (gen == NULL) {
        lua_close(L);
        free(budget);
        return NULL;
    }
    gen->budget = budget;
    gen->L = L;
    gen->id = id;
    gen->refs = 1;
    return gen;
}

struct lrt *
lrt_new(const struct lrt_options *opts)
{
    struct lrt *rt = calloc(1, sizeof(*rt));
    if (rt == NULL)
        return NULL;
    rt->opts = *opts;
    rt->opts.env.pipes = pipe_pool_new(opts->env.base, opts->max_children);
    if (rt->opts.env.pipes == NULL) {
        free(rt);
        return NULL;
    }
    return rt;
}

static void session_table_move(struct lrt_session *ls);

bool
lrt_load(struct lrt *rt)
{
    struct lrt_generation *gen = gen_load(&rt->opts, rt->last_id + 1);
    if (gen == NULL) {
        if (rt->current != NULL)
            log_error("reload failed: generation %u goes on serving", rt->current->id);
        return false;
    }
    rt->last_id = gen->id;
    struct lrt_generation *old = rt->current;
    rt->current = gen;
    log_info("generation %u loaded from %s", gen->id, rt->opts.load.script_path);
    /* Idle connections move now, so only transactions in flight keep the old one open. */
    for (struct lrt_session *ls = rt->sessions; ls != NULL; ls = ls->next)
        if (!ls->in_transaction)
            session_table_move(ls);
    if (old != NULL)
        gen_release(old);
    return true;
}

bool
lrt_check(const struct lrt_options *opts)
{
    struct lrt_generation *gen = gen_load(opts, 0);
    if (gen == NULL)
        return false;
    gen_release(gen);
    return true;
}

unsigned
lrt_generation_id(const struct lrt *rt)
{
    return rt->current ? rt->current->id : 0;
}

static void
call_free(struct lrt_call *call)
{
    luaL_unref(call->gen->L, LUA_REGISTRYINDEX, call->co_ref);
    if (call->message_bytes >= COLLECT_AFTER_MESSAGE_BYTES)
        lua_gc(call->gen->L, LUA_GCCOLLECT);
    gen_release(call->gen);
    free(call);
}

static void
push_strv(lua_State *L, const struct strv *v)
{
    lua_createtable(L, (int)v->n, 0);
    for (size_t i = 0; v != NULL && i < v->n; i++) {
        lua_pushstring(L, v->items[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
}

/* Finishes a call whose coroutine returned or failed: report, then free. */
static void
call_finish(struct lrt_call *call, int status, int nresults)
{
    lua_State *co = call->co;
    enum lrt_outcome outcome = LRT_FAILED;
    const char *reply = NULL;
    size_t len = 0;

    if (status == LUA_YIELD) {
        /* Only a binding may suspend a handler; a bare coroutine.yield would never be resumed. */
        log_error("session %lu: %s yielded outside an smtpd binding (generation %u)",
                  call->session_id, call->what, call->gen->id);
    } else if (status != LUA_OK) {
        const char *msg = lua_tostring(co, -1);
        if (msg == NULL)
            msg = lua_pushfstring(co, "(error object is a %s value)", luaL_typename(co, -1));
        lua_State *L = call->gen->L;
        luaL_traceback(L, co, msg, 0);
        log_error("session %lu: %s failed (generation %u): %s", call->session_id, call->what,
                  call->gen->id, lua_tostring(L, -1));
        lua_pop(L, 1);
    } else if (nresults == 0 || lua_isnil(co, -nresults) ||
               (lua_isboolean(co, -nresults) && !lua_toboolean(co, -nresults))) {
        outcome = LRT_DEFAULT;
    } else if (call->takes_true && lua_isboolean(co, -nresults)) {
        outcome = LRT_ACCEPT;
    } else if (lua_type(co, -nresults) == LUA_TSTRING) {
        outcome = LRT_REPLY;
        reply = lua_tolstring(co, -nresults, &len);
    } else {
        log_error("session %lu: %s returned a %s, not nil or a reply string (generation %u)",
                  call->session_id, call->what, luaL_typename(co, -nresults), call->gen->id);
    }
    /* `reply` points into the coroutine's stack: report before the coroutine can be freed. */
    call->done(call->arg, outcome, reply, len);
    call_free(call);
}

/* Resumes the coroutine with `nargs` values on its stack. Returns true when the call is
 * waiting in a binding and lives on. */
static bool
call_resume(struct lrt_call *call, int nargs)
{
    int nresults = 0;
    call->state = LRT_CALL_RUNNING;
    call->cancel = NULL;
    budget_enter(call->gen->budget, call->co);
    int status = lua_resume(call->co, call->gen->L, nargs, &nresults);
    budget_leave(call->gen->budget);
    if (status == LUA_YIELD && call->state == LRT_CALL_WAITING)
        return true;
    call_finish(call, status, nresults);
    return false;
}

/* A coroutine in `gen` with the function `name` pushed on it; NULL when out of memory. */
static struct lrt_call *
call_new(struct lrt_generation *gen, const char *name, unsigned long session_id, lrt_done_fn done,
         void *arg)
{
    struct lrt_call *call = calloc(1, sizeof(*call));
    if (call == NULL)
        return NULL;
    gen->refs++;
    call->gen = gen;
    call->what = name;
    call->session_id = session_id;
    call->done = done;
    call->arg = arg;
    lua_State *L = gen->L;
    call->co = lua_newthread(L);
    call->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    /* Bindings find their call through the thread's extra space. Coroutines a script creates
     * get the main thread's copy (NULL), so a binding used from one refuses, as it must: its
     * yield would land in the script's coroutine, not ours. */
    *(struct lrt_call **)lua_getextraspace(call->co) = call;
    lua_getglobal(call->co, name);
    return call;
}

/* Lets go of the session's table in its generation: the connection ended, or a reload moves
 * it on. on_disconnect(session) is the script's chance to let go of what it keeps there (an
 * upstream, say) at once, not whenever the collector gets to it. It cannot wait. */
static void
session_table_drop(struct lrt_session *ls)
{
    if (ls->gen == NULL)
        return;
    lua_State *L = ls->gen->L;
    lua_pushcfunction(L, traceback_handler);
    if (lua_getglobal(L, "on_disconnect") == LUA_TFUNCTION) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, ls->table_ref);
        budget_enter(ls->gen->budget, L);
        int status = lua_pcall(L, 1, 0, -3);
        budget_leave(ls->gen->budget);
        if (status != LUA_OK) {
            log_error("session %lu: on_disconnect failed (generation %u): %s", ls->id, ls->gen->id,
                      lua_tostring(L, -1));
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    } else {
        lua_pop(L, 2);
    }
    luaL_unref(L, LUA_REGISTRYINDEX, ls->table_ref);
    gen_release(ls->gen);
    ls->gen = NULL;
}

static void
session_table_push_tls(lua_State *L, const struct lrt_session *ls)
{
    lua_createtable(L, 0, 4);
    lua_pushstring(L, ls->tls.version);
    lua_setfield(L, -2, "version");
    lua_pushstring(L, ls->tls.cipher);
    lua_setfield(L, -2, "cipher");
    lua_pushinteger(L, ls->tls.bits);
    lua_setfield(L, -2, "bits");
    if (ls->tls.subject != NULL) {
        lua_pushstring(L, ls->tls.subject);
        lua_setfield(L, -2, "subject");
    }
}

/* Puts the session on the current generation, with a fresh table there. */
static void
session_table_move(struct lrt_session *ls)
{
    struct lrt_generation *gen = ls->rt->current;
    if (ls->gen == gen)
        return;
    session_table_drop(ls);
    lua_State *L = gen->L;
    lua_createtable(L, 0, 4);
    lua_createtable(L, 2, 0);
    lua_pushstring(L, ls->peer_addr);
    lua_rawseti(L, -2, 1);
    lua_pushinteger(L, ls->peer_port);
    lua_rawseti(L, -2, 2);
    lua_setfield(L, -2, "peer");
    lua_pushinteger(L, (lua_Integer)ls->id);
    lua_setfield(L, -2, "id");
    lua_pushboolean(L, ls->trusted);
    lua_setfield(L, -2, "trusted");
    if (ls->helo != NULL) {
        lua_pushstring(L, ls->helo);
        lua_setfield(L, -2, "helo");
        lua_pushboolean(L, ls->esmtp);
        lua_setfield(L, -2, "esmtp");
    }
    if (ls->tls.version != NULL) {
        session_table_push_tls(L, ls);
        lua_setfield(L, -2, "tls");
    }
    if (ls->auth != NULL) {
        lua_pushstring(L, ls->auth);
        lua_setfield(L, -2, "auth");
    }
    ls->table_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    ls->gen = gen;
    gen->refs++;
}

struct lrt_session *
lrt_session_new(struct lrt *rt, unsigned long id, const char *peer_addr, int peer_port,
                bool trusted)
{
    struct lrt_session *ls = calloc(1, sizeof(*ls));
    if (ls == NULL || (ls->peer_addr = strdup(peer_addr)) == NULL) {
        free(ls);
        return NULL;
    }
    ls->rt = rt;
    ls->id = id;
    ls->peer_port = peer_port;
    ls->trusted = trusted;
    session_table_move(ls);
    ls->next = rt->sessions;
    if (rt->sessions != NULL)
        rt->sessions->prev = ls;
    rt->sessions = ls;
    return ls;
}

static void
session_table_set(struct lrt_session *ls, const char *field, const char *value)
{
    lua_State *L = ls->gen->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ls->table_ref);
    if (value != NULL)
        lua_pushstring(L, value);
    else
        lua_pushnil(L);
    lua_setfield(L, -2, field);
    lua_pop(L, 1);
}

void
lrt_session_set_helo(struct lrt_session *ls, const char *helo, bool esmtp)
{
    free(ls->helo);
    ls->helo = helo != NULL ? strdup(helo) : NULL;
    ls->esmtp = esmtp;
    session_table_set(ls, "helo", helo);
    lua_State *L = ls->gen->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ls->table_ref);
    if (helo != NULL)
        lua_pushboolean(L, esmtp);
    else
        lua_pushnil(L);
    lua_setfield(L, -2, "esmtp");
    lua_pop(L, 1);
}

void
lrt_session_set_tls(struct lrt_session *ls, const char *version, const char *cipher, int bits,
                    const char *subject)
{
    free(ls->tls.version);
    free(ls->tls.cipher);
    free(ls->tls.subject);
    ls->tls.version = strdup(version);
    ls->tls.cipher = strdup(cipher);
    ls->tls.bits = bits;
    ls->tls.subject = subject != NULL ? strdup(subject) : NULL;
    if (ls->tls.version == NULL || ls->tls.cipher == NULL)
        return; /* out of memory: the script is told nothing rather than half */
    lua_State *L = ls->gen->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ls->table_ref);
    session_table_push_tls(L, ls);
    lua_setfield(L, -2, "tls");
    lua_pop(L, 1);
}

void
lrt_session_set_auth(struct lrt_session *ls, const char *user)
{
    free(ls->auth);
    ls->auth = user != NULL ? strdup(user) : NULL;
    session_table_set(ls, "auth", ls->auth);
}

void
lrt_session_begin_transaction(struct lrt_session *ls, const char *id)
{
    if (!ls->in_transaction)
        session_table_move(ls);
    ls->in_transaction = true; /* from here to its end it stays on this generation */
    session_table_set(ls, "transaction_id", id);
}

void
lrt_session_end_transaction(struct lrt_session *ls)
{
    if (ls->in_transaction)
        session_table_set(ls, "transaction_id", NULL);
    /* Between transactions is the moment to leave an old generation, so it can close. */
    ls->in_transaction = false;
    session_table_move(ls);
}

unsigned
lrt_session_generation(const struct lrt_session *ls)
{
    return ls->gen->id;
}

void
lrt_session_free(struct lrt_session *ls)
{
    if (ls == NULL)
        return;
    if (ls->prev != NULL)
        ls->prev->next = ls->next;
    else
        ls->rt->sessions = ls->next;
    if (ls->next != NULL)
        ls->next->prev = ls->prev;
    session_table_drop(ls);
    free(ls->peer_addr);
    free(ls->helo);
    free(ls->tls.version);
    free(ls->tls.cipher);
    free(ls->tls.subject);
    free(ls->auth);
    free(ls);
}

static const char *const hook_names[] = {
    [LRT_HOOK_CONNECT] = "on_connect", [LRT_HOOK_HELO] = "on_helo",
    [LRT_HOOK_MAIL] = "on_mail",       [LRT_HOOK_RCPT] = "on_rcpt",
    [LRT_HOOK_AUTH] = "authenticate",
};

bool
lrt_session_has_hook(const struct lrt_session *ls, enum lrt_hook hook)
{
    lua_State *L = ls->rt->current->L;
    bool defined = lua_getglobal(L, hook_names[hook]) == LUA_TFUNCTION;
    lua_pop(L, 1);
    return defined;
}

struct lrt_call *
lrt_call_hook(struct lrt_session *ls, enum lrt_hook hook, const char *arg,
              const struct strv *params, lrt_done_fn done, void *done_arg)
{
    /* MAIL and RCPT run inside the transaction lrt_session_begin_transaction opened. */
    if (!ls->in_transaction)
        session_table_move(ls);
    const char *name = hook_names[hook];
    lua_State *L = ls->gen->L;
    int type = lua_getglobal(L, name);
    lua_pop(L, 1);
    if (type != LUA_TFUNCTION) {
        done(done_arg, LRT_DEFAULT, NULL, 0);
        return NULL;
    }
    struct lrt_call *call = call_new(ls->gen, name, ls->id, done, done_arg);
    if (call == NULL) {
        log_error("session %lu: out of memory starting %s", ls->id, name);
        done(done_arg, LRT_FAILED, NULL, 0);
        return NULL;
    }
    lua_State *co = call->co;
    call->takes_true = hook == LRT_HOOK_AUTH;
    lua_rawgeti(co, LUA_REGISTRYINDEX, ls->table_ref);
    int nargs = 1;
    if (hook != LRT_HOOK_CONNECT) {
        lua_pushstring(co, arg);
        nargs++;
    }
    if (hook == LRT_HOOK_MAIL || hook == LRT_HOOK_RCPT) {
        push_strv(co, params);
        nargs++;
    }
    /* authenticate(session, mechanism, username, password): the two as strings. */
    for (size_t i = 0; hook == LRT_HOOK_AUTH && i < params->n; i++, nargs++)
        lua_pushstring(co, params->items[i]);
    return call_resume(call, nargs) ? call : NULL;
}

struct lrt_call *
lrt_process_message(struct lrt_session *ls, const struct lrt_message *msg, lrt_done_fn done,
                    void *done_arg)
{
    struct lrt_call *call = call_new(ls->gen, "process_message", ls->id, done, done_arg);
    if (call == NULL) {
        buf_free(msg->data);
        log_error("session %lu: out of memory starting the handler", ls->id);
        done(done_arg, LRT_FAILED, NULL, 0);
        return NULL;
    }
    lua_State *co = call->co;
    lua_createtable(co, 2, 0);
    lua_pushstring(co, ls->peer_addr);
    lua_rawseti(co, -2, 1);
    lua_pushinteger(co, ls->peer_port);
    lua_rawseti(co, -2, 2);
    lua_pushstring(co, msg->env->mailfrom ? msg->env->mailfrom : "");
    push_strv(co, &msg->env->rcpts);
    lua_pushlstring(co, msg->data->data ? msg->data->data : "", msg->data->len);
    call->message_bytes = msg->data->len;
    /* Lua has its copy: the session's goes now, so a big message is held twice only briefly. */
    buf_free(msg->data);
    lua_createtable(co, 0, 8);
    lua_pushstring(co, msg->id ? msg->id : "");
    lua_setfield(co, -2, "id");
    push_strv(co, &msg->env->mail_options);
    lua_setfield(co, -2, "mail_options");
    push_strv(co, &msg->env->rcpt_options);
    lua_setfield(co, -2, "rcpt_options");
    lua_pushstring(co, ls->helo ? ls->helo : "");
    lua_setfield(co, -2, "helo");
    lua_pushboolean(co, msg->env->smtputf8);
    lua_setfield(co, -2, "smtputf8");
    ldsn_push(co, msg->env);
    lua_rawgeti(co, LUA_REGISTRYINDEX, ls->table_ref);
    lua_setfield(co, -2, "session");
    return call_resume(call, 5) ? call : NULL;
}

void
lrt_call_cancel(struct lrt_call *call)
{
    if (call->cancel != NULL)
        call->cancel(call->cancel_arg);
    call_free(call);
}

struct lrt_call *
lrt_call_of(lua_State *L)
{
    return *(struct lrt_call **)lua_getextraspace(L);
}

int
lrt_wait(lua_State *L, struct lrt_call *call, lrt_cancel_fn cancel, void *cancel_arg)
{
    call->state = LRT_CALL_WAITING;
    call->cancel = cancel;
    call->cancel_arg = cancel_arg;
    return lua_yield(L, 0);
}

lua_State *
lrt_call_thread(struct lrt_call *call)
{
    return call->co;
}

void
lrt_call_resume(struct lrt_call *call, int nresults)
{
    call_resume(call, nresults);
}

void
lrt_free(struct lrt *rt)
{
    if (rt == NULL)
        return;
    if (rt->current != NULL)
        gen_release(rt->current);
    /* Last: closing a generation may cancel deliveries, whose children the pool then reaps. */
    pipe_pool_free(rt->opts.env.pipes);
    free(rt);
}
