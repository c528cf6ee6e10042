-- Test fixture: authenticate() for the AUTH tests. alice's password is "s3cret wonder";
-- "yielder" is checked by waiting on smtpd.pipe (/bin/true, password "pipe-pass"); "boom"
-- raises; "sleeper" waits on a child that sleeps 30 s; "custom" is refused with the script's own reply; "chatty" is answered with a 2xx
-- that is not 235. on_mail answers "250 2.1.0 auth=<session.auth>", process_message
-- "250 2.0.0 auth=<options.session.auth> protocol=<Received: protocol>".
local smtpd = require "smtpd"
local received = require "smtpd.received"

function authenticate(session, mechanism, username, password)
  if username == "boom" then
    error("authenticator exploded")
  elseif username == "custom" then
    return "535 5.7.8 custom refusal for " .. mechanism
  elseif username == "chatty" then
    return "250 2.0.0 fine"
  elseif username == "sleeper" then
    smtpd.pipe({ "sleep", "30" }, "")
    return true
  elseif username == "yielder" then
    local status = smtpd.pipe({ "/bin/true" }, "")
    return status == 0 and password == "pipe-pass"
  end
  return username == "alice" and password == "s3cret wonder"
end

function on_mail(session, address, params)
  return "250 2.1.0 auth=" .. tostring(session.auth)
end

function process_message(peer, mailfrom, rcpttos, data, options)
  return "250 2.0.0 auth=" .. tostring(options.session.auth) .. " protocol=" ..
         received.protocol(options)
end
