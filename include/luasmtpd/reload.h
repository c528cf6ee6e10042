/* Reload triggers: the handler script and the Lua files it loaded, watched with inotify. It
 * watches their directories, not the files, so every way an editor saves (in place, write to a
 * temporary then rename, delete and recreate) is seen; a burst of events becomes one reload.
 * What a reload does, and whether it succeeds, is the runtime's business. */
#ifndef LUASMTPD_RELOAD_H
#define LUASMTPD_RELOAD_H

struct event_base;
struct reload;

typedef void (*reload_fn)(void *arg);

struct reload *reload_new(struct event_base *base, reload_fn trigger, void *arg);
/* Adds a file to watch; adding one twice is harmless. -1 when it cannot be watched. */
int reload_watch(struct reload *r, const char *path);
void reload_free(struct reload *r);

#endif
