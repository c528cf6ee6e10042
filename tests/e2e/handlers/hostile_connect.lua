-- Test fixture: relays each message command by command with smtpd.connect, as a proxy does,
-- and answers with what the upstream said:
--   the upstream's reply after the message (SMTP), or 250 when every LMTP reply was 2xx and
--   the first refusal otherwise; a refusal at MAIL, RCPT or DATA as given;
--   a failure (nil, message): 451 "4.4.1 relay failed: MESSAGE".
-- Settings: timeout, data_timeout, lmtp=1, finish=quit|close (how the connection ends;
-- default close), raw=1 (return "CODE TEXT" as it came instead of smtpd.reply(code, text):
-- a reply the core accepts only if the binding cleaned the text).
local smtpd = require "smtpd"
local settings = smtpd.settings

local function one_line(value)
  return (tostring(value):gsub("%c+", " "))
end

local function failed(err)
  return smtpd.reply(451, "4.4.1 relay failed: " .. one_line(err))
end

local function answer(code, text)
  if settings.raw == "1" then
    return code .. " " .. text
  end
  return smtpd.reply(code, text)
end

function process_message(peer, mailfrom, rcpttos, data, options)
  local lmtp = settings.lmtp == "1"
  local up, err = smtpd.connect{
    lmtp = lmtp,
    timeout = tonumber(settings.timeout),
    data_timeout = tonumber(settings.data_timeout),
  }
  if not up then return failed(err) end
  local function finish(reply)
    if settings.finish == "quit" then up:quit() else up:close() end
    return reply
  end
  local code, text = up:mail(mailfrom)
  if not code then return failed(text) end
  if code >= 300 then return finish(smtpd.reply(code, text)) end
  local accepted, refusal = 0, nil
  for _, rcpt in ipairs(rcpttos) do
    code, text = up:rcpt(rcpt)
    if not code then return failed(text) end
    if code < 300 then
      accepted = accepted + 1
    else
      refusal = refusal or smtpd.reply(code, text)
    end
  end
  if accepted == 0 then return finish(refusal) end
  local result, text2, code2 = up:data(data)
  if not result then
    if code2 then return finish(smtpd.reply(code2, text2:match(": %d%d%d (.*)$") or text2)) end
    return failed(text2)
  end
  if lmtp then
    for _, r in ipairs(result) do
      if r[1] >= 300 then return finish(smtpd.reply(r[1], r[2])) end
    end
    return finish(answer(result[1][1], result[1][2]))
  end
  return finish(answer(result, text2))
end
