-- Test fixture: answers each message with smtpd.reply(code, text), the code from the message's
-- X-Code: header and the text its body, as given (control bytes, long lines and all).
local smtpd = require "smtpd"

function process_message(peer, mailfrom, rcpttos, data, options)
  local code = tonumber(data:match("^X%-Code: (%d+)\r\n"))
  local body = data:match("\r\n\r\n(.*)$") or ""
  return smtpd.reply(code, body)
end
