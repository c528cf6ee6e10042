-- Relays every message to the upstream server given on the command line (remotehost:port), as
-- Python's PureProxy set out to, without its faults: nothing is lost, nothing dropped silently.
--   * Each recipient is put to the upstream at RCPT time; one it refuses is refused to our
--     client with the upstream's own code and text.
--   * Upstream down, slow or failing: the client gets 451 and retries later.
--   * 250 after DATA only once the upstream said 2xx for the message.
--   * Only clients in `relay_clients` may relay (loopback by default): no open relay.
-- Settings: relay_clients, relay_timeout (see lua/smtpd/proxy.lua).
local proxy = require "smtpd.proxy"
local message = require "smtpd.message"

function on_mail(session, address, params)
  if not proxy.may_relay(session.peer[1]) then
    return "554 5.7.1 Relaying denied for " .. session.peer[1]
  end
  return proxy.open(session, address, params)
end

function on_rcpt(session, address, params)
  return proxy.rcpt(session, address)
end

-- The client left mid-transaction: let the upstream go at once, so it discards what it has.
function on_disconnect(session)
  proxy.close(session)
end

function process_message(peer, mailfrom, rcpttos, data, options)
  -- As Python's PureProxy: X-Peer at the end of the headers.
  return proxy.data(options.session, message.add_header(data, "X-Peer: " .. peer[1]))
end
