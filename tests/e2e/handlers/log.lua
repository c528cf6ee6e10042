-- Test fixture: logs through smtpd.log at each level but error, and through smtpd.debug.
local smtpd = require "smtpd"

function process_message(peer, mailfrom, rcpttos, data, options)
  smtpd.log("warn", "fixture-warn", mailfrom)
  smtpd.log("info", "fixture-info", #rcpttos)
  smtpd.debug("fixture-debug", rcpttos[1])
  return nil
end
