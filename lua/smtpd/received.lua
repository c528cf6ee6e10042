-- The Received: trace field (RFC 5321 4.4) a relaying handler puts on top of each message it
-- passes on, as every MTA does: where the message came from, who took it, how, which of our log
-- lines tell of it, for whom and when. Only builds text; it never decides where mail goes.
--
--   local received = require "smtpd.received"
--   data = received.add(data, options, { rcpts = { "bob@example.net" } })
--
-- gives, from process_message's `options` (helo, session.peer, the transaction id, ...):
--
--   Received: from client.example ([192.0.2.7]) by mx.example with ESMTP id 42
--   	for <bob@example.net>; Tue, 02 Jan 2024 10:00:00 +0100
--
-- `fields` (all optional) overrides what options would give: rcpts (the "for" clause is
-- written only for exactly one distinct recipient, so one copy never tells of the others),
-- helo, address, by, protocol, id, time (os.time() value).
local smtpd = require "smtpd"

local M = {}

local days = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" }
local months = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
                 "Dec" }

-- An RFC 5322 3.3 date-time, local time with its offset ("Tue, 02 Jan 2024 10:00:00 +0100").
-- The names come from tables: strftime's %a and %b follow the locale.
function M.date(time)
  time = time or os.time()
  local zone = os.date("%z", time)
  local t
  if zone:match("^[+-]%d%d%d%d$") then
    t = os.date("*t", time)
  else
    zone, t = "+0000", os.date("!*t", time)
  end
  return string.format("%s, %02d %s %04d %02d:%02d:%02d %s", days[t.wday], t.day,
                       months[t.month], t.year, t.hour, t.min, t.sec, zone)
end

-- The "with" protocol (RFC 3848, RFC 6531 4.3): how the message reached us. SMTP after HELO,
-- ESMTP after EHLO, LMTP after LHLO; "UTF8" in front for an SMTPUTF8 transaction; then "S"
-- over TLS and "A" once authenticated (ESMTPSA, UTF8SMTPS, ...), read from options or the
-- session table (esmtp, lmtp, tls, auth). Where the core does not say which greeting came
-- (esmtp is nil), ESMTP: what nearly every client speaks.
function M.protocol(options)
  local session = options.session or {}
  local lmtp = options.lmtp or session.lmtp
  local esmtp = options.esmtp
  if esmtp == nil then esmtp = session.esmtp end
  if esmtp == nil then esmtp = true end
  if not esmtp and not lmtp then
    return "SMTP" -- STARTTLS, AUTH and SMTPUTF8 are EHLO extensions: no suffix can follow
  end
  local tls = options.tls or session.tls
  local auth = options.auth or session.auth
  local name = (options.smtputf8 and "UTF8" or (lmtp and "" or "E")) .. (lmtp and "LMTP" or "SMTP")
  return name .. (tls and "S" or "") .. (auth and "A" or "")
end

-- A name as a Received: clause may carry it: the characters of a domain or an address
-- literal, nothing that could end the clause or the field. HELO is whatever the client said.
local function domain_text(name)
  name = (name or ""):gsub("[^%w%.%-_%[%]:]", "_")
  if name == "" then return "unknown" end
  return name:sub(1, 255)
end

-- The client's address as an RFC 5321 4.1.3 address literal.
local function address_literal(address)
  address = (address or ""):gsub("[^%w%.:]", "_")
  if address:find(":", 1, true) then
    return "[IPv6:" .. address .. "]"
  end
  return "[" .. address .. "]"
end

-- An id as RFC 5321's Atom: what the log shows, without what would break the field.
local function id_text(id)
  return (tostring(id):gsub("[^%w%.%-_]", "_"))
end

local function one_recipient(rcpts)
  local seen, first, n = {}, nil, 0
  for _, rcpt in ipairs(rcpts or {}) do
    if not seen[rcpt] then
      seen[rcpt], n = true, n + 1
      first = first or rcpt
    end
  end
  return n == 1 and first or nil
end

-- Clauses joined with spaces, folded (CRLF TAB) before a clause that would take the line past
-- 78 characters (RFC 5322 2.1.1); a clause longer than that stays whole on its own line.
local function fold(clauses)
  local lines, line = {}, "Received: " .. clauses[1]
  for i = 2, #clauses do
    local clause = clauses[i]
    if #line + 1 + #clause > 78 then
      lines[#lines + 1] = line
      line = "\t" .. clause
    else
      line = line .. " " .. clause
    end
  end
  lines[#lines + 1] = line
  return table.concat(lines, "\r\n") .. "\r\n"
end

-- The Received: field for a message of this transaction, folded, ending in CRLF.
function M.line(options, fields)
  fields = fields or {}
  local session = options.session or {}
  local peer = session.peer or {}
  local id = fields.id or options.id
  if id == nil or id == "" then
    id = session.transaction_id or session.id or "unknown"
  end
  local clauses = {
    "from " .. domain_text(fields.helo or options.helo or session.helo),
    "(" .. address_literal(fields.address or peer[1]) .. ")",
    "by " .. domain_text(fields.by or smtpd.hostname),
    "with " .. (fields.protocol or M.protocol(options)),
    "id " .. id_text(id),
  }
  local rcpt = one_recipient(fields.rcpts)
  if rcpt then
    clauses[#clauses + 1] = "for <" .. (rcpt:gsub("%c", "_")) .. ">"
  end
  clauses[#clauses] = clauses[#clauses] .. ";"
  clauses[#clauses + 1] = M.date(fields.time)
  return fold(clauses)
end

-- The message with its Received: field on top, where RFC 5321 4.4 wants a new one.
function M.add(data, options, fields)
  return M.line(options, fields) .. data
end

return M
