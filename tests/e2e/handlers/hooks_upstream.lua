-- Test fixture: an upstream for the relay tests. With --set dir=DIR it records every message as
-- record.lua does (and answers --set reply=REPLY, if given, after DATA); without, it accepts.
-- Refusals on the settings' say:
--   mail_reply=REPLY    every MAIL gets REPLY
--   refuse_rcpt=ADDRESS the RCPT of ADDRESS gets rcpt_reply (default "550 5.1.1 no such user")
local smtpd = require "smtpd"
local settings = smtpd.settings

if settings.dir then
  require "record" -- beside this script; defines process_message
else
  function process_message()
    return settings.reply
  end
end

function on_mail(session, address, params)
  return settings.mail_reply
end

function on_rcpt(session, address, params)
  if address == settings.refuse_rcpt then
    return settings.rcpt_reply or "550 5.1.1 no such user"
  end
end
