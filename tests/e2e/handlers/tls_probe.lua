-- Test fixture: tells what the script sees of the connection's TLS. on_mail answers
-- "250 2.1.0 tls=<version>/<cipher>/<bits> subject=<subject>" (or "tls=none"), so a hook is
-- seen to have session.tls; process_message answers "250 2.0.0 protocol=<Received: protocol>"
-- (smtpd.received, RFC 3848: ESMTPS inside TLS).
local received = require "smtpd.received"

local function describe(session)
  local tls = session.tls
  if tls == nil then return "tls=none" end
  return string.format("tls=%s/%s/%s subject=%s", tostring(tls.version), tostring(tls.cipher),
                       tostring(tls.bits), tostring(tls.subject))
end

function on_mail(session, address, params)
  return "250 2.1.0 " .. describe(session) .. " helo=" .. tostring(session.helo)
end

function process_message(peer, mailfrom, rcpttos, data, options)
  return "250 2.0.0 protocol=" .. received.protocol(options) .. " " .. describe(options.session)
end
