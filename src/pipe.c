/* Child-process delivery (see pipe.h). The child learns nothing of the server: its stdin and
 * stdout/stderr are fresh pipes and every other descriptor is closed before exec. An exec
 * failure is told to the parent through a close-on-exec pipe, so "could not run" is never
 * mistaken for an exit status. A cancelled job lives on, quietly, until its child is reaped,
 * and never touches the caller's message again. */
#define _GNU_SOURCE
#include "luasmtpd/pipe.h"

#include <dirent.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "luasmtpd/buf.h"
#include "luasmtpd/log.h"

#define KILL_GRACE_SEC 2
#define WRITE_CHUNK (64 * 1024)

struct pipe_job {
    struct pipe_job *prev_live, *next_live; /* every job not yet freed, for pipe_pool_free */
    struct pipe_job *next_queued;
    struct pipe_job *prev_running, *next_running; /* children watched through SIGCHLD */
    struct pipe_pool *pool;
    char **argv;
    char **envp;
    const char *data;
    size_t len, written;
    double timeout;
    size_t output_cap;
    pipe_done_fn done;
    void *arg;

    pid_t pid;
    int stdin_fd, output_fd, pid_fd;
    struct event *stdin_ev, *output_ev, *exit_ev, *timer;
    struct buf output;
    bool exited, output_closed, killed, cancelled, running;
    int wait_status;
};

struct pipe_pool {
    struct event_base *base;
    unsigned max_children;
    unsigned running_children;
    struct pipe_job *queue_head, *queue_tail;
    /* Where pidfd_open is missing (kernels before 5.3, valgrind), exits are learnt from
     * SIGCHLD: the handler is set up before the first fork, and each signal checks every child
     * it knows. */
    struct event *sigchld_event;
    struct pipe_job *watched;
    struct pipe_job *live;
};

struct pipe_pool *
pipe_pool_new(struct event_base *base, unsigned max_children)
{
    struct pipe_pool *pool = calloc(1, sizeof(*pool));
    if (pool == NULL)
        return NULL;
    pool->base = base;
    pool->max_children = max_children ? max_children : 1;
    return pool;
}

static char **
copy_strings(char *const *v)
{
    size_t n = 0;
    while (v[n] != NULL)
        n++;
    char **copy = calloc(n + 1, sizeof(char *));
    for (size_t i = 0; copy != NULL && i < n; i++) {
        if ((copy[i] = strdup(v[i])) == NULL) {
            for (size_t j = 0; j < i; j++)
                free(copy[j]);
            free(copy);
            return NULL;
        }
    }
    return copy;
}

static void
free_strings(char **v)
{
    for (size_t i = 0; v != NULL && v[i] != NULL; i++)
        free(v[i]);
    free(v);
}

static void
unwatch(struct pipe_job *job)
{
    struct pipe_pool *pool = job->pool;
    if (job->prev_running == NULL && pool->watched != job)
        return;
    if (job->prev_running != NULL)
        job->prev_running->next_running = job->next_running;
    else
        pool->watched = job->next_running;
    if (job->next_running != NULL)
        job->next_running->prev_running = job->prev_running;
    job->prev_running = job->next_running = NULL;
}

