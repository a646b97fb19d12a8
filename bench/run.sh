#!/usr/bin/env bash
# bench/run.sh — `make bench`: the same SMTP load against Sluice and its peers,
# one after the other, on loopback, in one run; then one table.
#
# Receivers (PEERS, default all of them, in this order):
#   smtp-sink       Postfix's protocol-only sink: the ceiling of this harness
#   sluice-discard  Sluice, rcptok + the discard queue (bench/sluice-discard.toml)
#   sluice          Sluice, the shipped inbound chain with a durable Maildir (bench/sluice.toml)
#   sluice-policy   Sluice, the MX policy chain of docs/inbound-mx.md + Maildir (bench/sluice-inbound.toml)
#   qpsmtpd         qpsmtpd 0.94 prefork: relay, rcpt_ok, queue_discard
#   haraka          Haraka, nodes=cpus: relay, rcpt_to.in_host_list, queue/discard
#   haraka-1        the same in one process (nodes=0); not in the default list
#   postfix         a private Postfix: smtpd -> cleanup -> queue (fsync) -> discard:
# Shapes (SHAPES), all with Postfix's smtp-source as the load generator:
#   1k-one 1k-many 100k-many 1k-many-s200   (SIZE-PER[-sSESSIONS]; many = smtp-source -d;
#   sessions default to 20)
# Then the extra checks (EXTRAS=0 skips them): one 100 MiB message (Sluice's RSS
# growth), 10,000 idle connections (RSS and the next client's greeting time),
# the chain's per-plugin cost (go test -bench BenchmarkChainRcptDeclined) and
# what smtpd stats, /metrics and the live view cost a message (go test -bench
# BenchmarkServerLoopback/1k-many, without and with them).
#
# Per receiver and shape: a fresh start; a warm-up (a fixed small run, then one
# of about WARM seconds that also sizes the timed runs); RUNS timed smtp-source
# runs of about SECS seconds each (the median counts); benchtool lat for
# latency percentiles under the same sessions; the peak memory of all the
# receiver's processes, sampled throughout; a stop by process id.
#
# Env: BENCH_QUICK=1 (RUNS=1 SECS=2 WARM=1, no single-session latency probe:
# a few minutes), PEERS, SHAPES, RUNS=3, SECS=4, WARM=2, MIN_MSGS=200,
# MAX_MSGS=100000, RUN_TIMEOUT=120 (seconds, each smtp-source run),
# SLUICE_DISCARD_GOMAXPROCS=1 and SLUICE_GOMAXPROCS= (empty: all cores) for the two Sluice rows,
# PEERS_DIR=./var/bench-peers, OUT=./var/bench-results/TIME, NETNS=1 (0: stay
# in this network namespace), EXTRAS=1, IDLE_CONNS=10000.
#
# Only 127.0.0.1 is ever a target; with NETNS=1 everything runs in a private
# network namespace whose only interface is lo, so nothing can leave the host.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1

if [ "${BENCH_QUICK:-0}" = 1 ]; then
  : "${RUNS:=1}" "${SECS:=2}" "${WARM:=1}" "${LAT1:=0}"
