#!/usr/bin/env bash
# bench/tcpserver.sh [N]
#
# Start-up cost per connection under ucspi-tcp's tcpserver, which forks one
# process per connection, as a qmail site runs qmail-smtpd: smtp-source
# sends N messages of 1 KiB (default 2000), one message per connection, 20
# at a time, to each receiver run as `tcpserver ... RECEIVER`:
#
#   sluice     smtpd stdio, rcptok + the discard queue
#   qpsmtpd    qpsmtpd 0.94 in tcpserver mode: relay, rcpt_ok, queue_discard
#   qmail      qmail-smtpd, when QMAIL_SMTPD names one (built from notqmail:
#              make qmail-smtpd with conf-qmail set to QMAIL_HOME), with a
#              qmail-queue that keeps nothing (peers/qmail/qmail-queue-discard.c)
#
# It prints connections (= messages) per second and the CPU seconds per
# connection of the whole machine. Needs: ucspi-tcp, postfix (smtp-source),
# qpsmtpd (bench/setup.sh installs it), gcc for the qmail row.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
N=${1:-2000}
SESSIONS=${SESSIONS:-20}
OUT=$(mktemp -d /tmp/sluice-tcpserver-bench.XXXXXX)
PEERS_DIR=${PEERS_DIR:-$ROOT/var/bench-peers}
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT

command -v tcpserver >/dev/null || { echo "needs tcpserver: apt-get install -y ucspi-tcp" >&2; exit 1; }
[ -x /usr/sbin/smtp-source ] || { echo "needs smtp-source: apt-get install -y postfix" >&2; exit 1; }
(cd "$ROOT" && go build -o "$OUT/smtpd" ./cmd/smtpd)

sed -e "s|@DATA@|$OUT/data|" -e "s|@PORT@|0|" "$HERE/sluice-discard.toml" > "$OUT/sluice.toml"

busy_s() { awk -v hz="$(getconf CLK_TCK)" '$1 == "cpu" {print ($2 + $3 + $4 + $7 + $8 + $9) / hz; exit}' /proc/stat; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# run NAME ENV... -- COMMAND...: serve COMMAND under tcpserver, load it, print a row
run() {
  local name=$1; shift
  local envs=()
  while [ "$1" != -- ]; do envs+=("$1"); shift; done; shift
  local port; port=$(free_port)
  # from $OUT: qpsmtpd runs `git describe` when started inside a git tree
  (cd "$OUT" && exec env "${envs[@]}" tcpserver -R -H -l bench.test -c $((SESSIONS + 10)) 127.0.0.1 "$port" "$@") \
    > /dev/null 2> "$OUT/${name%% *}.log" &
  local pid=$!
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  # a warm-up, then the timed run
  /usr/sbin/smtp-source -s "$SESSIONS" -m 100 -l 1024 -f a@example.com -t b@example.com "127.0.0.1:$port" > /dev/null 2>&1 || true
  local c0 t0 t1 c1
  c0=$(busy_s); t0=$(date +%s.%N)
  if ! /usr/sbin/smtp-source -s "$SESSIONS" -m "$N" -l 1024 -f a@example.com -t b@example.com "127.0.0.1:$port" > /dev/null 2>> "$OUT/${name%% *}.log"; then
    echo "$name: smtp-source failed; see $OUT/${name%% *}.log" >&2
  fi
  t1=$(date +%s.%N); c1=$(busy_s)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  printf '| %s | %.0f | %.2f |\n' "$name" "$(echo "$N / ($t1 - $t0)" | bc -l)" "$(echo "($c1 - $c0) * 1000 / $N" | bc -l)"
}

echo "| receiver under tcpserver | connections/s | CPU ms/connection |"
echo "| --- | --- | --- |"
run "Sluice (smtpd stdio), rcptok + discard" -- "$OUT/smtpd" stdio -config "$OUT/sluice.toml"
if [ -x /usr/bin/qpsmtpd-prefork ] && [ -d "$PEERS_DIR/qpsmtpd/config" ]; then
  run "qpsmtpd 0.94, tcpserver mode, discard" QPSMTPD_CONFIG="$PEERS_DIR/qpsmtpd/config" -- \
    perl -Tw "$HERE/peers/qpsmtpd/qpsmtpd-tcpserver"
else
  echo "(qpsmtpd row skipped: run bench/setup.sh $PEERS_DIR qpsmtpd first)" >&2
fi
if [ -n "${QMAIL_SMTPD:-}" ]; then
  gcc -O2 -o "$OUT/qmail-queue-discard" "$HERE/peers/qmail/qmail-queue-discard.c"
  QMAIL_HOME=${QMAIL_HOME:-/var/qmail}
  mkdir -p "$QMAIL_HOME/control"
  echo bench.test > "$QMAIL_HOME/control/me"
  echo example.com > "$QMAIL_HOME/control/rcpthosts"
  run "qmail-smtpd (notqmail), discard qmail-queue" QMAILQUEUE="$OUT/qmail-queue-discard" -- "$QMAIL_SMTPD"
else
  echo "(qmail-smtpd row skipped: set QMAIL_SMTPD to a qmail-smtpd binary)" >&2
fi
