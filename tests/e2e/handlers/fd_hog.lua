-- Test fixture: holds smtpd.settings.files descriptors open (/dev/null) from load on, so the
-- server runs out of descriptors before its connection cap, as a script holding many files
-- would; accepts every message.
local smtpd = require "smtpd"

-- A global, so the collector never closes them.
held_files = {}
for i = 1, assert(tonumber(smtpd.settings.files), "fd_hog.lua needs --set files=N") do
  held_files[i] = assert(io.open("/dev/null", "rb"))
end

function process_message(peer, mailfrom, rcpttos, data, options)
  return nil
end
