-- Test fixture: relays each message with smtpd.relay{} to the command line's upstream, passing
-- options.dsn and options.rcpt_dsn on as they came; answers 250 "2.0.0 relayed refused=N", or
-- 451 "4.4.1 relay failed ...". A sender whose local part names a case below instead gives
-- smtpd.relay a wrong dsn or rcpt_dsn, which must raise (the client gets 451 4.3.0).
local smtpd = require "smtpd"

local misuse = {
  ["bad-ret"] = { dsn = { ret = "SOME" } },
  ["bad-envid"] = { dsn = { envid = "tab\there" } },
  ["envid-not-string"] = { dsn = { envid = 7 } },
  ["dsn-not-table"] = { dsn = "RET=FULL" },
  ["bad-notify"] = { rcpt_dsn = { { notify = { "NEVER", "DELAY" } } } },
  ["notify-not-list"] = { rcpt_dsn = { { notify = "SUCCESS" } } },
  ["notify-number"] = { rcpt_dsn = { { notify = { 1 } } } },
  ["bad-orcpt"] = { rcpt_dsn = { { orcpt = "no-type" } } },
  ["long-orcpt"] = { rcpt_dsn = { { orcpt = "rfc822;" .. string.rep("+", 200) } } },
  ["too-many"] = { rcpt_dsn = { {}, {} } },
}

function process_message(peer, mailfrom, rcpttos, data, options)
  local request = { from = mailfrom, to = rcpttos, data = data,
                    dsn = options.dsn, rcpt_dsn = options.rcpt_dsn }
  local case = misuse[mailfrom:match("^(.-)@")]
  if case then
    request.to = rcpttos[1]
    request.dsn, request.rcpt_dsn = case.dsn, case.rcpt_dsn
  end
  local refused, err, code = smtpd.relay(request)
  if not refused then
    return smtpd.reply(451, "4.4.1 relay failed code=" .. tostring(code) .. " " .. tostring(err))
  end
  local n = 0
  for _ in pairs(refused) do n = n + 1 end
  return "250 2.0.0 relayed refused=" .. n
end
