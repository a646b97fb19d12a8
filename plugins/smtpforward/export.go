package smtpforward

import "github.com/sluice-mta/sluice/queue"

// Forwarder returns the downstream client the plugin was built with, for
// plugins built on smtpforward's settings that hold a downstream session
// of their own (smtpproxy). It is shared: do not change it.
func (p *Plugin) Forwarder() *queue.Forwarder { return p.fw }

// Routing returns the routes SetRoutes built from fallback_queue and
// dsn_queue, or nil when there are none (a nil *queue.Routes settles
// nothing: every refusal defers the message).
func (p *Plugin) Routing() *queue.Routes { return p.routes }
