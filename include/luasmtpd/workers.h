/* --workers N: a supervisor process and N workers, each with its own event loop and Lua state,
 * each accepting on its own SO_REUSEPORT socket. The supervisor keeps every socket open, so a
 * worker that dies leaves its queue of connections waiting for its replacement; it forwards
 * SIGHUP and SIGTERM/SIGINT to the workers and restarts those that die. No libevent here: the
 * supervisor waits on signals alone, so nothing of its loop leaks into a forked worker. */
#ifndef LUASMTPD_WORKERS_H
#define LUASMTPD_WORKERS_H

/* Runs one worker over its sockets; returns its exit status. */
typedef int (*worker_fn)(void *arg, int *fds, int n_fds);

/* What the supervisor itself does on SIGHUP, before it forwards it: a worker it restarts later
 * starts from the supervisor's memory, so that must be as current as the running workers'. */
typedef void (*worker_reload_fn)(void *arg);

/* fds holds n_addrs * n_workers sockets, worker w's for address a at [a * n_workers + w].
 * Returns the supervisor's exit status once every worker has stopped. */
int workers_run(unsigned n_workers, int *fds, int n_addrs, unsigned shutdown_timeout, worker_fn fn,
                worker_reload_fn on_reload, void *arg);

#endif
