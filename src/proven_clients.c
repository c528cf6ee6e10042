/* The proven-client table (see proven_clients.h): a hash of fixed slots, chained by index,
 * with the slots also on a recency list so that a record when full reuses the least recent. */
#include "luasmtpd/proven_clients.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NONE UINT32_MAX

struct slot {
    char addr[PROVEN_ADDR_MAX];
    time_t proven;
    uint32_t chain;        /* next slot in the same bucket */
    uint32_t newer, older; /* the recency list */
};

struct proven_clients {
    unsigned capacity, used, n_buckets, ttl;
    uint32_t newest, oldest;
    uint32_t *buckets;
    struct slot slots[];
};

/* FNV-1a, as peer_count.c: the keys are client addresses, not chosen freely. */
static unsigned
bucket_of(const struct proven_clients *p, const char *s)
{
    unsigned h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h % p->n_buckets;
}

struct proven_clients *
proven_clients_new(unsigned capacity, unsigned ttl_sec)
{
    if (capacity == 0 || capacity >= NONE / 2)
        return NULL;
    struct proven_clients *p = calloc(1, sizeof(*p) + (size_t)capacity * sizeof(struct slot));
    if (p == NULL)
        return NULL;
    p->capacity = capacity;
    p->n_buckets = capacity * 2;
    p->ttl = ttl_sec;
    p->newest = p->oldest = NONE;
    p->buckets = malloc((size_t)p->n_buckets * sizeof(uint32_t));
    if (p->buckets == NULL) {
        free(p);
        return NULL;
    }
    for (unsigned i = 0; i < p->n_buckets; i++)
        p->buckets[i] = NONE;
    return p;
}

static uint32_t
find(const struct proven_clients *p, const char *addr)
{
    uint32_t i = p->buckets[bucket_of(p, addr)];
    while (i != NONE && strcmp(p->slots[i].addr, addr) != 0)
        i = p->slots[i].chain;
    return i;
}

static void
unlink_recency(struct proven_clients *p, uint32_t i)
{
    struct slot *s = &p->slots[i];
    if (s->newer != NONE)
        p->slots[s->newer].older = s->older;
    else
        p->newest = s->older;
    if (s->older != NONE)
        p->slots[s->older].newer = s->newer;
    else
        p->oldest = s->newer;
}

static void
push_newest(struct proven_clients *p, uint32_t i)
{
    struct slot *s = &p->slots[i];
    s->newer = NONE;
    s->older = p->newest;
    if (p->newest != NONE)
        p->slots[p->newest].newer = i;
    p->newest = i;
    if (p->oldest == NONE)
        p->oldest = i;
}

static void
unlink_bucket(struct proven_clients *p, uint32_t i)
{
    uint32_t *link = &p->buckets[bucket_of(p, p->slots[i].addr)];
    while (*link != i)
        link = &p->slots[*link].chain;
    *link = p->slots[i].chain;
}

void
proven_clients_record(struct proven_clients *p, const char *addr, time_t now)
{
    if (p == NULL || strlen(addr) >= PROVEN_ADDR_MAX)
        return;
    uint32_t i = find(p, addr);
    if (i != NONE) {
        unlink_recency(p, i);
    } else {
        if (p->used < p->capacity) {
            i = p->used++;
        } else {
            i = p->oldest;
            unlink_recency(p, i);
            unlink_bucket(p, i);
        }
        strcpy(p->slots[i].addr, addr);
        unsigned b = bucket_of(p, addr);
        p->slots[i].chain = p->buckets[b];
        p->buckets[b] = i;
    }
    p->slots[i].proven = now;
    push_newest(p, i);
}

bool
proven_clients_contains(const struct proven_clients *p, const char *addr, time_t now)
{
    if (p == NULL || strlen(addr) >= PROVEN_ADDR_MAX)
        return false;
    uint32_t i = find(p, addr);
    return i != NONE && now - p->slots[i].proven <= (time_t)p->ttl;
}

void
proven_clients_free(struct proven_clients *p)
{
    if (p == NULL)
        return;
    free(p->buckets);
    free(p);
}
