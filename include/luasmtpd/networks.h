/* Lists of IPv4 and IPv6 networks in CIDR form ("127.0.0.0/8, ::1/128"), and whether an address
 * is in one: --trusted-networks and smtpd.networks. Pure: strings in, answers out; no
 * resolver (a name is refused, not looked up). */
#ifndef LUASMTPD_NETWORKS_H
#define LUASMTPD_NETWORKS_H

#include <stdbool.h>
#include <stddef.h>

struct network {
    unsigned char family; /* 4 or 6 */
    unsigned char bits;   /* the prefix length */
    unsigned char addr[16];
};

struct networks {
    struct network *items;
    size_t n;
};

/* The list: entries separated by commas and/or white space, each an address (a single host)
 * or address/bits; "*" is every address. An IPv4-mapped IPv6 network of /96 or longer
 * (::ffff:127.0.0.0/104) is its IPv4 network. Host bits past the prefix are refused
 * (127.0.0.1/8 is a typo for 127.0.0.0/8 or 127.0.0.1/32). An empty list holds nothing.
 * Returns 0, or -1 with `err` naming the bad entry and why (out is then empty). */
int networks_parse(struct networks *out, const char *list, char *err, size_t err_size);

/* Whether `address` (numeric IPv4 or IPv6, a %zone ignored; ::ffff:a.b.c.d is taken as
 * a.b.c.d) is in one of the networks. Anything else is in none. */
bool networks_contains(const struct networks *nets, const char *address);

void networks_free(struct networks *nets);

#endif
