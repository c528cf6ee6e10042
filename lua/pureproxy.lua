-- Relays every message to the upstream server given on the command line (remotehost:port), as
-- Python's PureProxy set out to, without its faults: nothing is lost and nothing is dropped
-- silently.
--   * The upstream is asked at RCPT time, so each recipient it refuses is refused to our client
--     with the upstream's own code and text.
--   * Upstream down, slow or failing: the client gets 451 and will retry later.
--   * The client's 250 after DATA comes only after the upstream said 2xx for the message.
--   * Only the clients in `relay_clients` may relay (loopback by default), so this is no open
--     relay: others get 554 5.7.1.
-- Settings (--set KEY=VALUE): relay_clients (comma-separated addresses or IPv4 CIDR prefixes,
-- "*" for anyone), relay_timeout (seconds per upstream step, default 60).
local smtpd = require "smtpd"
local message = require "smtpd.message"

local upstream = {
  host = smtpd.remote.host,
  port = smtpd.remote.port,
  timeout = tonumber(smtpd.settings.relay_timeout) or 60,
}

local function ipv4_number(address)
  local a, b, c, d = address:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if not a then return nil end
  return ((tonumber(a) * 256 + tonumber(b)) * 256 + tonumber(c)) * 256 + tonumber(d)
end

local function matches(address, rule)
  if rule == "*" or rule == address then return true end
  local net, bits = rule:match("^([%d.]+)/(%d+)$")
  local a, n = ipv4_number(address), net and ipv4_number(net)
  if not (a and n) then return false end
  local size = 2 ^ (32 - tonumber(bits))
  return a // size == n // size
end

local allowed_rules = {}
for rule in (smtpd.settings.relay_clients or "127.0.0.0/8,::1"):gmatch("[^,%s]+") do
  allowed_rules[#allowed_rules + 1] = rule
end

local function may_relay(address)
  for _, rule in ipairs(allowed_rules) do
    if matches(address, rule) then return true end
  end
  return false
end

-- MAIL parameters the upstream understands go along; the extension that each needs:
local needs = { SIZE = "SIZE", BODY = "8BITMIME", SMTPUTF8 = "SMTPUTF8" }

local function drop_upstream(session)
  if session.upstream then
    session.upstream:close()
    session.upstream = nil
  end
end

local function unavailable(why)
  smtpd.log("warn", "upstream " .. upstream.host .. ":" .. upstream.port .. ": " .. why)
  return "451 4.4.1 Upstream unavailable, try again later"
end

function on_mail(session, address, params)
  if not may_relay(session.peer[1]) then
    return "554 5.7.1 Relaying denied for " .. session.peer[1]
  end
  drop_upstream(session) -- a transaction the client abandoned (RSET) ends here
  local up, err = smtpd.connect(upstream)
  if not up then
    return unavailable(err)
  end
  local pass = {}
  for _, param in ipairs(params) do
    local keyword = param:match("^[^=]+")
    if up.extensions[needs[keyword]] then
      pass[#pass + 1] = param
    end
  end
  local code, text = up:mail(address, table.concat(pass, " "))
  if not code then
    return unavailable(text)
  end
  if code >= 400 then
    up:close()
    return smtpd.reply(code, text)
  end
  session.upstream = up
end

function on_rcpt(session, address, params)
  local up = session.upstream
  if not up then
    return unavailable("no connection for this transaction")
  end
  local code, text = up:rcpt(address)
  if not code then
    session.upstream = nil
    return unavailable(text)
  end
  if code >= 400 then
    return smtpd.reply(code, text)
  end
end

function process_message(peer, mailfrom, rcpttos, data, options)
  local session = options.session
  local up = session.upstream
  session.upstream = nil
  if not up then
    return unavailable("no connection for this transaction")
  end
  local code, text = up:data(message.add_header(data, "X-Peer: " .. peer[1]))
  up:close()
  if not code then
    return unavailable(text)
  end
  return smtpd.reply(code, text)
end
