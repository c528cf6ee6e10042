/* The DATA memory budget: this process's share of --data-memory, for every byte its sessions
 * hold for a message from the DATA command until the message is freed (its transfer ended or
 * its handler returned). It decides what fits; the transaction (transaction.c) holds the bytes. */
#ifndef LUASMTPD_DATA_BUDGET_H
#define LUASMTPD_DATA_BUDGET_H

#include <stdbool.h>
#include <stddef.h>

struct evbuffer;
struct session;

/* MAIL's SIZE= against the budget (RFC 1870 6.1): more than the whole budget is never taken
 * (552), more than is left beside the DATA in flight not now (452, logged). */
enum data_budget_fit { DATA_BUDGET_FITS, DATA_BUDGET_FULL, DATA_BUDGET_NEVER };
enum data_budget_fit data_budget_fit(struct session *s, size_t size);
/* DATA: readies the decoder and the message buffer, charged to the budget. false (logged)
 * when the budget cannot hold it now: the caller answers 452, the transaction stays open. */
bool data_budget_begin(struct session *s);
/* Makes room in the message for what the decoder may store from `piece` more bytes of `in`.
 * false: the budget cannot hold it, and the transfer was ended (421, input dropped). */
bool data_budget_make_room(struct session *s, struct evbuffer *in, size_t piece);

#endif
