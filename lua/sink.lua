-- Accepts every message and keeps none of it: the handler to measure the server with.

function process_message(peer, mailfrom, rcpttos, data, options)
  return nil
end
