/* smtpd.relay and smtpd.connect: Lua faces of the relay client. Arguments are checked first
 * and misuse raises; what the script should handle (an upstream that is down, slow or refuses)
 * returns nil, message[, code]. While a relay works, the message string stays anchored in the
 * registry: Lua never moves a string, so the relay may read it in place without a copy. */
#include "luasmtpd/lua_relay.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "luasmtpd/relay.h"

#define DEFAULT_TIMEOUT 60.0
#define UPSTREAM_META "smtpd.upstream"

static const struct lrt_options *
options_of(lua_State *L)
{
    return lua_touserdata(L, lua_upvalueindex(1));
}

static struct lrt_call *
waiting_call(lua_State *L, const char *what)
{
    struct lrt_call *call = lrt_call_of(L);
    if (call == NULL)
        luaL_error(L, "%s: can only be used inside a handler or hook, not while loading the "
                      "script or from a coroutine the script made", what);
    return call;
}

/* Reads the connection fields shared by relay{} and connect{}; defaults come from the command
 * line's remotehost:remoteport. */
static void
check_conn_options(lua_State *L, const struct lrt_options *opts, struct relay_conn_options *co)
{
    co->host = opts->cfg->remote_host;
    if (lua_getfield(L, 1, "host") != LUA_TNIL)
        co->host = luaL_checkstring(L, -1);
    lua_pop(L, 1);
    lua_Integer port = opts->cfg->remote_port;
    if (lua_getfield(L, 1, "port") != LUA_TNIL)
        port = luaL_checkinteger(L, -1);
    lua_pop(L, 1);
    luaL_argcheck(L, port > 0 && port < 65536, 1, "port must be 1-65535");
    co->port = (unsigned short)port;
    co->timeout = DEFAULT_TIMEOUT;
    if (lua_getfield(L, 1, "timeout") != LUA_TNIL)
        co->timeout = luaL_checknumber(L, -1);
    lua_pop(L, 1);
    luaL_argcheck(L, co->timeout > 0, 1, "timeout must be positive");
    co->lmtp = lua_getfield(L, 1, "lmtp") != LUA_TNIL && lua_toboolean(L, -1);
    lua_pop(L, 1);
    co->helo = opts->hostname;
    if (lua_getfield(L, 1, "helo") != LUA_TNIL)
        co->helo = luaL_checkstring(L, -1);
    lua_pop(L, 1);
    /* The strings stay valid: they are fields of the argument table, which lives on the
     * coroutine's stack until the binding returns, and the relay copies them at once. */
}

static int
push_failure(lua_State *L, enum relay_failure kind, const struct relay_reply *reply)
{
    lua_pushnil(L);
    if (reply->code != 0) {
        lua_pushfstring(L, "%s: %d %s", relay_failure_name(kind), reply->code, reply->text);
        lua_pushinteger(L, reply->code);
    } else {
        lua_pushfstring(L, "%s: %s", relay_failure_name(kind), reply->text ? reply->text : "");
        lua_pushnil(L);
    }
    return 3;
}

static void
push_reply_pair(lua_State *L, const struct relay_reply *reply)
{
    lua_createtable(L, 2, 0);
    lua_pushinteger(L, reply->code);
    lua_rawseti(L, -2, 1);
    lua_pushstring(L, reply->text ? reply->text : "");
    lua_rawseti(L, -2, 2);
}

/* ---- smtpd.relay{...} ---- */

struct lrelay {
    struct relay *relay;
    struct lrt_call *call;
    lua_State *L; /* any thread of the state, for unref */
    int data_ref;
    char **rcpts;
    size_t n_rcpts;
};

static void
lrelay_free(struct lrelay *lr)
{
    luaL_unref(lr->L, LUA_REGISTRYINDEX, lr->data_ref);
    free(lr);
}