fi
RUNS=${RUNS:-3} SECS=${SECS:-4} WARM=${WARM:-2} LAT1=${LAT1:-1}
MIN_MSGS=${MIN_MSGS:-200} MAX_MSGS=${MAX_MSGS:-100000} RUN_TIMEOUT=${RUN_TIMEOUT:-120}
PEERS=${PEERS:-"smtp-sink sluice-discard sluice sluice-policy qpsmtpd haraka postfix"}
SHAPES=${SHAPES:-"1k-one 1k-many 100k-many 1k-many-s200"}
PEERS_DIR=$(realpath -m "${PEERS_DIR:-./var/bench-peers}")
OUT=$(realpath -m "${OUT:-./var/bench-results/$(date +%Y%m%d-%H%M%S)}")
EXTRAS=${EXTRAS:-1} IDLE_CONNS=${IDLE_CONNS:-10000} QUIET_MAX=${QUIET_MAX:-120}
# Go's scheduler threads: the discard row runs on one (see bench/README.md:
# with the load generator on the same two cores, a second P mostly spins and
# wakes threads); the Maildir row on all cores (its file system calls block).
SLUICE_DISCARD_GOMAXPROCS=${SLUICE_DISCARD_GOMAXPROCS-1} SLUICE_GOMAXPROCS=${SLUICE_GOMAXPROCS-}
export SLUICE_DISCARD_GOMAXPROCS SLUICE_GOMAXPROCS QUIET_MAX RUNS SECS WARM LAT1 MIN_MSGS MAX_MSGS RUN_TIMEOUT PEERS SHAPES PEERS_DIR OUT EXTRAS IDLE_CONNS
BIN=$ROOT/bin
say() { echo "[$(date +%T)] $*" | tee -a "$OUT/log.txt" >&2; }

# ------------------------------------------------------------------ outside the namespace
if [ -z "${SLUICE_BENCH_INSIDE:-}" ]; then
  mkdir -p "$OUT"
  say "building bin/smtpd and bin/benchtool"
  go build -o "$BIN/smtpd" ./cmd/smtpd && go build -o "$BIN/benchtool" ./bench/benchtool || exit 1
  setup=()
  for p in $PEERS; do case $p in smtp-sink | qpsmtpd | haraka | haraka-1 | postfix) setup+=("$p") ;; esac; done
  bash bench/setup.sh "$PEERS_DIR" "${setup[@]}" || exit 1
  if [ "$EXTRAS" = 1 ]; then
    # Not a load test, and it needs no isolation: run it before the rest.
    say "chain: go test -bench BenchmarkChainRcptDeclined ./hooks/"
    go test -run '^$' -bench 'BenchmarkChainRcptDeclined$' -benchmem -count 1 ./hooks/ > "$OUT/chain-bench.txt" 2>&1
    awk '/^BenchmarkChainRcptDeclined/ {for (i = 1; i < NF; i++) {if ($(i+1) == "ns/op") ns = $i; if ($(i+1) == "allocs/op") a = $i}}
         END {if (ns != "") printf "chain ns_per_op=%s ns_per_plugin=%.1f allocs_per_op=%s\n", ns, ns / 10, a}' \
      "$OUT/chain-bench.txt" > "$OUT/extras.txt"
    # What the operator's figures cost a message: the in-process server
    # benchmark without them, with the Recorder (smtpd stats, /metrics:
    # always on) and with the live view's event Bus too; the median of 5.
    say "stats: go test -bench 'BenchmarkServerLoopback/1k-many(-recorder|-monitor)?' ./server/"
    go test -run '^$' -bench 'BenchmarkServerLoopback/1k-many(-recorder|-monitor)?$' -benchmem -count 5 ./server/ \
      > "$OUT/stats-bench.txt" 2>&1
    awk 'function med(a, n,   i, j, t) {for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) {t = a[i]; a[i] = a[j]; a[j] = t}; return a[int((n + 1) / 2)]}
         /^BenchmarkServerLoopback\/1k-many/ {
           m = $1; sub(/-[0-9]+$/, "", m); sub(/^BenchmarkServerLoopback\/1k-many-?/, "", m); if (m == "") m = "base"
           for (i = 1; i < NF; i++) {if ($(i+1) == "ns/op") ns[m, ++n[m]] = $i; if ($(i+1) == "allocs/op") al[m] = $i}}
         END {if (n["base"] && n["recorder"] && n["monitor"]) {
           for (k in n) {delete v; for (i = 1; i <= n[k]; i++) v[i] = ns[k, i]; md[k] = med(v, n[k])}
           printf "stats base_ns=%s recorder_ns=%s monitor_ns=%s base_allocs=%s recorder_allocs=%s monitor_allocs=%s\n",
             md["base"], md["recorder"], md["monitor"], al["base"], al["recorder"], al["monitor"]}}' \
      "$OUT/stats-bench.txt" >> "$OUT/extras.txt"
  fi
  if [ "${NETNS:-1}" = 1 ]; then
    [ "$(id -u)" = 0 ] || { echo "bench: unshare --net needs root (or run with NETNS=0)" >&2; exit 1; }
    exec env SLUICE_BENCH_INSIDE=1 unshare --net --ipc -- bash -c 'ip link set lo up && exec bash "$0"' "$0"
  fi
  export SLUICE_BENCH_INSIDE=1
