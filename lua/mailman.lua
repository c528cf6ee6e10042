-- Hands list mail to Mailman the way MTAs do, and relays everything else upstream as
-- pureproxy does. What Python's MailmanProxy did, made right: hyphenated list names work, the
-- server never blocks on a delivery, and a message is delivered whole or not at all.
--   * Mailman 2 (default): LIST@ and LIST-COMMAND@ (request, owner, join, ...) for a list with
--     a directory under mailman_lists are piped to the wrapper; Mailman 3 (mailman_lmtp): the
--     addresses Mailman's LMTP server takes at RCPT are list mail. See lua/smtpd/mailman.lua.
--   * With mailman_domains=lists.example,... only those domains have lists, and a recipient
--     there that is no list gets 550 5.1.1 (relaying it could loop back); without it, any
--     domain may.
--   * One destination per transaction: a recipient that needs another gets 452 and comes
--     again in the client's next transaction, so a message's one answer is its answer.
--   * Mailman down: 451 at RCPT for the addresses that may be lists; the client retries.
-- Settings: mailman_wrapper (/usr/lib/mailman/mail/mailman), mailman_lists
-- (/var/lib/mailman/lists), mailman_lmtp (HOST:PORT), mailman_domains, mailman_timeout
-- (seconds, 120), and those of lua/smtpd/proxy.lua for the rest.
local proxy = require "smtpd.proxy"
local mailman = require "smtpd.mailman"
local received = require "smtpd.received"

function on_mail(session, address, params)
  mailman.mail(session, address, params)
end

function on_rcpt(session, address, params)
  -- List mail: Mailman decides which addresses are lists.
  if mailman.list_domain(address) then
    local list, reply = mailman.list(session, address)
    if list == nil then return reply end -- Mailman cannot tell now
    if list then return mailman.take(session, list) end
    if mailman.domains then return mailman.NO_SUCH_LIST end
  end
  -- The rest goes upstream, for the clients that may relay: no open relay.
  if not proxy.may_relay(session) then
    return "554 5.7.1 Relaying denied for " .. session.peer[1]
  end
  return mailman.relay(session, address, params)
end

-- The client left mid-transaction: let Mailman and the upstream go, so neither delivers.
function on_disconnect(session)
  mailman.close(session)
end

function process_message(peer, mailfrom, rcpttos, data, options)
  local session = options.session
  if not mailman.relayed(session) then
    return mailman.deliver(session, data, mailfrom, options)
  end
  local reply = proxy.data(session, received.add(data, options,
                                                 { rcpts = proxy.recipients(session) }))
  mailman.relay_done(session)
  return reply
end