static void
on_relay_done(void *arg, const struct relay_result *result)
{
    struct lrelay *lr = arg;
    struct lrt_call *call = lr->call;
    lua_State *co = lrt_call_thread(call);
    int n = 1;
    if (result->kind == RELAY_OK) {
        lua_newtable(co);
        for (size_t i = 0; i < result->n_rcpts; i++) {
            const struct relay_reply *r = &result->rcpt_replies[i];
            if (r->code >= 200 && r->code < 400)
                continue;
            push_reply_pair(co, r);
            lua_setfield(co, -2, lr->rcpts[i]);
        }
    } else {
        n = push_failure(co, result->kind, &result->reply);
    }
    for (size_t i = 0; i < lr->n_rcpts; i++)
        free(lr->rcpts[i]);
    free(lr->rcpts);
    lr->L = co;
    lrelay_free(lr);
    lrt_call_resume(call, n);
}

static void
cancel_relay(void *arg)
{
    struct lrelay *lr = arg;
    relay_cancel(lr->relay);
    for (size_t i = 0; i < lr->n_rcpts; i++)
        free(lr->rcpts[i]);
    free(lr->rcpts);
    lrelay_free(lr);
}

/* smtpd.relay{host=, port=, from=, to=, data=, timeout=, lmtp=, helo=, smtputf8=}
 *   -> refused (recipient -> {code, text}; empty when all were accepted) | nil, err, code */
static int
l_smtpd_relay(lua_State *L)
{
    const struct lrt_options *opts = options_of(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    struct lrt_call *call = waiting_call(L, "smtpd.relay");
    struct relay_request req = {0};
    check_conn_options(L, opts, &req.conn);

    lua_getfield(L, 1, "from");
    req.mailfrom = luaL_checkstring(L, -1);
    lua_getfield(L, 1, "data");
    size_t len;
    req.data = luaL_checklstring(L, -1, &len);
    req.len = len;
    int data_index = lua_gettop(L);
    lua_getfield(L, 1, "smtputf8");
    req.smtputf8 = lua_toboolean(L, -1);
    lua_pop(L, 1);

    int to_type = lua_getfield(L, 1, "to");
    if (to_type == LUA_TSTRING) {
        lua_createtable(L, 1, 0);
        lua_insert(L, -2);
        lua_rawseti(L, -2, 1);
    } else if (to_type != LUA_TTABLE) {
        return luaL_error(L, "smtpd.relay: 'to' must be a recipient or a list of them");
    }
    size_t n = (size_t)luaL_len(L, -1);
    if (n == 0)
        return luaL_error(L, "smtpd.relay: 'to' names no recipient");
    for (size_t i = 1; i <= n; i++) {
        if (lua_rawgeti(L, -1, (lua_Integer)i) != LUA_TSTRING)
            return luaL_error(L, "smtpd.relay: recipient #%d is not a string", (int)i);
        lua_pop(L, 1);
    }

    struct lrelay *lr = calloc(1, sizeof(*lr));
    char **rcpts = calloc(n, sizeof(char *));
    if (lr == NULL || rcpts == NULL) {
        free(lr);
        free(rcpts);
        return luaL_error(L, "smtpd.relay: out of memory");
    }
    lr->rcpts = rcpts;
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i + 1);
        rcpts[i] = strdup(lua_tostring(L, -1));
        lua_pop(L, 1);
        lr->n_rcpts = i + 1;
    }
    req.rcpts = (const char *const *)rcpts;
    req.n_rcpts = n;
    lr->call = call;
    lr->L = L;
    lua_pushvalue(L, data_index);
    lr->data_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lr->relay = relay_start(opts->base, opts->dns, &req, on_relay_done, lr);
    if (lr->relay == NULL) {
        for (size_t i = 0; i < lr->n_rcpts; i++)
            free(rcpts[i]);
        free(rcpts);
        lrelay_free(lr);
        lua_pushnil(L);
        lua_pushliteral(L, "smtpd.relay: cannot start (out of memory)");
        return 2;
    }
    return lrt_wait(L, call, cancel_relay, lr);
}

/* ---- smtpd.connect{...} and the upstream object ---- */