fi

# ------------------------------------------------------------------ inside: helpers
mkdir -p "$OUT/logs" "$OUT/conf" "$OUT/data"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
RAW=$OUT/raw.txt TSV=$OUT/results.tsv
printf 'key\tlabel\tshape\tmsgs\tmps\tmps_min\tmps_max\tfails\tcpu_ms_per_msg\tp50_ms\tp99_ms\tlat1_p50_ms\trss_mib\tpss_mib\tprocs\tnote\n' > "$TSV"
SID=

# The policy row's block list asks this DNS server (every name NXDOMAIN).
DNS_PORT=2953
if [[ " $PEERS " == *" sluice-policy "* ]]; then
  "$BIN/benchtool" dns -addr "127.0.0.1:$DNS_PORT" -max 3h > /dev/null 2>> "$OUT/logs/dns.err" &
  DNS_PID=$!
  trap 'kill "$DNS_PID" 2>/dev/null' EXIT
fi

is_listening() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
await_port() { # PORT SECONDS
  local i
  for ((i = 0; i < $2 * 20; i++)); do is_listening "$1" && return 0; sleep 0.05; done
  return 1
}

# spawn NAME PORT CMD...: run CMD in its own session; SID = its pid = the session id
spawn() {
  local name=$1 port=$2 pf=$OUT/logs/$1.pid i
  shift 2
  rm -f "$pf"
  setsid sh -c 'echo $$ > "$0"; exec "$@"' "$pf" "$@" >> "$OUT/logs/$name.log" 2>&1 < /dev/null &
  for ((i = 0; i < 100; i++)); do [ -s "$pf" ] && break; sleep 0.05; done
  SID=$(cat "$pf" 2>/dev/null)
  [ -n "$SID" ] && await_port "$port" 60 && return 0
  say "$name did not come up on port $port (see $OUT/logs/$name.log)"
  stop_session
  return 1
}

# greylist_pass PORT: the benchmark's triplet (127.0.0.0/24, a@example.com,
# b@example.com) is greylisted once and retried after the policy row's
# one-second delay, so that the timed runs take the known-sender path.
greylist_pass() {
  "$BIN/benchtool" lat -addr "127.0.0.1:$1" -n 1 -c 1 -size 1024 -timeout 10s > /dev/null 2>&1
  sleep 1.2
  "$BIN/benchtool" lat -addr "127.0.0.1:$1" -n 1 -c 1 -size 1024 -timeout 10s > /dev/null 2>> "$OUT/logs/lat.err" && return 0
  say "sluice-policy: the greylisting retry was not accepted (see $OUT/logs/lat.err)"
  stop_session
  return 1
}

# stop_session: TERM the session leader, give the session 10 s, then KILL what is left, by pid
stop_session() {
  local i left
  [ -n "$SID" ] || return 0
  kill -TERM "$SID" 2>/dev/null
  for ((i = 0; i < 100; i++)); do
    left=$("$BIN/benchtool" pids -sid "$SID")
    [ -z "$left" ] && break
    sleep 0.1
  done
  if [ -n "$left" ]; then
    say "killing what is left of session $SID: $(echo $left)"
    kill -KILL $left 2>/dev/null
  fi
  SID=
}
trap 'stop_receiver "${CUR:-}"; exit 130' INT TERM

