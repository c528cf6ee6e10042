-- Test fixture: answers every message with smtpd.settings.reply, or a fixed refusal.
local smtpd = require "smtpd"

function process_message(peer, mailfrom, rcpttos, data, options)
  return smtpd.settings.reply or "554 5.7.1 custom refusal"
end
