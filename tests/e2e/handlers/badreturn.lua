-- Test fixture: returns a value that is neither nil nor a reply string.
function process_message(peer, mailfrom, rcpttos, data, options)
  return 42
end
