-- Test fixture: on_rcpt asks the upstream (the command line's remotehost:port) about each
-- recipient with smtpd.connect, up:mail, up:rcpt, up:quit, and refuses with the upstream's
-- own answer; an accepted recipient gets "250 2.1.5 verified: <upstream's text>". An upstream
-- that cannot be asked gives 451 4.4.1. process_message accepts.
local smtpd = require "smtpd"

local function one_line(value)
  return (tostring(value):gsub("[%c]+", " "))
end

function on_rcpt(session, address, params)
  local up, err = smtpd.connect{ timeout = 10 }
  if not up then
    return "451 4.4.1 upstream unavailable: " .. one_line(err)
  end
  local code, text = up:mail(session.sender or "")
  if code and code < 400 then
    code, text = up:rcpt(address)
  end
  up:quit()
  if not code then
    return "451 4.4.1 upstream failed: " .. one_line(text)
  end
  if code >= 400 then
    return smtpd.reply(code, text)
  end
  return "250 2.1.5 verified: " .. one_line(text)
end

function on_mail(session, address, params)
  session.sender = address
end

function process_message(peer, mailfrom, rcpttos, data, options)
  return smtpd.reply(250, "2.0.0 delivered to " .. table.concat(rcpttos, ","))
end
