/* CIDR lists and address matching for --trusted-networks and smtpd.networks (networks.h).
 * Addresses are read by inet_pton alone, so nothing here can block or ask a resolver. */
#include "luasmtpd/networks.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ENTRY_MAX 64 /* longer than any address with its prefix and zone */

static const unsigned char v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* A numeric address into n (bits not set). A ::ffff:a.b.c.d address becomes a.b.c.d, so a
 * client on a dual-stack socket matches the IPv4 networks. */
static bool
parse_address(const char *text, struct network *n)
{
    char copy[ENTRY_MAX];
    snprintf(copy, sizeof(copy), "%s", text);
    char *zone = strchr(copy, '%');
    if (zone != NULL && strchr(copy, ':') != NULL) /* only IPv6 has zones (RFC 4007) */
        *zone = '\0';
    memset(n, 0, sizeof(*n));
    if (inet_pton(AF_INET, copy, n->addr) == 1) {
        n->family = 4;
        return true;
    }
    if (inet_pton(AF_INET6, copy, n->addr) != 1)
        return false;
    n->family = 6;
    if (memcmp(n->addr, v4_mapped, sizeof(v4_mapped)) == 0) {
        memmove(n->addr, n->addr + 12, 4);
        memset(n->addr + 4, 0, 12);
        n->family = 4;
    }
    return true;
}

static bool
same_prefix(const unsigned char *a, const unsigned char *b, unsigned bits)
{
    unsigned whole = bits / 8, rest = bits % 8;
    if (memcmp(a, b, whole) != 0)
        return false;
    if (rest == 0)
        return true;
    unsigned char mask = (unsigned char)(0xff << (8 - rest));
    return (a[whole] & mask) == (b[whole] & mask);
}

static bool
host_bits_clear(const struct network *n)
{
    unsigned size = n->family == 4 ? 4 : 16;
    for (unsigned bit = n->bits; bit < size * 8; bit++)
        if (n->addr[bit / 8] & (0x80 >> (bit % 8)))
            return false;
    return true;
}

/* One entry of the list. false: err says why. */
static bool
parse_entry(const char *entry, struct network *n, char *err, size_t err_size)
{
    char addr[ENTRY_MAX];
    const char *slash = strchr(entry, '/');
    size_t addr_len = slash != NULL ? (size_t)(slash - entry) : strlen(entry);
    if (addr_len >= sizeof(addr) || addr_len == 0) {
        snprintf(err, err_size, "bad network '%.*s': not an address", ENTRY_MAX, entry);
        return false;
    }
    memcpy(addr, entry, addr_len);
    addr[addr_len] = '\0';
    /* A zone names an interface, not a network. */
    bool written_v6 = strchr(addr, ':') != NULL;
    if (strchr(addr, '%') != NULL || !parse_address(addr, n)) {
        snprintf(err, err_size, "bad network '%s': not an IPv4 or IPv6 address", entry);
        return false;
    }
    unsigned max = n->family == 4 ? 32 : 128;
    unsigned bits = max;
    if (slash != NULL) {
        const char *p = slash + 1;
        bits = 0;
        if (*p == '\0' || strlen(p) > 3)
            bits = 1000;
        for (; *p && bits <= 128; p++)
            bits = *p >= '0' && *p <= '9' ? bits * 10 + (unsigned)(*p - '0') : 1000;
        /* ::ffff:a.b.c.d/n was read as IPv4: its prefix counts the 96 bits before it. */
        if (n->family == 4 && written_v6) {
            if (bits < 96 || bits > 128) {
                snprintf(err, err_size,
                         "bad network '%s': an IPv4-mapped network takes /96 to /128", entry);
                return false;
            }
            bits -= 96;
        }
        if (bits > max) {
            snprintf(err, err_size, "bad network '%s': the prefix length must be 0 to %u", entry,
                     max);
            return false;
        }
    }
    n->bits = (unsigned char)bits;
    if (!host_bits_clear(n)) {
        snprintf(err, err_size, "bad network '%s': bits set past the /%u prefix", entry,
                 slash != NULL ? (unsigned)atoi(slash + 1) : max);
        return false;
    }
    return true;
}

static bool
is_separator(char c)
{
    return c == ',' || c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static bool
networks_add(struct networks *out, const struct network *n)
{
    struct network *items = realloc(out->items, (out->n + 1) * sizeof(*items));
    if (items == NULL)
        return false;
    out->items = items;
    out->items[out->n++] = *n;
    return true;
}

int
networks_parse(struct networks *out, const char *list, char *err, size_t err_size)
{
    out->items = NULL;
    out->n = 0;
    const char *p = list;
    while (*p) {
        while (is_separator(*p))
            p++;
        if (*p == '\0')
            break;
        const char *start = p;
        while (*p && !is_separator(*p))
            p++;
        char entry[ENTRY_MAX + 1];
        size_t len = (size_t)(p - start);
        if (len > ENTRY_MAX) {
            snprintf(err, err_size, "bad network '%.*s...': too long", 20, start);
            goto bad;
        }
        memcpy(entry, start, len);
        entry[len] = '\0';
        bool ok;
        if (strcmp(entry, "*") == 0) {
            struct network all4 = {.family = 4, .bits = 0, .addr = {0}};
            struct network all6 = {.family = 6, .bits = 0, .addr = {0}};
            ok = networks_add(out, &all4) && networks_add(out, &all6);
        } else {
            struct network n;
            if (!parse_entry(entry, &n, err, err_size))
                goto bad;
            ok = networks_add(out, &n);
        }
        if (!ok) {
            snprintf(err, err_size, "out of memory");
            goto bad;
        }
    }
    return 0;
bad:
    networks_free(out);
    return -1;
}

bool
networks_contains(const struct networks *nets, const char *address)
{
    struct network a;
    if (nets == NULL || strlen(address) >= ENTRY_MAX || !parse_address(address, &a))
        return false;
    for (size_t i = 0; i < nets->n; i++) {
        const struct network *n = &nets->items[i];
        if (n->family == a.family && same_prefix(n->addr, a.addr, n->bits))
            return true;
    }
    return false;
}

void
networks_free(struct networks *nets)
{
    free(nets->items);
    nets->items = NULL;
    nets->n = 0;
}
