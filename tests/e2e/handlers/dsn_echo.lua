-- Test fixture: answers each message with what the handler got of DSN (RFC 3461), in one
-- 250 reply, so a client sees options.dsn and options.rcpt_dsn without a file in between:
--   250 2.0.0 ret=HDRS envid=abc+ | b@x notify=SUCCESS,FAILURE orcpt=rfc822;b@x | ... |
--   mail_options=... | rcpt_options=...
-- A field that is absent shows as "-". on_rcpt records the params its hook got the same way.
local hooked = {}

function on_mail(session, address, params)
  hooked = { "on_mail=" .. table.concat(params, ",") }
end

function on_rcpt(session, address, params)
  hooked[#hooked + 1] = "on_rcpt=" .. table.concat(params, ",")
end

function process_message(peer, mailfrom, rcpttos, data, options)
  local dsn = options.dsn
  local parts = { "ret=" .. (dsn.ret or "-") .. " envid=" .. (dsn.envid or "-") }
  assert(#options.rcpt_dsn == #rcpttos, "one rcpt_dsn per recipient")
  for i, r in ipairs(rcpttos) do
    local d = options.rcpt_dsn[i]
    parts[#parts + 1] = r .. " notify=" .. (d.notify and table.concat(d.notify, ",") or "-")
                        .. " orcpt=" .. (d.orcpt or "-")
  end
  parts[#parts + 1] = "mail_options=" .. table.concat(options.mail_options, ",")
  parts[#parts + 1] = "rcpt_options=" .. table.concat(options.rcpt_options, ",")
  parts[#parts + 1] = table.concat(hooked, " ")
  return "250 2.0.0 " .. table.concat(parts, " | ")
end
