// Command smtpd is Sluice's SMTP server.
//
//	smtpd [-config FILE]          serve (default config: /etc/sluice/smtpd.toml)
//	smtpd check [-config FILE]    validate the configuration, build every plugin, exit
//	smtpd stdio [-config FILE]    serve one connection on stdin/stdout (tcpserver, inetd)
//	smtpd policy [-config FILE] [-address A]
//	                              serve Postfix's policy delegation protocol with a listener's plugins
//	smtpd policy -test [name=value...]
//	                              send one policy request as Postfix would, print the action
//	smtpd plugins                 list the compiled-in plugins and their hooks
//	smtpd passwd [-file F] USER   set USER's password in an authfile password file
//	smtpd dkim-keygen -domain D -selector S [-algorithm rsa|ed25519] [-bits N] [-out F]
//	                              write a DKIM signing key, print its DNS record
//	smtpd version                 print the version
//
// The command itself is package cli; plugins.go beside this file is the
// list of compiled-in plugins.
package main

import (
	"os"

	"github.com/sluice-mta/sluice/cmd/smtpd/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
