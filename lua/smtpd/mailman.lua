-- The machinery behind lua/mailman.lua: which recipients are list mail, asked of Mailman the
-- way MTAs ask it, and their delivery; the rest goes through lua/smtpd/proxy.lua.
--
-- Mailman 2 (default): a recipient whose local part is LIST or LIST-SUFFIX, for a list that
-- has a directory under `mailman_lists`, is piped to `<mailman_wrapper> <command> LIST`
-- (command "post" for the bare list name, else the suffix), with From: (the envelope sender)
-- and Date: added when missing. join/leave get "Subject: subscribe"/"unsubscribe".
-- Mailman 3 (`mailman_lmtp=HOST:PORT`): list-looking recipients are put to Mailman's LMTP
-- server at RCPT time; the ones it takes are list mail, the ones it refuses go upstream.
--
-- One destination per transaction, so that its one answer is the client's answer and a 4xx or
-- 5xx after the message leaves no copy anywhere (there is no queue to hold a part that went).
-- The first accepted recipient fixes it: the upstream (any number of relayed recipients, one
-- answer for all), one Mailman 3 list address (LMTP answers per recipient), or one wrapper
-- command for one list. A recipient that needs another destination gets TOO_MANY, a 452 (RFC
-- 5321 4.5.3.1.10, 3.3): the client sends it in a later transaction, as Postfix's does, and
-- nothing of this transaction reaches it. While the destination is a Mailman 3 address, no
-- other address is put to Mailman (the LMTP server would deliver to it too); while it is the
-- upstream, Mailman 3 is still asked, on an LMTP transaction that never gets the message.
--
-- Recipients given twice count once: a list command (post, request, ...) runs once per message
-- (list names are case-insensitive), an LMTP recipient is asked once (address in any case), a
-- relayed one goes upstream once (domain in any case, local part exactly).
-- Mailman down (lists directory or wrapper missing, LMTP unreachable): the recipients that may
-- be lists get 451 at RCPT.
local smtpd = require "smtpd"
local proxy = require "smtpd.proxy"
local message = require "smtpd.message"
local delivery = require "smtpd.delivery"
local received = require "smtpd.received"

local M = {}

local settings = smtpd.settings
local wrapper = settings.mailman_wrapper or "/usr/lib/mailman/mail/mailman"
local lists_dir = settings.mailman_lists or "/var/lib/mailman/lists"
local timeout = tonumber(settings.mailman_timeout) or 120
local lmtp_host, lmtp_port = (settings.mailman_lmtp or ""):match("^%[?([^%]]-)%]?:(%d+)$")

-- The domains that have lists (`mailman_domains`, lower case), or nil: every domain may.
for domain in (settings.mailman_domains or ""):gmatch("[^,%s]+") do
  M.domains = M.domains or {}
  M.domains[domain:lower()] = true
end

local UNAVAILABLE = "451 4.4.1 Mailing list service unavailable, try again later"
M.NO_SUCH_LIST = "550 5.1.1 No such list"
-- For a recipient this transaction's destination cannot take. RFC 3463's X.5.3 ("too many
-- recipients") and RFC 5321's 452 are what a client reads as "send the rest again, later":
-- the code alone says it, the text tells a person why.
local TOO_MANY = "452 4.5.3 Too many recipients for one delivery; send this one in another "
                 .. "transaction"

-- The destinations a transaction can have (tx.dest): RELAY, or a table made below for one
-- Mailman 3 address ({lmtp = true, key, rcpt}) or one wrapper command ({key, list, command,
-- rcpt}). The same key, the same delivery: that is how a duplicate recipient counts once.
local RELAY = { key = "relay" }

-- The wrapper's commands (Mailman 2.1's aliases); Python's smtpd knew the first six.
local suffixes = {
  admin = true, owner = true, request = true, join = true, leave = true,
  bounces = true, confirm = true, subscribe = true, unsubscribe = true,
}

-- Whether lists may live at the address's domain.
function M.list_domain(address)
  return M.domains == nil or M.domains[(address:match("@([^@]*)$") or ""):lower()] == true
