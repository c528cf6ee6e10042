/* Generations of lua_State and the calls into them. Each call runs in a coroutine of its own,
 * anchored in the registry while it lives, so a yielding binding can suspend it and the loop
 * can resume it later; a call's state says whether a late resume is still allowed. It turns Lua
 * values into plain C results; what a reply string means is the session's business. */
#include "luasmtpd/lua_runtime.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdlib.h>
#include <string.h>

#include "luasmtpd/log.h"
#include "luasmtpd/lua_smtpd.h"

/* A lua_State and everything loaded into it. It lives while it is current or a call uses it. */
struct lrt_generation {
    lua_State *L;
    unsigned id;
    unsigned refs;
};

struct lrt {
    struct event_base *base;
    struct lrt_options opts;
    struct lrt_generation *current;
    unsigned last_id;
};

enum lrt_call_state {
    LRT_CALL_RUNNING,   /* inside lua_resume */
    LRT_CALL_WAITING,   /* suspended in a binding until its event arrives */
    LRT_CALL_CANCELLED, /* the client left while it waited: never resume, never report */
};

struct lrt_call {
    struct lrt_generation *gen;
    lua_State *co;
    int co_ref;
    enum lrt_call_state state;
    unsigned long session_id;
    lrt_done_fn done;
    void *arg;
};

static void
gen_release(struct lrt_generation *gen)
{
    if (--gen->refs > 0)
        return;
    log_debug("generation %u closed", gen->id);
    lua_close(gen->L);
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

static void
set_package_path(lua_State *L, const struct lrt_options *opts)
{
    /* The script's own directory first, so a handler can keep its modules beside it; then the
     * bundled helpers; then Lua's defaults. */
    const char *script = opts->cfg->script_path;
    const char *slash = strrchr(script, '/');
    size_t dir_len = slash ? (size_t)(slash - script) : 1;
    const char *dirs[2] = {slash ? script : ".", opts->lua_dir};
    size_t lens[2] = {dir_len, strlen(opts->lua_dir)};

    lua_getglobal(L, "package");
    int package = lua_gettop(L);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 0; i < 2; i++) {
        luaL_addlstring(&b, dirs[i], lens[i]);
        luaL_addstring(&b, "/?.lua;");
        luaL_addlstring(&b, dirs[i], lens[i]);
        luaL_addstring(&b, "/?/init.lua;");
    }
    lua_getfield(L, package, "path");
    luaL_addvalue(&b);
    luaL_pushresult(&b);
    lua_setfield(L, package, "path");
    lua_pop(L, 1);
}

/* Builds a state and runs the script in it. NULL when the script does not load, raises, or
 * defines no process_message; the reason is logged. */
static struct lrt_generation *
gen_load(const struct lrt_options *opts, unsigned id)
{
    lua_State *L = luaL_newstate();
    if (L == NULL) {
        log_error("cannot create a Lua state: out of memory");
        return NULL;
    }
    luaL_openlibs(L);
    set_package_path(L, opts);
    lsmtpd_register(L, opts);

    lua_pushcfunction(L, traceback_handler);
    int status = luaL_loadfile(L, opts->cfg->script_path);
    if (status == LUA_OK)
        status = lua_pcall(L, 0, 0, 1);
    if (status != LUA_OK) {
        log_error("%s: %s", opts->cfg->script_path, lua_tostring(L, -1));
        lua_close(L);
        return NULL;
    }
    if (lua_getglobal(L, "process_message") != LUA_TFUNCTION) {
        log_error("%s: defines no function process_message", opts->cfg->script_path);
        lua_close(L);
        return NULL;
    }
    lua_settop(L, 0);

    struct lrt_generation *gen = calloc(1, sizeof(*gen));
    if (gen == NULL) {
        lua_close(L);
        return NULL;
    }
    gen->L = L;
    gen->id = id;
    gen->refs = 1;
    return gen;
}

struct lrt *
lrt_new(struct event_base *base, const struct lrt_options *opts)
{
    struct lrt *rt = calloc(1, sizeof(*rt));
    if (rt == NULL)
        return NULL;
    rt->base = base;
    rt->opts = *opts;
    return rt;
}

bool
lrt_load(struct lrt *rt)
{
    struct lrt_generation *gen = gen_load(&rt->opts, rt->last_id + 1);
    if (gen == NULL)
        return false;
    rt->last_id = gen->id;
    if (rt->current != NULL)
        gen_release(rt->current);
    rt->current = gen;
    log_info("generation %u loaded from %s", gen->id, rt->opts.cfg->script_path);
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
    gen_release(call->gen);
    free(call);
}

