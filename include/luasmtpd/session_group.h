/* All sessions of one process, so a shutdown can reach them and learn when they are gone, and
 * what they share: the caps, the DATA budget's count, the transaction ids. Its owner fills in
 * the first fields (base, cfg, rt, hostname, on_empty); the session part keeps the rest. */
#ifndef LUASMTPD_SESSION_GROUP_H
#define LUASMTPD_SESSION_GROUP_H

#include <stdbool.h>
#include <stddef.h>

#include "luasmtpd/log_burst.h"
#include "luasmtpd/transaction.h"

struct config;
struct event_base;
struct lrt;
struct peer_count;
struct proven_clients;
struct session;
struct tls_server;

struct session_group {
    struct event_base *base;
    const struct config *cfg;
    struct lrt *rt;
    const char *hostname;
    struct tls_server *tls; /* NULL: no TLS configured */
    struct session *head;
    unsigned count;
    struct peer_count *per_client;
    struct proven_clients *proven; /* addresses that had a message accepted lately */
    unsigned long next_id;
    struct tx_ids txn_ids;
    /* Lines a flood brings by the thousand a second, each logged once an interval. */
    struct log_burst refusals;  /* at the connection caps */
    struct log_burst evictions; /* sessions closed to make room */
    struct log_burst budget;    /* DATA memory budget refusals */
    /* Bytes of message data the sessions' transactions hold, against --data-memory's share. */
    size_t data_in_use;
    bool draining;
    void (*on_empty)(void *arg); /* called when draining and the last session closed */
    void *on_empty_arg;
};

#endif
