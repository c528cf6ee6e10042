-- Test fixture: accepts every message and keeps nothing (Python's SMTPServer subclass whose
-- process_message returns None).
function process_message(peer, mailfrom, rcpttos, data, options)
  return nil
end
