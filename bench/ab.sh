#!/usr/bin/env bash
# bench/ab.sh — `make bench-ab`: two builds of smtpd (A and B) and smtp-sink
# under the same smtp-source load, interleaved round by round, so that the
# machine's drift (20% and more between runs on a shared 2-core box) falls
# on all three alike. Prints, per shape, the median messages/s and smtpd's
# CPU microseconds per message (user + system, from /proc) of each, and
# the ratios B/A and B/smtp-sink.
#
#   bash bench/ab.sh A_REV [B_REV]    # git revisions; B defaults to the work tree
#   A_BIN=path B_BIN=path bash bench/ab.sh   # or two binaries
#
# Env: ROUNDS=5, SHAPES="1k-one 1k-many 1k-many-s200" (as run.sh's, 1 KiB
# only), N_ONE=15000 N_MANY=60000 (messages per run), GOMAXPROCS_AB=1 (as
# the discard row of run.sh), NETNS=1 (a network namespace holding only
# loopback, as run.sh). Sluice runs bench/sluice-discard.toml (rcptok +
# discard) on port 2911; smtp-sink on the same port in its turn.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
ROUNDS=${ROUNDS:-5} SHAPES=${SHAPES:-"1k-one 1k-many 1k-many-s200"}
N_ONE=${N_ONE:-15000} N_MANY=${N_MANY:-60000} GOMAXPROCS_AB=${GOMAXPROCS_AB:-1}
PORT=2911
export ROUNDS SHAPES N_ONE N_MANY GOMAXPROCS_AB

if [ -z "${SLUICE_AB_INSIDE:-}" ]; then
  command -v smtp-source > /dev/null || [ -x /usr/sbin/smtp-source ] || { echo "bench/ab.sh: needs Postfix's smtp-source and smtp-sink (apt-get install postfix)" >&2; exit 1; }
  WORK=$(mktemp -d /tmp/sluice-ab.XXXXXX)
  build() { # REV OUT: build smtpd at REV (a clean checkout), or the work tree when REV is empty
    if [ -z "$1" ]; then
      go build -o "$2" ./cmd/smtpd
    else
      git worktree add -q --detach "$WORK/src-$(basename "$2")" "$1" &&
        (cd "$WORK/src-$(basename "$2")" && go build -o "$2" ./cmd/smtpd)
      local rc=$?
      git worktree remove --force "$WORK/src-$(basename "$2")"
      return $rc
    fi
  }
  if [ -z "${A_BIN:-}" ]; then
    [ $# -ge 1 ] || { echo "usage: bash bench/ab.sh A_REV [B_REV] (or A_BIN=... B_BIN=...)" >&2; exit 2; }
    A_BIN=$WORK/smtpd-a B_BIN=$WORK/smtpd-b
    build "$1" "$A_BIN" && build "${2:-}" "$B_BIN" || exit 1
  fi
  export A_BIN B_BIN WORK
  if [ "${NETNS:-1}" = 1 ]; then
    [ "$(id -u)" = 0 ] || { echo "bench/ab.sh: unshare --net needs root (or NETNS=0)" >&2; exit 1; }
    exec env SLUICE_AB_INSIDE=1 unshare --net -- bash -c 'ip link set lo up && exec bash "$0"' "$0"
  fi
fi

ulimit -n 65536 2> /dev/null || ulimit -n "$(ulimit -Hn)"
sed -e "s#@PORT@#$PORT#; s#@DATA@#$WORK/data#" bench/sluice-discard.toml > "$WORK/discard.toml"
RES=$WORK/results.txt
: > "$RES"

up() { local i; for ((i = 0; i < 100; i++)); do ss -Hltn "sport = :$PORT" | grep -q . && return 0; sleep 0.05; done; return 1; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# one WHO SHAPE: start the receiver, warm it up, time one smtp-source run
one() {
  local who=$1 shape=$2 sessions=20 per= n pid c0 c1 t0 t1
  case $shape in
    1k-one) n=$N_ONE ;;
    1k-many) n=$N_MANY per=-d ;;
    1k-many-s200) n=$N_MANY per=-d sessions=200 ;;
    *) echo "bench/ab.sh: unknown shape $shape" >&2; exit 2 ;;
  esac
  rm -rf "$WORK/data" && mkdir -p "$WORK/data"
  case $who in
    sink) /usr/sbin/smtp-sink -u nobody -m 1024 "127.0.0.1:$PORT" 1024 > /dev/null 2>&1 & ;;
    A) GOMAXPROCS=$GOMAXPROCS_AB "$A_BIN" -config "$WORK/discard.toml" > "$WORK/a.log" 2>&1 & ;;
    B) GOMAXPROCS=$GOMAXPROCS_AB "$B_BIN" -config "$WORK/discard.toml" > "$WORK/b.log" 2>&1 & ;;
  esac
  pid=$!
  up || { echo "bench/ab.sh: $who did not listen on $PORT" >&2; kill "$pid"; exit 1; }
  /usr/sbin/smtp-source $per -s "$sessions" -m 2000 -l 1024 -f a@example.com -t b@example.com "127.0.0.1:$PORT" > /dev/null
  c0=$(cpu_ticks "$pid") t0=$(date +%s.%N)
  timeout 120 /usr/sbin/smtp-source $per -s "$sessions" -m "$n" -l 1024 -f a@example.com -t b@example.com "127.0.0.1:$PORT" > /dev/null
  t1=$(date +%s.%N) c1=$(cpu_ticks "$pid")
  kill "$pid" && wait "$pid" 2> /dev/null
  echo "$who $shape $(echo "$n / ($t1 - $t0)" | bc -l) $(echo "($c1 - $c0) * 1000000 / $(getconf CLK_TCK) / $n" | bc -l)" >> "$RES"
}

for ((r = 1; r <= ROUNDS; r++)); do
  echo "round $r of $ROUNDS" >&2
  for shape in $SHAPES; do
    for who in sink A B; do one "$who" "$shape"; done
  done
done

printf 'A: %s\nB: %s\n%d rounds, interleaved; medians; CPU is smtpd'"'"'s (or smtp-sink'"'"'s) user + system per message\n\n' "$A_BIN" "$B_BIN" "$ROUNDS"
printf '| shape | smtp-sink msgs/s | A msgs/s | B msgs/s | B/A | B/sink | sink CPU µs/msg | A CPU | B CPU | B/A | B/sink |\n'
printf '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n'
for shape in $SHAPES; do
  awk -v s="$shape" '
    function med(v, n,   i, j, t) {for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) {t = v[i]; v[i] = v[j]; v[j] = t}
      return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2}
    $2 == s {k = $1; m[k, ++n[k]] = $3; c[k, n[k]] = $4}
    END {
      for (k in n) {delete v; for (i = 1; i <= n[k]; i++) v[i] = m[k, i]; mm[k] = med(v, n[k])
                    delete v; for (i = 1; i <= n[k]; i++) v[i] = c[k, i]; cc[k] = med(v, n[k])}
      printf "| %s | %.0f | %.0f | %.0f | %.2f | %.2f | %.1f | %.1f | %.1f | %.2f | %.2f |\n", s,
        mm["sink"], mm["A"], mm["B"], mm["B"] / mm["A"], mm["B"] / mm["sink"],
        cc["sink"], cc["A"], cc["B"], cc["B"] / cc["A"], cc["B"] / cc["sink"]}' "$RES"
done
echo
echo "raw: $RES"
