/* Connections per client address, so the per-client cap costs O(1) per accept, not a walk
 * over every session. A plain chained hash table of address strings; no I/O. */
#ifndef LUASMTPD_PEER_COUNT_H
#define LUASMTPD_PEER_COUNT_H

struct peer_count;

struct peer_count *peer_count_new(void);
/* Counts one more connection from `addr`; returns how many there are now (0: out of memory). */
unsigned peer_count_add(struct peer_count *pc, const char *addr);
void peer_count_remove(struct peer_count *pc, const char *addr);
unsigned peer_count_get(const struct peer_count *pc, const char *addr);
void peer_count_free(struct peer_count *pc);

#endif
