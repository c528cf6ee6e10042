-- Posts every message's envelope and headers as JSON to a web hook, with curl:
--
--   luasmtpd -n -c examples/webhook.lua --set url=https://hooks.example/mail 127.0.0.1:2525
--
-- The body of the POST:
--   {"peer": "192.0.2.7", "helo": "client.example", "mail_from": "alice@example.org",
--    "rcpt_to": ["bob@example.net"], "size": 1234,
--    "headers": [["From", "Alice <alice@example.org>"], ["Subject", "Hi"], ...]}
-- Headers come in their order, folded lines joined. If curl fails (the hook is down, answers
-- 4xx/5xx, or takes longer than `webhook_timeout` seconds) the client gets 451 and tries again.
local smtpd = require "smtpd"

local url = assert(smtpd.settings.url, "name the hook: --set url=URL")
local timeout = tonumber(smtpd.settings.webhook_timeout) or 30

-- JSON strings. Mail headers may hold bytes that are not UTF-8; such a string is read as
-- Latin-1, so the JSON is always valid.
local escapes = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }
local function json_string(s)
  s = s:gsub('[%c"\\]', function(c) return escapes[c] or ("\\u%04x"):format(c:byte()) end)
  if not utf8.len(s) then
    s = s:gsub("[\128-\255]", function(c) return ("\\u%04x"):format(c:byte()) end)
  end
  return '"' .. s .. '"'
end

local function json(v)
  if type(v) == "table" then
    local parts = {}
    if #v > 0 or next(v) == nil then
      for i, x in ipairs(v) do parts[i] = json(x) end
      return "[" .. table.concat(parts, ",") .. "]"
    end
    for k, x in pairs(v) do parts[#parts + 1] = json_string(k) .. ":" .. json(x) end
    table.sort(parts)
    return "{" .. table.concat(parts, ",") .. "}"
  elseif type(v) == "string" then
    return json_string(v)
  end
  return tostring(v)
end

-- The header fields, in order, as {name, value} pairs.
local function headers(data)
  local head = (data:match("^(.-\r\n)\r\n") or data)
  local out = {}
  for line in head:gmatch("(.-)\r\n") do
    if line:match("^[ \t]") and #out > 0 then
      out[#out][2] = out[#out][2] .. " " .. line:match("^%s*(.-)$")
    else
      local name, value = line:match("^([^:]+):%s*(.*)$")
      if name then out[#out + 1] = { name, value } end
    end
  end
  return out
end

function process_message(peer, mailfrom, rcpttos, data, options)
  local body = json{ peer = peer[1], helo = options.helo, mail_from = mailfrom,
                     rcpt_to = rcpttos, size = #data, headers = headers(data) }
  local status, output = smtpd.pipe({ "curl", "-sS", "--fail", "-X", "POST",
                                      "-H", "Content-Type: application/json",
                                      "--data-binary", "@-", url },
                                    body, { timeout = timeout })
  if status ~= 0 then
    smtpd.log("warn", "webhook", url .. ":", status or "", output)
    return "451 4.3.0 Web hook unavailable, try again later"
  end
end
