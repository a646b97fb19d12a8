#!/usr/bin/env bash
# bench/setup.sh DIR [RECEIVER...]
#
# Makes the comparison receivers of bench/run.sh ready under DIR (default
# ./var/bench-peers): installs what is missing and writes each one's
# configuration from bench/peers/. Safe to run again: it installs nothing
# that is there and only rewrites the configuration. It starts no server,
# and a package install may not start one either (policy-rc.d says no).
#
# RECEIVER is any of smtp-sink qpsmtpd haraka haraka-1 postfix (default:
# all). What each needs:
#   smtp-sink, postfix   apt: postfix (smtp-sink, smtp-source, a private
#                        Postfix instance in DIR/postfix)
#   qpsmtpd              apt: qpsmtpd libnet-ip-perl (its relay plugin needs
#                        Net::IP, which the package does not depend on)
#   haraka, haraka-1     apt: nodejs npm; npm: Haraka into DIR/haraka
# smtp-source (the load generator) comes with postfix and is always needed.
#
# Env: HARAKA_VERSION (default: what npm calls latest).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DIR=$(realpath -m "${1:-./var/bench-peers}")
shift || true
WANT=${*:-"smtp-sink qpsmtpd haraka postfix"}
mkdir -p "$DIR/logs"
say() { echo "bench/setup: $*" >&2; }

# qpsmtpd (user qpsmtpd) and Postfix (user postfix) read their files under
# DIR after dropping root, so every directory above DIR must let others
# through. Sluice creates ./var with mode 0700: add search permission only
# (o+x: no listing; ./var/mail stays 0700 itself).
d=$(dirname "$DIR")
while [ "$d" != / ]; do
  if [ "$(( 0$(stat -c %a "$d") & 1 ))" = 0 ]; then
    say "chmod o+x $d (the peers' users must be able to reach $DIR)"
    chmod o+x "$d"
  fi
  d=$(dirname "$d")
done
wants() { [[ " $WANT " == *" $1"* ]]; }

# ------------------------------------------------------------ packages
pkgs=()
[ -x /usr/sbin/smtp-source ] && [ -x /usr/sbin/smtp-sink ] || pkgs+=(postfix)
if wants qpsmtpd; then
  [ -x /usr/bin/qpsmtpd-prefork ] || pkgs+=(qpsmtpd)
  perl -MNet::IP -e 1 2>/dev/null || pkgs+=(libnet-ip-perl)
fi
if wants haraka; then
  command -v node >/dev/null || pkgs+=(nodejs)
  command -v npm >/dev/null || pkgs+=(npm)
fi
command -v ip >/dev/null && command -v ss >/dev/null || pkgs+=(iproute2)
command -v bc >/dev/null || pkgs+=(bc)
command -v unshare >/dev/null && command -v setsid >/dev/null || pkgs+=(util-linux)
if [ ${#pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    say "missing Debian packages: ${pkgs[*]}; install them (sudo apt-get install ${pkgs[*]}) or run as root"
    exit 1
  fi
  say "installing ${pkgs[*]} with apt-get (log: $DIR/logs/apt.log)"
  # No package may start a mail server while it installs: policy-rc.d
  # answering 101 tells invoke-rc.d "not allowed".
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  apt-cache show "${pkgs[0]}" >/dev/null 2>&1 || apt-get update -qq >> "$DIR/logs/apt.log" 2>&1
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  rc=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    -o DPkg::Lock::Timeout=300 "${pkgs[@]}" >> "$DIR/logs/apt.log" 2>&1 || rc=$?
  [ $own_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
  if [ $rc != 0 ]; then tail -20 "$DIR/logs/apt.log" >&2; exit 1; fi
fi

# ------------------------------------------------------------ qpsmtpd
if wants qpsmtpd; then
  id qpsmtpd >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin qpsmtpd
  Q=$DIR/qpsmtpd
  mkdir -p "$Q/config" "$Q/plugins" "$Q/spool"
  cp "$HERE"/peers/qpsmtpd/config/* "$Q/config/"
  cp "$HERE"/peers/qpsmtpd/plugins/* "$Q/plugins/"
  install -m 755 "$HERE/peers/qpsmtpd/qpsmtpd-nordns" "$Q/qpsmtpd-nordns"
  printf '%s\n/usr/share/qpsmtpd/plugins\n' "$Q/plugins" > "$Q/config/plugin_dirs"
  echo "$Q/spool" > "$Q/config/spool_dir"
  chown -R qpsmtpd "$Q/spool"
  chmod 700 "$Q/spool"
fi

# ------------------------------------------------------------ Haraka
if wants haraka; then
  H=$DIR/haraka
  mkdir -p "$H"
  ver=${HARAKA_VERSION:-latest}
  have=$(node -p 'require(process.argv[1]).version' "$H/node_modules/Haraka/package.json" 2>/dev/null || true)
  if [ -z "$have" ] || { [ "$ver" != latest ] && [ "$have" != "$ver" ]; }; then
    say "installing Haraka@$ver with npm into $H (log: $DIR/logs/npm.log; a few minutes the first time)"
    [ -f "$H/package.json" ] || echo '{"name": "sluice-bench-haraka", "private": true}' > "$H/package.json"
    (cd "$H" && timeout 900 npm install --no-audit --no-fund --loglevel=error "Haraka@$ver") >> "$DIR/logs/npm.log" 2>&1 \
      || { tail -20 "$DIR/logs/npm.log" >&2; exit 1; }
  fi
  [ -d "$H/inst/config" ] || "$H/node_modules/.bin/haraka" -i "$H/inst" > "$DIR/logs/haraka-init.log" 2>&1
  for f in plugins relay.ini relay_acl_allow host_list log.ini me smtp.ini.in; do
    cp "$HERE/peers/haraka/$f" "$H/inst/config/$f"
  done
fi

# ------------------------------------------------------------ Postfix
if wants postfix; then
  P=$DIR/postfix
  mkdir -p "$P/etc" "$P/spool" "$P/data"
  sed "s|@DIR@|$P|g" "$HERE/peers/postfix/main.cf.in" > "$P/etc/main.cf"
  cp "$HERE/peers/postfix/master.cf.in" "$P/etc/master.cf.in"
  sed 's/@PORT@/10025/' "$P/etc/master.cf.in" > "$P/etc/master.cf"
  postfix -c "$P/etc" set-permissions > "$DIR/logs/postfix-setup.log" 2>&1 || true
  postfix -c "$P/etc" check >> "$DIR/logs/postfix-setup.log" 2>&1 || true
fi

# ------------------------------------------------------------ versions
{
  echo "smtp-sink, smtp-source: Postfix $(postconf -d -h mail_version 2>/dev/null)"
  if wants qpsmtpd; then echo "qpsmtpd: $(dpkg-query -W -f '${Version}' qpsmtpd) (perl $(perl -e 'printf "%vd", $^V'))"; fi
  if wants haraka; then
    echo "Haraka: $(node -p 'require(process.argv[1]).version' "$DIR/haraka/node_modules/Haraka/package.json") (node $(node --version))"
  fi
  if wants postfix; then echo "Postfix smtpd: $(postconf -d -h mail_version)"; fi
} > "$DIR/versions.txt"
say "ready in $DIR: $(paste -sd';' "$DIR/versions.txt")"
