-- Test fixture: every hook, deciding on the names it is given, and noting in the session table
-- what it saw; process_message answers with what the session table holds:
--   250 "2.0.0 stored", then "key=value" lines: id, peer, helo, helo_at_mail, messages, rcpttos,
--   seen (the hooks' notes, oldest first, separated by " | ").
-- on_connect follows --set connect=refuse (reply --set connect_reply=, default 554 5.7.1) or
-- connect=raise. HELO/EHLO names and sender/recipient local parts pick the rest:
--   refused -> 5xx, later -> 4xx, custom -> a 2xx of our own, raise -> a Lua error.
local smtpd = require "smtpd"
local settings = smtpd.settings

local function note(session, what)
  session.seen = session.seen or {}
  session.seen[#session.seen + 1] = what
end

local function local_part(address)
  return address:match("^([^@]*)")
end

function on_connect(session)
  note(session, "connect " .. session.peer[1] .. ":" .. session.peer[2])
  if settings.connect == "refuse" then
    return settings.connect_reply or "554 5.7.1 no thanks"
  elseif settings.connect == "raise" then
    error("connect hook boom")
  end
end

function on_helo(session, name)
  -- A second greeting is noted with the name the session still carries while the hook runs.
  note(session, "helo " .. name .. (session.helo and (" (was " .. session.helo .. ")") or ""))
  if name == "refused.example" then
    return "550 5.7.1 not you, " .. name
  elseif name == "raise.example" then
    error("helo hook boom")
  end
end

function on_mail(session, address, params)
  note(session, "mail " .. address .. " [" .. table.concat(params, ",") .. "]")
  local user = local_part(address)
  if user == "refused" then
    return "550 5.7.1 sender refused"
  elseif user == "later" then
    return "451 4.7.1 sender later"
  elseif user == "custom" then
    return "250 2.1.0 custom sender ok"
  elseif user == "raise" then
    error("mail hook boom")
  end
  session.helo_at_mail = session.helo
end

function on_rcpt(session, address, params)
  note(session, "rcpt " .. address)
  local user = local_part(address)
  if user == "refused" then
    return "550 5.1.1 no such user"
  elseif user == "later" then
    return "452 4.2.2 mailbox full"
  elseif user == "custom" then
    return smtpd.reply(250, "2.1.5 custom recipient ok\n2.1.5 second line")
  elseif user == "raise" then
    error("rcpt hook boom")
  end
end

function process_message(peer, mailfrom, rcpttos, data, options)
  local session = options.session
  session.messages = (session.messages or 0) + 1
  return smtpd.reply(250, table.concat({
    "2.0.0 stored",
    "id=" .. tostring(session.id),
    "peer=" .. session.peer[1] .. ":" .. session.peer[2],
    "helo=" .. tostring(session.helo),
    "helo_at_mail=" .. tostring(session.helo_at_mail),
    "messages=" .. session.messages,
    "rcpttos=" .. table.concat(rcpttos, ","),
    "seen=" .. table.concat(session.seen or {}, " | "),
  }, "\n"))
end