static void
close_fd(int *fd, struct event **ev)
{
    if (*ev != NULL) {
        event_free(*ev);
        *ev = NULL;
    }
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

static void start_queued(struct pipe_pool *pool);

static void
job_free(struct pipe_job *job)
{
    struct pipe_pool *pool = job->pool;
    if (job->prev_live != NULL)
        job->prev_live->next_live = job->next_live;
    else if (pool->live == job)
        pool->live = job->next_live;
    if (job->next_live != NULL)
        job->next_live->prev_live = job->prev_live;
    unwatch(job);
    close_fd(&job->stdin_fd, &job->stdin_ev);
    close_fd(&job->output_fd, &job->output_ev);
    close_fd(&job->pid_fd, &job->exit_ev);
    if (job->timer != NULL)
        event_free(job->timer);
    buf_free(&job->output);
    free_strings(job->argv);
    free_strings(job->envp);
    free(job);
}

/* Reports (unless cancelled) and frees; a finished child frees a slot for a queued job. */
static void
pipe_job_finish(struct pipe_job *job, const struct pipe_result *result)
{
    struct pipe_pool *pool = job->pool;
    if (job->running) {
        pool->running_children--;
        job->running = false;
    }
    if (!job->cancelled)
        job->done(job->arg, result);
    job_free(job);
    start_queued(pool);
}

static void
maybe_finish(struct pipe_job *job)
{
    if (!job->exited || !job->output_closed)
        return;
    struct pipe_result result = {.output = job->output.data ? job->output.data : "",
                                 .output_len = job->output.len};
    int st = job->wait_status;
    if (job->killed) {
        result.outcome = PIPE_TIMED_OUT;
        result.error = "timed out";
    } else if (WIFSIGNALED(st)) {
        result.outcome = PIPE_SIGNALED;
        result.status = WTERMSIG(st);
    } else {
        result.outcome = PIPE_EXITED;
        result.status = WEXITSTATUS(st);
    }
    pipe_job_finish(job, &result);
}

static void
drain_output(struct pipe_job *job)
{
    char chunk[16384];
    for (;;) {
        ssize_t n = read(job->output_fd, chunk, sizeof(chunk));
        if (n > 0) {
            size_t room = job->output_cap > job->output.len ? job->output_cap - job->output.len : 0;
            buf_append(&job->output, chunk, (size_t)n < room ? (size_t)n : room);
            continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            close_fd(&job->output_fd, &job->output_ev);
            job->output_closed = true;
        }
        return;
    }
}

static void
pipe_on_output(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct pipe_job *job = arg;
    drain_output(job);
    maybe_finish(job);
}

static void
pipe_on_stdin_writable(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct pipe_job *job = arg;
    while (job->written < job->len) {
        size_t n = job->len - job->written;
        ssize_t w = write(fd, job->data + job->written, n < WRITE_CHUNK ? n : WRITE_CHUNK);
        if (w > 0) {
            job->written += (size_t)w;
            continue;
        }
        if (w < 0 && (errno == EAGAIN || errno == EINTR))
            return; /* the event fires again when the child has read some */
        break;      /* EPIPE: the child stopped reading; what it does about it is its status */
    }
    close_fd(&job->stdin_fd, &job->stdin_ev); /* EOF tells the child the message is complete */
}

/* Collects the child's status if it has exited; false while it runs. */
static bool
reap(struct pipe_job *job)
{
    int st;
    if (waitpid(job->pid, &st, WNOHANG) != job->pid)
        return false;
    job->exited = true;
    job->wait_status = st;
    unwatch(job);
    return true;
}

static void
on_reaped(struct pipe_job *job)
{
    close_fd(&job->pid_fd, &job->exit_ev);
    close_fd(&job->stdin_fd, &job->stdin_ev);
    if (job->timer != NULL)
        evtimer_del(job->timer);
    /* Whatever the child wrote before it exited is in the pipe now; a grandchild that keeps the
     * pipe open does not hold the delivery up. */
    if (!job->output_closed) {
        drain_output(job);
        close_fd(&job->output_fd, &job->output_ev);
        job->output_closed = true;
    }
    maybe_finish(job);
}

static void
pipe_on_exit(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct pipe_job *job = arg;
    if (reap(job))
        on_reaped(job);
}

static void
pipe_on_sigchld(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct pipe_pool *pool = arg;
    /* A finished job may start queued ones or free others: look again from the top after each
     * one that exited. */
    for (struct pipe_job *job = pool->watched; job != NULL;) {
        if (reap(job)) {
            on_reaped(job);
            job = pool->watched;
        } else {
            job = job->next_running;
        }
    }
}

static void
pipe_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct pipe_job *job = arg;
    if (job->exited)
        return;
    int sig = job->killed ? SIGKILL : SIGTERM;
    if (!job->cancelled)
        log_warn("pipe: %s (pid %d) %s: sending %s", job->argv[0], (int)job->pid,
                 job->killed ? "ignored SIGTERM" : "timed out",
                 sig == SIGKILL ? "SIGKILL" : "SIGTERM");
    job->killed = true;
    kill(job->pid, sig);
    struct timeval grace = {.tv_sec = KILL_GRACE_SEC};
    evtimer_add(job->timer, &grace);
}

