/* Per-address connection counts (see peer_count.h). Entries go when their count reaches zero,
 * so the table holds only addresses with a connection open. */
#include "luasmtpd/peer_count.h"

#include <stdlib.h>
#include <string.h>

#define BUCKETS 4096

struct entry {
    struct entry *next;
    unsigned count;
    char addr[];
};

struct peer_count {
    struct entry *buckets[BUCKETS];
};

/* FNV-1a: addresses are short and the table is not exposed to choice of keys beyond the
 * client's own address, so a simple hash does. */
static unsigned
hash(const char *s)
{
    unsigned h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h % BUCKETS;
}

struct peer_count *
peer_count_new(void)
{
    return calloc(1, sizeof(struct peer_count));
}

static struct entry **
find(const struct peer_count *pc, const char *addr)
{
    struct entry *const *e = &pc->buckets[hash(addr)];
    while (*e != NULL && strcmp((*e)->addr, addr) != 0)
        e = &(*e)->next;
    return (struct entry **)e;
}

unsigned
peer_count_add(struct peer_count *pc, const char *addr)
{
    struct entry **e = find(pc, addr);
    if (*e == NULL) {
        size_t n = strlen(addr) + 1;
        struct entry *fresh = malloc(sizeof(*fresh) + n);
        if (fresh == NULL)
            return 0;
        fresh->next = NULL;
        fresh->count = 0;
        memcpy(fresh->addr, addr, n);
        *e = fresh;
    }
    return ++(*e)->count;
}

void
peer_count_remove(struct peer_count *pc, const char *addr)
{
    struct entry **e = find(pc, addr);
    if (*e == NULL)
        return;
    if (--(*e)->count == 0) {
        struct entry *gone = *e;
        *e = gone->next;
        free(gone);
    }
}

unsigned
peer_count_get(const struct peer_count *pc, const char *addr)
{
    struct entry **e = find(pc, addr);
    return *e ? (*e)->count : 0;
}

void
peer_count_free(struct peer_count *pc)
{
    if (pc == NULL)
        return;
    for (size_t i = 0; i < BUCKETS; i++) {
        struct entry *e = pc->buckets[i];
        while (e != NULL) {
            struct entry *next = e->next;
            free(e);
            e = next;
        }
    }
    free(pc);
}
