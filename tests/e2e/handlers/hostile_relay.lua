-- Test fixture: relays each message with one smtpd.relay{} call and answers the way a relay
-- must, so a test can tell success from failure by the client's reply alone:
--   the message went:  250 "2.0.0 relayed refused=N", then "refused ADDRESS CODE TEXT" each
--   the upstream refused it (a code came back): that code, with the upstream's text
--   anything else:     451 "4.4.1 relay failed: MESSAGE"
-- Settings: timeout, data_timeout, lmtp=1, smtputf8=1 (pass on the client's SMTPUTF8),
-- helo, inject=from|to|to_nul|helo (a line break or NUL in that field), long_from=N (a sender
-- of N bytes before "@b.example").
local smtpd = require "smtpd"
local settings = smtpd.settings

local function one_line(value)
  return (tostring(value):gsub("%c+", " "))
end

function process_message(peer, mailfrom, rcpttos, data, options)
  local request = {
    from = mailfrom,
    to = rcpttos,
    data = data,
    lmtp = settings.lmtp == "1",
    timeout = tonumber(settings.timeout),
    data_timeout = tonumber(settings.data_timeout),
    helo = settings.helo,
    smtputf8 = settings.smtputf8 == "1" and options.smtputf8,
  }
  local inject = settings.inject
  if inject == "to" then
    request.to = { rcpttos[1], "x>\r\nRCPT TO:<injected@evil.example" }
  elseif inject == "to_nul" then
    request.to = { rcpttos[1], "x@y.example\0injected" }
  elseif inject == "from" then
    request.from = "a@b.example>\r\nRCPT TO:<injected@evil.example"
  elseif inject == "helo" then
    request.helo = "relay.example\r\nRCPT TO:<injected@evil.example>"
  end
  if settings.long_from then
    request.from = string.rep("a", tonumber(settings.long_from)) .. "@b.example"
  end
  local refused, err, code = smtpd.relay(request)
  if not refused then
    if code then
      return smtpd.reply(code, err:match(": %d%d%d (.*)$") or err)
    end
    return smtpd.reply(451, "4.4.1 relay failed: " .. one_line(err))
  end
  local names = {}
  for rcpt in pairs(refused) do
    names[#names + 1] = rcpt
  end
  table.sort(names)
  local lines = { "2.0.0 relayed refused=" .. #names }
  for _, rcpt in ipairs(names) do
    lines[#lines + 1] = "refused " .. rcpt .. " " .. refused[rcpt][1] .. " " ..
        one_line(refused[rcpt][2])
  end
  return smtpd.reply(250, table.concat(lines, "\n"))
end
