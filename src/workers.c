/* The worker supervisor (see workers.h). */
#include "luasmtpd/workers.h"

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "luasmtpd/log.h"
#include "luasmtpd/watchdog.h"

/* A worker that dies within STABLE_SEC of its start waits twice as long as last time before
 * the next one starts (a script that now fails to load, a finalizer every message reaches),
 * up to MAX_BACKOFF_SEC; one that ran longer is replaced at once. */
#define STABLE_SEC 10
#define MAX_BACKOFF_SEC 30

struct slot {
    pid_t pid;
    time_t started;
    time_t restart_at;
    unsigned backoff; /* seconds the last restart waited */
};

/* Restart times and the shutdown deadline are intervals: a wall clock set back must not hold a
 * worker's restart until it catches up. */
static time_t
workers_monotonic_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec;
}

static pid_t
workers_start_one(unsigned w, unsigned n_workers, int *fds, int n_addrs, const sigset_t *mask,
                  worker_fn fn, void *arg)
{
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    /* The caller's mask from before workers_run: SIGTERM and SIGINT open again, SIGHUP still
     * blocked (reload_hold_signals) until the worker's loop handles it. */
    sigprocmask(SIG_SETMASK, mask, NULL);
    int mine[n_addrs > 0 ? n_addrs : 1];
    for (int a = 0; a < n_addrs; a++) {
        for (unsigned other = 0; other < n_workers; other++) {
            int fd = fds[a * (int)n_workers + (int)other];
            if (other == w)
                mine[a] = fd;
            else
                close(fd);
        }
    }
    exit(fn(arg, mine, n_addrs));
}

static void
workers_signal_all(struct slot *slots, unsigned n, int sig)
{
    for (unsigned i = 0; i < n; i++)
        if (slots[i].pid > 0)
            kill(slots[i].pid, sig);
}

int
workers_run(unsigned n_workers, int *fds, int n_addrs, unsigned shutdown_timeout, worker_fn fn,
            worker_reload_fn on_reload, void *arg)
{
    sigset_t wanted, old;
    sigemptyset(&wanted);
    sigaddset(&wanted, SIGTERM);
    sigaddset(&wanted, SIGINT);
    sigaddset(&wanted, SIGHUP);
    sigaddset(&wanted, SIGCHLD);
    sigprocmask(SIG_BLOCK, &wanted, &old);

    struct slot *slots = calloc(n_workers, sizeof(*slots));
    if (slots == NULL)
        return 1;
    for (unsigned w = 0; w < n_workers; w++) {
        slots[w].pid = workers_start_one(w, n_workers, fds, n_addrs, &old, fn, arg);
        slots[w].started = workers_monotonic_seconds();
        log_info("worker %u started (pid %d)", w + 1, (int)slots[w].pid);
    }

    bool stopping = false;
    time_t deadline = 0;
    int status = 0;
    for (;;) {
        struct timespec tick = {.tv_sec = 1};
        siginfo_t info;
        int sig = sigtimedwait(&wanted, &info, &tick);
        int st;
        pid_t pid;
        while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
            for (unsigned w = 0; w < n_workers; w++) {
                if (slots[w].pid != pid)
                    continue;
                slots[w].pid = 0;
                bool clean = WIFEXITED(st) && WEXITSTATUS(st) == 0;
                time_t now = workers_monotonic_seconds();
                struct slot *s = &slots[w];
                if (now - s->started >= STABLE_SEC)
                    s->backoff = 0;
                else if (s->backoff == 0)
                    s->backoff = 1;
                else if ((s->backoff *= 2) > MAX_BACKOFF_SEC)
                    s->backoff = MAX_BACKOFF_SEC;
                s->restart_at = now + s->backoff;
                char then[48] = "";
                if (!stopping)
                    snprintf(then, sizeof(then), "; restarting it in %u s", s->backoff);
                if (!stopping || !clean) {
                    if (WIFSIGNALED(st))
                        log_warn("worker %u (pid %d) killed by signal %d%s", w + 1, (int)pid,
                                 WTERMSIG(st), then);
                    else if (WEXITSTATUS(st) == WATCHDOG_EXIT_STATUS)
                        log_warn("worker %u (pid %d) exited with status %d: its watchdog found "
                                 "its loop stuck%s",
                                 w + 1, (int)pid, WEXITSTATUS(st), then);
                    else
                        log_warn("worker %u (pid %d) exited with status %d%s", w + 1, (int)pid,
                                 WEXITSTATUS(st), then);
                }
                if (stopping && !clean)
                    status = 1;
            }
        }
        if (sig == SIGTERM || sig == SIGINT) {
            if (!stopping) {
                log_info("%s: stopping %u worker(s)", sig == SIGTERM ? "SIGTERM" : "SIGINT",
                         n_workers);
                stopping = true;
                deadline = workers_monotonic_seconds() + shutdown_timeout + 5;
            }
            workers_signal_all(slots, n_workers, sig); /* a second one makes them close at once */
        } else if (sig == SIGHUP) {
            if (on_reload != NULL)
                on_reload(arg);
            workers_signal_all(slots, n_workers, SIGHUP);
        }

        time_t now = workers_monotonic_seconds();
        bool alive = false;
        for (unsigned w = 0; w < n_workers; w++) {
            if (slots[w].pid > 0) {
                alive = true;
            } else if (!stopping && now >= slots[w].restart_at) {
                slots[w].pid = workers_start_one(w, n_workers, fds, n_addrs, &old, fn, arg);
                slots[w].started = now;
                log_info("worker %u restarted (pid %d)", w + 1, (int)slots[w].pid);
                alive = true;
            } else if (!stopping) {
                alive = true; /* waiting out the restart interval */
            }
        }
        if (stopping && !alive)
            break;
        if (stopping && now > deadline) {
            log_warn("workers still running after the shutdown grace: killing them");
            workers_signal_all(slots, n_workers, SIGKILL);
            deadline = now + 60;
        }
    }
    free(slots);
    sigprocmask(SIG_SETMASK, &old, NULL);
    log_info("stopped");
    return status;
}
