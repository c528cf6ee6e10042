-- Test fixture: relays each message with one smtpd.relay{} call and answers with what it
-- returned, so a test can check the result from the client's side:
--   all went:   250 "2.0.0 relayed refused=N", then one line "refused ADDRESS CODE TEXT" each
--   it failed:  451 "4.4.1 relay failed code=CODE MESSAGE" (CODE is "nil" when there was none)
-- Settings: host, port (default: the command line's remotehost:port), timeout, lmtp=1, helo,
-- to_string=1 (pass the first recipient as a string, not a list).
local smtpd = require "smtpd"
local settings = smtpd.settings

local function one_line(value)
  return (tostring(value):gsub("[%c]+", " "))
end

function process_message(peer, mailfrom, rcpttos, data, options)
  local request = {
    from = mailfrom,
    to = rcpttos,
    data = data,
    lmtp = settings.lmtp == "1",
    timeout = tonumber(settings.timeout),
    helo = settings.helo,
    host = settings.host,
    port = tonumber(settings.port),
  }
  if settings.to_string == "1" then
    request.to = rcpttos[1]
  end
  local refused, err, code = smtpd.relay(request)
  if not refused then
    return smtpd.reply(451, "4.4.1 relay failed code=" .. tostring(code) .. " " .. one_line(err))
  end
  local names = {}
  for rcpt in pairs(refused) do
    names[#names + 1] = rcpt
  end
  table.sort(names)
  local lines = { "2.0.0 relayed refused=" .. #names }
  for _, rcpt in ipairs(names) do
    local answer = refused[rcpt]
    lines[#lines + 1] = "refused " .. rcpt .. " " .. tostring(answer[1]) .. " " ..
        one_line(answer[2])
  end
  return smtpd.reply(250, table.concat(lines, "\n"))
end
