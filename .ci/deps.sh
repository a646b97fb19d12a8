#!/usr/bin/env bash
# Installs what the tests need when it is missing: swaks (the SMTP client the
# end-to-end tests drive), curl (a scripted submission client), postfix (smtp-sink and smtp-source),
# dovecot-core (the real Dovecot the dovecotauth tests authenticate against) and
# postgrey (the real policy server the policy plugin's tests ask).
# As root it installs with apt-get; otherwise it stops and names the package.
set -euo pipefail

missing=()
command -v swaks >/dev/null 2>&1 || missing+=(swaks)
command -v curl >/dev/null 2>&1 || missing+=(curl)
[ -x /usr/sbin/smtp-sink ] || missing+=(postfix)
[ -x /usr/sbin/dovecot ] || missing+=(dovecot-core)
[ -x /usr/sbin/postgrey ] || missing+=(postgrey)

[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "make test needs these Debian packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi

echo "installing ${missing[*]} ..." >&2
export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections 2>/dev/null || true
apt-get update -qq >/dev/null
apt-get install -y -qq "${missing[@]}" >/dev/null
