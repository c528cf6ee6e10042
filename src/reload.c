/* Reload and stop triggers (see reload.h): the signals, and file changes over inotify. Events
 * for names we do not watch (an editor's swap and backup files) are ignored; a watched name's
 * write-and-close or rename-into-place arms a short timer, so the several events of one save
 * give one reload. It never loads anything itself. */
#include "luasmtpd/reload.h"

#include <errno.h>
#include <event2/event.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "luasmtpd/log.h"

/* Long enough to gather one save's events, short enough to keep a reload well under 100 ms. */
#define SETTLE_USEC 20000

struct watched {
    int wd;
    char *name; /* the file's name within the watched directory */
    bool cert;  /* a certificate or key: its change reloads the TLS pairs alone */
};

struct reload {
    struct reload_options opts; /* opts.script_path is the caller's, kept alive by it */
    int fd;                     /* inotify; -1 when not watching */
    struct event *readable;
    struct event *settle;
    struct event *signals[3];
    struct watched *files;
    size_t n_files;
    bool script_changed, cert_changed; /* since the settle timer was armed */
};

static void
reload_on_settled(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct reload *r = arg;
    bool script = r->script_changed, cert = r->cert_changed;
    r->script_changed = r->cert_changed = false;
    /* Mid-save the file may be gone for a moment; the save's last event brings us back. */
    if (script && access(r->opts.script_path, R_OK) != 0) {
        log_debug("%s is not there (yet): no reload", r->opts.script_path);
        script = false;
    }
    if (script) {
        log_info("%s changed: reloading", r->opts.script_path);
        r->opts.reload(r->opts.arg); /* the certificates with it */
    } else if (cert) {
        log_info("a certificate or key changed: reading the pairs that changed");
        r->opts.reload_certs(r->opts.arg);
    }
}

static void
reload_on_hup(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    struct reload *r = arg;
    log_info("SIGHUP: reloading %s", r->opts.script_path);
    r->opts.reload(r->opts.arg);
}

static void
reload_on_stop(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    struct reload *r = arg;
    r->opts.stop(r->opts.arg, (int)sig);
}

/* Nothing is in flight while the script first loads, so a stop signal then stops at once, and
 * says so; exit 0, as a stop after the loop ran. */
static void
reload_on_stop_while_loading(int sig)
{
    (void)sig;
    static const char said[] = "luasmtpd: stop signal while loading the script: exiting\n";
    ssize_t ignored = write(STDERR_FILENO, said, sizeof(said) - 1);
    (void)ignored;
    _exit(0);
}

/* SIGHUP, which would end the process by default, is blocked until reload_start handles it. */
static sigset_t
reload_hup_only(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGHUP);
    return set;
}

void
reload_hold_signals(void)
{
    signal(SIGTERM, reload_on_stop_while_loading);
    signal(SIGINT, reload_on_stop_while_loading);
    sigset_t hup = reload_hup_only();
    sigprocmask(SIG_BLOCK, &hup, NULL);
}

static void
reload_on_inotify(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct reload *r = arg;
    char events[16 * 1024] __attribute__((aligned(__alignof__(struct inotify_event))));
    for (;;) {
        ssize_t n = read(fd, events, sizeof(events));
        if (n <= 0)
            break;
        for (char *p = events; p < events + n;) {
            struct inotify_event *ev = (struct inotify_event *)p;
            p += sizeof(*ev) + ev->len;
            if (ev->len == 0)
                continue;
            for (size_t i = 0; i < r->n_files; i++) {
                if (r->files[i].wd != ev->wd || strcmp(r->files[i].name, ev->name) != 0)
                    continue;
                if (r->files[i].cert)
                    r->cert_changed = true;
                else
                    r->script_changed = true;
            }
        }
    }
    /* Each event pushes the timer back: one reload after the last event of a burst. */
    if (r->script_changed || r->cert_changed) {
        struct timeval tv = {.tv_sec = 0, .tv_usec = SETTLE_USEC};
        evtimer_add(r->settle, &tv);
    }
}

struct reload *
reload_new(const struct reload_options *opts)
{
    struct reload *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->opts = *opts;
    r->fd = -1;
    r->signals[0] = evsignal_new(opts->base, SIGTERM, reload_on_stop, r);
    r->signals[1] = evsignal_new(opts->base, SIGINT, reload_on_stop, r);
    r->signals[2] = evsignal_new(opts->base, SIGHUP, reload_on_hup, r);
    if (!opts->watch)
        return r;
    r->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (r->fd == -1) {
        log_warn("cannot watch scripts for changes: %s (SIGHUP still reloads)", strerror(errno));
        return r;
    }
    r->readable = event_new(opts->base, r->fd, EV_READ | EV_PERSIST, reload_on_inotify, r);
    r->settle = evtimer_new(opts->base, reload_on_settled, r);
    event_add(r->readable, NULL);
    reload_watch(r, opts->script_path);
    return r;
}

void
reload_start(struct reload *r)
{
    for (int i = 0; i < 3; i++)
        evsignal_add(r->signals[i], NULL);
    /* reload_hold_signals blocked SIGHUP until now: one sent while the script loaded is
     * pending, and becomes a reload once the loop runs, instead of killing the process. */
    sigset_t hup = reload_hup_only();
    sigprocmask(SIG_UNBLOCK, &hup, NULL);
}

static int
reload_watch_file(struct reload *r, const char *path, bool cert)
{
    if (r == NULL || r->fd == -1)
        return -1;
    char full[PATH_MAX];
    if (realpath(path, full) == NULL)
        return -1;
    char *slash = strrchr(full, '/');
    const char *name = slash + 1;
    *slash = '\0';
    const char *dir = full[0] ? full : "/";
    int wd = inotify_add_watch(r->fd, dir, IN_CLOSE_WRITE | IN_MOVED_TO | IN_ONLYDIR);
    if (wd == -1) {
        log_warn("cannot watch %s: %s", dir, strerror(errno));
        return -1;
    }
    for (size_t i = 0; i < r->n_files; i++)
        if (r->files[i].wd == wd && strcmp(r->files[i].name, name) == 0 && r->files[i].cert == cert)
            return 0;
    struct watched *files = realloc(r->files, (r->n_files + 1) * sizeof(*files));
    if (files == NULL)
        return -1;
    r->files = files;
    files[r->n_files].wd = wd;
    files[r->n_files].cert = cert;
    files[r->n_files].name = strdup(name);
    if (files[r->n_files].name == NULL)
        return -1;
    r->n_files++;
    log_debug("watching %s/%s", dir, name);
    return 0;
}

int
reload_watch(struct reload *r, const char *path)
{
    return reload_watch_file(r, path, false);
}

int
reload_watch_cert(struct reload *r, const char *path)
{
    if (r == NULL || r->opts.reload_certs == NULL)
        return -1;
    return reload_watch_file(r, path, true);
}

void
reload_free(struct reload *r)
{
    if (r == NULL)
        return;
    for (int i = 0; i < 3; i++)
        if (r->signals[i] != NULL)
            event_free(r->signals[i]);
    if (r->fd != -1) {
        event_free(r->readable);
        event_free(r->settle);
        close(r->fd);
    }
    for (size_t i = 0; i < r->n_files; i++)
        free(r->files[i].name);
    free(r->files);
    free(r);
}
