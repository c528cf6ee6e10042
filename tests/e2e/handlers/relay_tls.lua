-- Test fixture: relays each message with smtpd.relay{} (or, with mode=connect, opens an
-- upstream with smtpd.connect{} and reports whether it runs inside TLS), taking the TLS and
-- AUTH options from settings, and answers with what came back:
--   relayed:   250 "2.0.0 relayed"           connect: 250 "2.0.0 tls=true|false"
--   failed:    451 "4.4.1 relay failed code=CODE MESSAGE" (CODE "nil" when there was none)
-- Settings: starttls, tls=1, verify=0|1, cafile, servername, user, password, auth_plaintext=1,
-- host, mode, timeout (seconds, 20).
local smtpd = require "smtpd"
local settings = smtpd.settings

local function one_line(value)
  return (tostring(value):gsub("[%c]+", " "))
end

local function options()
  local o = {
    host = settings.host,
    starttls = settings.starttls,
    tls = settings.tls == "1" or nil,
    cafile = settings.cafile,
    servername = settings.servername,
    auth_plaintext = settings.auth_plaintext == "1" or nil,
    timeout = tonumber(settings.timeout) or 20,
  }
  if settings.verify then
    o.verify = settings.verify == "1"
  end
  if settings.user then
    o.auth = { user = settings.user, password = settings.password }
  end
  return o
end

local function failed(err, code)
  return smtpd.reply(451, "4.4.1 relay failed code=" .. tostring(code) .. " " .. one_line(err))
end

function process_message(peer, mailfrom, rcpttos, data, opts)
  local o = options()
  if settings.mode == "connect" then
    local up, err, code = smtpd.connect(o)
    if not up then return failed(err, code) end
    local tls = up.tls
    up:close()
    return "250 2.0.0 tls=" .. tostring(tls)
  end
  o.from, o.to, o.data = mailfrom, rcpttos, data
  local refused, err, code = smtpd.relay(o)
  if not refused then return failed(err, code) end
  return "250 2.0.0 relayed"
end