end

-- true when `path` is there, false when it is not (ENOENT, ENOTDIR), nil when it cannot be
-- told (no permission, I/O error): then Mailman counts as down, never as "no such list".
local function exists(path)
  local f, _, errno = io.open(path, "r")
  if f then
    f:close()
    return true
  end
  if errno == 2 or errno == 20 then return false end
  return nil
end

local function local_part(address)
  return (address:match("^(.*)@") or address):lower():gsub("%+.*$", "")
end

local function list_looking(address)
  return local_part(address):match("^%w[%w._-]*$") ~= nil
end

-- Yields (list, command) splits of an address, the longest list name first.
local function candidates(address)
  local loc = local_part(address)
  if not loc:match("^%w[%w._-]*$") then
    return function() end
  end
  local parts = {}
  for part in (loc .. "-"):gmatch("(.-)%-") do parts[#parts + 1] = part end
  local i = #parts + 1
  return function()
    while i > 1 do
      i = i - 1
      local rest = table.concat(parts, "-", i + 1)
      if rest == "" or suffixes[rest] then
        return table.concat(parts, "-", 1, i), rest
      end
    end
  end
end

-- Mailman 2: the wrapper command for the address (list mail), false (no such list), or nil
-- and a reply.
local function mailman2_rcpt(address)
  if not list_looking(address) then return false end
  if exists(lists_dir) ~= true then
    smtpd.log("warn", "mailman: cannot read the lists directory", lists_dir)
    return nil, UNAVAILABLE
  end
  for list, command in candidates(address) do
    local found = exists(lists_dir .. "/" .. list)
    if found == nil then return nil, UNAVAILABLE end
    if found then
      if exists(wrapper) == false then
        smtpd.log("warn", "mailman: no wrapper at", wrapper)
        return nil, UNAVAILABLE
      end
      return { key = "wrapper " .. command .. " " .. list, list = list, command = command,
               rcpt = address }
    end
  end
  return false
end

local function quit_lmtp(tx)
  if tx.lmtp then
    tx.lmtp:quit() -- Mailman 3 logs "Connection lost" for a client that does not wait for 221
    tx.lmtp = nil
  end
end

local function close_lmtp(tx)
  if tx and tx.lmtp then
    tx.lmtp:close()
    tx.lmtp = nil
  end
end

-- Mailman 3: the LMTP transaction for this message, opened at its first list-looking
-- recipient. Returns the connection, or nil and the reply for the recipient.
local function lmtp_transaction(tx)
  if tx.lmtp then return tx.lmtp end
  if tx.lmtp_refusal then return nil, tx.lmtp_refusal end
  local up, err = smtpd.connect{ host = lmtp_host, port = tonumber(lmtp_port), lmtp = true,
                                 timeout = timeout }
  local refusal = UNAVAILABLE
  if up and not proxy.ascii(tx.mailfrom) and not up.extensions.SMTPUTF8 then
    up:close()
    up, refusal = nil, proxy.NEEDS_SMTPUTF8
  elseif up then
    local pass, utf8, utf8_sent = proxy.mail_params(up.extensions, tx.params)
    local code, text, unsendable = proxy.ask(up, "mail", tx.mailfrom, pass)
    if code and code >= 200 and code < 300 then
      tx.lmtp, tx.lmtp_utf8, tx.lmtp_utf8_sent = up, utf8, utf8_sent
      return up
    end
    up:close()
    if unsendable then
      refusal = proxy.UNSENDABLE
    elseif code and code >= 500 and code < 600 then
      refusal = smtpd.reply(code, text)
    else
      smtpd.log("warn", "mailman lmtp: MAIL:", code or text)
    end
  else
    smtpd.log("warn", "mailman lmtp:", err)
  end
  tx.lmtp_refusal = refusal -- asked once per transaction, not once per recipient
  return nil, refusal
end

-- Mailman 3: the list server's own answer decides. The destination for the address (a list
-- took it), false (not a list), or nil and a reply when it cannot be told now.
local function mailman3_rcpt(tx, address)
  if not list_looking(address) then return false end
  local key = address:lower()
  if tx.lmtp_keys[key] ~= nil then return tx.lmtp_keys[key] end
  if tx.dest and tx.dest.lmtp then
    -- Asking would be delivering: a list that took this address would get the message too.
    return nil, TOO_MANY
  end
  local up, refusal = lmtp_transaction(tx)
  if not up then return nil, refusal end
  local code, text, unsendable = proxy.ask(up, "rcpt", address)
  if unsendable then return nil, proxy.UNSENDABLE end
  if not code then
    smtpd.log("warn", "mailman lmtp: RCPT:", text)
    close_lmtp(tx)
    tx.lmtp_refusal = UNAVAILABLE
    return nil, UNAVAILABLE
  end
  if code >= 200 and code < 300 then
    -- With the upstream as the destination this LMTP transaction is only a question: it
    -- never gets the message, and the address gets TOO_MANY.
    tx.lmtp_keys[key] = { lmtp = true, key = "lmtp " .. key, rcpt = address }
    return tx.lmtp_keys[key]
  end
  if code >= 500 and code < 600 then
    tx.lmtp_keys[key] = false
    return false
  end
  return nil, code >= 400 and code < 500 and smtpd.reply(code, text) or UNAVAILABLE
