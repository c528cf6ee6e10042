-- Test fixture: records every message as record.lua does (--set dir=DIR; <n>.eml, then
-- <n>.env), unless the first recipient's local part picks a child process first:
--   slow     a child that writes its pid to DIR/slow.pid, reads the message and sleeps 30 s;
--            the message is recorded only once the child has ended
--   midfeed  a child that reads 100 bytes of the message and kills itself with SIGKILL;
--            answered with smtpd.delivery's reply, nothing recorded
local smtpd = require "smtpd"
local delivery = require "smtpd.delivery"

local dir = assert(smtpd.settings.dir, "limits_hostile.lua needs --set dir=DIRECTORY")
local n = 0

local function write(path, text)
  local f = assert(io.open(path .. ".tmp", "wb"))
  assert(f:write(text))
  assert(f:close())
  assert(os.rename(path .. ".tmp", path))
end

local function record(peer, mailfrom, rcpttos, data, options)
  n = n + 1
  local base = ("%s/%06d"):format(dir, n)
  local env = { "peer " .. peer[1] .. " " .. peer[2], "helo " .. options.helo, "from " .. mailfrom }
  for _, r in ipairs(rcpttos) do env[#env + 1] = "rcpt " .. r end
  env[#env + 1] = "size " .. #data
  write(base .. ".eml", data)
  write(base .. ".env", table.concat(env, "\n") .. "\n")
end

local children = {
  slow = { "sh", "-c", 'echo $$ > "$1"; cat >/dev/null; exec sleep 30', "sh", dir .. "/slow.pid" },
  midfeed = { "sh", "-c", "head -c 100 >/dev/null; kill -9 $$" },
}

function process_message(peer, mailfrom, rcpttos, data, options)
  local argv = children[(rcpttos[1]:match("^([^@]*)"))]
  if argv then
    local reply = delivery.reply(smtpd.pipe(argv, data, { timeout = 60 }))
    if reply then
      return reply
    end
  end
  record(peer, mailfrom, rcpttos, data, options)
end
