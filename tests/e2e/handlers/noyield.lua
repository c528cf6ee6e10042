-- Test fixture: calls a waiting binding where the handler's coroutine cannot yield (inside a
-- table.sort comparator, which Lua calls without a continuation), in the way the sender's
-- local part names; "ok@..." relays normally. Each misuse must raise before any work starts.
local smtpd = require "smtpd"

local cases = {}

local function unyieldable(f)
  local result
  table.sort({ 2, 1 }, function(a, b)
    result = result or { f() }
    return a < b
  end)
  return table.unpack(result)
end

cases["relay-in-sort"] = function(mailfrom, rcpttos, data)
  return unyieldable(function()
    return smtpd.relay{ from = mailfrom, to = rcpttos, data = data }
  end)
end

cases["connect-in-sort"] = function()
  return unyieldable(function()
    return smtpd.connect{}
  end)
end

cases["pipe-in-sort"] = function(_, _, data)
  return unyieldable(function()
    return smtpd.pipe({ "/bin/cat" }, data)
  end)
end

function process_message(peer, mailfrom, rcpttos, data)
  local case = cases[mailfrom:match("^([^@]*)@")]
  if case then
    case(mailfrom, rcpttos, data)
    return "250 2.0.0 the misuse did not raise"
  end
  local refused, err = smtpd.relay{ from = mailfrom, to = rcpttos, data = data }
  if not refused then
    return smtpd.reply(451, "4.4.1 relay failed: " .. tostring(err))
  end
  return "250 2.0.0 relayed"
end
