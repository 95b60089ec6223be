#!/usr/bin/env bash
# What the protections of issue 11 (metrics endpoint, memory budget, origin check, handshake
# token bucket, per-IP cap, per-connection message/byte rate limits) cost on the echo points
# when no limit is hit. Three servers, each point on a fresh process, interleaved, repeated:
#
#   before  a build of BEFORE_REV (default 564f584, the last commit before any of them)
#   off     this build with what can be turned off turned off (--no-metrics --allow-origin '*')
#   on      this build with every limit set but never reached, and /metrics scraped every second
#
# The memory accounting and the gates the limits sit behind are always compiled in, so "off"
# vs "on" is the cost of enabling them and "before" vs "off" the cost of having them at all
# (BEFORE_REV also predates TLS and the scale-out seam, which sit on the same paths).
#
#   bash benches/protections.sh            # ROUNDS=3 DUR=5 by default
#   ROUNDS=1 DUR=1 bash benches/protections.sh   # quick
#   RT=1 ROUNDS=5 DUR=3 bash benches/protections.sh   # on a shared machine (real-time priority)
#
# Loopback only; every process it starts is stopped by PID. Server on CPU 0 and wsload on CPU 1
# (taskset) when there are two CPUs. Prints one line per run and a table of medians.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
ROUNDS=${ROUNDS:-3}
DUR=${DUR:-5}
BEFORE_REV=${BEFORE_REV:-564f584}

cargo build --release --bin wsloop --bin wsload >/dev/null 2>&1
B=target/release
before_dir="$root/target/before-$BEFORE_REV"
if [ ! -x "$before_dir/release/wsloop" ]; then
  echo "building wsloop at $BEFORE_REV into $before_dir (once)" >&2
  wt="$(mktemp -d)"
  git worktree add --detach -f "$wt" "$BEFORE_REV" >/dev/null 2>&1
  (cd "$wt" && CARGO_TARGET_DIR="$before_dir" cargo build --release --bin wsloop >/dev/null 2>&1)
  git worktree remove --force "$wt"
fi

if [ "$(nproc)" -ge 2 ]; then SPIN=(taskset -c 0); LPIN=(taskset -c 1); else SPIN=(); LPIN=(); fi
# RT=1: server and wsload at real-time priority (chrt -f 10), so other work on a shared
# machine does not preempt them (as benches/load.rs --rt does).
if [ "${RT:-0}" = 1 ]; then SPIN=(chrt -f 10 "${SPIN[@]}"); LPIN=(chrt -f 10 "${LPIN[@]}"); fi

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

port=9640
# start_server CONFIG: starts a fresh server on the next port; sets SERVER_PID and URL.
start_server() {
  port=$((port + 1))
  local addr="127.0.0.1:$port"
  local cmd
  case "$1" in
  before) cmd=("$before_dir/release/wsloop" --addr "$addr") ;;
  off) cmd=($B/wsloop --addr "$addr" --no-metrics --allow-origin '*') ;;
  on) cmd=($B/wsloop --addr "$addr" --max-handshake-rate 100000/100000 --max-conns-per-ip 10000
    --max-msg-rate 10000000 --max-bytes-rate 10000000000) ;;
  esac
  "${SPIN[@]}" "${cmd[@]}" >/dev/null 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  URL="ws://$addr/"
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "server ($1) did not start" >&2
  exit 1
}

# scrape PORT: GET /metrics every second until killed (the "on" server's monitoring).
scrape() { while curl -sf "http://127.0.0.1:$1/metrics" >/dev/null; do sleep 1; done; }

POINTS=("echo --conns 64 --inflight 16 --size 32" "echo --conns 256 --inflight 4 --size 1024" "latency --size 32")
NAMES=("64 x 32 B, 16 in flight" "256 x 1 KiB, 4 in flight" "1 conn x 32 B RTT")
results="$(mktemp)"
for round in $(seq "$ROUNDS"); do
  for i in "${!POINTS[@]}"; do
    for config in before off on; do
      start_server "$config"
      scraper=""
      if [ "$config" = on ]; then scrape "$port" & scraper=$!; PIDS+=("$scraper"); fi
      # shellcheck disable=SC2086 # the point's words are separate arguments
      json="$("${LPIN[@]}" $B/wsload ${POINTS[$i]} --url "$URL" --duration "$DUR" --warmup 1 \
        --server-pid "$SERVER_PID" 2>/dev/null | tail -n 1)"
      [ -n "$scraper" ] && kill "$scraper" 2>/dev/null || true
      kill -TERM "$SERVER_PID"
      wait "$SERVER_PID" 2>/dev/null || true
      echo "$round|$i|$config|$json" >>"$results"
      echo "round $round, ${NAMES[$i]}, $config: $json"
    done
  done
done

python3 - "$results" "${NAMES[@]}" <<'EOF'
import json, statistics, sys
rows = [l.rstrip("\n").split("|", 3) for l in open(sys.argv[1])]
names = sys.argv[2:]
by = {}
for _, i, config, js in rows:
    by.setdefault((int(i), config), []).append(json.loads(js))
def med(xs):
    return statistics.median(xs) if xs else float("nan")
print()
print("| point | figure | before | off | on | on ÷ off | on ÷ before |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for i, name in enumerate(names):
    figs = {}
    for config in ("before", "off", "on"):
        runs = by.get((i, config), [])
        if runs and runs[0]["mode"] == "echo":
            figs.setdefault("msgs/s", {})[config] = med([r["msgs_per_sec"] for r in runs])
            figs.setdefault("server CPU µs/msg", {})[config] = med(
                [r["server_cpu_pct"] / 100 / r["msgs_per_sec"] * 1e6 for r in runs])
        elif runs:
            figs.setdefault("RTT p50 µs", {})[config] = med([r["p50_us"] for r in runs])
            figs.setdefault("RTT p99 µs", {})[config] = med([r["p99_us"] for r in runs])
    for fig, v in figs.items():
        fmt = (lambda x: f"{x:,.0f}") if fig == "msgs/s" else (lambda x: f"{x:.3f}" if x < 10 else f"{x:.1f}")
        print(f"| {name} | {fig} | {fmt(v['before'])} | {fmt(v['off'])} | {fmt(v['on'])} "
              f"| {v['on'] / v['off']:.3f} | {v['on'] / v['before']:.3f} |")
EOF
rm -f "$results"
