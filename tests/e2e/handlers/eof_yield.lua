-- Test fixture: every hook and process_message waits on a child (smtpd.pipe running
-- `sleep`, --set delay=SECONDS, default 0.2), so each command behind them is answered only
-- after a yield. Logs what it saw at level info:
--   "script: eof mail <address> txn=<session.transaction_id>"
--   "script: eof message id=<options.id> txn=<session.transaction_id> from=<mailfrom>
--    size=<#data>"
local smtpd = require "smtpd"

local delay = smtpd.settings.delay or "0.2"

local function wait()
  local status, err = smtpd.pipe({ "/bin/sh", "-c", "sleep " .. delay }, "")
  assert(status == 0, "the sleep child failed: " .. tostring(err))
end

function on_mail(session, address, params)
  wait()
  smtpd.log("info", "eof mail <" .. address .. "> txn=" .. tostring(session.transaction_id))
end

function on_rcpt(session, address, params)
  wait()
end

function process_message(peer, mailfrom, rcpttos, data, options)
  wait()
  smtpd.log("info", ("eof message id=%s txn=%s from=%s size=%d"):format(
    tostring(options.id), tostring(options.session.transaction_id), mailfrom, #data))
  return nil
end
