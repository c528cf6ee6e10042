-- What smtpd.pipe's result means for the client, the way sendmail-style MTAs read a delivery
-- agent's exit status (sysexits.h): 0 delivered; 75 (EX_TEMPFAIL), a signal, a timeout or a
-- command that could not run: 4xx, the client keeps the message and retries; any other status:
-- 5xx, the client bounces it to the sender.
local M = {}

local permanent = {
  [64] = "554 5.3.0", -- EX_USAGE
  [65] = "554 5.6.0", -- EX_DATAERR
  [66] = "554 5.3.0", -- EX_NOINPUT
  [67] = "550 5.1.1", -- EX_NOUSER
  [68] = "550 5.1.2", -- EX_NOHOST
  [77] = "550 5.7.1", -- EX_NOPERM
}

-- The first line the command printed, made safe to put in a reply.
local function reason(text)
  local line = (text or ""):match("^%s*([^\r\n]*)") or ""
  line = line:gsub("[%c\128-\255]", "?")
  if #line > 200 then line = line:sub(1, 200) end
  return line
end

-- Takes what smtpd.pipe returned: status, output, or nil, message, code (451 for a signal, a
-- timeout or a command that could not run). Returns nil when delivered, or a reply line; also
-- true when the failure is temporary.
function M.reply(status, output, code)
  if status == 0 then
    return nil
  end
  if status == nil then
    -- the code smtpd.pipe gives every failure of its own is 451: temporary, as here
    return "451 4.3.0 Delivery failed, try again later: " .. reason(output), true
  end
  if status == 75 then
    return "451 4.3.0 Delivery deferred: " .. reason(output), true
  end
  local why = reason(output)
  return (permanent[status] or "554 5.3.0") .. " Delivery failed (exit status " .. status .. ")"
    .. (why ~= "" and ": " .. why or ""), false
end

return M
