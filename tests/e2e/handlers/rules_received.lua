-- Test fixture: a user script using require("smtpd.received") as the bundled relays do. Each
-- message, with the Received: line added for its recipients, is written to
-- <dir>/<n>.eml; what the core told the script about the greeting goes to <dir>/<n>.esmtp.
local smtpd = require "smtpd"
local received = require "smtpd.received"

local count = 0

function process_message(peer, mailfrom, rcpttos, data, options)
  count = count + 1
  local base = smtpd.settings.dir .. "/" .. count
  local out = assert(io.open(base .. ".tmp", "wb"))
  out:write(received.add(data, options, { rcpts = rcpttos }))
  out:close()
  local esmtp = options.esmtp
  if esmtp == nil then esmtp = options.session.esmtp end
  local note = assert(io.open(base .. ".esmtp", "wb"))
  note:write(tostring(esmtp))
  note:close()
  assert(os.rename(base .. ".tmp", base .. ".eml"))
end
