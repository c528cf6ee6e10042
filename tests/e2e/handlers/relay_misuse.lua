-- Test fixture: misuses the bindings (relay, connect, the upstream's methods, pipe, reply) in
-- the way the sender's local part names; each case must raise (the client gets 451 4.3.0, the
-- log the error). "ok@..." just accepts.
local smtpd = require "smtpd"

local message = "Subject: misuse\r\n\r\nbody\r\n"

local cases = {}

cases["relay-nil"] = function()
  return smtpd.relay(nil)
end

cases["connect-string"] = function()
  return smtpd.connect("127.0.0.1")
end

cases["relay-in-coroutine"] = function()
  local co = coroutine.wrap(function()
    return smtpd.relay{ from = "a@b.example", to = "c@d.example", data = message }
  end)
  return co()
end

cases["connect-in-coroutine"] = function()
  local co = coroutine.wrap(function()
    return smtpd.connect{}
  end)
  return co()
end

cases["method-in-coroutine"] = function()
  local up = assert(smtpd.connect{})
  local co = coroutine.wrap(function()
    return up:mail("a@b.example")
  end)
  return co()
end

cases["bad-port"] = function()
  return smtpd.relay{ port = 70000, from = "a@b.example", to = "c@d.example", data = message }
end

cases["bad-timeout"] = function()
  return smtpd.relay{ timeout = 0, from = "a@b.example", to = "c@d.example", data = message }
end

cases["no-recipient"] = function()
  return smtpd.relay{ from = "a@b.example", to = {}, data = message }
end

cases["bad-recipient"] = function()
  return smtpd.relay{ from = "a@b.example", to = { "c@d.example", 42 }, data = message }
end

cases["line-break-address"] = function()
  local up = assert(smtpd.connect{})
  return up:mail("a@b.example>\r\nRSET")
end

cases["relay-lmtp-type"] = function()
  return smtpd.relay{ lmtp = "yes", from = "a@b.example", to = "c@d.example", data = message }
end

cases["connect-port-type"] = function()
  return smtpd.connect{ port = "smtp" }
end

cases["pipe-timeout-type"] = function()
  return smtpd.pipe({ "true" }, "", { timeout = "soon" })
end

cases["pipe-env-type"] = function()
  return smtpd.pipe({ "true" }, "", { env = "PATH=/bin" })
end

cases["bad-reply-code"] = function()
  return smtpd.reply(99, "x")
end

function process_message(peer, mailfrom, rcpttos, data, options)
  local case = mailfrom:match("^([^@]*)")
  if case == "ok" then
    return nil
  end
  local run = assert(cases[case], "no such case " .. case)
  run()
  return "250 2.0.0 the misuse was not refused"
end
