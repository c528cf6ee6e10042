/* smtpd.networks(list): a CIDR list (networks.h) as a Lua object whose :contains(address)
 * says whether an address is in it, so scripts match clients as --trusted-networks does. */
#ifndef LUASMTPD_LUA_NETWORKS_H
#define LUASMTPD_LUA_NETWORKS_H

#include <lua.h>

/* Adds networks to the module table on the top of the stack. */
void lnetworks_add(lua_State *L);

#endif
