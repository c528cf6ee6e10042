/* smtpd.pipe(argv, data [, opts]). The child gets an explicit environment: a safe PATH and
 * what opts.env adds, nothing of the server's. The message stays anchored in the registry while
 * the child reads it, so it is fed in place without a copy; pipe_cancel stops the feed before
 * the cancel drops the anchor (the rule above lrt_wait). */
#include "luasmtpd/lua_pipe.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "luasmtpd/pipe.h"

#define DEFAULT_TIMEOUT 60.0
#define DEFAULT_OUTPUT_LIMIT (64 * 1024)

struct lpipe {
    struct pipe_job *job;
    struct lrt_call *call;
    lua_State *L;
    int data_ref;
    double timeout;
};

static void
lpipe_free(struct lpipe *lp)
{
    luaL_unref(lp->L, LUA_REGISTRYINDEX, lp->data_ref);
    free(lp);
}

static void
on_pipe_done(void *arg, const struct pipe_result *result)
{
    struct lpipe *lp = arg;
    struct lrt_call *call = lp->call;
    lua_State *co = lrt_call_thread(call);
    int n;
    switch (result->outcome) {
    case PIPE_EXITED:
        lua_pushinteger(co, result->status);
        lua_pushlstring(co, result->output, result->output_len);
        n = 2;
        break;
    case PIPE_SIGNALED:
        lua_pushnil(co);
        lua_pushfstring(co, "killed by signal %d", result->status);
        lua_pushliteral(co, "signal");
        n = 3;
        break;
    case PIPE_TIMED_OUT:
        lua_pushnil(co);
        lua_pushfstring(co, "timed out after %f s", lp->timeout);
        lua_pushliteral(co, "timeout");
        n = 3;
        break;
    default:
        lua_pushnil(co);
        lua_pushstring(co, result->error);
        lua_pushliteral(co, "failed");
        n = 3;
        break;
    }
    lp->L = co;
    lpipe_free(lp);
    lrt_call_resume(call, n);
}

static void
cancel_pipe(void *arg)
{
    struct lpipe *lp = arg;
    pipe_cancel(lp->job);
    lpipe_free(lp);
}

/* Collects a NULL-terminated array of "a" strings from the list at `index`, as a userdata on
 * the stack (so Lua frees it, even when a later check raises). */
static char **
check_argv(lua_State *L, int index)
{
    luaL_checktype(L, index, LUA_TTABLE);
    lua_Integer n = luaL_len(L, index);
    luaL_argcheck(L, n > 0, index, "argv names no command");
    char **argv = lua_newuserdatauv(L, (size_t)(n + 1) * sizeof(char *), 0);
    for (lua_Integer i = 1; i <= n; i++) {
        if (lua_rawgeti(L, index, i) != LUA_TSTRING)
            luaL_error(L, "bad argument #%d to 'pipe' (argv[%d] is not a string)", index, (int)i);
        argv[i - 1] = (char *)lua_tostring(L, -1);
        lua_pop(L, 1); /* still referenced by the table, which the caller's stack holds */
    }
    argv[n] = NULL;
    return argv;
}

/* The child's environment: PATH, then opts.env's KEY=VALUE pairs (which may replace it). */
static char **
build_env(lua_State *L, int opts)
{
    lua_newtable(L);
    int list = lua_gettop(L);
    int n = 0;
    bool has_path = false;
    if (opts != 0 && lua_getfield(L, opts, "env") != LUA_TNIL) {
        luaL_argcheck(L, lua_istable(L, -1), opts, "env must be a table");
        lua_pushnil(L);
        while (lua_next(L, -2) != 0) {
            if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
                luaL_error(L, "bad argument #%d to 'pipe' (env holds a non-string)", opts);
            const char *key = lua_tostring(L, -2);
            if (*key == '\0' || strchr(key, '=') != NULL)
                luaL_error(L, "bad argument #%d to 'pipe' (bad env name '%s')", opts, key);
            has_path = has_path || strcmp(key, "PATH") == 0;
            lua_pushfstring(L, "%s=%s", key, lua_tostring(L, -1));
            lua_rawseti(L, list, ++n);
            lua_pop(L, 1);
        }
    }
    lua_settop(L, list);
    if (!has_path) {
        lua_pushliteral(L, "PATH=/usr/local/bin:/usr/bin:/bin");
        lua_rawseti(L, list, ++n);
    }
    char **envp = lua_newuserdatauv(L, (size_t)(n + 1) * sizeof(char *), 0);
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, list, i);
        envp[i - 1] = (char *)lua_tostring(L, -1);
        lua_pop(L, 1);
    }
    envp[n] = NULL;
    return envp;
}

/* smtpd.pipe(argv, data [, {timeout=, env=, output_limit=}])
 *   -> status, output | nil, err, kind ("signal", "timeout" or "failed") */
static int
l_smtpd_pipe(lua_State *L)
{
    const struct lrt_env *env = lua_touserdata(L, lua_upvalueindex(1));
    size_t len;
    lua_settop(L, 3); /* what follows pushes scratch values above the arguments */
    char **argv = check_argv(L, 1);
    const char *data = luaL_checklstring(L, 2, &len);
    int opt = lua_isnoneornil(L, 3) ? 0 : 3;
    if (opt)
        luaL_checktype(L, 3, LUA_TTABLE);
    double timeout = DEFAULT_TIMEOUT;
    lua_Integer output_limit = DEFAULT_OUTPUT_LIMIT;
    if (opt && lua_getfield(L, opt, "timeout") != LUA_TNIL)
        timeout = luaL_checknumber(L, -1);
    if (opt && lua_getfield(L, opt, "output_limit") != LUA_TNIL)
        output_limit = luaL_checkinteger(L, -1);
    luaL_argcheck(L, timeout > 0, 3, "timeout must be positive");
    luaL_argcheck(L, output_limit >= 0, 3, "output_limit must not be negative");
    char **envp = build_env(L, opt);
    struct lrt_call *call = lrt_call_of(L);
    if (call == NULL)
        return luaL_error(L, "smtpd.pipe: can only be used inside a handler or hook, not while "
                             "loading the script or from a coroutine the script made");

    struct lpipe *lp = calloc(1, sizeof(*lp));
    if (lp == NULL)
        return luaL_error(L, "smtpd.pipe: out of memory");
    lp->call = call;
    lp->L = L;
    lp->timeout = timeout;
    lua_pushvalue(L, 2);
    lp->data_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    struct pipe_request req = {.argv = argv, .envp = envp, .data = data, .len = len,
                               .timeout = timeout, .output_cap = (size_t)output_limit};
    /* pipe_spawn copies argv and envp: the userdata above may go once this returns. */
    lp->job = pipe_spawn(env->pipes, &req, on_pipe_done, lp);
    if (lp->job == NULL) {
        lpipe_free(lp);
        lua_pushnil(L);
        lua_pushliteral(L, "smtpd.pipe: out of memory");
        lua_pushliteral(L, "failed");
        return 3;
    }
    return lrt_wait(L, call, cancel_pipe, lp);
}

void
lpipe_add(lua_State *L, const struct lrt_env *env)
{
    lua_pushlightuserdata(L, (void *)env);
    lua_pushcclosure(L, l_smtpd_pipe, 1);
    lua_setfield(L, -2, "pipe");
}
