/* The smtpd.networks binding: parsing is networks.c's; this holds the parsed list in a full
 * userdata, freed by its __gc. A bad list is misuse (the script's own text), so it raises. */
#include "luasmtpd/lua_networks.h"

#include <lauxlib.h>

#include "luasmtpd/networks.h"

#define NETWORKS_META "smtpd.networks"

/* smtpd.networks(list) -> networks; raises on a bad list, naming the entry */
static int
l_smtpd_networks(lua_State *L)
{
    const char *list = luaL_checkstring(L, 1);
    struct networks *nets = lua_newuserdatauv(L, sizeof(*nets), 0);
    nets->items = NULL;
    nets->n = 0;
    luaL_setmetatable(L, NETWORKS_META); /* first: its __gc frees what a failure left */
    char why[160];
    if (networks_parse(nets, list, why, sizeof(why)) != 0)
        return luaL_argerror(L, 1, why);
    return 1;
}

/* networks:contains(address) -> boolean; what is not an IP address is in no network */
static int
l_networks_contains(lua_State *L)
{
    struct networks *nets = luaL_checkudata(L, 1, NETWORKS_META);
    const char *address = luaL_checkstring(L, 2);
    lua_pushboolean(L, networks_contains(nets, address));
    return 1;
}

static int
l_networks_gc(lua_State *L)
{
    networks_free(luaL_checkudata(L, 1, NETWORKS_META));
    return 0;
}

static int
l_networks_tostring(lua_State *L)
{
    struct networks *nets = luaL_checkudata(L, 1, NETWORKS_META);
    lua_pushfstring(L, "smtpd.networks (%d entries)", (int)nets->n);
    return 1;
}

static const luaL_Reg networks_methods[] = {
    {"contains", l_networks_contains},
    {NULL, NULL},
};

static const luaL_Reg networks_metamethods[] = {
    {"__gc", l_networks_gc},
    {"__tostring", l_networks_tostring},
    {NULL, NULL},
};

void
lnetworks_add(lua_State *L)
{
    if (luaL_newmetatable(L, NETWORKS_META)) {
        luaL_setfuncs(L, networks_metamethods, 0);
        luaL_newlib(L, networks_methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    lua_pushcfunction(L, l_smtpd_networks);
    lua_setfield(L, -2, "networks");
}
