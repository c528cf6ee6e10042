-- Test fixture: drives the upstream (the command line's remotehost:port) command by command
-- with smtpd.connect and reports every step as one line of a multi-line 250 reply:
--   "ext NAME,NAME=VALUE,...", "noop CODE TEXT", "mail CODE TEXT", "rcpt CODE TEXT" (each),
--   "data CODE TEXT" (one per recipient over LMTP), "rset CODE TEXT", "quit CODE TEXT",
--   "after_quit nil MESSAGE".
-- A failed connect answers 451 "4.4.1 connect failed code=CODE MESSAGE".
-- Settings: lmtp=1, helo, timeout, mail_params (passed to up:mail).
local smtpd = require "smtpd"
local settings = smtpd.settings

local function one_line(value)
  return (tostring(value):gsub("[%c]+", " "))
end

function process_message(peer, mailfrom, rcpttos, data, options)
  local lmtp = settings.lmtp == "1"
  local up, err, code = smtpd.connect{
    lmtp = lmtp,
    helo = settings.helo,
    timeout = tonumber(settings.timeout),
  }
  if not up then
    return smtpd.reply(451, "4.4.1 connect failed code=" .. tostring(code) .. " " .. one_line(err))
  end
  local out = {}
  local function step(name, a, b)
    out[#out + 1] = name .. " " .. tostring(a) .. " " .. one_line(b)
  end
  local ext = {}
  for name, value in pairs(up.extensions) do
    ext[#ext + 1] = value == true and name or name .. "=" .. tostring(value)
  end
  table.sort(ext)
  out[#out + 1] = "ext " .. table.concat(ext, ",")
  step("noop", up:command("NOOP"))
  step("mail", up:mail(mailfrom, settings.mail_params))
  for _, rcpt in ipairs(rcpttos) do
    step("rcpt", up:rcpt(rcpt))
  end
  local result, text = up:data(data)
  if lmtp and type(result) == "table" then
    for _, answer in ipairs(result) do
      step("data", answer[1], answer[2])
    end
  else
    step("data", result, text)
  end
  step("rset", up:rset())
  step("quit", up:quit())
  step("after_quit", up:mail(mailfrom))
  up:close()
  return smtpd.reply(250, table.concat(out, "\n"))
end