struct upstream {
    struct relay_conn *conn;
    struct lrt_call *waiting; /* the call suspended in one of our methods */
    lua_State *L;
    int self_ref;    /* anchors the userdata while a method waits */
    int data_ref;    /* anchors a message being sent */
    int results_ref; /* LMTP: the per-recipient replies gathered so far */
    unsigned accepted;
    unsigned expected;
    unsigned gathered;
    bool lmtp;
    bool closed;
};

static void
upstream_unanchor(struct upstream *up)
{
    luaL_unref(up->L, LUA_REGISTRYINDEX, up->self_ref);
    luaL_unref(up->L, LUA_REGISTRYINDEX, up->data_ref);
    luaL_unref(up->L, LUA_REGISTRYINDEX, up->results_ref);
    up->self_ref = up->data_ref = up->results_ref = LUA_NOREF;
}

static void
upstream_close(struct upstream *up)
{
    if (up->conn != NULL)
        relay_conn_close(up->conn);
    up->conn = NULL;
    up->closed = true;
}

/* Resumes the waiting call with `n` values already pushed on its thread. */
static void
upstream_resume(struct upstream *up, int n)
{
    struct lrt_call *call = up->waiting;
    up->waiting = NULL;
    upstream_unanchor(up);
    lrt_call_resume(call, n);
}

static void
cancel_upstream(void *arg)
{
    struct upstream *up = arg;
    up->waiting = NULL;
    upstream_close(up);
    upstream_unanchor(up);
}

static int
upstream_wait(lua_State *L, struct upstream *up, struct lrt_call *call)
{
    up->waiting = call;
    up->L = L;
    lua_pushvalue(L, 1);
    up->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return lrt_wait(L, call, cancel_upstream, up);
}

static void
push_extensions(lua_State *L, struct relay_conn *conn)
{
    unsigned ext = relay_conn_extensions(conn);
    lua_createtable(L, 0, 4);
    if (ext & RELAY_EXT_PIPELINING) {
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "PIPELINING");
    }
    if (ext & RELAY_EXT_8BITMIME) {
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "8BITMIME");
    }
    if (ext & RELAY_EXT_SMTPUTF8) {
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "SMTPUTF8");
    }
    if (ext & RELAY_EXT_SIZE) {
        lua_pushinteger(L, (lua_Integer)relay_conn_size_limit(conn));
        lua_setfield(L, -2, "SIZE");
    }
}

static void
on_upstream_ready(void *arg, struct relay_conn *conn, enum relay_failure kind,
                  const struct relay_reply *reply)
{
    struct upstream *up = arg;
    lua_State *co = lrt_call_thread(up->waiting);
    if (kind != RELAY_OK) {
        up->conn = NULL; /* the relay client already let it go */
        up->closed = true;
        upstream_resume(up, push_failure(co, kind, reply));
        return;
    }
    up->conn = conn;
    lua_rawgeti(co, LUA_REGISTRYINDEX, up->self_ref);
    push_extensions(co, conn);
    lua_setiuservalue(co, -2, 1);
    upstream_resume(up, 1);
}

