-- Test fixture: finalizers that never return. Lua runs no hooks inside __gc, so the instruction
-- budget cannot stop them; only the watchdog can.
--   a recipient "gc@..."  process_message drops an object whose __gc loops for ever, then
--                         collects it
--   "loop@..."            `while true do end`: the budget ends it with 451
--   anything else         "250 2.0.0 served pid=<pid>"
-- --set gc_at_close=1: the state also holds such an object until it is closed (reload, exit).
local smtpd = require "smtpd"

local pid = io.open("/proc/self/stat"):read("n")

local function stuck_object()
  return setmetatable({}, { __gc = function() while true do end end })
end

if smtpd.settings.gc_at_close == "1" then
  held = stuck_object()
end

function process_message(peer, mailfrom, rcpttos, data, options)
  local what = rcpttos[1]:match("^([^@]*)")
  if what == "gc" then
    stuck_object()
    collectgarbage()
  elseif what == "loop" then
    while true do end
  end
  return "250 2.0.0 served pid=" .. pid
end