port_of() {
  case $1 in
    smtp-sink) echo 2901 ;; sluice-discard) echo 2902 ;; sluice) echo 2903 ;; qpsmtpd) echo 2904 ;;
    haraka) echo 2905 ;; haraka-1) echo 2906 ;; postfix) echo 2907 ;; sluice-policy) echo 2908 ;; *) return 1 ;;
  esac
}
label_of() {
  case $1 in
    smtp-sink) echo "smtp-sink (protocol only)" ;;
    sluice-discard) echo "Sluice, rcptok + discard$(gmp_label "$SLUICE_DISCARD_GOMAXPROCS")" ;;
    sluice) echo "Sluice, inbound chain + Maildir$(gmp_label "$SLUICE_GOMAXPROCS")" ;; qpsmtpd) echo "qpsmtpd prefork, discard" ;;
    sluice-policy) echo "Sluice, MX policy chain + Maildir$(gmp_label "$SLUICE_GOMAXPROCS")" ;;
    haraka) echo "Haraka nodes=cpus, discard" ;; haraka-1) echo "Haraka 1 process, discard" ;;
    postfix) echo "Postfix smtpd -> discard" ;;
  esac
}

# sluice_conf NAME PORT: writes the config, prints its path. Each start gets
# a data directory of its own, and none is deleted before the run ends:
# ext4 skips inodes freed in the last seconds when it allocates new ones, so
# deleting the last cell's 100,000 files would slow the next cell's creates.
gmp_label() { [ -n "$1" ] && echo " (GOMAXPROCS=$1)"; }
sluice_conf() {
  local c=$OUT/conf/$1.toml data
  data=$(mktemp -d "$OUT/data/$1.XXXX")
  sed -e "s/@PORT@/$2/" -e "s|@DATA@|$data|g" -e "s/@DNS@/127.0.0.1:$DNS_PORT/" "bench/$1.toml" > "$c"
  echo "$c"
}

start_receiver() { # NAME SESSIONS
  local name=$1 sessions=$2 port
  port=$(port_of "$name")
  case $name in
    smtp-sink) spawn "$name" "$port" /usr/sbin/smtp-sink -u nobody -m 1024 "127.0.0.1:$port" 1024 ;;
    sluice | sluice-discard)
      local gmp=$SLUICE_GOMAXPROCS
      [ "$name" = sluice-discard ] && gmp=$SLUICE_DISCARD_GOMAXPROCS
      spawn "$name" "$port" env ${gmp:+GOMAXPROCS=$gmp} "$BIN/smtpd" -config "$(sluice_conf "$name" "$port")" ;;
    sluice-policy)
      spawn "$name" "$port" env ${SLUICE_GOMAXPROCS:+GOMAXPROCS=$SLUICE_GOMAXPROCS} "$BIN/smtpd" -config "$(sluice_conf sluice-inbound "$port")" &&
        greylist_pass "$port" ;;
    qpsmtpd)
      spawn "$name" "$port" env QPSMTPD_CONFIG="$PEERS_DIR/qpsmtpd/config" perl -Tw "$PEERS_DIR/qpsmtpd/qpsmtpd-nordns" \
        /usr/bin/qpsmtpd-prefork --listen-address 127.0.0.1 --port "$port" --children $((sessions + 10)) \
        --idle-children "$sessions" --max-from-ip 0 --user qpsmtpd ;;
    haraka | haraka-1)
      local nodes=cpus
      [ "$name" = haraka-1 ] && nodes=0
      sed -e "s/@PORT@/$port/" -e "s/@NODES@/$nodes/" "$PEERS_DIR/haraka/inst/config/smtp.ini.in" \
        > "$PEERS_DIR/haraka/inst/config/smtp.ini"
      spawn "$name" "$port" env YES_REALLY_DO_DISCARD=1 node "$PEERS_DIR/haraka/node_modules/Haraka/bin/haraka" \
        -c "$PEERS_DIR/haraka/inst" ;;
    postfix)
      local P=$PEERS_DIR/postfix i
      sed "s/@PORT@/$port/" "$P/etc/master.cf.in" > "$P/etc/master.cf"
      postsuper -c "$P/etc" -d ALL > /dev/null 2>&1
      rm -f "$P/spool/pid/master.pid"
      postfix -c "$P/etc" start >> "$OUT/logs/postfix.log" 2>&1 || { say "postfix did not start"; return 1; }
      for ((i = 0; i < 100; i++)); do [ -s "$P/spool/pid/master.pid" ] && break; sleep 0.05; done
      SID=$(tr -dc 0-9 < "$P/spool/pid/master.pid") # master is its own session leader
      await_port "$port" 60 || { say "postfix did not listen on $port"; stop_receiver postfix; return 1; } ;;
    *) say "unknown receiver $name"; return 1 ;;
  esac
}
stop_receiver() {
  [ "$1" = postfix ] && postfix -c "$PEERS_DIR/postfix/etc" stop >> "$OUT/logs/postfix.log" 2>&1
  stop_session
}

