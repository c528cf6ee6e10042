-- Test fixture: process_message holds each message until the file smtpd.settings.gate exists
-- (a child reads the message, then polls for the file, at most about 60 s), then accepts it.
-- Logs "fixture: holding <sender>, <n> bytes" when it starts waiting.
local smtpd = require "smtpd"

local wait = 'cat >/dev/null; i=0; while [ ! -e "$1" ] && [ $i -lt 1200 ]; do ' ..
             'sleep 0.05; i=$((i+1)); done; [ -e "$1" ]'

function process_message(peer, mailfrom, rcpttos, data, options)
  smtpd.log("info", ("fixture: holding %s, %d bytes"):format(mailfrom, #data))
  local status = smtpd.pipe({ "/bin/sh", "-c", wait, "sh", smtpd.settings.gate }, data,
                            { timeout = 90 })
  if status ~= 0 then
    return "451 4.3.0 the gate did not open"
  end
  return nil
end
