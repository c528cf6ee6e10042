/* One client connection's SMTP state machine over a bufferevent: framing, command dispatch,
 * DATA streaming, replies, timeouts. It parses through smtp_parse/smtp_data and runs handlers
 * through the Lua runtime's plain C interface; it never touches a lua_State. */
#ifndef LUASMTPD_SESSION_H
#define LUASMTPD_SESSION_H

#include <stdbool.h>
#include <sys/socket.h>
#include <sys/time.h>

#include "luasmtpd/config.h"
#include "luasmtpd/lua_runtime.h"

struct event_base;
struct peer_count;
struct proven_clients;
struct session;

/* All sessions of one process, so a shutdown can reach them and learn when they are gone. */
/* A kind of log line that can come by the thousand a second (session.c logs the first in
 * each interval, with a count of the others). */
struct log_burst {
    struct timeval logged; /* when the last was logged; 0: never */
    unsigned unlogged;     /* how many were not since */
};

struct session_group {
    struct event_base *base;
    const struct config *cfg;
    struct lrt *rt;
    const char *hostname;
    struct session *head;
    unsigned count;
    struct peer_count *per_client;
    struct proven_clients *proven; /* addresses that had a message accepted lately */
    unsigned long next_id;
    /* Transaction ids: this process's first transaction time and pid, set then, and a count. */
    unsigned long txn_epoch;
    unsigned long txn_pid;
    unsigned long txn_count;
    /* Lines a flood brings by the thousand a second, each logged once an interval. */
    struct log_burst refusals; /* at the connection caps */
    struct log_burst evictions; /* sessions closed to make room */
    struct log_burst budget; /* DATA memory budget refusals */
    /* Bytes of message data the sessions hold (session.c), against --data-memory's share. */
    size_t data_in_use;
    bool draining;
    void (*on_empty)(void *arg); /* called when draining and the last session closed */
    void *on_empty_arg;
};

/* Takes the accepted socket: greets, then serves it until it closes. */
void session_start(struct session_group *g, int fd, const struct sockaddr *addr, int addrlen);
/* Stop taking new transactions: idle sessions get 421 now, busy ones after their transaction. */
void session_group_drain(struct session_group *g);
/* Closes every session at once (the shutdown grace period is over). */
void session_group_close_all(struct session_group *g);
/* Closes every session and frees what the group holds. */
void session_group_free(struct session_group *g);

#endif
