-- Test fixture: session.trusted and smtpd.networks, answered at MAIL. The sender's local part
-- picks the case:
--   trusted   -> "250 2.1.0 trusted=<session.trusted>"
--   match     -> "250 2.1.0 <tostring(list)> addr=true|false ...": --set list= against
--                --set probe= (comma-separated addresses)
--   anything in `misuse` below -> "250 2.1.0 ok=<pcall's status> <its error>"
local smtpd = require "smtpd"
local settings = smtpd.settings

local misuse = {
  none = function() return smtpd.networks() end,
  table = function() return smtpd.networks({}) end,
  bad = function() return smtpd.networks("10.0.0.0/8, 127.0.0.1/8") end,
  name = function() return smtpd.networks("localhost") end,
  noaddr = function() return smtpd.networks("::1"):contains() end,
  notself = function() local n = smtpd.networks("::1"); return n.contains({}, "::1") end,
}

function on_mail(session, address)
  local what = address:match("^([^@]*)")
  if what == "trusted" then
    return "250 2.1.0 trusted=" .. tostring(session.trusted)
  elseif what == "match" then
    local nets = smtpd.networks(settings.list or "")
    local got = { tostring(nets) }
    for a in (settings.probe or ""):gmatch("[^,]+") do
      got[#got + 1] = a .. "=" .. tostring(nets:contains(a))
    end
    return "250 2.1.0 " .. table.concat(got, " ")
  end
  local ok, err = pcall(misuse[what])
  return "250 2.1.0 ok=" .. tostring(ok) .. " " .. tostring(err)
end

function process_message()
  return nil
end
