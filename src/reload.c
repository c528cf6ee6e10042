/* File-change reload triggers over inotify (see reload.h). Events for names we do not watch
 * (an editor's swap and backup files) are ignored; a watched name's write-and-close or
 * rename-into-place arms a short timer, so the several events of one save give one reload. */
#include "luasmtpd/reload.h"

#include <errno.h>
#include <event2/event.h>
#include <limits.h>
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
};

struct reload {
    int fd;
    struct event *readable;
    struct event *settle;
    reload_fn trigger;
    void *arg;
    struct watched *files;
    size_t n_files;
};

static void
on_settled(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct reload *r = arg;
    r->trigger(r->arg);
}

static void
on_inotify(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct reload *r = arg;
    char events[16 * 1024] __attribute__((aligned(__alignof__(struct inotify_event))));
    bool changed = false;
    for (;;) {
        ssize_t n = read(fd, events, sizeof(events));
        if (n <= 0)
            break;
        for (char *p = events; p < events + n;) {
            struct inotify_event *ev = (struct inotify_event *)p;
            p += sizeof(*ev) + ev->len;
            if (ev->len == 0)
                continue;
            for (size_t i = 0; i < r->n_files; i++)
                if (r->files[i].wd == ev->wd && strcmp(r->files[i].name, ev->name) == 0)
                    changed = true;
        }
    }
    if (changed) {
        struct timeval tv = {.tv_sec = 0, .tv_usec = SETTLE_USEC};
        evtimer_add(r->settle, &tv);
    }
}

struct reload *
reload_new(struct event_base *base, reload_fn trigger, void *arg)
{
    struct reload *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->trigger = trigger;
    r->arg = arg;
    r->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (r->fd == -1) {
        log_warn("cannot watch scripts for changes: %s (SIGHUP still reloads)", strerror(errno));
        free(r);
        return NULL;
    }
    r->readable = event_new(base, r->fd, EV_READ | EV_PERSIST, on_inotify, r);
    r->settle = evtimer_new(base, on_settled, r);
    event_add(r->readable, NULL);
    return r;
}

int
reload_watch(struct reload *r, const char *path)
{
    if (r == NULL)
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
        if (r->files[i].wd == wd && strcmp(r->files[i].name, name) == 0)
            return 0;
    struct watched *files = realloc(r->files, (r->n_files + 1) * sizeof(*files));
    if (files == NULL)
        return -1;
    r->files = files;
    files[r->n_files].wd = wd;
    files[r->n_files].name = strdup(name);
    if (files[r->n_files].name == NULL)
        return -1;
    r->n_files++;
    log_debug("watching %s/%s", dir, name);
    return 0;
}

void
reload_free(struct reload *r)
{
    if (r == NULL)
        return;
    event_free(r->readable);
    event_free(r->settle);
    close(r->fd);
    for (size_t i = 0; i < r->n_files; i++)
        free(r->files[i].name);
    free(r->files);
    free(r);
}
