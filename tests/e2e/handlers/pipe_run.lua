-- Test fixture: runs smtpd.pipe with the command pipe_cmds.lua picks for the first recipient
-- and answers with what it returned:
--   "250 2.0.0 status=<status> code=<code> len=<#output> out=<first 200 bytes, escaped>"
-- (for a failure, status=nil, code its third value and the message follows as msg=<...>). With settings.dir, the
-- whole output also goes to DIR/<command>.out.
local smtpd = require "smtpd"
local cmds = require "pipe_cmds"

local function escape(s)
  return (s:sub(1, 200):gsub("[^%w%s%p]", function(c) return ("\\x%02x"):format(c:byte()) end)
          :gsub("[\r\n\t]", { ["\r"] = "\\r", ["\n"] = "\\n", ["\t"] = "\\t" }))
end

function process_message(peer, mailfrom, rcpttos, data, options)
  local name, argv, opts = cmds.pick(rcpttos)
  local status, output, code = smtpd.pipe(argv, data, opts)
  if status == nil then
    return ("250 2.0.0 status=nil code=%s msg=<%s>"):format(tostring(code), escape(output or ""))
  end
  if smtpd.settings.dir then
    local f = assert(io.open(smtpd.settings.dir .. "/" .. name .. ".out", "wb"))
    f:write(output)
    f:close()
  end
  return ("250 2.0.0 status=%d code=%s len=%d out=<%s>"):format(status, tostring(code), #output,
                                                                escape(output))
end
