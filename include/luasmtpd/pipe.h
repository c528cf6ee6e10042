/* Delivery to a command's stdin, from the event loop: spawn (argv, never a shell; an explicit
 * environment; none of the server's descriptors), feed the message with flow control, collect
 * the exit status and a capped copy of what it wrote, kill it (TERM, then KILL) when its time is
 * up. Child exits are noticed through a pidfd, without blocking and without races. A limit on
 * children at once; the rest wait their turn. It knows nothing of Lua. */
#ifndef LUASMTPD_PIPE_H
#define LUASMTPD_PIPE_H

#include <stdbool.h>
#include <stddef.h>

struct event_base;
struct pipe_job;
struct pipe_pool;

struct pipe_request {
    char *const *argv; /* argv[0] is looked up in the PATH of envp when it has no '/' */
    char *const *envp; /* the child's whole environment */
    const char *data;  /* fed to stdin, in place; the caller keeps it until `done` runs or
                        * pipe_cancel returns */
    size_t len;
    double timeout;    /* seconds from start to exit */
    size_t output_cap; /* bytes of stdout+stderr kept; the rest is read and dropped */
};

enum pipe_outcome {
    PIPE_EXITED,    /* status: the exit code */
    PIPE_SIGNALED,  /* status: the signal that killed it */
    PIPE_TIMED_OUT, /* we killed it */
    PIPE_FAILED,    /* it could not run: error says why */
};

struct pipe_result {
    enum pipe_outcome outcome;
    int status;
    const char *output;
    size_t output_len;
    const char *error;
};

typedef void (*pipe_done_fn)(void *arg, const struct pipe_result *result);

/* The children of one event loop: those running (at most `max_children`, 0 counting as 1) and
 * those waiting their turn. NULL when out of memory. */
struct pipe_pool *pipe_pool_new(struct event_base *base, unsigned max_children);
/* Starts (or queues) a job; `done` is called once, later, from the event loop. NULL when out
 * of memory. */
struct pipe_job *pipe_spawn(struct pipe_pool *pool, const struct pipe_request *req,
                            pipe_done_fn done, void *arg);
/* `done` will not be called, and req->data is not read again once this returns: the feed
 * stops, the child's stdin stays open (no end of input) until the child, sent SIGTERM then
 * SIGKILL, is reaped in the background. */
void pipe_cancel(struct pipe_job *job);
/* When the loop is over: kills (SIGKILL) and reaps what is still running, frees every job,
 * calls no `done`, then frees the pool. Before the event base is freed. NULL: nothing. */
void pipe_pool_free(struct pipe_pool *pool);

#endif
