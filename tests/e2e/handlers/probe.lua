-- Test fixture: reports what the smtpd module offers, in a 250 reply:
-- "250 remote=<host>:<port> version=<v> settings=<k=v,...> types=<...>".
local smtpd = require "smtpd"

function process_message(peer, mailfrom, rcpttos, data, options)
  local keys = {}
  for k, v in pairs(smtpd.settings) do keys[#keys + 1] = k .. "=" .. tostring(v) end
  table.sort(keys)
  local types = table.concat({
    type(peer[1]), type(peer[2]), type(mailfrom), type(rcpttos), type(data),
    type(options.mail_options), type(options.rcpt_options), type(options.helo),
    type(smtpd.log), type(smtpd.debug),
  }, ",")
  return string.format("250 remote=%s:%s version=%s settings=%s types=%s",
                       tostring(smtpd.remote.host), tostring(smtpd.remote.port),
                       tostring(smtpd.version), table.concat(keys, ","), types)
end
