-- Prints every message to stdout, as Python's `python -m smtpd -c DebuggingServer` does
-- (its text form): the envelope options, then the message with an X-Peer header added at the
-- end of the headers. Nothing is delivered.
local pyrepr = require "smtpd.pyrepr"

local out = io.stdout
out:setvbuf("full")

-- Python prints the message line by line; lines end in CRLF here and never hold a bare CR
-- or LF, so turning each CRLF into "\n" prints the same, without a table of lines.
local function print_lines(text)
  out:write((text:gsub("\r\n", "\n")))
end

function process_message(peer, mailfrom, rcpttos, data, options)
  out:write("---------- MESSAGE FOLLOWS ----------\n")
  if #options.mail_options > 0 then
    out:write("mail options: ", pyrepr.list(options.mail_options), "\n")
  end
  if #options.rcpt_options > 0 then
    -- Python's print('rcpt options: %s\n') leaves an empty line after it.
    out:write("rcpt options: ", pyrepr.list(options.rcpt_options), "\n\n")
  end
  -- X-Peer goes before the first empty line; a message without one gets none.
  local blank = data:sub(1, 2) == "\r\n" and 1 or data:find("\r\n\r\n", 1, true)
  if blank then
    local head_end = blank == 1 and 0 or blank + 1
    print_lines(data:sub(1, head_end))
    out:write("X-Peer: ", peer[1], "\n")
    print_lines(data:sub(head_end + 1))
  else
    print_lines(data)
  end
  out:write("------------ END MESSAGE ------------\n")
  out:flush()
end
