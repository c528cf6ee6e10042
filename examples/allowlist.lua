-- Takes mail only for the recipients on a list, and relays it to the upstream given on the
-- command line: a gate in front of a server that would otherwise take anything.
--
--   luasmtpd -n -c examples/allowlist.lua --set allowlist=/etc/luasmtpd/allowed 0.0.0.0:25 \
--     127.0.0.1:2525
--
-- The file holds one entry a line: a full address (alice@example.org), or @domain for every
-- address in that domain; blank lines and lines starting with # are skipped. Entries and
-- addresses are compared in lower case. Recipients not on the list are refused at RCPT with
-- 550 5.1.1, so the client learns at once and the message never needs a bounce. The file is
-- read when the script loads: after editing it, reload with SIGHUP.
local smtpd = require "smtpd"

local path = assert(smtpd.settings.allowlist, "name the list: --set allowlist=FILE")
local allowed = {}
for line in assert(io.lines(path)) do
  local entry = line:match("^%s*(.-)%s*$"):lower()
  if entry ~= "" and entry:sub(1, 1) ~= "#" then
    allowed[entry] = true
  end
end

function on_rcpt(session, address, params)
  local addr = address:lower()
  if allowed[addr] or allowed[addr:match("(@[^@]*)$") or ""] then
    return nil
  end
  return "550 5.1.1 <" .. address .. ">: Recipient address rejected: not on the list"
end

function process_message(peer, mailfrom, rcpttos, data, options)
  local refused, err = smtpd.relay{ from = mailfrom, to = rcpttos, data = data }
  if not refused then
    smtpd.log("warn", "upstream", smtpd.remote.host .. ":" .. smtpd.remote.port .. ":", err)
    return "451 4.4.1 Upstream unavailable, try again later"
  end
  -- The upstream refused some recipients. One reply after DATA speaks for the whole message:
  -- a 4xx makes the client retry it all, a 5xx makes it bounce it all (lua/pureproxy.lua asks
  -- the upstream at RCPT time instead, so each recipient gets its own answer).
  local worst
  for rcpt, reply in pairs(refused) do
    smtpd.log("warn", "upstream refused", rcpt .. ":", reply[1], reply[2])
    if not worst or reply[1] < worst[1] then worst = reply end
  end
  if worst then
    return smtpd.reply(worst[1], worst[2])
  end
end