end

-- Whether the address is a list: its destination (Mailman took it), false (not a list), or
-- nil and the reply for it when that cannot be told now. Mailman 3 when `mailman_lmtp` is set.
function M.list(session, address)
  if lmtp_host then
    return mailman3_rcpt(session.tx, address)
  end
  return mailman2_rcpt(address)
end

-- A list recipient: nil when it is the transaction's destination (the first, or the same
-- again), else the reply for it.
function M.take(session, dest)
  local tx = session.tx
  if tx.dest == nil then
    tx.dest = dest
  elseif tx.dest.key ~= dest.key then
    return TOO_MANY
  end
  return nil
end

-- Not list mail: put to the upstream (with its RCPT parameters: DSN's), on a transaction
-- opened there at the first such recipient. nil when the upstream took it, else the reply.
function M.relay(session, address, params)
  local tx = session.tx
  if tx.dest and tx.dest ~= RELAY then return TOO_MANY end -- the upstream never hears of it
  if tx.relay_refusal then return tx.relay_refusal end
  if not tx.relaying then
    local refusal = proxy.open(session, tx.mailfrom, tx.params)
    if refusal then
      tx.relay_refusal = refusal
      return refusal
    end
    tx.relaying = true
  end
  local refusal = proxy.rcpt(session, address, params)
  if refusal == nil then tx.dest = RELAY end
  return refusal
end

-- A new transaction: whatever the last one left open (RSET, a refused message) is let go
-- here, and the upstream is cleared before this one's first relayed recipient.
function M.mail(session, address, params)
  if session.tx then quit_lmtp(session.tx) end
  proxy.forget(session)
  session.tx = {
    mailfrom = address, params = params,
    dest = nil,      -- RELAY or a list destination, fixed by the first accepted recipient
    lmtp_keys = {},  -- Mailman 3's answers: a list destination, or false (not a list)
    relaying = false,
  }
end

-- The client left mid-transaction: let Mailman and the upstream go, so neither delivers.
function M.close(session)
  close_lmtp(session.tx)
  proxy.close(session)
end

-- Whether the message goes upstream (else to Mailman): every accepted recipient fixed or
-- matched tx.dest, and the core takes DATA only after one.
function M.relayed(session)
  return assert(session.tx.dest, "mailman: a message with no destination") == RELAY
end

-- After the message went upstream. Mailman 3 was only asked: the lists it took wait for
-- their own transactions.
function M.relay_done(session)
  quit_lmtp(session.tx)
end

-- The message as the wrapper gets it: From: and Date: when missing (RFC 5322 3.6), and for
-- join/leave the Subject Mailman reads the request from.
local function for_list(data, mailfrom, command)
  if not message.header(data, "From") and mailfrom ~= "" then
    data = message.add_header(data, "From: " .. mailfrom)
  end
  if not message.header(data, "Date") then
    data = message.add_header(data, "Date: " .. received.date())
  end
  if command == "join" or command == "leave" then
    data = message.remove_header(data, "Subject")
    local subject = command == "join" and "subscribe" or "unsubscribe"
    data = message.add_header(data, "Subject: " .. subject)
  end
  return data
end

-- Mailman 3: the LMTP transaction holds this one recipient, so its one reply is the answer.
local function deliver_lmtp(tx, dest, data, options)
  data = received.add(data, options, { rcpts = { dest.rcpt } })
  local refusal = proxy.content_refusal(tx.lmtp.extensions, data, tx.lmtp_utf8,
                                        tx.lmtp_utf8_sent)
  if refusal then
    quit_lmtp(tx)
    return refusal
  end
  local results, err, code = tx.lmtp:data(data)
  -- Mailman refused the DATA command itself: no message went, and its answer stands. Told by
  -- the message ("kind: CODE text") agreeing with the code, not by a code being there at all.
  local said, text = tostring(err):match("^[^:]*: (%d%d%d) (.*)$")
  if not results and code and tonumber(said) == code then
    close_lmtp(tx)
    return smtpd.reply(code, text)
  end
  if not results then
    close_lmtp(tx)
    -- An answer lost after the final dot: the one way this 451 can leave a copy.
    smtpd.log("warn", "mailman lmtp: message to", dest.rcpt .. ":", tostring(err) .. ";",
              "if it was lost after the message was sent, Mailman may have kept a copy")
    return smtpd.reply(451, "4.4.1 Mailing list service failed, try again later: "
                            .. tostring(err))
  end
  quit_lmtp(tx)
  local r = results[1]
  if r and (r[1] >= 200 and r[1] < 300 or r[1] >= 400 and r[1] < 600) then
    return smtpd.reply(r[1], r[2])
  end
  smtpd.log("warn", "mailman lmtp: reply of the wrong class after the message to",
            dest.rcpt .. ":", tostring(r and r[1]))
  return "451 4.4.1 No answer from the mailing list service"
end

-- How a wrapper that gave no exit status ended, from smtpd.pipe's message: "timeout" or
-- "signal" when it was killed (after it may have read the message), else nil.
local function killed(status, output)
  if status ~= nil then return nil end
  output = tostring(output)
  if output:find("timed out after %S+ s$") then return "timeout" end
  if output:find("killed by signal %d+$") then return "signal" end
  return nil
end

-- Mailman 2: one run of the wrapper; its exit status is the answer.
local function deliver_wrapper(dest, data, mailfrom, options)
  if exists(wrapper) == false then
    smtpd.log("warn", "mailman: no wrapper at", wrapper)
    return UNAVAILABLE
  end
  local command = dest.command == "" and "post" or dest.command
  local status, output = smtpd.pipe(
    { wrapper, command, dest.list },
    received.add(for_list(data, mailfrom, dest.command), options, { rcpts = { dest.rcpt } }),
    { timeout = timeout })
  local reply = delivery.reply(status, output)
  if reply then
    smtpd.log("warn", "mailman", command, dest.list .. ":", reply)
  end
  local how = killed(status, output)
  if how then
    -- Killed after it read the message: like an answer lost after the final dot, the one way
    -- this 451 can leave a copy.
    smtpd.log("warn", "mailman", command, dest.list .. ": the wrapper ended by", how,
              "after it had the message; Mailman may have kept a copy")
  end
  return reply
end

-- Delivers list mail to its one destination; returns the reply for the client.
function M.deliver(session, data, mailfrom, options)
  local tx = session.tx
  if tx.dest.lmtp then
    return deliver_lmtp(tx, tx.dest, data, options)
  end
  return deliver_wrapper(tx.dest, data, mailfrom, options)
end

return M
