-- Routes mail by recipient domain: each domain has its own upstream server.
--
--   luasmtpd -n -c examples/route_by_domain.lua \
--     --set routes=example.org=10.0.0.5:25,example.net=[2001:db8::7]:2525 0.0.0.0:25
--
-- A recipient in a domain with no route is refused at RCPT with 550 5.1.2, so the client hears
-- at once and no message is taken that cannot go anywhere. After DATA each upstream gets one
-- transaction with its own recipients. If an upstream is down or defers, the client gets 451 and
-- sends the whole message again later; upstreams that took it meanwhile see it twice, which is
-- better than losing it. A recipient an upstream refuses for good gets the client a 5xx.
local smtpd = require "smtpd"

-- "domain=host:port,..." -> { ["domain"] = { host = , port = } }; an IPv6 host in brackets.
local routes = {}
for entry in (smtpd.settings.routes or ""):gmatch("[^,%s]+") do
  local domain, spec = entry:match("^([^=]+)=(.+)$")
  local host, port = (spec or ""):match("^%[(.+)%]:(%d+)$")
  if not host then
    host, port = (spec or ""):match("^([^:]+):(%d+)$")
  end
  assert(host, "bad route '" .. entry .. "': want domain=host:port")
  routes[domain:lower()] = { host = host, port = tonumber(port) }
end
assert(next(routes), "give the routes: --set routes=example.org=HOST:PORT,...")

local timeout = tonumber(smtpd.settings.relay_timeout) or 60

local function domain_of(address)
  return (address:match("@([^@]+)$") or ""):lower()
end

-- At RCPT: only recipients we have a route for.
function on_rcpt(session, address, params)
  if not routes[domain_of(address)] then
    return "550 5.1.2 <" .. address .. ">: no route to this domain here"
  end
end

function process_message(peer, mailfrom, rcpttos, data, options)
  -- One list of recipients per upstream, in the order they came.
  local batches, order = {}, {}
  for _, rcpt in ipairs(rcpttos) do
    local domain = domain_of(rcpt)
    if not batches[domain] then
      batches[domain] = {}
      order[#order + 1] = domain
    end
    table.insert(batches[domain], rcpt)
  end

  local temporary, permanent
  for _, domain in ipairs(order) do
    local route = routes[domain]
    local refused, err = smtpd.relay{ host = route.host, port = route.port, from = mailfrom,
                                      to = batches[domain], data = data, timeout = timeout }
    if not refused then
      -- down, slow, or it refused the whole transaction: try again later
      smtpd.log("warn", "route", domain, "via", route.host .. ":" .. route.port .. ":", err)
      temporary = temporary or "451 4.4.1 Upstream for " .. domain .. " unavailable, try again later"
    else
      for rcpt, reply in pairs(refused) do
        smtpd.log("warn", "route", domain, "refused", rcpt .. ":", reply[1], reply[2])
        if reply[1] < 500 then
          temporary = temporary or "451 4.4.1 Upstream for " .. domain .. " deferred <" .. rcpt .. ">"
        else
          permanent = permanent or "554 5.0.0 Upstream for " .. domain .. " refused <" .. rcpt .. ">"
        end
      end
    end
  end
  return temporary or permanent
end
