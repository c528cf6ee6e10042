-- Test fixture: on_rcpt accepts with a reply of 100 lines of 500 bytes (50 kB), so a few
-- pipelined RCPTs ask for more output than the socket buffers hold. Accepts every message.
local smtpd = require "smtpd"

local lines = {}
for i = 1, 100 do
  lines[i] = ("2.1.5 line %03d "):format(i) .. ("x"):rep(480)
end
local reply = smtpd.reply(250, table.concat(lines, "\n"))

function on_rcpt(session, address, params)
  return reply
end

function process_message(peer, mailfrom, rcpttos, data, options)
  return nil
end
