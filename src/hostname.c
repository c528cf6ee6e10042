/* The default hostname, found as Python's socket.getfqdn() finds it (see hostname.h):
 * gethostname(), its first address, and the names that address has back; the first of those
 * with a dot, else the first of them, else gethostname()'s own. Blocking, so only at start. */
#include "luasmtpd/hostname.h"

#include <netdb.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* The reverse names of addr, as gethostbyaddr() gives them: the official one first, then
 * the aliases. Returns the first with a dot, else the official one, in out; false when the
 * address has no name. */
static bool
name_of_address(const struct addrinfo *addr, char *out, size_t size)
{
    const void *bytes;
    socklen_t len;
    if (addr->ai_family == AF_INET) {
        bytes = &((const struct sockaddr_in *)addr->ai_addr)->sin_addr;
        len = sizeof(struct in_addr);
    } else if (addr->ai_family == AF_INET6) {
        bytes = &((const struct sockaddr_in6 *)addr->ai_addr)->sin6_addr;
        len = sizeof(struct in6_addr);
    } else {
        return false;
    }
    struct hostent he, *res = NULL;
    char buf[8192];
    int err;
    if (gethostbyaddr_r(bytes, len, addr->ai_family, &he, buf, sizeof(buf), &res, &err) != 0 ||
        res == NULL || res->h_name == NULL)
        return false;
    const char *pick = res->h_name;
    if (strchr(pick, '.') == NULL)
        for (char **alias = res->h_aliases; alias != NULL && *alias != NULL; alias++)
            if (strchr(*alias, '.') != NULL) {
                pick = *alias;
                break;
            }
    snprintf(out, size, "%s", pick);
    return true;
}

char *
hostname_fqdn(void)
{
    char name[256] = "localhost";
    if (gethostname(name, sizeof(name) - 1) != 0)
        snprintf(name, sizeof(name), "localhost");
    /* Python resolves the name to its first address of any family, then asks for its names. */
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
    if (getaddrinfo(name, NULL, &hints, &res) == 0) {
        char found[256];
        if (name_of_address(res, found, sizeof(found)))
            snprintf(name, sizeof(name), "%s", found);
        freeaddrinfo(res);
    }
    return strdup(name);
}
