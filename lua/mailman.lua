-- Hands list mail to Mailman the way MTAs do, and relays everything else upstream as
-- pureproxy does. What Python's MailmanProxy did, made right: hyphenated list names work, the
-- server never blocks on a delivery, and no outcome is hidden from the client.
--
-- Mailman 2 (default): a recipient whose local part is LIST or LIST-SUFFIX, for a list that
-- has a directory under `mailman_lists`, is piped to `<mailman_wrapper> <command> LIST`
-- (command "post" for the bare list name, else the suffix), with From: (the envelope sender)
-- and Date: added when missing. join/leave get "Subject: subscribe"/"unsubscribe".
-- Mailman 3 (`mailman_lmtp=HOST:PORT`): list-looking recipients are put to Mailman's LMTP
-- server at RCPT time; the ones it takes are list mail, the ones it refuses go upstream.
-- `mailman_domains=lists.example,...`: only those domains have lists; any other recipient
-- there gets 550 5.1.1 (relaying it could loop back), and other domains are relayed without
-- asking Mailman. Without it every domain may have lists.
--
-- Recipients given twice count once: a list command (post, request, ...) runs once per message
-- (list names are case-insensitive), an LMTP recipient is asked once (address in any case), a
-- relayed one goes upstream once (domain in any case, local part exactly).
-- Mailman down (lists directory or wrapper missing, LMTP unreachable): the recipients that may
-- be lists get 451 at RCPT, those at other domains (with mailman_domains) still go upstream.
--
-- After DATA, every check that can refuse is made before anything is delivered (lost
-- connections, what the upstream does not offer); then the upstream relay, then Mailman 3's
-- LMTP, then the wrapper (other commands first, posts last), stopping at the first failure, so
-- the part most likely to refuse goes first and a refusal there leaves no copy anywhere. 250
-- only when every part worked; with one upstream alone its reply (queue id) is passed on. If a
-- part fails after another worked, the client gets that failure (451, or 5xx) with the list of
-- recipients already served: a retry duplicates for them, which beats losing the rest.
-- Settings: mailman_wrapper (/usr/lib/mailman/mail/mailman), mailman_lists
-- (/var/lib/mailman/lists), mailman_lmtp, mailman_domains, mailman_timeout (seconds, 120), and
-- those of lua/smtpd/proxy.lua for the rest.
local smtpd = require "smtpd"
local proxy = require "smtpd.proxy"
local message = require "smtpd.message"
local delivery = require "smtpd.delivery"
local received = require "smtpd.received"

local settings = smtpd.settings
local wrapper = settings.mailman_wrapper or "/usr/lib/mailman/mail/mailman"
local lists_dir = settings.mailman_lists or "/var/lib/mailman/lists"
local timeout = tonumber(settings.mailman_timeout) or 120
local lmtp_host, lmtp_port = (settings.mailman_lmtp or ""):match("^%[?([^%]]-)%]?:(%d+)$")

local domains
for domain in (settings.mailman_domains or ""):gmatch("[^,%s]+") do
  domains = domains or {}
  domains[domain:lower()] = true
end

local UNAVAILABLE = "451 4.4.1 Mailing list service unavailable, try again later"
local NO_SUCH_LIST = "550 5.1.1 No such list"

-- The wrapper's commands (Mailman 2.1's aliases); Python's smtpd knew the first six.
local suffixes = {
  admin = true, owner = true, request = true, join = true, leave = true,
  bounces = true, confirm = true, subscribe = true, unsubscribe = true,
}

-- Whether lists may live at the address's domain.
local function list_domain(address)
  return domains == nil or domains[(address:match("@([^@]*)$") or ""):lower()] == true
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

