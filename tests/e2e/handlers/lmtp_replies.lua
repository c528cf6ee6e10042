-- Test fixture for test_lmtp.py: the sender's local part says what process_message returns.
--   table@    a reply per recipient, from each recipient's local part: no* 550, full* 452,
--             yes* an own 250, anything else left out of the table (the default 250)
--   one@      one reply string for all; refuse@ one refusal for all
--   error@    raises; badvalue@ a number as a reply; stranger@ a key that is no recipient;
--   badreply@ a string that is no reply; numkey@ a table with a number key; lower@ a table
--             keyed by the lower-cased addresses
--   received@ the Received: protocol (smtpd.received) and session.lmtp, as the reply text
-- on_rcpt refuses recipients whose local part starts with "refused".
local received = require "smtpd.received"

function on_rcpt(session, address)
  if address:match("^refused") then
    return "550 5.1.1 <" .. address .. "> refused at RCPT"
  end
end

local function per_recipient(rcpttos)
  local replies = {}
  for _, rcpt in ipairs(rcpttos) do
    if rcpt:match("^no") then
      replies[rcpt] = "550 5.1.1 <" .. rcpt .. "> no such user"
    elseif rcpt:match("^full") then
      replies[rcpt] = "452 4.2.2 <" .. rcpt .. "> mailbox full"
    elseif rcpt:match("^yes") then
      replies[rcpt] = "250 2.1.5 <" .. rcpt .. "> delivered"
    end
  end
  return replies
end

function process_message(peer, mailfrom, rcpttos, data, options)
  local what = mailfrom:match("^([^@]*)@") or ""
  if what == "table" then
    return per_recipient(rcpttos)
  elseif what == "one" then
    return "250 2.0.0 one reply for all"
  elseif what == "refuse" then
    return "554 5.7.1 not today"
  elseif what == "error" then
    error("boom")
  elseif what == "badvalue" then
    return { [rcpttos[1]] = 42 }
  elseif what == "stranger" then
    return { ["stranger@nowhere.example"] = "550 5.1.1 no" }
  elseif what == "badreply" then
    return { [rcpttos[#rcpttos]] = "hello" }
  elseif what == "lower" then
    local replies = {}
    for _, rcpt in ipairs(rcpttos) do replies[rcpt:lower()] = "550 5.1.1 lower-cased" end
    return replies
  elseif what == "numkey" then
    return { "250 2.0.0 by position?" }
  elseif what == "received" then
    return "250 2.0.0 " .. received.protocol(options) .. " lmtp=" .. tostring(options.session.lmtp)
  end
end
