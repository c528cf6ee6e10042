-- Test fixture: relays each message over LMTP (smtpd.relay{lmtp=true}) to 127.0.0.1 at
-- smtpd.settings.lmtp_port and hands the upstream's answers on, one per recipient: what the
-- relay reports refused becomes that recipient's reply, the others get the default 250.
local smtpd = require "smtpd"

function process_message(peer, mailfrom, rcpttos, data)
  local refused, err, code = smtpd.relay{
    host = "127.0.0.1", port = tonumber(smtpd.settings.lmtp_port), lmtp = true,
    from = mailfrom, to = rcpttos, data = data, timeout = 10,
  }
  if not refused then
    return smtpd.reply(code or 451, err)
  end
  local replies = {}
  for rcpt, answer in pairs(refused) do
    replies[rcpt] = smtpd.reply(answer[1], answer[2])
  end
  return replies
end
