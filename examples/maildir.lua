-- Delivers every message into a Maildir (https://cr.yp.to/proto/maildir.html).
--
--   mkdir -p /var/mail/inbox/tmp /var/mail/inbox/new /var/mail/inbox/cur
--   luasmtpd -n -c examples/maildir.lua --set maildir=/var/mail/inbox 127.0.0.1:2525
--
-- Each message is written to tmp/ under a name no other delivery uses, then renamed into new/:
-- a mail reader never sees half a message, and rename() is atomic within one file system.
-- When the file cannot be written the client gets 451 and keeps the message for a later try.
-- (Plain Lua cannot fsync; a delivery agent that must survive a power cut needs that too.)
local smtpd = require "smtpd"

local maildir = assert(smtpd.settings.maildir, "set the Maildir with --set maildir=DIR")

-- Unique names, "time.unique.host": the seconds, then what keeps two deliveries in the same
-- second apart (a counter for this process, and a random part for other processes or a
-- reloaded script), then the host name with '/' and ':' encoded as the spec asks.
local host = smtpd.hostname:gsub("/", "\\057"):gsub(":", "\\072")
local count = 0

local function unique_name()
  count = count + 1
  return ("%d.M%dR%08x.%s"):format(os.time(), count, math.random(0, 0x7fffffff), host)
end

-- The message as a mail file: Return-Path: first, as a local delivery agent adds it, and LF
-- line endings, the Maildir convention.
local function mail_file(mailfrom, data)
  return "Return-Path: <" .. mailfrom .. ">\n" .. data:gsub("\r\n", "\n")
end

local function deliver(text)
  local name = unique_name()
  local tmp, new = maildir .. "/tmp/" .. name, maildir .. "/new/" .. name
  local f, err = io.open(tmp, "wb")
  if not f then
    return nil, err
  end
  local ok, werr = f:write(text)
  local closed, cerr = f:close()
  if not (ok and closed) then
    os.remove(tmp)
    return nil, werr or cerr
  end
  local renamed, rerr = os.rename(tmp, new)
  if not renamed then
    os.remove(tmp)
    return nil, rerr
  end
  return new
end

function process_message(peer, mailfrom, rcpttos, data, options)
  local path, err = deliver(mail_file(mailfrom, data))
  if not path then
    smtpd.log("error", "maildir delivery failed:", err)
    return "451 4.3.0 Cannot store the message now, try again later"
  end
  smtpd.log("info", "delivered", #data, "bytes from <" .. mailfrom .. "> to", path)
end
