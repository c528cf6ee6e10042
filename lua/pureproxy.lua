-- Relays every message to the upstream server given on the command line (remotehost:port), as
-- Python's PureProxy set out to, without its faults: nothing is lost, nothing dropped silently.
--   * Each recipient is put to the upstream at RCPT time; one it refuses is refused to our
--     client with the upstream's own code and text. A recipient given twice goes up once.
--   * Upstream down, slow or failing: the client gets 451 and retries later.
--   * After DATA, the upstream's own answer: any 2xx it gives is delivery, passed on with its
--     text (its queue id) made a valid reply; its 4xx/5xx likewise.
--   * What the upstream does not offer is refused, never sent: SMTPUTF8 (553/554 5.6.7),
--     8BITMIME (554 5.6.3), its SIZE (552 5.3.4); see lua/smtpd/proxy.lua. DSN's parameters
--     go along when it offers DSN, and are dropped when it does not.
--   * Each message gets a Received: line on top (lua/smtpd/received.lua) and, as Python's
--     PureProxy did, X-Peer: at the end of its headers.
--   * Only clients in `relay_clients` may relay (--trusted-networks by default, loopback
--     unless told otherwise): no open relay.
--   * TLS and AUTH to the upstream: STARTTLS when offered by default; relay_tls=require (or
--     implicit, for port 465) with relay_user and relay_password_file for a smarthost.
-- Settings: relay_clients, relay_timeout, relay_data_timeout, relay_tls, relay_cafile,
-- relay_user, relay_password_file (see lua/smtpd/proxy.lua).
local proxy = require "smtpd.proxy"
local message = require "smtpd.message"
local received = require "smtpd.received"

function on_mail(session, address, params)
  if not proxy.may_relay(session) then
    return "554 5.7.1 Relaying denied for " .. session.peer[1]
  end
  return proxy.open(session, address, params)
end

function on_rcpt(session, address, params)
  return proxy.rcpt(session, address, params)
end

-- The client left mid-transaction: let the upstream go at once, so it discards what it has.
function on_disconnect(session)
  proxy.close(session)
end

function process_message(peer, mailfrom, rcpttos, data, options)
  local session = options.session
  data = received.add(data, options, { rcpts = proxy.recipients(session) })
  -- As Python's PureProxy: X-Peer at the end of the headers.
  return (proxy.data(session, message.add_header(data, "X-Peer: " .. peer[1])))
end
