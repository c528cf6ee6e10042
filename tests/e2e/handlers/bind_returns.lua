-- Test fixture: runs the binding failure the sender's local part names and answers with all
-- that it returned:
--   250 "2.0.0 n=<how many values> first=<1st> code=<3rd> msg=<2nd>"
-- Settings: dead_port (a port nobody listens on). The upstream is the command line's
-- remotehost:port, scripted by the test.
local smtpd = require "smtpd"
local settings = smtpd.settings

local message = "Subject: returns\r\n\r\nbody\r\n"

local function connected()
  return assert(smtpd.connect{ timeout = 2 })
end

local cases = {}

cases["relay-down"] = function()
  return smtpd.relay{ port = tonumber(settings.dead_port), from = "a@b.example",
                      to = "c@d.example", data = message }
end

cases["relay-refused"] = function()
  return smtpd.relay{ from = "a@b.example", to = "c@d.example", data = message }
end

cases["connect-down"] = function()
  return smtpd.connect{ port = tonumber(settings.dead_port) }
end

cases["mail-wrong-class"] = function()
  return connected():mail("a@b.example")
end

cases["mail-timeout"] = function()
  return connected():mail("a@b.example")
end

cases["mail-refused"] = function()
  return connected():mail("a@b.example")
end

cases["after-close"] = function()
  local up = connected()
  up:close()
  return up:mail("a@b.example")
end

cases["pipe-timeout"] = function()
  return smtpd.pipe({ "sleep", "30" }, "", { timeout = 1 })
end

cases["pipe-signal"] = function()
  return smtpd.pipe({ "sh", "-c", "kill -9 $$" }, "")
end

cases["pipe-missing"] = function()
  return smtpd.pipe({ "/nonexistent/luasmtpd-bind-returns" }, "")
end

local function one_line(value)
  return (tostring(value):gsub("%c+", " "))
end

function process_message(peer, mailfrom, rcpttos, data, options)
  local run = assert(cases[mailfrom:match("^([^@]*)")], "no such case")
  local values = table.pack(run())
  return ("250 2.0.0 n=%d first=%s code=%s msg=%s"):format(values.n, one_line(values[1]),
                                                           one_line(values[3]),
                                                           one_line(values[2]))
end
