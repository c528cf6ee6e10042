-- Relaying a transaction to an upstream server as it happens: the upstream is asked at MAIL
-- and at each RCPT, so its refusals reach our client in real time, and after DATA our client
-- gets the upstream's own answer. A client's transactions share one upstream connection, and
-- each starts clean there (RSET after one the client abandoned). Any trouble with the upstream
-- (down, slow, gone mid-way) answers 451, so the client keeps the message and retries.
--   * Any 2xx from the upstream after the message means delivered; its text only travels on,
--     made a valid reply by smtpd.reply, so it can never turn into a 451 and a second copy.
--   * A recipient the client gives twice (domain in any case) is put to the upstream once.
--   * Nothing goes out that the upstream did not offer: a UTF-8 address to an upstream without
--     SMTPUTF8 gets 553 5.6.7 at MAIL/RCPT, UTF-8 headers of an SMTPUTF8 message 554 5.6.7, an
--     8-bit message to an upstream without 8BITMIME 554 5.6.3, one over its SIZE 552 5.3.4,
--     all before the message is sent (RFC 3463; permanent conditions, so 5xx).
--   * DSN's parameters (RET, ENVID, NOTIFY, ORCPT; RFC 3461) go along as the client sent them
--     when the upstream offers DSN, and are dropped when it does not (see M.rcpt_params).
-- Settings (--set KEY=VALUE): relay_clients (who may relay: IPv4 and IPv6 addresses or CIDR
-- prefixes, comma-separated, "*" for anyone; default --trusted-networks), relay_timeout (seconds
-- per upstream step, 60), relay_data_timeout (seconds for the upstream's answer after the
-- message, 600: RFC 5321 4.5.3.2.6; an answer given up on may still mean a copy was kept, so it is long).
-- TLS and AUTH towards the upstream (a smarthost on 587, say): relay_tls (try: STARTTLS when
-- offered, the certificate not checked unless relay_user is set, RFC 7435; require: STARTTLS
-- or 451, the certificate checked; implicit: TLS from the first byte, checked, as on 465;
-- off; default try),
-- relay_cafile (the CA bundle to check against, default the system's; given, it is checked
-- under try too), relay_user and relay_password_file (AUTH PLAIN or LOGIN, only inside TLS;
-- the password is the file's first line, so it is not on the command line).
local smtpd = require "smtpd"

local M = {}

local settings = smtpd.settings

M.upstream = {
  host = smtpd.remote.host,
  port = smtpd.remote.port,
  timeout = tonumber(settings.relay_timeout) or 60,
  data_timeout = tonumber(settings.relay_data_timeout) or 600,
  cafile = settings.relay_cafile,
  verify = settings.relay_cafile and true or nil,
}

local relay_tls = settings.relay_tls or "try"
if relay_tls == "try" or relay_tls == "require" then
  M.upstream.starttls = relay_tls
elseif relay_tls == "implicit" then
  M.upstream.tls = true
elseif relay_tls ~= "off" then
  error("relay_tls must be try, require, implicit or off, not " .. relay_tls, 0)
end

if settings.relay_user then
  local path = settings.relay_password_file
  if not path then
    error("relay_user needs relay_password_file (the password is not taken on the command line)", 0)
  end
  local f, err = io.open(path, "r")
  if not f then error("relay_password_file: " .. err, 0) end
  local password = (f:read("l") or ""):gsub("\r$", "") -- a file written on Windows, too
  f:close()
  if password == "" then
    error("relay_password_file: " .. path .. " holds no password on its first line", 0)
  end
  M.upstream.auth = { user = settings.relay_user, password = password }
elseif settings.relay_password_file then
  error("relay_password_file needs relay_user", 0)
end

-- Who may relay: relay_clients when it is set (its syntax is --trusted-networks', so a bad
-- list stops the script loading), else the clients the server trusts (session.trusted).
local relay_clients
if settings.relay_clients then
  local ok, nets = pcall(smtpd.networks, settings.relay_clients)
  if not ok then error("relay_clients: " .. nets, 0) end
  relay_clients = nets
end

-- Whether a client may have mail relayed: an open relay is the one thing a proxy must not be.
function M.may_relay(session)
  if relay_clients then return relay_clients:contains(session.peer[1]) end
  return session.trusted == true
end

function M.unavailable(why)
  smtpd.log("warn", "upstream " .. M.upstream.host .. ":" .. M.upstream.port .. ": " .. why)
  return "451 4.4.1 Upstream unavailable, try again later"
end

-- An address as a key for duplicates: the domain is case-insensitive (RFC 5321 2.4); the local
-- part is kept exactly, since only the upstream knows whether "Bob" and "bob" are one mailbox
-- (folding it could leave one of two mailboxes without its copy).
function M.address_key(address)
  local loc, domain = address:match("^(.*)@([^@]*)$")
  if not loc then return address end
  return loc .. "@" .. domain:lower()
end

local function ascii(s)
  return not s:find("[\128-\255]")
end
M.ascii = ascii

M.NEEDS_SMTPUTF8 = "553 5.6.7 Error: non-ASCII address needs SMTPUTF8"

-- MAIL parameters go along only when the upstream offers the extension each needs. Returns
-- the parameter string, and whether the client asked for SMTPUTF8 and the upstream has it.
local needs = { SIZE = "SIZE", BODY = "8BITMIME", SMTPUTF8 = "SMTPUTF8", RET = "DSN",
                ENVID = "DSN" }

function M.mail_params(extensions, params)
  local pass, asked = {}, false
  for _, param in ipairs(params or {}) do
    local keyword = param:match("^[^=]+"):upper()
    if keyword == "SMTPUTF8" then asked = true end
    if extensions[needs[keyword]] then
      pass[#pass + 1] = param
    end
  end
  return table.concat(pass, " "), asked, asked and extensions.SMTPUTF8 ~= nil
end

-- RCPT's parameters for the upstream: DSN's NOTIFY and ORCPT, as the client sent them, when
-- it offers DSN. Without it they are dropped: we keep no queue and send no notices, so the
-- "relayed" notice RFC 3461 5.2.2 asks for after NOTIFY=SUCCESS is not sent (logged); a
-- failure still reaches the client as the upstream's refusal, for its own MTA to report.
function M.rcpt_params(extensions, address, params)
  local pass = {}
  for _, param in ipairs(params or {}) do
    local keyword = param:match("^[^=]+"):upper()
    if extensions.DSN and (keyword == "NOTIFY" or keyword == "ORCPT") then
      pass[#pass + 1] = param
    elseif keyword == "NOTIFY" and param:upper():find("SUCCESS", 1, true) then
      smtpd.log("info", "upstream offers no DSN: no success notice for <" .. address .. ">")
    end
  end
  return table.concat(pass, " ")
end

-- Why `data` cannot go to an upstream with these extensions, or nil: checked before anything
-- is sent, so refusing commits nothing. `utf8` says the client asked for SMTPUTF8, `utf8_sent`
-- that the upstream got it.
function M.content_refusal(extensions, data, utf8, utf8_sent)
  local size = tonumber(extensions.SIZE)
  if size and size > 0 and #data > size then
    return "552 5.3.4 Message too big for the next server"
  end
  if ascii(data) then
    return nil
  end
  -- RFC 6532 headers (UTF-8 outside quoted or encoded words) need SMTPUTF8 all the way.
  if utf8 and not utf8_sent then
    local head = data:match("^(.-\r\n)\r\n") or data
    if not ascii(head) then
      return "554 5.6.7 SMTPUTF8 required but not supported by the next server"
    end
  end
  if not (extensions["8BITMIME"] or utf8_sent) then
    return "554 5.6.3 Conversion required but not supported"
  end
  return nil
end

-- Runs up:mail or up:rcpt. They raise for an address they cannot put on the wire though our
-- parser took it (a quoted local part holding ">"): a condition no retry changes, so the
-- caller answers 553 instead of the 451 a Lua error would give, retried forever. The third
-- result is true then.
function M.ask(up, method, address, params)
  local ok, code, text = pcall(up[method], up, address, params)
  if not ok then
    smtpd.log("warn", "cannot relay <" .. address .. ">:", code)
    return nil, nil, true
  end
  return code, text
end

M.UNSENDABLE = "553 5.1.3 This address cannot be relayed"

-- Lets the connection go. A transaction in progress on it is marked lost, not forgotten: the
-- recipients it took were answered 250, so its message must get 451, never 250 for nothing.
function M.close(session)
  if session.upstream then
    session.upstream:close()
    session.upstream = nil
  end
  session.upstream_busy = false
  if session.relay then
    session.relay.lost = true
  end
end

-- The transaction in progress upstream is no longer the client's (it sent MAIL again, or RSET
-- and MAIL): the next M.open clears it first.
function M.forget(session)
  session.relay = nil
end

-- The session's upstream connection, ready for a new transaction: the last one's when it is
-- still good (a new TCP connection, greeting and EHLO per message is most of a relay's cost),
-- cleared with RSET when a transaction was left open there. Returns up, reused | nil, err.
local function ready(session)
  local up = session.upstream
  if up and session.upstream_busy then
    session.upstream_busy = false
    local code = up:rset()
    if not code or code >= 300 then
      M.close(session)
      up = nil
    end
  end
  if up then return up, true end
  local err
  up, err = smtpd.connect(M.upstream)
  if not up then return nil, err end
  session.upstream = up
  return up, false
end

-- What the upstream's answer to MAIL or RCPT (`what`) means for our client: nil when it took
-- the address, its own refusal, or 451 when it is gone or answered nonsense (then the
-- connection goes too: nothing more it says can be trusted).
local function answer(session, what, code, text)
  if not code then
    M.close(session)
    return M.unavailable(text)
  end
  if code >= 200 and code < 300 then
    return nil
  end
  if code >= 400 and code < 600 then
    return smtpd.reply(code, text)
  end
  M.close(session)
  return M.unavailable("unexpected reply to " .. what .. ": " .. code)
end

-- Starts the client's transaction upstream with MAIL. Returns nil when the upstream took it,
-- or the reply for our client.
function M.open(session, mailfrom, params)
  session.relay = nil
  local up, reused_or_err = ready(session)
  if not up then
    return M.unavailable(reused_or_err)
  end
  local reused = reused_or_err
  if not ascii(mailfrom) and not up.extensions.SMTPUTF8 then
    smtpd.log("info", "upstream offers no SMTPUTF8: refused sender", mailfrom)
    return M.NEEDS_SMTPUTF8
  end
  local pass, utf8, utf8_sent = M.mail_params(up.extensions, params)
  local code, text, unsendable = M.ask(up, "mail", mailfrom, pass)
  if unsendable then
    return M.UNSENDABLE
  end
  if reused and (not code or code == 421) then
    -- The upstream let an idle connection go; one fresh try.
    M.close(session)
    return M.open(session, mailfrom, params)
  end
  local refusal = answer(session, "MAIL", code, text)
  if refusal == nil then
    session.upstream_busy = true
    session.relay = { rcpts = {}, keys = {}, utf8 = utf8, utf8_sent = utf8_sent }
  end
  return refusal
end

-- The recipients the upstream accepted in this transaction, each once, in RCPT order.
function M.recipients(session)
  return session.relay and session.relay.rcpts or {}
end

-- The client's transaction in progress upstream, or nil and the 451 for `what` when there is
-- none: never opened, or lost with its connection after it took recipients.
local function current(session, what)
  local relay = session.relay
  if not (session.upstream and relay) or relay.lost then
    return nil, M.unavailable("no upstream transaction for " .. what)
  end
  return relay
end

-- Asks the upstream about one recipient (with its RCPT parameters, which go along as
-- M.rcpt_params says): nil when accepted, else the reply for our client.
function M.rcpt(session, address, params)
  local relay, refusal = current(session, "this recipient")
  if not relay then
    return refusal
  end
  local up = session.upstream
  local key = M.address_key(address)
  if relay.keys[key] then
    return nil -- the upstream has it already: one copy per address
  end
  if not ascii(address) and not relay.utf8_sent then
    return M.NEEDS_SMTPUTF8
  end
  local code, text, unsendable = M.ask(up, "rcpt", address,
                                       M.rcpt_params(up.extensions, address, params))
  if unsendable then
    return M.UNSENDABLE
  end
  refusal = answer(session, "RCPT", code, text)
  if refusal == nil then
    relay.keys[key] = true
    relay.rcpts[#relay.rcpts + 1] = address
  end
  return refusal
end

-- Why the message cannot go upstream as the transaction stands, or nil: the connection was
-- lost after recipients were taken, or the message needs what the upstream does not offer.
-- Nothing has been sent when this refuses.
function M.check(session, data)
  local relay, refusal = current(session, "this message")
  if not relay then
    return refusal
  end
  refusal = M.content_refusal(session.upstream.extensions, data, relay.utf8, relay.utf8_sent)
  if refusal then
    smtpd.log("info", "not sent upstream:", refusal)
  end
  return refusal
end

-- Sends the message; returns the reply for our client and its code (2xx: the upstream took
-- it). The connection stays open for the client's next transaction; on_disconnect closes it.
function M.data(session, data)
  local refusal = M.check(session, data)
  if refusal then
    return refusal, tonumber(refusal:sub(1, 3))
  end
  local up = session.upstream
  session.relay = nil
  local code, text = up:data(data)
  if not code then
    M.close(session)
    -- Said once the message may be there: a lost answer after the final dot is the one way
    -- a 451 can leave a copy upstream (RFC 1047).
    return M.unavailable("no answer to the message (" .. tostring(text)
                         .. "); if it was lost after the message was sent, the upstream may "
                         .. "have kept a copy"), 451
  end
  session.upstream_busy = false
  if code >= 200 and code < 600 and code // 100 ~= 3 then
    return smtpd.reply(code, text), code
  end
  M.close(session)
  return M.unavailable("unexpected reply to the message: " .. code), 451
end

return M
