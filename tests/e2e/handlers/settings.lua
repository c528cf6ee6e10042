-- Test fixture: shows a --set value and the version in the reply.
local smtpd = require "smtpd"

function process_message(peer, mailfrom, rcpttos, data, options)
  return "250 " .. smtpd.settings.greeting .. " " .. smtpd.version
end
