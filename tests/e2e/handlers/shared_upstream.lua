-- Test fixture: one upstream connection shared by every session (a global), used command by
-- command; a sender "closer@..." instead leaves a to-be-closed variable naming it, whose
-- __close runs while another session may be waiting in one of its methods.
local smtpd = require "smtpd"

local shared

function process_message(peer, mailfrom, rcpttos, data)
  if mailfrom:match("^closer@") then
    do
      local up <close> = shared
    end
    return "250 2.0.0 closed the shared upstream"
  end
  if shared == nil then
    shared = assert(smtpd.connect{})
  end
  local up = shared
  local steps = { { up.mail, mailfrom } }
  for _, rcpt in ipairs(rcpttos) do
    steps[#steps + 1] = { up.rcpt, rcpt }
  end
  steps[#steps + 1] = { up.data, data }
  local code, text
  for _, step in ipairs(steps) do
    code, text = step[1](up, step[2])
    if not code then
      return smtpd.reply(451, "4.4.1 relay failed: " .. tostring(text))
    end
    if code >= 400 then
      return smtpd.reply(code, text)
    end
  end
  return smtpd.reply(code, text)
end
