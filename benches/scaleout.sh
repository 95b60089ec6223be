#!/usr/bin/env bash
# Scale-out benchmarks (benches/README.md, "Scale-out"), driven by wsload. Loopback only; every
# process it starts is stopped by PID. Usage: bash benches/scaleout.sh hold|fanout|echo
#
#   hold    4 wsloop processes with --reuse-port on one port; 4 `wsload hold` processes of N
#           connections each (N=15000: the open-file limit is 20 000 per process), from source
#           addresses 127.0.0.2-5, pinged every 5 s; total server RSS per connection
#   fanout  PROCS processes (4: sharing the room through one redis-server; 1: no Redis) on
#           their own ports, SUBS subscribers spread over them, one publisher at RATE msg/s for
#           SECS; deliveries/s, publish->receive latency, server and Redis CPU
#   echo    --workers 1 beside --workers 2, three rounds
set -euo pipefail
cd "$(dirname "$0")/.."
B=target/release
cargo build --release --bin wsloop --bin wsload >/dev/null 2>&1
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
rss_kb() { local t=0; for p in "$@"; do t=$((t + $(awk '/VmRSS/{print $2}' "/proc/$p/status"))); done; echo "$t"; }
cpu_ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$t"; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
ulimit -n "$(ulimit -Hn)"
case "${1:-}" in
hold)
  N=${N:-15000}
  SP=()
  for i in 1 2 3 4; do
    RUST_LOG=warn $B/wsloop --addr 127.0.0.1:9301 --reuse-port >/dev/null & SP+=($!); PIDS+=($!)
  done
  wait_port 9301
  sleep 0.5
  before=$(rss_kb "${SP[@]}")
  CP=()
  for i in 2 3 4 5; do
    $B/wsload hold --url ws://127.0.0.1:9301/ --conns "$N" --source-base "127.0.0.$i" \
      --duration 22 --ping-every 5 >"/tmp/scaleout-hold$i.log" 2>&1 & CP+=($!); PIDS+=($!)
  done
  # Sample while all are held: the clients print their table only at the end, so wait until
  # the servers hold 4 N sockets between them (or 60 s).
  for _ in $(seq 120); do
    fds=0; for p in "${SP[@]}"; do fds=$((fds + $(ls /proc/$p/fd | wc -l))); done
    [ "$fds" -ge $((4 * N)) ] && break
    sleep 0.5
  done
  sleep 6 # a round of pings answered
  after=$(rss_kb "${SP[@]}")
  for p in "${SP[@]}"; do
    printf 'server %s: %s kB RSS, %s open fds\n' "$p" "$(awk '/VmRSS/{print $2}' /proc/$p/status)" "$(ls /proc/$p/fd | wc -l)"
  done
  status=0
  for p in "${CP[@]}"; do wait "$p" || status=1; done
  for i in 2 3 4 5; do grep -v '^{' "/tmp/scaleout-hold$i.log"; done
  echo "server RSS: $before kB idle (4 processes), $after kB holding $((4 * N)) connections:" \
    "$(( (after - before) * 1024 / (4 * N) )) B per connection"
  exit $status
  ;;
fanout)
  SUBS=${SUBS:-10000} SECS=${SECS:-5} RATE=${RATE:-10} PROCS=${PROCS:-4}
  RPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --loglevel warning >/dev/null & RP=$!; PIDS+=($RP)
  SP=()
  URLS=()
  for i in $(seq 1 "$PROCS"); do
    port=$((9400 + i))
    if [ "$PROCS" -gt 1 ]; then
      RUST_LOG=warn $B/wsloop --addr 127.0.0.1:$port --redis redis://127.0.0.1:$RPORT >/dev/null & SP+=($!)
    else
      RUST_LOG=warn $B/wsloop --addr 127.0.0.1:$port >/dev/null & SP+=($!)
    fi
    PIDS+=($!)
    URLS+=(--url "ws://127.0.0.1:$port/chat")
    wait_port "$port"
  done
  sleep 0.5
  r0=$(cpu_ticks "$RP"); s0=$(cpu_ticks "${SP[@]}")
  # The table goes to stderr; the JSON line (stdout) is dropped.
  $B/wsload fanout "${URLS[@]}" --subscribers "$SUBS" --rate "$RATE" --size 64 --duration "$SECS" >/dev/null
  r1=$(cpu_ticks "$RP"); s1=$(cpu_ticks "${SP[@]}")
  echo "CPU during the run (opening included): servers $(( (s1 - s0) * 10 )) ms, redis-server $(( (r1 - r0) * 10 )) ms"
  for i in $(seq 1 "$PROCS"); do curl -s "127.0.0.1:$((9400 + i))/stats" | grep -o '"broker":{[^}]*}' || true; done
  ;;
echo)
  for round in 1 2 3; do
    for w in 1 2; do
      RUST_LOG=warn $B/wsloop --addr 127.0.0.1:9501 --workers $w >/dev/null & P=$!
      wait_port 9501
      printf 'round %s, workers %s: ' "$round" "$w"
      $B/wsload echo --url ws://127.0.0.1:9501/ --conns 100 --inflight 16 --size 64 --duration 5 \
        --server-pid $P 2>&1 >/dev/null | grep -E '^ *(msgs/s|server CPU)' | tr -s ' ' | tr '\n' ' '; echo
      kill -TERM $P; wait $P || true
    done
  done
  ;;
*) echo "usage: $0 hold|fanout|echo" >&2; exit 2 ;;
esac