# load PORT N SESSIONS SIZE PER: one timed smtp-source run; prints "msgs_per_s rc"
load() {
  local d= t0 t1 rc
  [ "$5" = many ] && d=-d
  t0=$(date +%s.%N)
  timeout "$RUN_TIMEOUT" /usr/sbin/smtp-source $d -s "$3" -m "$2" -l "$4" -f a@example.com -t b@example.com \
    "127.0.0.1:$1" > /dev/null 2>> "$OUT/logs/smtp-source.err"
  rc=$?
  t1=$(date +%s.%N)
  # this subshell's children: smtp-source's user and system CPU seconds
  # (times must run here, not in a $(...) of its own, which has no children)
  local gen tf=$OUT/logs/times.$BASHPID
  times > "$tf"
  gen=$(tail -1 "$tf" | sed 's/[ms]/ /g' | awk '{print $1 * 60 + $2 + $3 * 60 + $4}')
  rm -f "$tf"
  echo "$1 n=$2 s=$3 size=$4 per=$5 secs=$(echo "$t1 - $t0" | bc -l) gen_cpu_s=$gen rc=$rc" >> "$RAW"
  if [ $rc = 0 ]; then r=$(echo "$2 / ($t1 - $t0)" | bc -l | xargs printf '%.0f'); else r=0; fi
  echo "$r $rc $(echo "$t1 - $t0" | bc -l) $gen"
}
kv() { tr ' ' '\n' | sed -n "s/^$1=//p" | head -1; }
# busy_s: CPU seconds the whole machine has spent busy (not idle, not iowait)
busy_s() { awk -v hz="$(getconf CLK_TCK)" '$1 == "cpu" {print ($2 + $3 + $4 + $7 + $8 + $9) / hz; exit}' /proc/stat; }
# quiet_wait: before a cell, wait (at most QUIET_MAX s) until the machine is
# idle: other people's builds and tests on a 2-core box move the figures a lot
quiet_wait() {
  local i b0 b1 waited=0
  for ((i = 0; i < QUIET_MAX; i += 3)); do
    b0=$(busy_s); sleep 1; b1=$(busy_s)
    if [ "$(echo "$b1 - $b0 < 0.25" | bc -l)" = 1 ]; then
      ((waited)) && say "the machine is quiet again"
      return 0
    fi
    ((waited)) || say "the machine is busy ($(echo "$b1 - $b0" | bc -l | xargs printf '%.2f') cores used by others); waiting up to ${QUIET_MAX}s"
    waited=1
    sleep 2
  done
  say "still busy after ${QUIET_MAX}s: this cell's figures are contended (see the note column)"
}
clamp() { local v=$1; ((v < $2)) && v=$2; ((v > $3)) && v=$3; echo "$v"; }
cpu_s() { "$BIN/benchtool" cpu -sid "$SID"; }

