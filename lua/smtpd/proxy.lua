-- Relaying a transaction to an upstream server as it happens: the upstream is asked at MAIL
-- and at each RCPT, so its refusals reach our client in real time, and after DATA our client
-- gets the upstream's own answer. A client's transactions share one upstream connection. Any trouble with the upstream (down, slow, gone mid-way)
-- answers 451, so the client keeps the message and retries: nothing is lost.
-- Settings (--set KEY=VALUE): relay_clients (who may relay: comma-separated addresses or IPv4
-- CIDR prefixes, "*" for anyone; default loopback), relay_timeout (seconds per upstream step).
local smtpd = require "smtpd"

local M = {}

M.upstream = {
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

local rules = {}
for rule in (smtpd.settings.relay_clients or "127.0.0.0/8,::1"):gmatch("[^,%s]+") do
  rules[#rules + 1] = rule
end

-- Whether a client may have mail relayed: an open relay is the one thing a proxy must not be.
function M.may_relay(address)
  for _, rule in ipairs(rules) do
    if matches(address, rule) then return true end
  end
  return false
end

function M.unavailable(why)
  smtpd.log("warn", "upstream " .. M.upstream.host .. ":" .. M.upstream.port .. ": " .. why)
  return "451 4.4.1 Upstream unavailable, try again later"
end

-- MAIL parameters go along only when the upstream offers the extension each needs.
local needs = { SIZE = "SIZE", BODY = "8BITMIME", SMTPUTF8 = "SMTPUTF8" }

function M.close(session)
  if session.upstream then
    session.upstream:close()
    session.upstream = nil
  end
end

-- Sends MAIL on the session's upstream connection, reusing the one of its last transaction
-- when it is still good (a new TCP connection, greeting and EHLO per message is most of a
-- relay's cost). Returns code, text, or nil and why.
local function mail(session, mailfrom, params)
  local up = session.upstream
  if up and session.upstream_open then
    -- The client abandoned its last transaction (RSET, or a refusal): clear it upstream too.
    local code = up:rset()
    if not code or code >= 400 then
      M.close(session)
      up = nil
    end
  end
  local reused = up ~= nil
  if not up then
    local err
    up, err = smtpd.connect(M.upstream)
    if not up then return nil, err end
    session.upstream = up
  end
  local pass = {}
  for _, param in ipairs(params or {}) do
    if up.extensions[needs[param:match("^[^=]+")]] then
      pass[#pass + 1] = param
    end
  end
  local code, text = up:mail(mailfrom, table.concat(pass, " "))
  if not code and reused then
    -- The upstream let an idle connection go; one fresh try.
    M.close(session)
    return mail(session, mailfrom, params)
  end
  return code, text
end

-- Sends MAIL upstream. Returns nil when the upstream took it, or the reply for our client.
function M.open(session, mailfrom, params)
  local code, text = mail(session, mailfrom, params)
  if not code then
    M.close(session)
    return M.unavailable(text)
  end
  session.upstream_open = code < 400
  if code >= 400 then
    return smtpd.reply(code, text)
  end
end

-- Asks the upstream about one recipient: nil when accepted, else the reply for our client.
function M.rcpt(session, address)
  local up = session.upstream
  if not up then
    return M.unavailable("no connection for this transaction")
  end
  local code, text = up:rcpt(address)
  if not code then
    M.close(session)
    return M.unavailable(text)
  end
  if code >= 400 then
    return smtpd.reply(code, text)
  end
end

-- Sends the message; returns the upstream's answer as our reply. The connection stays open
-- for the client's next transaction; on_disconnect closes it.
function M.data(session, data)
  local up = session.upstream
  if not up then
    return M.unavailable("no connection for this transaction")
  end
  local code, text = up:data(data)
  if not code then
    M.close(session)
    return M.unavailable(text)
  end
  session.upstream_open = false
  return smtpd.reply(code, text)
end

return M