/* The number no descriptor reaches: the soft RLIMIT_NOFILE, read in the parent (getrlimit is
 * no async-signal-safe call). Unlimited, it is the kernel's default fs.nr_open. */
static int
fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > INT_MAX)
        return 1 << 20;
    return (int)rl.rlim_cur;
}

/* Closes every descriptor from `first` on, in the child: close_range where the kernel has it
 * (Linux 5.9) and lets us (a seccomp filter may answer EPERM or ENOSYS); else what
 * /proc/self/fd lists, read with getdents64 into the stack (open, getdents64, close: all plain
 * system calls, where opendir would malloc); else every number below `limit`, the last resort,
 * as it costs a third of a second at a million. Whatever the server forgot to open
 * close-on-exec (a file a script opened with io.open, say) goes, so no child inherits it. */
static void
close_from(int first, int limit)
{
    if (close_range((unsigned)first, ~0U, 0) == 0)
        return;
    int dir = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    bool listed = false;
    /* Closing while reading skips nothing (the kernel lists by number, from the offset on);
     * still, a pass that closed something is checked by one more, which costs a read. */
    for (bool again = dir >= 0; again;) {
        again = false;
        if (lseek(dir, 0, SEEK_SET) == -1)
            break;
        char entries[4096] __attribute__((aligned(8)));
        ssize_t n;
        while ((n = getdents64(dir, entries, sizeof(entries))) > 0) {
            for (ssize_t off = 0; off < n;) {
                struct dirent64 *d = (struct dirent64 *)(entries + off);
                off += d->d_reclen;
                int fd = 0;
                const char *c = d->d_name;
                for (; *c >= '0' && *c <= '9' && fd < INT_MAX / 10; c++)
                    fd = fd * 10 + (*c - '0');
                if (*c != '\0' || c == d->d_name || fd < first || fd == dir)
                    continue;
                /* Only a close that worked calls for another pass: one the kernel or a
                 * checker refuses (valgrind keeps descriptors of its own, listed here too)
                 * would be listed again, and the pass would never end. */
                if (close(fd) == 0)
                    again = true;
            }
        }
        listed = n == 0;
    }
    if (dir >= 0)
        close(dir);
    if (listed)
        return;
    for (int fd = first; fd < limit; fd++)
        close(fd);
}

/* In the child, between fork and exec: only async-signal-safe calls. */
static void __attribute__((noreturn))
exec_child(struct pipe_job *job, int stdin_r, int output_w, int error_w, int limit)
{
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int sig = 1; sig < NSIG; sig++)
        signal(sig, SIG_DFL); /* the server ignores SIGPIPE; a child must not inherit that */
    if (dup2(stdin_r, 0) == -1 || dup2(output_w, 1) == -1 || dup2(output_w, 2) == -1)
        goto fail;
    if (error_w <= 3)
        goto fail;
    if (dup2(error_w, 3) == -1 || fcntl(3, F_SETFD, FD_CLOEXEC) == -1)
        goto fail;
    close_from(4, limit);
    environ = job->envp;
    execvp(job->argv[0], job->argv);
fail:;
    int err = errno;
    ssize_t ignored = write(3, &err, sizeof(err));
    (void)ignored;
    _exit(127);
}

static void
fail_job(struct pipe_job *job, const char *what, int err)
{
    char text[256];
    snprintf(text, sizeof(text), "cannot run %s: %s%s%s", job->argv[0], what, err ? ": " : "",
             err ? strerror(err) : "");
    struct pipe_result result = {.outcome = PIPE_FAILED, .error = text, .output = ""};
    pipe_job_finish(job, &result);
}