cell() { # RECEIVER SHAPE
  local name=$1 shape=$2 size per sessions port label
  local sz=${shape%%-*} rest=${shape#*-}
  per=${rest%%-*} sessions=20
  [[ $rest == *-s* ]] && sessions=${rest##*-s}
  case $sz in *k) size=$((${sz%k} * 1024)) ;; *) size=$sz ;; esac
  port=$(port_of "$name") label=$(label_of "$name")
  if is_listening "$port"; then say "port $port is taken: $name skipped"; return; fi
  quiet_wait
  CUR=$name
  if ! start_receiver "$name" "$sessions"; then
    printf '%s\t%s\t%s\t0\t0\t0\t0\t0\t\t\t\t\t\t\t\tdid not start\n' "$name" "$label" "$shape" >> "$TSV"
    return
  fi
  local stopf=$OUT/logs/watch.stop memf=$OUT/logs/watch.out watcher
  rm -f "$stopf"
  "$BIN/benchtool" watch -sid "$SID" -stop "$stopf" -max 15m > "$memf" &
  watcher=$!
  # Warm-up: a small fixed run, then runs of about a second each until WARM
  # seconds have passed and the rate has settled (JITs and worker processes
  # take a while: Haraka's first few hundred messages are several times slower).
  local warm0=500 r rc prev=0 n i rates=() fails=0 t_end
  ((size > 10000)) && warm0=100
  read -r r rc _ < <(load "$port" "$warm0" "$sessions" "$size" "$per")
  t_end=$(($(date +%s) + WARM))
  for ((i = 0; i < 8 && r > 0; i++)); do
    prev=$r
    read -r r rc _ < <(load "$port" "$(clamp "$r" "$warm0" "$MAX_MSGS")" "$sessions" "$size" "$per")
    (($(date +%s) >= t_end && r * 100 < prev * 115 && r * 100 > prev * 85)) && break
  done
  if [ "$r" = 0 ]; then
    say "$name $shape: warm-up failed (smtp-source rc=$rc; $OUT/logs/smtp-source.err)"
    touch "$stopf"; wait "$watcher"; stop_receiver "$name"
    printf '%s\t%s\t%s\t0\t0\t0\t0\t0\t\t\t\t\t\t\t\twarm-up failed\n' "$name" "$label" "$shape" >> "$TSV"
    return
  fi
  n=$(clamp $((r * SECS)) "$MIN_MSGS" "$MAX_MSGS")
  local c0 c1 b0 b1 secs gen wall=0 gens=0 other
  c0=$(cpu_s) b0=$(busy_s)
  for ((i = 0; i < RUNS; i++)); do
    read -r r rc secs gen < <(load "$port" "$n" "$sessions" "$size" "$per")
    rates+=("$r")
    [ "$rc" = 0 ] || fails=$((fails + 1))
    wall=$(echo "$wall + $secs" | bc -l) gens=$(echo "$gens + $gen" | bc -l)
  done
  c1=$(cpu_s) b1=$(busy_s)
  # cores busy with neither the receiver nor smtp-source (the kernel's
  # loopback work is part of it, so it is never quite 0)
  other=$(echo "(($b1 - $b0) - ($c1 - $c0) - $gens) / $wall" | bc -l | xargs printf '%.2f')
  local sorted med cpu_ms
  sorted=$(printf '%s\n' "${rates[@]}" | sort -n)
  med=$(sed -n "$(((RUNS + 1) / 2))p" <<< "$sorted")
  cpu_ms=$(echo "($c1 - $c0) * 1000 / ($n * $RUNS)" | bc -l | xargs printf '%.3f')
  local p50= p99= l1= line pc=0
  [ "$per" = one ] && pc=1
  if [ "$med" -gt 0 ]; then
    line=$("$BIN/benchtool" lat -addr "127.0.0.1:$port" -n "$(clamp $((med * 2)) 200 50000)" -c "$sessions" -size "$size" \
      -per-conn "$pc" -timeout 20s 2>> "$OUT/logs/lat.err")
    echo "$name $shape c=$sessions $line" >> "$RAW"
    p50=$(kv p50_ms <<< "$line") p99=$(kv p99_ms <<< "$line")
    if [ "$LAT1" = 1 ]; then
      line=$("$BIN/benchtool" lat -addr "127.0.0.1:$port" -n 200 -c 1 -size "$size" -per-conn "$pc" -timeout 10s 2>> "$OUT/logs/lat.err")
      echo "$name $shape c=1 $line" >> "$RAW"
      l1=$(kv p50_ms <<< "$line")
    fi
  fi
  touch "$stopf"
  wait "$watcher"
  local mem rss pss procs note=
  mem=$(cat "$memf")
  echo "$name $shape mem $mem" >> "$RAW"
  rss=$(($(kv rss_peak_kb <<< "$mem") / 1024)) pss=$(($(kv pss_peak_kb <<< "$mem") / 1024)) procs=$(kv procs_peak <<< "$mem")
  ((fails > 0)) && note="$fails of $RUNS runs failed"
  if [ "$(echo "$other > 0.4" | bc -l)" = 1 ]; then note="${note:+$note; }contended: $other other cores"; fi
  stop_receiver "$name"
  CUR=
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$label" "$shape" "$n" "$med" \
    "$(head -1 <<< "$sorted")" "$(tail -1 <<< "$sorted")" "$fails" "$cpu_ms" "$p50" "$p99" "$l1" "$rss" "$pss" "$procs" "$note" >> "$TSV"
  say "$label, $shape: $med msgs/s [$(echo $sorted)], p50 ${p50:-?} ms, p99 ${p99:-?} ms, peak RSS $rss MiB"
}

