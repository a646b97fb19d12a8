package main

// The compiled-in plugins: this list is the one place a plugin is added to
// smtpd. Each package registers itself under its folder name at init.
// `smtpd plugins` prints them with the hooks each implements.
import (
	_ "github.com/sluice-mta/sluice/plugins/authfile"
	_ "github.com/sluice-mta/sluice/plugins/authresults"
	_ "github.com/sluice-mta/sluice/plugins/chaos"
	_ "github.com/sluice-mta/sluice/plugins/checkpassword"
	_ "github.com/sluice-mta/sluice/plugins/discard"
	_ "github.com/sluice-mta/sluice/plugins/dkim"
	_ "github.com/sluice-mta/sluice/plugins/dkimsign"
	_ "github.com/sluice-mta/sluice/plugins/dmarc"
	_ "github.com/sluice-mta/sluice/plugins/dnsbl"
	_ "github.com/sluice-mta/sluice/plugins/dovecotauth"
	_ "github.com/sluice-mta/sluice/plugins/example"
	_ "github.com/sluice-mta/sluice/plugins/external"
	_ "github.com/sluice-mta/sluice/plugins/lmtp"
	_ "github.com/sluice-mta/sluice/plugins/loop"
	_ "github.com/sluice-mta/sluice/plugins/maildir"
	_ "github.com/sluice-mta/sluice/plugins/maxrcpt"
	_ "github.com/sluice-mta/sluice/plugins/policy"
	_ "github.com/sluice-mta/sluice/plugins/qmailcontrol"
	_ "github.com/sluice-mta/sluice/plugins/qmailqueue"
	_ "github.com/sluice-mta/sluice/plugins/ratelimit"
	_ "github.com/sluice-mta/sluice/plugins/rcptok"
	_ "github.com/sluice-mta/sluice/plugins/relay"
	_ "github.com/sluice-mta/sluice/plugins/rhsbl"
	_ "github.com/sluice-mta/sluice/plugins/senderlogin"
	_ "github.com/sluice-mta/sluice/plugins/size"
	_ "github.com/sluice-mta/sluice/plugins/smtpforward"
	_ "github.com/sluice-mta/sluice/plugins/spf"
)
