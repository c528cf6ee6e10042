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
--
-- After DATA: 250 only when every delivery succeeded. If any delivery failed temporarily the
-- client gets 451 and sends again (deliveries that worked see a duplicate: better than a loss);
-- otherwise a permanent failure gets 554 (the sender hears of it).
-- Settings: mailman_wrapper (/usr/lib/mailman/mail/mailman), mailman_lists
-- (/var/lib/mailman/lists), mailman_lmtp, mailman_timeout (seconds, 120), and those of
-- lua/smtpd/proxy.lua for the rest.
local smtpd = require "smtpd"
local proxy = require "smtpd.proxy"
local message = require "smtpd.message"
local delivery = require "smtpd.delivery"

local settings = smtpd.settings
local wrapper = settings.mailman_wrapper or "/usr/lib/mailman/mail/mailman"
local lists_dir = settings.mailman_lists or "/var/lib/mailman/lists"
local timeout = tonumber(settings.mailman_timeout) or 120
local lmtp_host, lmtp_port = (settings.mailman_lmtp or ""):match("^%[?([^%]]-)%]?:(%d+)$")

-- The wrapper's commands (Mailman 2.1's aliases); Python's smtpd knew the first six.
local suffixes = {
  admin = true, owner = true, request = true, join = true, leave = true,
  bounces = true, confirm = true, subscribe = true, unsubscribe = true,
}

local function list_exists(name)
  local dir = io.open(lists_dir .. "/" .. name, "r")
  if dir then dir:close() end
  return dir ~= nil
end

-- Yields (list, command) splits of an address, the longest list name first.
local function candidates(address)
  local loc = (address:match("^(.*)@") or address):lower():gsub("%+.*$", "")
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

-- Mailman 3: the list server's own answer decides. Returns true (a list took it), false (not
-- a list), or nil and a reply when Mailman cannot be asked now.
local function lmtp_takes(session, address)
  if not session.lmtp then
    local up, err = smtpd.connect{ host = lmtp_host, port = tonumber(lmtp_port), lmtp = true,
                                   timeout = timeout }
    if not up then
      smtpd.log("warn", "mailman lmtp:", err)
      return nil, "451 4.4.1 Mailing list service unavailable, try again later"
    end
    local code, text = up:mail(session.mailfrom)
    if not code or code >= 400 then
      up:close()
      return nil, code and smtpd.reply(code, text) or "451 4.4.1 Mailing list service unavailable"
    end
    session.lmtp = up
  end
  local code, text = session.lmtp:rcpt(address)
  if not code or (code >= 400 and code < 500) then
    return nil, code and smtpd.reply(code, text) or "451 4.4.1 Mailing list service unavailable"
  end
  if code < 400 then
    session.lmtp_accepted = session.lmtp_accepted + 1
  end
  return code < 400
end

local function close_lmtp(session)
  if session.lmtp then
    session.lmtp:close()
    session.lmtp = nil
  end
end

function on_mail(session, address, params)
  session.mailfrom, session.params, session.lists = address, params, {}
  session.lmtp_accepted = 0
  close_lmtp(session)
end

-- The client left mid-transaction: let Mailman and the upstream go, so neither delivers.
function on_disconnect(session)
  close_lmtp(session)
  proxy.close(session)
end

function on_rcpt(session, address, params)
  for list, command in candidates(address) do
    if lmtp_host then
      local taken, refusal = lmtp_takes(session, address)
      if taken == nil then return refusal end
      if taken then return nil end
      break
    elseif list_exists(list) then
      session.lists[#session.lists + 1] = { list = list, command = command }
      return nil
    end
  end
  -- Not list mail: relayed, for the clients allowed to.
  if not proxy.may_relay(session.peer[1]) then
    return "554 5.7.1 Relaying denied for " .. session.peer[1]
  end
  if not session.upstream_open then
    local refusal = proxy.open(session, session.mailfrom, session.params)
    if refusal then return refusal end
  end
  return proxy.rcpt(session, address)
end

-- The message as the wrapper gets it: From: and Date: when missing (RFC 5322 3.6), and for
-- join/leave the Subject Mailman reads the request from, for this delivery alone.
local function for_list(data, mailfrom, command)
  if not message.header(data, "From") and mailfrom ~= "" then
    data = message.add_header(data, "From: " .. mailfrom)
  end
  if not message.header(data, "Date") then
    data = message.add_header(data, "Date: " .. os.date("!%a, %d %b %Y %H:%M:%S +0000"))
  end
  if command == "join" or command == "leave" then
    data = message.remove_header(data, "Subject")
    data = message.add_header(data, "Subject: " .. (command == "join" and "subscribe" or "unsubscribe"))
  end
  return data
end

function process_message(peer, mailfrom, rcpttos, data, options)
  local session = options.session
  local temporary, permanent
  local function note(reply, is_temporary)
    if not reply then return end
    if is_temporary then temporary = temporary or reply else permanent = permanent or reply end
  end

  if session.lmtp and session.lmtp_accepted == 0 then
    close_lmtp(session) -- asked about recipients that turned out not to be list mail
  elseif session.lmtp then
    local results, err = session.lmtp:data(data)
    close_lmtp(session)
    if not results then
      note("451 4.4.1 Mailing list service failed, try again later: " .. err, true)
    end
    for _, r in ipairs(results or {}) do
      if r[1] >= 400 then note(smtpd.reply(r[1], r[2]), r[1] < 500) end
    end
  end
  for _, entry in ipairs(session.lists or {}) do
    local command = entry.command == "" and "post" or entry.command
    local status, output, kind = smtpd.pipe({ wrapper, command, entry.list },
                                            for_list(data, mailfrom, entry.command),
                                            { timeout = timeout })
    local reply, is_temporary = delivery.reply(status, output, kind)
    if reply then
      smtpd.log("warn", "mailman", command, entry.list .. ":", reply)
    end
    note(reply, is_temporary)
  end
  if session.upstream_open then
    local reply = proxy.data(session, data)
    local code = tonumber(reply:sub(1, 3))
    if code >= 400 then note(reply, code < 500) end
  end
  return temporary or permanent
end
