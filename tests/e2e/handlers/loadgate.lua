-- Test fixture: while loading, logs "fixture: loading in pid N" and waits (at most about 60 s)
-- until the file settings.gate .. "." .. N exists, so a test can send a signal while this
-- process is still loading its script. Then accepts everything.
local smtpd = require "smtpd"

local pid = io.open("/proc/self/stat"):read("n")
local gate = smtpd.settings.gate .. "." .. pid
smtpd.log("info", "fixture: loading in pid " .. pid)
for _ = 1, 1200 do
  local f = io.open(gate)
  if f then
    f:close()
    break
  end
  io.popen("sleep 0.05"):close() -- not os.execute: system() ignores SIGINT meanwhile
end

function process_message(peer, mailfrom, rcpttos, data, options)
  return nil
end
