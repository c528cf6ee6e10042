-- Test fixture: the reply lua/smtpd/delivery.lua makes of smtpd.pipe's result, for the command
-- pipe_cmds.lua picks for the first recipient.
local smtpd = require "smtpd"
local cmds = require "pipe_cmds"

function process_message(peer, mailfrom, rcpttos, data, options)
  local _, argv, opts = cmds.pick(rcpttos)
  return require("smtpd.delivery").reply(smtpd.pipe(argv, data, opts))
end
