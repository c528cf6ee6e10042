-- Test fixture: calls smtpd.relay while the script loads, which must raise (no handler runs).
local smtpd = require "smtpd"

smtpd.relay{ from = "a@b.example", to = "c@d.example", data = "x\r\n" }

function process_message()
end
