-- Test fixture: appends one line per Lua entry point to the file --set trace=PATH names:
--   "<hook> <session id> <client port>" for on_connect, on_helo, on_mail, on_rcpt,
--   process_message and on_disconnect; so a test can tell which connections ran any Lua.
-- process_message accepts with the default 250.
local smtpd = require "smtpd"

local trace = assert(smtpd.settings.trace, "limits_trace.lua needs --set trace=PATH")

local function note(what, session)
  local f = assert(io.open(trace, "ab"))
  assert(f:write(("%s %d %d\n"):format(what, session.id, session.peer[2])))
  assert(f:close())
end

function on_connect(session) note("on_connect", session) end
function on_helo(session) note("on_helo", session) end
function on_mail(session) note("on_mail", session) end
function on_rcpt(session) note("on_rcpt", session) end
function on_disconnect(session) note("on_disconnect", session) end

function process_message(peer, mailfrom, rcpttos, data, options)
  note("process_message", options.session)
end
