/* What makes a server reload or stop: SIGHUP, edits to the handler script and the Lua files
 * it loaded, edits to the TLS certificates and keys, and the stop signals (SIGTERM, SIGINT). Files
 * are watched with inotify through their directories, not the files, so every way an editor saves
 * (in place, write to a temporary then rename, delete and recreate) is seen; a burst of events
 * becomes one reload. It decides when to reload; what a reload does, and whether it succeeds, is
 * the runtime's business, and what a stop does is the caller's. */
#ifndef LUASMTPD_RELOAD_H
#define LUASMTPD_RELOAD_H

#include <stdbool.h>

struct event_base;
struct reload;

typedef void (*reload_fn)(void *arg);
typedef void (*reload_stop_fn)(void *arg, int sig);

struct reload_options {
    struct event_base *base;
    const char *script_path; /* watched from the start, and named in the log */
    bool watch;              /* false (--no-reload): only SIGHUP reloads */
    reload_fn reload;        /* loads a new generation (and the certificates with it) */
    reload_fn reload_certs;  /* a watched certificate or key changed; NULL: none watched */
    reload_stop_fn stop;     /* SIGTERM or SIGINT arrived (each time) */
    void *arg;               /* for the callbacks */
};

/* For the time the script first loads, before any reload_start (a forked worker inherits
 * both): a stop signal ends the process at once with status 0, as nothing is in flight yet,
 * and a SIGHUP is held back until reload_start instead of killing the process. */
void reload_hold_signals(void);

/* NULL only when out of memory. When inotify is not available it says so and goes on with
 * SIGHUP alone. Nothing fires before reload_start. */
struct reload *reload_new(const struct reload_options *opts);
/* Adds a file to watch; adding one twice is harmless. -1 when it cannot be watched or
 * watching is off. */
int reload_watch(struct reload *r, const char *path);
/* Adds a certificate or key file: its change calls reload_certs alone (unless a script changed
 * in the same burst, when reload does it all). -1 as reload_watch, or without reload_certs. */
int reload_watch_cert(struct reload *r, const char *path);
/* From now on the signals and edits above call the options' callbacks from the loop; a SIGHUP
 * held since reload_hold_signals becomes a reload once the loop runs. */
void reload_start(struct reload *r);
/* Ends the signal handling too. */
void reload_free(struct reload *r);

#endif
