/* This host's name as the greeting, EHLO, Received: and the relay's HELO give it when
 * --hostname is not: what Python's socket.getfqdn() answers. Asks the resolver (the hosts
 * file, DNS as its configuration says), once at start; never talks SMTP. */
#ifndef LUASMTPD_HOSTNAME_H
#define LUASMTPD_HOSTNAME_H

/* A new string (NULL: out of memory). */
char *hostname_fqdn(void);

#endif