/* smtpd.connect{host=, port=, timeout=, lmtp=, helo=} -> upstream | nil, err, code */
static int
l_smtpd_connect(lua_State *L)
{
    const struct lrt_options *opts = options_of(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    struct lrt_call *call = waiting_call(L, "smtpd.connect");
    struct relay_conn_options co;
    check_conn_options(L, opts, &co);
    struct upstream *up = lua_newuserdatauv(L, sizeof(*up), 1);
    memset(up, 0, sizeof(*up));
    up->self_ref = up->data_ref = up->results_ref = LUA_NOREF;
    up->lmtp = co.lmtp;
    luaL_setmetatable(L, UPSTREAM_META);
    lua_replace(L, 1); /* upstream_wait anchors argument 1 */
    up->waiting = call;
    up->L = L;
    struct relay_conn *conn = relay_conn_open(opts->base, opts->dns, &co, on_upstream_ready, up);
    if (conn == NULL) {
        lua_pushnil(L);
        lua_pushliteral(L, "smtpd.connect: cannot start (out of memory)");
        return 2;
    }
    /* relay_conn_open hands the connection back in the ready callback; until then it is
     * reachable only there, so a cancel must be able to close it. */
    up->conn = conn;
    return upstream_wait(L, up, call);
}

static struct upstream *
check_upstream(lua_State *L, const char *method, struct lrt_call **call)
{
    struct upstream *up = luaL_checkudata(L, 1, UPSTREAM_META);
    *call = waiting_call(L, method);
    if (up->waiting != NULL)
        luaL_error(L, "%s: the upstream is busy with another command", method);
    return up;
}

static void
on_upstream_reply(void *arg, enum relay_failure kind, const struct relay_reply *reply)
{
    struct upstream *up = arg;
    lua_State *co = lrt_call_thread(up->waiting);
    if (reply->code == 0) {
        upstream_close(up); /* no reply at all: the connection is unusable */
        upstream_resume(up, push_failure(co, kind, reply));
        return;
    }
    lua_pushinteger(co, reply->code);
    lua_pushstring(co, reply->text);
    upstream_resume(up, 2);
}

static int
closed_result(lua_State *L)
{
    lua_pushnil(L);
    lua_pushliteral(L, "the upstream connection is closed");
    return 2;
}

/* Sends one command line; the reply comes back as code, text. */
static int
send_command(lua_State *L, struct upstream *up, struct lrt_call *call, const char *line,
             relay_reply_fn done)
{
    if (up->closed || up->conn == NULL)
        return closed_result(L);
    relay_conn_command(up->conn, line, done, up);
    return upstream_wait(L, up, call);
}

static void
on_rcpt_reply(void *arg, enum relay_failure kind, const struct relay_reply *reply)
{
    struct upstream *up = arg;
    if (kind == RELAY_OK)
        up->accepted++;
    on_upstream_reply(arg, kind, reply);
}

/* Builds "VERB:<address> params" after checking that nothing in it can break the line. */
static const char *
path_command(lua_State *L, const char *verb)
{
    size_t len;
    const char *address = luaL_checklstring(L, 2, &len);
    const char *params = luaL_optstring(L, 3, "");
    if (strpbrk(address, "\r\n<>") != NULL || strlen(address) != len)
        luaL_argerror(L, 2, "not an address");
    if (strpbrk(params, "\r\n") != NULL)
        luaL_argerror(L, 3, "parameters hold a line break");
    return lua_pushfstring(L, "%s:<%s>%s%s", verb, address, *params ? " " : "", params);
}

/* up:mail(from [, params]) -> code, text | nil, err */
static int
l_upstream_mail(lua_State *L)
{
    struct lrt_call *call;
    struct upstream *up = check_upstream(L, "mail", &call);
    const char *line = path_command(L, "MAIL FROM");
    up->accepted = 0;
    return send_command(L, up, call, line, on_upstream_reply);
}

/* up:rcpt(to [, params]) -> code, text | nil, err */
static int
l_upstream_rcpt(lua_State *L)
{
    struct lrt_call *call;
    struct upstream *up = check_upstream(L, "rcpt", &call);
    const char *line = path_command(L, "RCPT TO");
    return send_command(L, up, call, line, on_rcpt_reply);
}

/* up:rset() -> code, text | nil, err */
static int
l_upstream_rset(lua_State *L)
{
    struct lrt_call *call;
    struct upstream *up = check_upstream(L, "rset", &call);
    up->accepted = 0;
    return send_command(L, up, call, "RSET", on_upstream_reply);
}

/* up:command(line) -> code, text | nil, err: any other command (NOOP, VRFY, ...) */
static int
l_upstream_command(lua_State *L)
{
    struct lrt_call *call;
    struct upstream *up = check_upstream(L, "command", &call);
    const char *line = luaL_checkstring(L, 2);
    luaL_argcheck(L, strpbrk(line, "\r\n") == NULL, 2, "a command is one line");
    return send_command(L, up, call, line, on_upstream_reply);
}

static void
on_quit_reply(void *arg, enum relay_failure kind, const struct relay_reply *reply)
{
    struct upstream *up = arg;
    upstream_close(up);
    on_upstream_reply(arg, kind, reply);
}

/* up:quit() -> code, text | nil, err; the connection is closed either way */
static int
l_upstream_quit(lua_State *L)
{
    struct lrt_call *call;
    struct upstream *up = check_upstream(L, "quit", &call);
    return send_command(L, up, call, "QUIT", on_quit_reply);
}

static void
on_data_reply(void *arg, enum relay_failure kind, const struct relay_reply *reply)
{
    struct upstream *up = arg;
    if (!up->lmtp || reply->code == 0) {
        on_upstream_reply(arg, kind, reply);
        return;
    }
    lua_State *co = lrt_call_thread(up->waiting);
    lua_rawgeti(co, LUA_REGISTRYINDEX, up->results_ref);
    push_reply_pair(co, reply);
    lua_rawseti(co, -2, ++up->gathered);
    lua_pop(co, 1);
    if (up->gathered < up->expected)
        return;
    lua_rawgeti(co, LUA_REGISTRYINDEX, up->results_ref);
    upstream_resume(up, 1);
}

/* up:data(message) -> code, text | nil, err; over LMTP -> {{code, text}, ...}, one per
 * accepted recipient in RCPT order (RFC 2033 4.2) */
static int
l_upstream_data(lua_State *L)
{
    struct lrt_call *call;
    struct upstream *up = check_upstream(L, "data", &call);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    if (up->closed || up->conn == NULL)
        return closed_result(L);
    if (up->lmtp && up->accepted == 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "no recipient was accepted");
        return 2;
    }
    lua_pushvalue(L, 2);
    up->data_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    if (up->lmtp) {
        lua_newtable(L);
        up->results_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        up->expected = up->accepted;
        up->gathered = 0;
    }
    relay_conn_data(up->conn, data, len, up->lmtp ? up->accepted : 1, on_data_reply, up);
    up->accepted = 0;
    return upstream_wait(L, up, call);
}

