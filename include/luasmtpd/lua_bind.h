/* What every binding of the `smtpd` module shares: the one way an options table is read (a
 * misuse raises, naming the field), the one shape of a failure the script should handle
 * (nil, message, code), and the hold a waiting binding keeps on its call and on the Lua values
 * C reads meanwhile. No binding of its own lives here. */
#ifndef LUASMTPD_LUA_BIND_H
#define LUASMTPD_LUA_BIND_H

#include <lua.h>
#include <stdbool.h>
#include <stddef.h>

#include "luasmtpd/lua_wait.h"

/* Pushes field `name` of the options table at `t` and returns its type. A field of another
 * type than `type` raises "WHAT: field 'NAME' must be a TYPE, not GOT"; so does an absent one
 * when `required`, while an absent optional one pushes nil and returns LUA_TNIL. A number
 * field takes what Lua's arithmetic would (a numeric string too), as luaL_checknumber does. */
int lbind_field(lua_State *L, int t, const char *what, const char *name, int type, bool required);

/* The typed faces of lbind_field. A string is left on the stack, which keeps it alive until
 * the binding returns (a field an __index made up is held by nothing else); NULL when absent
 * and not required. The others pop what they read and return `dflt` when it is absent. */
const char *lbind_string(lua_State *L, int t, const char *what, const char *name, bool required,
                         size_t *len);
lua_Number lbind_number(lua_State *L, int t, const char *what, const char *name, lua_Number dflt);
lua_Integer lbind_integer(lua_State *L, int t, const char *what, const char *name,
                          lua_Integer dflt);
bool lbind_boolean(lua_State *L, int t, const char *what, const char *name, bool dflt);

/* Raises "WHAT: field 'NAME' " followed by `fmt`: a field of the right type whose value is
 * wrong (a range, a line break). */
int lbind_field_error(lua_State *L, const char *what, const char *name, const char *fmt, ...);

/* Pushes nil, the message `fmt` makes, and `code` (nil when 0) and returns 3: a failure the
 * script should handle. `code` is the SMTP reply code the failure calls for, never a 2xx/3xx
 * that could pass for success. */
int lbind_fail(lua_State *L, int code, const char *fmt, ...);

/* The handler call a binding that waits may suspend, raising "WHAT: ..." where none may be:
 * outside a handler's own coroutine (lrt_call_of), or inside a function Lua calls without
 * letting it yield (a table.sort comparator, a string.gsub function, a finalizer). Checked
 * before any work starts: the yield would fail only after it, ending the call while the work
 * goes on to deliver and then to call back into the freed call. */
struct lrt_call *lbind_call(lua_State *L, const char *what);

/* A waiting binding's hold: the call it suspended and up to LBIND_REFS values anchored in the
 * registry, so the work may read them in place until the call resumes or is cancelled. The
 * hold lives in what the binding allocated for the wait (its owner), or in a userdata. */
#define LBIND_REFS 3
typedef void (*lbind_owner_fn)(void *owner);
struct lbind_hold {
    struct lrt_call *call; /* NULL while nothing waits */
    lua_State *L;          /* a thread of the state, for the unrefs */
    int refs[LBIND_REFS];
    lbind_owner_fn stop; /* at a cancel: stops the work, so nothing reads Lua's memory */
    lbind_owner_fn free; /* frees the owner once the wait is over; NULL when Lua owns it */
    void *owner;
};

/* A hold with nothing in it, owned by `owner`; before any other use. */
void lbind_hold_init(struct lbind_hold *h, void *owner, lbind_owner_fn stop, lbind_owner_fn free);
/* Anchors the value at `index` in slot `slot` (which must be free). */
void lbind_anchor(lua_State *L, struct lbind_hold *h, int slot, int index);
/* The thread to push results on before lbind_resume. */
lua_State *lbind_thread(const struct lbind_hold *h);
/* Suspends `call`; use as `return lbind_wait(...)`. A cancel runs stop, drops every anchor,
 * then runs free: lrt_wait's rule, kept in one place. */
int lbind_wait(lua_State *L, struct lbind_hold *h, struct lrt_call *call);
/* Drops every anchor and forgets the call, then frees the owner (when a free was given): the
 * end of a wait that never began (the work could not start). */
void lbind_release(struct lbind_hold *h);
/* The work is done: releases the hold (the owner with it), then resumes the call with the `n`
 * values pushed on lbind_thread. */
void lbind_resume(struct lbind_hold *h, int n);

#endif