static void
pipe_job_start(struct pipe_job *job)
{
    struct pipe_pool *pool = job->pool;
    int in[2], out[2], errp[2];
    pool->running_children++;
    job->running = true;
    if (pipe2(in, O_CLOEXEC) == -1) {
        fail_job(job, "pipe", errno);
        return;
    }
    if (pipe2(out, O_CLOEXEC) == -1) {
        int err = errno;
        close(in[0]);
        close(in[1]);
        fail_job(job, "pipe", err);
        return;
    }
    if (pipe2(errp, O_CLOEXEC) == -1) {
        int err = errno;
        close(in[0]);
        close(in[1]);
        close(out[0]);
        close(out[1]);
        fail_job(job, "pipe", err);
        return;
    }
    /* Keep the write end of the error pipe above 3, so exec_child can move it to 3. */
    if (errp[1] <= 3) {
        int moved = fcntl(errp[1], F_DUPFD_CLOEXEC, 4);
        close(errp[1]);
        errp[1] = moved;
    }
    if (pool->sigchld_event == NULL) {
        pool->sigchld_event = evsignal_new(pool->base, SIGCHLD, pipe_on_sigchld, pool);
        if (pool->sigchld_event != NULL)
            evsignal_add(pool->sigchld_event, NULL);
    }
    int limit = fd_limit();
    pid_t pid = fork();
    if (pid == 0)
        exec_child(job, in[0], out[1], errp[1], limit);
    int fork_err = errno;
    close(in[0]);
    close(out[1]);
    close(errp[1]);
    if (pid == -1) {
        close(in[1]);
        close(out[0]);
        close(errp[0]);
        fail_job(job, "fork", fork_err);
        return;
    }
    job->pid = pid;
    /* The child either execs (the pipe closes, read gets 0) or reports its errno. */
    int child_err = 0;
    ssize_t n;
    do
        n = read(errp[0], &child_err, sizeof(child_err));
    while (n == -1 && errno == EINTR);
    close(errp[0]);
    job->stdin_fd = in[1];
    job->output_fd = out[0];
    fcntl(job->stdin_fd, F_SETFL, O_NONBLOCK);
    fcntl(job->output_fd, F_SETFL, O_NONBLOCK);
    job->pid_fd = pidfd_open(pid, 0);
    job->timer = evtimer_new(pool->base, pipe_on_timer, job);
    if (job->pid_fd >= 0) {
        job->exit_ev = event_new(pool->base, job->pid_fd, EV_READ | EV_PERSIST, pipe_on_exit, job);
    } else {
        job->next_running = pool->watched;
        if (pool->watched != NULL)
            pool->watched->prev_running = job;
        pool->watched = job;
    }
    job->output_ev =
        event_new(pool->base, job->output_fd, EV_READ | EV_PERSIST, pipe_on_output, job);
    job->stdin_ev =
        event_new(pool->base, job->stdin_fd, EV_WRITE | EV_PERSIST, pipe_on_stdin_writable, job);
    if (n == (ssize_t)sizeof(child_err)) {
        /* exec failed: reap the child, report why. */
        waitpid(pid, NULL, 0);
        fail_job(job, "exec", child_err);
        return;
    }
    if ((job->pid_fd >= 0 && job->exit_ev == NULL) ||
        (job->pid_fd < 0 && pool->sigchld_event == NULL) || job->timer == NULL ||
        job->output_ev == NULL || job->stdin_ev == NULL) {
        int err = errno;
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        fail_job(job, "pidfd", err);
        return;
    }
    if (job->exit_ev != NULL)
        event_add(job->exit_ev, NULL);
    else if (reap(job)) {
        /* It exited before we watched it: SIGCHLD came too early to find it in the list. */
        on_reaped(job);
        return;
    }
    event_add(job->output_ev, NULL);
    event_add(job->stdin_ev, NULL);
    struct timeval tv = {.tv_sec = (time_t)job->timeout,
                         .tv_usec =
                             (suseconds_t)((job->timeout - (double)(time_t)job->timeout) * 1e6)};
    evtimer_add(job->timer, &tv);
}

