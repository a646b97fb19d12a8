#!/usr/bin/env bash
# Installs what the tests need when it is missing: swaks (the SMTP client the
# end-to-end tests drive), curl (a scripted submission client), postfix
# (smtp-sink, smtp-source and the private Postfix instances), dovecot-core
# (the real Dovecot the dovecotauth tests authenticate against),
# dovecot-lmtpd (Dovecot's LMTP server, the delivery target of the LMTP
# handoff tests, started privately by queue/queuetest), ucspi-tcp
# (tcpserver and tcprules, which run `smtpd stdio` as qmail sites do),
# python3 (its email package parses the delivery status notifications and
# the 7-bit conversions as a second, independent reader), tinycdb (cdb -c builds the morercpthosts.cdb files the qmail tests read),
# opendkim and opendkim-tools (the real DKIM signer and verifier the dkim and
# dkimsign tests meet), postgrey (the real policy server the policy
# plugin's tests ask), clamav-daemon, spamd and rspamd (the real scanners
# the content filter tests use), and postgresql, mariadb-server and
# redis-server (the real databases the lookup tables, rcptok and bwl
# tests start privately), chromium (the real browser, headless, that the
# live web view's tests drive through chromedp), haproxy (the real PROXY
# protocol sender in front of smtpd in the proxy and scale-out tests), and
# systemd (systemd-analyze verifies the shipped units;
# systemd-socket-activate starts smtpd socket-activated).
# As root it installs with apt-get; otherwise it stops and names the package.
# The packages' own daemons are not started: the tests start private ones.
set -euo pipefail

missing=()
command -v swaks >/dev/null 2>&1 || missing+=(swaks)
command -v curl >/dev/null 2>&1 || missing+=(curl)
[ -x /usr/sbin/smtp-sink ] || missing+=(postfix)
[ -x /usr/sbin/dovecot ] || missing+=(dovecot-core)
[ -x /usr/lib/dovecot/lmtp ] || missing+=(dovecot-lmtpd)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v tcpserver >/dev/null 2>&1 || missing+=(ucspi-tcp)
command -v cdb >/dev/null 2>&1 || missing+=(tinycdb)
[ -x /usr/sbin/opendkim ] || missing+=(opendkim)
{ [ -x /usr/sbin/opendkim-genkey ] && [ -x /usr/sbin/opendkim-testkey ]; } || missing+=(opendkim-tools)
[ -x /usr/sbin/postgrey ] || missing+=(postgrey)
[ -x /usr/sbin/clamd ] || missing+=(clamav-daemon)
[ -x /usr/sbin/spamd ] || missing+=(spamd)
[ -x /usr/bin/rspamd ] || missing+=(rspamd)
[ -x /usr/lib/postgresql/15/bin/postgres ] || missing+=(postgresql)
{ [ -x /usr/sbin/mariadbd ] && [ -x /usr/bin/mariadb-install-db ]; } || missing+=(mariadb-server)
[ -x /usr/bin/redis-server ] || missing+=(redis-server)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/sbin/haproxy ] || missing+=(haproxy)
{ [ -x /usr/bin/systemd-analyze ] && [ -x /usr/bin/systemd-socket-activate ]; } || missing+=(systemd)

[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "make test needs these Debian packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi

echo "installing ${missing[*]} ..." >&2
export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections 2>/dev/null || true
# policy-rc.d: no package starts its daemon (postgrey, opendkim, postfix,
# redis-server).
rcd=/usr/sbin/policy-rc.d
placed=
if [ ! -e "$rcd" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$rcd" && chmod 755 "$rcd" && placed=1
fi
trap '[ -n "$placed" ] && rm -f "$rcd"' EXIT
apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}" >/dev/null
