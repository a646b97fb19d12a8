// Package hooks is the contract between Sluice and its plugins: the codes a
// plugin answers with, the Result it returns, one single-method interface
// per hook, the plugin registry and the Chain that runs a listener's
// plugins. It is small on purpose; hooks/hookstest is the test kit beside
// it, as net/http/httptest is to net/http.
//
// # The contract in short
//
// A plugin is any value that implements one or more hook interfaces
// (Connect, Helo, Mail, Rcpt, DataPost, Queue, ...). Register its
// constructor at init under its one lowercase name:
//
//	func init() { hooks.Register("rcptok", New) }
//
//	func New(decode hooks.Decoder) (*Plugin, error) {
//		p := &Plugin{}
//		if err := decode(&p.cfg); err != nil { // its [plugins.NAME] table
//			return nil, err
//		}
//		if len(p.cfg.Domains) == 0 { // construction is validation
//			return nil, errors.New("domains: list at least one domain")
//		}
//		return p, nil
//	}
//
// The hooks it implements are read off its method set once, when the chain
// is built (HooksOf); a plugin that implements no hook is an error. Each
// hook is a Hook constant (HookConnect, HookRcpt, ...) that prints as the
// name used below, in logs and by `smtpd plugins` ("rcpt", "data_post");
// ParseHook reads a name back.
//
// Three optional interfaces are not hooks; a plugin implements them beside
// at least one hook. An io.Closer runs when the chain is retired (reload,
// shutdown). A SizeLimiter lowers the message size cap. A DSNCarrier is a
// queue plugin that carries the DSN parameters of RFC 3461 (RET, ENVID,
// NOTIFY, ORCPT) on to where it hands the message: Chain.CarriesDSN is
// true only when the chain has at least one queue plugin and every queue
// plugin is a DSNCarrier whose CarriesDSN returns true (asked once, when
// the chain is built). The server offers DSN exactly then: EHLO lists it,
// and the four parameters are accepted and kept in tx.Params (Ret, EnvID)
// and tx.RcptParams (Notify, ORcptType, ORcpt by recipient); elsewhere they
// get 555 5.5.4. smtpforward, lmtp and smtpproxy are DSNCarriers that say
// yes when they have a dsn_queue to send notifications through. A
// DSNCarrier that is no queue plugin counts for nothing. A Router is a
// queue plugin that hands part of a message on to other queue plugin
// instances named in its settings (a fallback, a bounce route); the
// configuration builds them and calls SetRoutes before any hook runs.
//
// Plugins run in the order the listener's plugins list gives. At each hook
// the chain calls them one after the other until one returns something
// other than Declined: that plugin decides, the rest are not called. When
// every plugin declines, the hook's default applies (the Declined row of the
// tables below).
//
// A hook returns a Result. Result{} declines. Code is the decision; Msg
// replaces the default text of the reply (line breaks are turned into
// spaces: a plugin cannot forge a second reply); Enhanced replaces the
// default RFC 3463 code, its class (the first digit) forced to match the
// reply's, and is ignored on replies that carry none (the greeting, the
// HELO/EHLO answer, 354). ReplyCode replaces the reply code within its
// class (a DenySoft at rcpt may answer 452 rather than 450); a code of
// another class is ignored, and so is any change to 220, 221, 235 and 354.
// Detail is text for the log only (the file a queue wrote, a downstream's
// answer): the server logs a queue's OK with it. Err is logged with the
// plugin's name and never shown to the client: never put an internal
// error's text in Msg.
//
// The chain fails closed. A plugin that panics, that returns an Err with a
// code that does not reject (Declined, OK, Done), that returns a code that
// is not one of the constants, or that is still running when the hook's
// deadline passes (Options.Timeout, default 30s, carried by ctx) is taken to
// have answered DenySoft: the client is told to retry later, the failure is
// logged at ERROR with the plugin's name, and the plugins after it are not
// called. Fail(err), a DenySoft with an Err and neither Msg nor ReplyCode,
// is a failure too (ERROR, "plugin error"). Any other rejection that
// carries an Err (a Deny, a DenySoft with words of its own, a queue's
// refusal) is a decision: it keeps its reply and its Err is logged at WARN
// ("plugin refused"). Watch ctx.Done() in anything that waits.
//
// Each run of a hook gives its plugins a fresh ctx, derived from the
// connection's and cancelled for good when the hook returns: a ctx a
// plugin keeps past its hook stays done (Err is non-nil, Done is closed),
// also during the transaction's next hooks.
//
// Plugins are shared by every connection of their listeners and must be
// safe for concurrent use, like an http.Handler. Per-connection state lives
// in c.Notes, per-message state in tx.Notes (cleared when the transaction
// ends), never in plugin fields. Name notes "<plugin>.<key>". A plugin that
// waits on the network starts early (connect) and collects late (rcpt)
// rather than starting a goroutine per call.
//
// The codes:
//
//	Declined            no opinion: ask the next plugin (the zero value)
//	OK                  accept; stop the chain for this hook
//	Deny                reject permanently (5xx)
//	DenySoft            reject temporarily (4xx): the client retries later
//	DenyDisconnect      reject permanently, then close the connection
//	DenySoftDisconnect  reject temporarily, then close the connection
//	Done                the plugin took care of it: the hook's success reply;
//	                    at data_post and queue_pre the message is not queued
//
// # Replies
//
// The tables below give, for each hook, the reply each Code produces
// (ReplyFor) when the plugin sets no Msg or Enhanced; "(closes)" means the
// server closes the connection after the reply, and "no reply" means the
// command goes on to the next stage. The server adds a few details of its
// own: the greeting and the HELO/EHLO answer start with the listener's host
// name when no plugin set a Msg ("220 mx.example.test ESMTP Sluice ready",
// "250 mx.example.test Hello client.example"), the QUIT answer reads "221
// 2.0.0 HOSTNAME closing connection", and a queued message is answered "250
// 2.0.0 Ok: queued as QUEUEID".
//
// Some replies come from the server before any plugin runs. It reads and
// parses every command itself, strictly, in one state machine
// (server.Session): 501, 553 or 555 for a malformed command, address or
// parameter, 503 5.5.1 for commands out of order (a second MAIL, RCPT
// before MAIL, DATA or BDAT before MAIL), 554 5.5.1 for DATA or BDAT with
// no accepted recipient, 452 4.5.3 past the recipient limit, 552 5.3.4 for
// a SIZE= or a message over the size limit. It also answers RSET (250
// 2.0.0 Session reset), STARTTLS, the SASL exchange of AUTH (the auth hook
// only checks the credentials) and each BDAT chunk but the last (250 2.0.0
// N octets received). docs/hooks.md lists every such reply.
//
// # The connect hook
//
// Fires when a client connects, before the greeting: after the listener's
// greeting_delay, which a client that talks first cuts short and which
// then sets c.EarlyTalker. c.Remote and c.Local are set, c.Helo is not. A
// plugin may refuse the client (every rejection closes the connection; RFC
// 5321 wants 554 or 421 here, not qpsmtpd's 550/450), mark it c.Relay, and
// start slow lookups (DNS) whose answers it keeps in c.Notes for a later
// hook.
//
//	Declined            220 ESMTP Sluice ready
//	OK, Done            220 ESMTP Sluice ready
//	Deny                554 5.7.1 Connection refused (closes)
//	DenySoft            421 4.7.0 Service temporarily unavailable, try again later (closes)
//	DenyDisconnect      554 5.7.1 Connection refused (closes)
//	DenySoftDisconnect  421 4.7.0 Service temporarily unavailable, try again later (closes)
//
// # The helo and ehlo hooks
//
// Fire at HELO and EHLO with the name the client gave, the first word of
// its argument (the server refuses a missing name, and one with control
// characters or bytes that are not UTF-8, before the hook); c.Helo and
// c.ESMTP are already set (and cleared again when the chain rejects). A new
// HELO or EHLO first ends the transaction in progress, as RSET does. A
// plugin may check the name and reject it, or note what it found.
//
//	Declined            250 Hello
//	OK, Done            250 Hello
//	Deny                550 5.7.1 HELO rejected
//	DenySoft            450 4.7.1 HELO temporarily rejected
//	DenyDisconnect      550 5.7.1 HELO rejected (closes)
//	DenySoftDisconnect  421 4.7.1 HELO temporarily rejected (closes)
//
// # The auth hook
//
// Fires at AUTH (PLAIN or LOGIN) once the client has sent its credentials,
// over TLS unless the listener allows plaintext, with the mechanism, the
// user name and the password; the server runs the SASL exchange (334
// challenges, a cancel with "*", base64) itself. The first OK
// authenticates: the server sets c.AuthUser and c.Relay. A plugin that
// cannot reach its backend answers DenySoft (or Fail). Never log or note
// the password.
//
//	Declined            535 5.7.8 Authentication credentials invalid
//	OK, Done            235 2.7.0 Authentication successful
//	Deny                535 5.7.8 Authentication credentials invalid
//	DenySoft            454 4.7.0 Temporary authentication failure
//	DenyDisconnect      535 5.7.8 Authentication credentials invalid (closes)
//	DenySoftDisconnect  421 4.7.0 Temporary authentication failure (closes)
//
// # The mail_pre hook
//
// Fires at MAIL FROM before the mail hook, on a new transaction (empty
// tx.Notes). A plugin may rewrite *from, the reverse-path without angle
// brackets (an SRS or BATV address back to the real one); the mail hook,
// tx.Sender and the queue see the rewritten address. A rejection ends the
// command; anything else goes on to the mail hook.
//
//	Declined, OK, Done  no reply: the mail hook runs
//	Deny                550 5.7.1 Sender rejected
//	DenySoft            450 4.7.1 Sender temporarily rejected
//	DenyDisconnect      550 5.7.1 Sender rejected (closes)
//	DenySoftDisconnect  421 4.7.1 Sender temporarily rejected (closes)
//
// # The mail hook
//
// Fires at MAIL FROM; tx.Sender ("" for the null sender of bounces) and
// tx.Params are set. The sender is accepted unless a plugin rejects it.
//
//	Declined            250 2.1.0 Sender OK
//	OK, Done            250 2.1.0 Sender OK
//	Deny                550 5.7.1 Sender rejected
//	DenySoft            450 4.7.1 Sender temporarily rejected
//	DenyDisconnect      550 5.7.1 Sender rejected (closes)
//	DenySoftDisconnect  421 4.7.1 Sender temporarily rejected (closes)
//
// # The rcpt_pre hook
//
// Fires at each RCPT TO before the rcpt hook. A plugin may rewrite *rcpt,
// the forward-path without angle brackets (an alias, a sub-address); the
// rcpt hook and tx.Recipients get the rewritten address.
//
//	Declined, OK, Done  no reply: the rcpt hook runs
//	Deny                550 5.7.1 Recipient rejected
//	DenySoft            450 4.7.1 Recipient temporarily rejected
//	DenyDisconnect      550 5.7.1 Recipient rejected (closes)
//	DenySoftDisconnect  421 4.7.1 Recipient temporarily rejected (closes)
//
// # The rcpt hook
//
// Fires at each RCPT TO. The recipient is not yet in tx.Recipients: it is
// added when the reply is positive (OK or Done). Some plugin must accept
// each recipient (a local domain list, a relay client, an authenticated
// user): when all decline the recipient is deferred, so that a
// misconfiguration delays mail instead of bouncing or relaying it.
//
//	Declined            450 4.7.1 No plugin decided if relaying is allowed
//	OK, Done            250 2.1.5 Recipient OK
//	Deny                550 5.7.1 Recipient rejected
//	DenySoft            450 4.7.1 Recipient temporarily rejected
//	DenyDisconnect      550 5.7.1 Recipient rejected (closes)
//	DenySoftDisconnect  421 4.7.1 Recipient temporarily rejected (closes)
//
// # The rcpt_ok hook
//
// Fires at each RCPT TO that the rcpt hook accepted (OK or Done), once the
// recipient is in tx.Recipients and before the 250 is sent (Haraka's
// rcpt_ok). Every plugin runs; it returns nothing and cannot change the
// reply. It lets a plugin see the accepted recipients without being the
// one that accepts them.
//
// # The data hook
//
// Fires at DATA, before the 354, or at the first BDAT chunk of a message
// (CHUNKING, RFC 3030; no 354 then: the chunk is read), once there is at
// least one recipient. A plugin may refuse the whole transaction here (the
// last point before the client sends the message); a refused BDAT chunk is
// read and dropped, and so is the rest of its sequence.
//
//	Declined            354 End data with <CR><LF>.<CR><LF>
//	OK, Done            354 End data with <CR><LF>.<CR><LF>
//	Deny                554 5.7.1 Message rejected
//	DenySoft            451 4.7.1 Message temporarily rejected
//	DenyDisconnect      554 5.7.1 Message rejected (closes)
//	DenySoftDisconnect  421 4.7.1 Message temporarily rejected (closes)
//
// # The data_headers_end hook
//
// Fires once the header section is read, before the body: tx.Header is
// set, tx.Body is still empty. A plugin may reject on the header alone.
// After Deny or DenySoft the server reads and drops the body and answers
// after the final dot (or the last BDAT chunk); after the disconnect codes
// it answers and closes at once. qpsmtpd honours only the disconnect codes
// here.
//
//	Declined, OK, Done  no reply: the body is read
//	Deny                554 5.7.1 Message rejected
//	DenySoft            451 4.7.1 Message temporarily rejected
//	DenyDisconnect      554 5.7.1 Message rejected (closes)
//	DenySoftDisconnect  421 4.7.1 Message temporarily rejected (closes)
//
// # The received_line hook
//
// Fires once the message is read, before the server prepends its Received
// header. A plugin may replace the header's value: set *line (the text
// after "Received: ", folded with CRLF and a tab if long) and return OK.
// A refusal, or a failure (panic, error, deadline), stops the message:
//
//	Declined, OK, Done  no reply: data_post runs
//	Deny                554 5.7.1 Message rejected
//	DenySoft            451 4.3.0 Local error in processing; try again later
//	DenyDisconnect      554 5.7.1 Message rejected (closes)
//	DenySoftDisconnect  421 4.3.0 Local error in processing; try again later (closes)
//
// # The data_post hook
//
// Fires when the whole message is spooled and the Received header added:
// tx.Header, tx.Body (read it with tx.Body.Reader, as often as needed) and
// tx.Size are set. Content filters run here; a plugin may add, change and
// remove header fields (tx.Header.Prepend for trace fields). Done means the
// plugin took the message itself: the client gets 250 2.0.0 with the
// plugin's Msg (or "Ok: accepted by PLUGIN") and nothing is queued.
//
//	Declined, OK        no reply: queue_pre and queue run
//	Done                250 2.0.0 with Msg or "Ok: accepted by PLUGIN"; not queued
//	Deny                552 5.7.1 Message rejected
//	DenySoft            452 4.7.1 Message temporarily rejected
//	DenyDisconnect      552 5.7.1 Message rejected (closes)
//	DenySoftDisconnect  421 4.7.1 Message temporarily rejected (closes)
//
// # The queue_pre hook
//
// Fires just before the queue hook, as data_post does; Done again means the
// message is not queued.
//
//	Declined, OK        no reply: the queue hook runs
//	Done                250 2.0.0 with Msg or "Ok: accepted by PLUGIN"; not queued
//	Deny                552 5.7.1 Message rejected
//	DenySoft            452 4.3.0 Queueing temporarily refused
//	DenyDisconnect      552 5.7.1 Message rejected (closes)
//	DenySoftDisconnect  421 4.3.0 Queueing temporarily refused (closes)
//
// # The queue hook
//
// Hands the message over (tx.WriteTo streams header and body once). OK
// means the message is durably stored, and only OK gives the client its 250
// ("Ok: queued as QUEUEID"; set tx.QueueID, else tx.ID is used). A listener
// whose queue plugins all decline defers every message.
//
//	Declined            451 4.3.0 Queuing declined or disabled; try again later
//	OK                  250 2.0.0 Ok: queued
//	Done                250 2.0.0 with Msg or "Ok: accepted by PLUGIN"; not queued
//	Deny                554 5.3.0 Message refused by the queue
//	DenySoft            451 4.3.0 Queueing failed; try again later
//	DenyDisconnect      554 5.3.0 Message refused by the queue (closes)
//	DenySoftDisconnect  421 4.3.0 Queueing failed; try again later (closes)
//
// # The queue_post hook
//
// Fires after a queue plugin answered OK (the message is queued) and
// before the client is told so: the server runs it before it sends the
// 250, whose text is already decided and cannot be changed here. Every
// plugin runs; it returns nothing. The client waits for its 250 meanwhile:
// keep it short.
//
// # The reset_transaction hook
//
// Fires whenever a transaction ends: at RSET, at a new HELO or EHLO, after
// the end of DATA or of the last BDAT chunk (queued or not), when another
// command interrupts a BDAT sequence before its last chunk, and at
// disconnect with a transaction in progress. Every plugin runs; it returns
// nothing. tx.Notes go with the transaction; c.Notes stay.
//
// # The disconnect hook
//
// Fires once when the connection ends, whoever closed it, after
// reset_transaction. Every plugin runs; it returns nothing.
//
// # The vrfy hook
//
// Fires at VRFY with its argument. By default the server neither confirms
// nor denies an address.
//
//	Declined            252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery
//	OK, Done            250 2.1.5 User OK
//	Deny                554 5.7.1 Access denied
//	DenySoft            450 4.7.1 Try again later
//	DenyDisconnect      554 5.7.1 Access denied (closes)
//	DenySoftDisconnect  421 4.7.1 Try again later (closes)
//
// # The noop hook
//
// Fires at NOOP. A plugin may punish clients that stall with NOOPs.
//
//	Declined            250 2.0.0 OK
//	OK, Done            250 2.0.0 OK
//	Deny                500 5.5.1 Stop that
//	DenySoft            450 4.7.1 Stop that
//	DenyDisconnect      521 5.7.0 Closing connection (closes)
//	DenySoftDisconnect  421 4.7.0 Closing connection (closes)
//
// # The help hook
//
// Fires at HELP with its optional argument.
//
//	Declined            214 2.0.0 See RFC 5321 and https://www.rfc-editor.org/rfc/rfc5321
//	OK, Done            214 2.0.0 Help
//	Deny                502 5.5.1 HELP not available
//	DenySoft            450 4.7.1 HELP not available
//	DenyDisconnect      502 5.5.1 HELP not available (closes)
//	DenySoftDisconnect  421 4.7.1 HELP not available (closes)
//
// # The quit hook
//
// Fires at QUIT, before the reply and the close. Whatever the plugins
// answer, the client gets its 221 and the connection closes.
//
//	Declined            221 2.0.0 Bye (closes)
//	OK, Done            221 2.0.0 Bye (closes)
//	Deny, DenySoft      221 2.0.0 Bye (closes)
//	DenyDisconnect      221 2.0.0 Bye (closes)
//	DenySoftDisconnect  221 2.0.0 Bye (closes)
//
// # The unrecognized_command hook
//
// Fires for a command Sluice does not know, with the verb and its
// argument. A plugin that implements the command answers OK (250 with its
// Msg) or Done.
//
//	Declined            500 5.5.1 Unrecognized command
//	OK, Done            250 2.0.0 OK
//	Deny                500 5.5.1 Unrecognized command
//	DenySoft            450 4.7.1 Command temporarily refused
//	DenyDisconnect      521 5.5.1 Unrecognized command; closing connection (closes)
//	DenySoftDisconnect  421 4.7.1 Command refused; closing connection (closes)
//
// # The deny and ok hooks
//
// DenyObserver and OKObserver are told of every decision a plugin makes
// that rejects (any Deny code) or accepts (OK), at any hook, with the
// plugin's name, the hook and the Result: for logs, metrics and reputation.
// They cannot change the outcome and are not told of Declined or Done. They
// run after the decision, with a deadline of their own.
package hooks
