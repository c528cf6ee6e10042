-- Test fixture: records every message into smtpd.settings.dir as <n>.eml (the data exactly as
-- the handler got it) and <n>.env (one "key value" line each: peer, helo, from, rcpt...,
-- mail_option..., rcpt_option..., size). Both are written under a temporary name and renamed
-- into place, .env last, so a reader that sees <n>.env sees the whole message.
-- Replies smtpd.settings.reply if set, else the default 250. With smtpd.settings.received set,
-- the .eml has the Received: field a relaying handler would put on top (smtpd.received).
local smtpd = require "smtpd"
local received = require "smtpd.received"

local dir = smtpd.settings.dir
assert(dir, "record.lua needs --set dir=DIRECTORY")

local n = 0

local function write(path, text)
  local tmp = path .. ".tmp"
  local f = assert(io.open(tmp, "wb"))
  assert(f:write(text))
  assert(f:close())
  assert(os.rename(tmp, path))
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

function process_message(peer, mailfrom, rcpttos, data, options)
  local base
  repeat  -- never overwrite: a reloaded script starts counting again
    n = n + 1
    base = string.format("%s/%06d", dir, n)
  until not exists(base .. ".env") and not exists(base .. ".eml")
  local env = {
    "peer " .. tostring(peer[1]) .. " " .. tostring(peer[2]),
    "helo " .. tostring(options.helo),
    "from " .. mailfrom,
  }
  for _, r in ipairs(rcpttos) do env[#env + 1] = "rcpt " .. r end
  for _, o in ipairs(options.mail_options or {}) do env[#env + 1] = "mail_option " .. o end
  for _, o in ipairs(options.rcpt_options or {}) do env[#env + 1] = "rcpt_option " .. o end
  env[#env + 1] = "size " .. #data
  if smtpd.settings.received then data = received.add(data, options, { rcpts = rcpttos }) end
  write(base .. ".eml", data)
  write(base .. ".env", table.concat(env, "\n") .. "\n")
  return smtpd.settings.reply
end
