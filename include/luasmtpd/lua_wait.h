/* What a binding of the `smtpd` module needs from the runtime, and no more: the environment it
 * reads (instead of the whole command line) and the way a binding suspends the handler's
 * coroutine until its event arrives. Bindings include this, never lua_runtime.h, so the
 * runtime points at the bindings and not back. */
#ifndef LUASMTPD_LUA_WAIT_H
#define LUASMTPD_LUA_WAIT_H

#include <stdbool.h>
#include <stddef.h>

struct config_setting;
struct event_base;
struct evdns_base;
struct lrt_call;
struct pipe_pool;
typedef struct lua_State lua_State;

/* What the bindings see of the server. It outlives every state it is given to. */
struct lrt_env {
    struct event_base *base; /* for the bindings that wait on events; NULL in a --check load */
    struct evdns_base *dns;
    const char *hostname;    /* smtpd.hostname, and the relay's HELO unless told otherwise */
    const char *remote_host; /* the command line's remotehost:remoteport, the relay's default */
    unsigned short remote_port;
    const struct config_setting *settings; /* --set KEY=VALUE, as smtpd.settings */
    size_t n_settings;
    size_t size_limit;       /* smtpd.size_limit; 0: none */
    bool debug;              /* smtpd.debugging */
    bool lmtp;               /* the listener speaks LMTP: session.lmtp */
    struct pipe_pool *pipes; /* smtpd.pipe's children; lrt_new makes it, NULL in a --check */
};

/* The handler call running on `L`: only a handler's own coroutine may wait (NULL elsewhere). */
struct lrt_call *lrt_call_of(lua_State *L);

/* The rule for `cancel`: once it returns, nothing may use memory Lua owns. Right after it the
 * coroutine is let go, and with it the generation may close (a reload made a new one current),
 * freeing every string, table and userdata in it at once. So a cancel ends every use of them
 * before it returns: it stops (not merely flags) the work that reads a Lua string in place (a
 * message being fed or sent), unregisters every callback whose argument is or points into a
 * userdata, and drops its registry references last. Work that must outlive the cancel (a child
 * being killed, a QUIT being said) may go on only on memory C owns. The completion callback
 * never runs after a cancel. */
typedef void (*lrt_cancel_fn)(void *arg);

/* Suspends the call until lrt_call_resume; `cancel` runs instead if the client leaves first.
 * Use as `return lrt_wait(L, call, cancel, arg);`. */
int lrt_wait(lua_State *L, struct lrt_call *call, lrt_cancel_fn cancel, void *cancel_arg);
/* The coroutine to push the results on before resuming. */
lua_State *lrt_call_thread(struct lrt_call *call);
void lrt_call_resume(struct lrt_call *call, int nresults);

#endif
