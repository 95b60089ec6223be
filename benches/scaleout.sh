#!/usr/bin/env bash
# Scale-out benchmarks (benches/README.md, "Scale-out"). Loopback only; every process it
# starts is stopped by PID. Usage: bash benches/scaleout.sh hold|fanout|echo
set -euo pipefail
cd "$(dirname "$0")/.."
B=target/release
cargo build --release --bin wsloop --example wsbench >/dev/null 2>&1
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
rss_kb() { local t=0; for p in "$@"; do t=$((t + $(awk '/VmRSS/{print $2}' "/proc/$p/status"))); done; echo "$t"; }
case "${1:-}" in
hold) # 4 processes --reuse-port on one port; 4 client processes from 127.0.0.2-5
  N=${N:-15000}
  SP=()
  for i in 1 2 3 4; do
    RUST_LOG=warn $B/wsloop --addr 127.0.0.1:9301 --reuse-port >/dev/null & SP+=($!); PIDS+=($!)
  done
  sleep 1
  before=$(rss_kb "${SP[@]}")
  for i in 2 3 4 5; do
    $B/examples/wsbench hold --addr 127.0.0.1:9301 --conns "$N" --sources "127.0.0.$i" --hold 22 \
      --ping-every 5 >"/tmp/hold$i.log" 2>&1 & PIDS+=($!)
  done
  until [ "$(cat /tmp/hold[2-5].log | grep -c holding)" = 4 ]; do sleep 1; done
  sleep 6 # one round of pings answered
  after=$(rss_kb "${SP[@]}")
  for p in "${SP[@]}"; do
    printf 'server %s: %s kB RSS, %s open fds\n' "$p" "$(awk '/VmRSS/{print $2}' /proc/$p/status)" "$(ls /proc/$p/fd | wc -l)"
  done
  wait "${PIDS[@]:4}" || true
  cat /tmp/hold[2-5].log
  echo "server RSS: $before kB idle (4 processes), $after kB holding"
  ;;
fanout) # FANOUT_PROCS processes (1 or 4) on their own ports, one Redis when more than one
  SUBS=${SUBS:-10000} MSGS=${MSGS:-50} RATE=${RATE:-10} PROCS=${PROCS:-4}
  RPORT=6399
  redis-server --port $RPORT --bind 127.0.0.1 --save '' --appendonly no --loglevel warning >/dev/null & RP=$!; PIDS+=($RP)
  sleep 0.5
  ADDRS=""
  for i in $(seq 1 "$PROCS"); do
    port=$((9400 + i))
    if [ "$PROCS" -gt 1 ]; then
      RUST_LOG=warn $B/wsloop --addr 127.0.0.1:$port --redis redis://127.0.0.1:$RPORT >/dev/null & PIDS+=($!)
    else
      RUST_LOG=warn $B/wsloop --addr 127.0.0.1:$port >/dev/null & PIDS+=($!)
    fi
    ADDRS="$ADDRS${ADDRS:+,}127.0.0.1:$port"
  done
  sleep 1
  rcpu0=$(awk '{print $14+$15}' /proc/$RP/stat)
  $B/examples/wsbench --sources 127.0.0.2,127.0.0.3 fanout --addrs "$ADDRS" --subs "$SUBS" --msgs "$MSGS" --rate "$RATE"
  rcpu1=$(awk '{print $14+$15}' /proc/$RP/stat)
  echo "redis-server CPU during the run: $(( (rcpu1 - rcpu0) * 10 )) ms"
  for i in $(seq 1 "$PROCS"); do curl -s "127.0.0.1:$((9400 + i))/stats" | grep -o '"broker":{[^}]*}' || true; done
  ;;
echo) # --workers 1 vs 2, three rounds each
  for round in 1 2 3; do
    for w in 1 2; do
      RUST_LOG=warn $B/wsloop --addr 127.0.0.1:9501 --workers $w >/dev/null & P=$!
      sleep 0.5
      printf 'workers %s: ' "$w"
      $B/examples/wsbench echo --addr 127.0.0.1:9501 --conns 100 --window 16 --size 64 --duration 5
      kill -TERM $P; wait $P || true
    done
  done
  ;;
*) echo "usage: $0 hold|fanout|echo" >&2; exit 2 ;;
esac
