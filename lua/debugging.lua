-- Prints every message to stdout, as Python's `python -m smtpd -c DebuggingServer` does
-- (its text form): the envelope options, then the message with an X-Peer header added at the
-- end of the headers. Nothing is delivered.
local pyrepr = require "smtpd.pyrepr"

function process_message(peer, mailfrom, rcpttos, data, options)
  local out = { "---------- MESSAGE FOLLOWS ----------" }
  if #options.mail_options > 0 then
    out[#out + 1] = "mail options: " .. pyrepr.list(options.mail_options)
  end
  if #options.rcpt_options > 0 then
    -- Python's print('rcpt options: %s\n') leaves an empty line after it.
    out[#out + 1] = "rcpt options: " .. pyrepr.list(options.rcpt_options) .. "\n"
  end
  local in_headers = true
  for line in data:gmatch("(.-)\r\n") do
    if in_headers and line == "" then
      out[#out + 1] = "X-Peer: " .. peer[1]
      in_headers = false
    end
    out[#out + 1] = line
  end
  out[#out + 1] = "------------ END MESSAGE ------------\n"
  io.stdout:write(table.concat(out, "\n"))
  io.stdout:flush()
end