static void
start_queued(struct pipe_pool *pool)
{
    while (pool->queue_head != NULL && pool->running_children < pool->max_children) {
        struct pipe_job *job = pool->queue_head;
        pool->queue_head = job->next_queued;
        if (pool->queue_head == NULL)
            pool->queue_tail = NULL;
        pipe_job_start(job);
    }
}

/* Starting from the loop, never inside pipe_spawn, keeps `done` from running before the
 * caller has yielded. */
static void
pipe_on_start(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct pipe_job *job = arg;
    struct pipe_pool *pool = job->pool;
    event_free(job->timer);
    job->timer = NULL;
    if (job->cancelled) {
        job_free(job);
        return;
    }
    if (pool->queue_tail)
        pool->queue_tail->next_queued = job;
    else
        pool->queue_head = job;
    pool->queue_tail = job;
    start_queued(pool);
}

struct pipe_job *
pipe_spawn(struct pipe_pool *pool, const struct pipe_request *req, pipe_done_fn done, void *arg)
{
    struct pipe_job *job = calloc(1, sizeof(*job));
    if (job == NULL)
        return NULL;
    job->pool = pool;
    job->stdin_fd = job->output_fd = job->pid_fd = -1;
    job->data = req->data;
    job->len = req->len;
    job->timeout = req->timeout > 0 ? req->timeout : 60;
    job->output_cap = req->output_cap;
    job->done = done;
    job->arg = arg;
    job->argv = copy_strings(req->argv);
    job->envp = copy_strings(req->envp);
    job->timer = evtimer_new(pool->base, pipe_on_start, job);
    if (job->argv == NULL || job->envp == NULL || job->argv[0] == NULL || job->timer == NULL) {
        job_free(job);
        return NULL;
    }
    job->next_live = pool->live;
    if (pool->live != NULL)
        pool->live->prev_live = job;
    pool->live = job;
    struct timeval now = {0, 0};
    evtimer_add(job->timer, &now);
    return job;
}

void
pipe_cancel(struct pipe_job *job)
{
    job->cancelled = true;
    /* The message is the caller's, and it lets go of it once this returns (a Lua string, freed
     * with its generation): the feed stops here. stdin stays open, unfed, until the child is
     * reaped, so a child that ignores SIGTERM blocks on it until SIGKILL rather than taking the
     * end of a message cut short for a whole one. */
    job->data = NULL;
    job->len = job->written;
    if (job->stdin_ev != NULL) {
        event_free(job->stdin_ev);
        job->stdin_ev = NULL;
    }
    if (job->pid == 0) {
        /* Not started: either waiting for pipe_on_start (which frees it) or in the queue. */
        struct pipe_pool *pool = job->pool;
        struct pipe_job **p = &pool->queue_head;
        while (*p != NULL && *p != job)
            p = &(*p)->next_queued;
        if (*p == job) {
            *p = job->next_queued;
            if (pool->queue_tail == job) {
                pool->queue_tail = NULL;
                for (struct pipe_job *q = pool->queue_head; q != NULL; q = q->next_queued)
                    pool->queue_tail = q;
            }
            job_free(job);
        }
        return;
    }
    if (!job->exited) {
        job->killed = true;
        kill(job->pid, SIGTERM);
        struct timeval grace = {.tv_sec = KILL_GRACE_SEC};
        evtimer_add(job->timer, &grace); /* then SIGKILL; pipe_on_exit reaps and frees */
    }
}

void
pipe_pool_free(struct pipe_pool *pool)
{
    if (pool == NULL)
        return;
    while (pool->live != NULL) {
        struct pipe_job *job = pool->live;
        if (job->pid > 0 && !job->exited) {
            kill(job->pid, SIGKILL);
            while (waitpid(job->pid, NULL, 0) == -1 && errno == EINTR)
                ;
        }
        if (job->running)
            pool->running_children--;
        job_free(job);
    }
    if (pool->sigchld_event != NULL)
        event_free(pool->sigchld_event);
    free(pool);
}