static void
push_strv(lua_State *L, const struct strv *v)
{
    lua_createtable(L, (int)v->n, 0);
    for (size_t i = 0; i < v->n; i++) {
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
        log_error("session %lu: process_message yielded outside an smtpd binding",
                  call->session_id);
    } else if (status != LUA_OK) {
        const char *msg = lua_tostring(co, -1);
        if (msg == NULL)
            msg = lua_pushfstring(co, "(error object is a %s value)", luaL_typename(co, -1));
        lua_State *L = call->gen->L;
        luaL_traceback(L, co, msg, 0);
        log_error("session %lu: process_message failed (generation %u): %s", call->session_id,
                  call->gen->id, lua_tostring(L, -1));
        lua_pop(L, 1);
    } else if (nresults == 0 || lua_isnil(co, -nresults) ||
               (lua_isboolean(co, -nresults) && !lua_toboolean(co, -nresults))) {
        outcome = LRT_DEFAULT;
    } else if (lua_type(co, -nresults) == LUA_TSTRING) {
        outcome = LRT_REPLY;
        reply = lua_tolstring(co, -nresults, &len);
    } else {
        log_error("session %lu: process_message returned a %s, not nil or a reply string",
                  call->session_id, luaL_typename(co, -nresults));
    }
    /* `reply` points into the coroutine's stack: report before the coroutine can be freed. */
    call->done(call->arg, outcome, reply, len);
    call_free(call);
}

/* Resumes the handler coroutine with `nargs` values on its stack. Returns true when the call
 * is waiting in a binding and lives on. */
static bool
call_resume(struct lrt_call *call, int nargs)
{
    int nresults = 0;
    call->state = LRT_CALL_RUNNING;
    int status = lua_resume(call->co, call->gen->L, nargs, &nresults);
    if (status == LUA_YIELD && call->state == LRT_CALL_WAITING)
        return true;
    call_finish(call, status, nresults);
    return false;
}

struct lrt_call *
lrt_process_message(struct lrt *rt, const struct lrt_message *msg, lrt_done_fn done, void *arg)
{
    struct lrt_generation *gen = rt->current;
    struct lrt_call *call = calloc(1, sizeof(*call));
    if (call == NULL) {
        buf_free(msg->data);
        log_error("session %lu: out of memory starting the handler", msg->session_id);
        done(arg, LRT_FAILED, NULL, 0);
        return NULL;
    }
    gen->refs++;
    call->gen = gen;
    call->session_id = msg->session_id;
    call->done = done;
    call->arg = arg;

    lua_State *L = gen->L;
    call->co = lua_newthread(L);
    call->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    /* Bindings find their call through the thread's extra space. Coroutines a script creates
     * get the main thread's copy (NULL), so a binding used from one refuses, as it must: its
     * yield would land in the script's coroutine, not ours. */
    *(struct lrt_call **)lua_getextraspace(call->co) = call;

    lua_State *co = call->co;
    lua_getglobal(co, "process_message");
    lua_createtable(co, 2, 0);
    lua_pushstring(co, msg->peer_addr);
    lua_rawseti(co, -2, 1);
    lua_pushinteger(co, msg->peer_port);
    lua_rawseti(co, -2, 2);
    lua_pushstring(co, msg->env->mailfrom ? msg->env->mailfrom : "");
    push_strv(co, &msg->env->rcpts);
    lua_pushlstring(co, msg->data->data ? msg->data->data : "", msg->data->len);
    /* Lua has its copy: the session's goes now, so a big message is held twice only briefly. */
    buf_free(msg->data);
    lua_createtable(co, 0, 4);
    push_strv(co, &msg->env->mail_options);
    lua_setfield(co, -2, "mail_options");
    push_strv(co, &msg->env->rcpt_options);
    lua_setfield(co, -2, "rcpt_options");
    lua_pushstring(co, msg->helo ? msg->helo : "");
    lua_setfield(co, -2, "helo");
    lua_pushboolean(co, msg->env->smtputf8);
    lua_setfield(co, -2, "smtputf8");

    return call_resume(call, 5) ? call : NULL;
}

void
lrt_call_cancel(struct lrt_call *call)
{
    call->state = LRT_CALL_CANCELLED;
    call_free(call);
}

void
lrt_free(struct lrt *rt)
{
    if (rt == NULL)
        return;
    if (rt->current != NULL)
        gen_release(rt->current);
    free(rt);
}