-- Mailman 2: true (list mail, noted for DATA), false (no such list), or nil and a reply.
local function mailman2_rcpt(tx, address)
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
      local key = command .. " " .. list
      if not tx.list_keys[key] then
        tx.list_keys[key] = true
        tx.lists[#tx.lists + 1] = { list = list, command = command, rcpt = address }
      end
      return true
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

-- Mailman 3: the list server's own answer decides. true (a list took it), false (not a list),
-- or nil and a reply when Mailman cannot take it now.
local function mailman3_rcpt(tx, address)
  if not list_looking(address) then return false end
  local key = address:lower()
  if tx.lmtp_keys[key] ~= nil then return tx.lmtp_keys[key] end
  local up, refusal = lmtp_transaction(tx)
  if not up then return nil, refusal end
  local code, text, unsendable = proxy.ask(up, "rcpt", address)
  if unsendable then return nil, proxy.UNSENDABLE end
  if not code then
    -- The recipients it took so far went with the connection: DATA will see it (lmtp_lost).
    smtpd.log("warn", "mailman lmtp: RCPT:", text)
    close_lmtp(tx)
    tx.lmtp_lost, tx.lmtp_refusal = #tx.lmtp_rcpts > 0, UNAVAILABLE
    return nil, UNAVAILABLE
  end
  if code >= 200 and code < 300 then
    tx.lmtp_keys[key] = true
    tx.lmtp_rcpts[#tx.lmtp_rcpts + 1] = address
    return true
  end
  if code >= 500 and code < 600 then
    tx.lmtp_keys[key] = false
    return false
  end
  return nil, code >= 400 and code < 500 and smtpd.reply(code, text) or UNAVAILABLE
end

-- Not list mail: relayed, for the clients allowed to, on an upstream transaction opened at the
-- first such recipient.
local function relay_rcpt(session, tx, address)
  if not proxy.may_relay(session.peer[1]) then
    return "554 5.7.1 Relaying denied for " .. session.peer[1]
  end
  if tx.relay_refusal then return tx.relay_refusal end
  if not tx.relaying then
    local refusal = proxy.open(session, tx.mailfrom, tx.params)
    if refusal then
      tx.relay_refusal = refusal
      return refusal
    end
    tx.relaying = true
  end
  return proxy.rcpt(session, address)
end

function on_mail(session, address, params)
  -- A new transaction: whatever the last one left open (RSET, a refused message) is let go
  -- here, and the upstream is cleared before this one's first relayed recipient.
  if session.tx then quit_lmtp(session.tx) end
  proxy.forget(session)
  session.tx = {
    mailfrom = address, params = params,
    lists = {}, list_keys = {},         -- Mailman 2 deliveries, one per list command
    lmtp_rcpts = {}, lmtp_keys = {},    -- Mailman 3: taken (true) or not a list (false)
    relaying = false,
  }
end

-- The client left mid-transaction: let Mailman and the upstream go, so neither delivers.
function on_disconnect(session)
  close_lmtp(session.tx)
  proxy.close(session)
end

function on_rcpt(session, address, params)
  local tx = session.tx
  if list_domain(address) then
    local is_list, reply
    if lmtp_host then
      is_list, reply = mailman3_rcpt(tx, address)
    else
      is_list, reply = mailman2_rcpt(tx, address)
    end
    if is_list == nil then return reply end
    if is_list then return nil end
    if domains then return NO_SUCH_LIST end
  end
  return relay_rcpt(session, tx, address)
end

-- The message as the wrapper gets it: From: and Date: when missing (RFC 5322 3.6), and for
-- join/leave the Subject Mailman reads the request from, for this delivery alone.
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

-- A reply's text without its codes, one line per line.
local function reply_text(reply)
  return (reply:gsub("%d%d%d[ -]?([^\n]*)", "%1"))
end

-- Wrapper deliveries in the order they run: posts last, since a duplicate post reaches every
-- subscriber; RCPT order otherwise.
local function run_order(lists)
  local order = {}
  for _, entry in ipairs(lists) do
    if entry.command ~= "" then order[#order + 1] = entry end
  end
  for _, entry in ipairs(lists) do
    if entry.command == "" then order[#order + 1] = entry end
  end
  return order
end

function process_message(peer, mailfrom, rcpttos, data, options)
  local session = options.session
  local tx = session.tx
  local relayed = tx.relaying and proxy.recipients(session) or {}
  local lmtp_rcpts = tx.lmtp_rcpts
  local lists = run_order(tx.lists)
  local up_data = #relayed > 0 and received.add(data, options, { rcpts = relayed })
  local lmtp_data = #lmtp_rcpts > 0 and received.add(data, options, { rcpts = lmtp_rcpts })

  -- 1. Whatever can refuse the message before any part of it is delivered.
  local refusal
  if up_data then
    refusal = proxy.check(session, up_data)
  end
  if not refusal and #lmtp_rcpts > 0 then
    if not tx.lmtp then
      refusal = UNAVAILABLE -- lost after it took recipients (lmtp_lost)
    else
      refusal = proxy.content_refusal(tx.lmtp.extensions, lmtp_data, tx.lmtp_utf8,
                                      tx.lmtp_utf8_sent)
    end
  end
  if not refusal and #lists > 0 and exists(wrapper) == false then
    smtpd.log("warn", "mailman: no wrapper at", wrapper)
    refusal = UNAVAILABLE
  end
  if refusal then
    quit_lmtp(tx)
    return refusal
  end

  -- 2. The deliveries, stopping at the first that fails.
  local delivered = {}
  local function failed(reply)
    quit_lmtp(tx)
    if #delivered == 0 then return reply end
    smtpd.log("warn", "mailman: delivered to", table.concat(delivered, ", "),
              "but then:", reply)
    return smtpd.reply(tonumber(reply:sub(1, 3)), reply_text(reply)
                       .. "\nAlready delivered to " .. table.concat(delivered, ", ")
                       .. " (a retry sends them another copy)")
  end
  local only -- the one upstream's reply, passed on when it was the only delivery

  if up_data then
    local reply, code = proxy.data(session, up_data)
    if code >= 300 then return failed(reply) end
    smtpd.log("info", "mailman: upstream took it:", reply)
    for _, rcpt in ipairs(relayed) do delivered[#delivered + 1] = rcpt end
    only = reply
  end

  if lmtp_data then
    local results, err = tx.lmtp:data(lmtp_data)
    if not results then
      close_lmtp(tx)
      return failed(smtpd.reply(451, "4.4.1 Mailing list service failed, try again later: "
                                     .. tostring(err)))
    end
    local bad, first
    for i, rcpt in ipairs(lmtp_rcpts) do
      local r = results[i]
      if not (r and r[1] >= 200 and r[1] < 300 or r and r[1] >= 400 and r[1] < 600) then
        r = { 451, "4.4.1 No answer from the mailing list service" }
      end
      if r[1] < 300 then
        delivered[#delivered + 1] = rcpt
        first = first or r
      elseif not bad or (r[1] < 500 and bad[1] >= 500) then
        bad = r -- a temporary failure wins: a retry may still work
      end
    end
    if bad then return failed(smtpd.reply(bad[1], bad[2])) end
    quit_lmtp(tx)
    only = not up_data and smtpd.reply(first[1], first[2]) or nil
  end

  for _, entry in ipairs(lists) do
    local command = entry.command == "" and "post" or entry.command
    local status, output, kind = smtpd.pipe(
      { wrapper, command, entry.list },
      received.add(for_list(data, mailfrom, entry.command), options, { rcpts = { entry.rcpt } }),
      { timeout = timeout })
    local reply = delivery.reply(status, output, kind)
    if reply then
      smtpd.log("warn", "mailman", command, entry.list .. ":", reply)
      return failed(reply)
    end
    delivered[#delivered + 1] = entry.rcpt
    only = nil
  end
  return only
end