# ------------------------------------------------------------------ inside: the run
say "cores=$(nproc) runs=$RUNS secs=$SECS receivers='$PEERS' shapes='$SHAPES' out=$OUT"
for name in $PEERS; do
  port_of "$name" > /dev/null || { say "unknown receiver $name (see bench/run.sh)"; continue; }
  for shape in $SHAPES; do cell "$name" "$shape"; done
done

if [ "$EXTRAS" = 1 ]; then
  # One 100 MiB message through the inbound chain into the Maildir.
  CUR=sluice
  if start_receiver sluice 1; then
    say "big: one 100 MiB message"
    line=$("$BIN/benchtool" big -addr "127.0.0.1:$(port_of sluice)" -pid "$SID" -size $((100 << 20)) -timeout 120s 2>> "$OUT/logs/big.err")
    [ -n "$line" ] && echo "$line" >> "$OUT/extras.txt"
    stop_receiver sluice
  fi
  # 10,000 idle connections, then one more client.
  CUR=sluice-discard
  if start_receiver sluice-discard 1; then
    say "idle: $IDLE_CONNS idle connections"
    line=$("$BIN/benchtool" idle -addr "127.0.0.1:$(port_of sluice-discard)" -pid "$SID" -n "$IDLE_CONNS" -timeout 120s 2>> "$OUT/logs/idle.err")
    [ -n "$line" ] && echo "$line" >> "$OUT/extras.txt"
    stop_receiver sluice-discard
  fi
  CUR=
fi

header="Sluice side-by-side benchmark, $(date -u '+%F %T UTC'); sessions 20 unless the shape says s200; $RUNS timed run(s) of ~${SECS}s per cell."
[ -f "$PEERS_DIR/versions.txt" ] && header="$header Versions: $(paste -sd';' "$PEERS_DIR/versions.txt")."
"$BIN/benchtool" report -tsv "$TSV" -extras "$OUT/extras.txt" -header "$header" | tee "$OUT/table.md"
rm -rf "$OUT/data" # the Maildirs and spools of every Sluice start
echo "raw figures: $OUT (results.tsv, raw.txt, extras.txt, logs/)"