/* up:close() -> nothing; no QUIT wait, no yield */
static int
l_upstream_close(lua_State *L)
{
    struct upstream *up = luaL_checkudata(L, 1, UPSTREAM_META);
    if (up->waiting != NULL)
        return luaL_error(L, "close: the upstream is busy with another command");
    upstream_close(up);
    return 0;
}

static int
l_upstream_gc(lua_State *L)
{
    struct upstream *up = luaL_checkudata(L, 1, UPSTREAM_META);
    upstream_close(up);
    return 0;
}

static int
l_upstream_index(lua_State *L)
{
    luaL_checkudata(L, 1, UPSTREAM_META);
    const char *key = luaL_checkstring(L, 2);
    if (strcmp(key, "extensions") == 0) {
        lua_getiuservalue(L, 1, 1);
        return 1;
    }
    lua_getmetatable(L, 1);
    lua_getfield(L, -1, "methods");
    lua_getfield(L, -1, key);
    return 1;
}

static const luaL_Reg upstream_methods[] = {
    {"mail", l_upstream_mail},   {"rcpt", l_upstream_rcpt}, {"data", l_upstream_data},
    {"rset", l_upstream_rset},   {"quit", l_upstream_quit}, {"command", l_upstream_command},
    {"close", l_upstream_close}, {NULL, NULL},
};

void
lrelay_add(lua_State *L, const struct lrt_options *opts)
{
    if (luaL_newmetatable(L, UPSTREAM_META)) {
        luaL_newlib(L, upstream_methods);
        lua_setfield(L, -2, "methods");
        lua_pushcfunction(L, l_upstream_index);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_upstream_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, l_upstream_gc);
        lua_setfield(L, -2, "__close");
    }
    lua_pop(L, 1);
    lua_pushlightuserdata(L, (void *)opts);
    lua_pushcclosure(L, l_smtpd_relay, 1);
    lua_setfield(L, -2, "relay");
    lua_pushlightuserdata(L, (void *)opts);
    lua_pushcclosure(L, l_smtpd_connect, 1);
    lua_setfield(L, -2, "connect");
}
