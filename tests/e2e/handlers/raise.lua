-- Test fixture: every message raises a Lua error; the server must answer 451 and go on.
function process_message(peer, mailfrom, rcpttos, data, options)
  error("boom")
end
