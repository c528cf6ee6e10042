/* Client addresses that had a message accepted lately: a full server serves them ahead of
 * sessions that never delivered anything (as Postfix's postscreen keeps clients that passed
 * its tests on a temporary allow list). A fixed number of entries, the least recently proven
 * going first, so an attacker with many addresses costs memory only up to that number. Pure
 * data structure: no I/O, time given by the caller. */
#ifndef LUASMTPD_PROVEN_CLIENTS_H
#define LUASMTPD_PROVEN_CLIENTS_H

#include <stdbool.h>
#include <time.h>

/* Longer addresses (numeric IPv6 with a long scope) are not remembered. */
#define PROVEN_ADDR_MAX 64

struct proven_clients;

/* NULL when out of memory (the caller serves no one ahead: that is all it loses). */
struct proven_clients *proven_clients_new(unsigned capacity, unsigned ttl_sec);
/* `addr` had a message accepted at `now`. */
void proven_clients_record(struct proven_clients *p, const char *addr, time_t now);
/* Whether `addr` had a message accepted within the ttl before `now`. */
bool proven_clients_contains(const struct proven_clients *p, const char *addr, time_t now);
void proven_clients_free(struct proven_clients *p);

#endif
