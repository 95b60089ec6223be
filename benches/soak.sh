#!/usr/bin/env bash
# Bounded soak (issue 6): one release wsloop under mixed load for SOAK_SECS (default 600 s),
# sampling its RSS and open descriptors every second; fails when either grows.
#
#   bash benches/soak.sh                 # 10 minutes
#   SOAK_SECS=60 bash benches/soak.sh    # a quick one
#
# The load, all from wsload at once, loopback only, each bounded by --duration:
#   echo   32 connections x 4 in flight x 4 KiB binary, every echo verified
#   chat   one publisher at 100 msg/s into /chat, 200 subscribers (20 000 deliveries/s)
#   churn  connection lifecycles (connect, upgrade, close handshake, TCP close), 4 in parallel
#
# Growth check, after a 60 s ramp: the median RSS of the last minute may exceed the median of
# the second minute by at most 10 % + 1 MiB, and the most descriptors open in the last minute
# may exceed the most in the second minute by at most 16; when the load has stopped, the open
# descriptors must return to what the idle server had before it (nothing leaked per
# connection). Every load process must also end with zero errors and zero mismatches.
# Samples go to target/soak/samples.csv (seconds, RSS KiB, open fds).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
SECS=${SOAK_SECS:-600}
if [ "$SECS" -lt 150 ]; then RAMP=$((SECS / 5)); else RAMP=60; fi
out="$root/target/soak"
mkdir -p "$out"

cargo build --release --bin wsloop --bin wsload >/dev/null 2>&1
B=target/release
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
RUST_LOG=warn $B/wsloop --addr "127.0.0.1:$port" >"$out/server.log" 2>&1 &
SERVER=$!
PIDS+=("$SERVER")
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
sleep 0.5
fds() { ls "/proc/$SERVER/fd" | wc -l; }
rss() { awk '/^VmRSS/{print $2}' "/proc/$SERVER/status"; }
idle_fds=$(fds)
idle_rss=$(rss)
echo "wsloop pid $SERVER on 127.0.0.1:$port: idle $idle_rss KiB RSS, $idle_fds fds; soak ${SECS}s"

url="ws://127.0.0.1:$port"
$B/wsload echo --url "$url/" --conns 32 --inflight 4 --size 4096 --binary --duration "$SECS" \
  --warmup 0 >"$out/echo.log" 2>&1 &
LOADS=($!)
$B/wsload fanout --url "$url/chat" --subscribers 200 --rate 100 --size 64 --duration "$SECS" \
  >"$out/chat.log" 2>&1 &
LOADS+=($!)
$B/wsload connect --url "$url/" --concurrency 4 --duration "$SECS" >"$out/churn.log" 2>&1 &
LOADS+=($!)
PIDS+=("${LOADS[@]}")

echo "t,rss_kib,fds" >"$out/samples.csv"
start=$(date +%s)
while :; do
  t=$(($(date +%s) - start))
  echo "$t,$(rss),$(fds)" >>"$out/samples.csv"
  alive=0
  for p in "${LOADS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
  [ "$alive" = 0 ] && break
  [ "$t" -gt $((SECS + 120)) ] && { echo "load did not stop in time" >&2; exit 1; }
  if [ $((t % 60)) = 0 ] && [ "$t" -gt 0 ]; then
    echo "  ${t}s: $(rss) KiB RSS, $(fds) fds"
  fi
  sleep 1
done
status=0
for p in "${LOADS[@]}"; do wait "$p" || status=1; done
sleep 3 # the server finishes the last close handshakes
after_fds=$(fds)
after_rss=$(rss)
echo "load stopped: $after_rss KiB RSS, $after_fds fds (idle before: $idle_rss KiB, $idle_fds fds)"
stats=$(curl -sf "http://127.0.0.1:$port/stats" || true)

for l in echo chat churn; do
  echo "== $l"
  grep -vE '^\{' "$out/$l.log" | sed 's/^/  /' | tail -n 16
done

python3 - "$out/samples.csv" "$RAMP" "$idle_fds" "$after_fds" "$status" "$stats" \
  "$out/echo.log" "$out/chat.log" "$out/churn.log" <<'EOF'
import csv, json, statistics, sys
path, ramp, idle_fds, after_fds, status, stats = sys.argv[1:7]
ramp, idle_fds, after_fds, status = int(ramp), int(idle_fds), int(after_fds), int(status)
rows = [(int(r["t"]), int(r["rss_kib"]), int(r["fds"])) for r in csv.DictReader(open(path))]
end = rows[-1][0]
early = [r for r in rows if ramp <= r[0] < 2 * ramp]
late = [r for r in rows if r[0] >= end - ramp]
failures = []
print(f"\n| window | RSS KiB min / median / max | open fds min / max |")
print("| --- | --- | --- |")
for start in range(0, end + 1, 60):
    w = [r for r in rows if start <= r[0] < start + 60]
    if w:
        rss = [r[1] for r in w]
        fds = [r[2] for r in w]
        print(f"| {start}-{min(start + 60, end)} s ({len(w)} samples) | {min(rss):,} / "
              f"{statistics.median(rss):,.0f} / {max(rss):,} | {min(fds)} / {max(fds)} |")
e_rss = statistics.median(r[1] for r in early)
l_rss = statistics.median(r[1] for r in late)
e_fds = max(r[2] for r in early)
l_fds = max(r[2] for r in late)
print(f"\nRSS median {e_rss:,.0f} KiB at {ramp}-{2 * ramp} s, {l_rss:,.0f} KiB in the last {ramp} s "
      f"({(l_rss - e_rss) / e_rss * 100:+.1f} %); most fds {e_fds} then {l_fds}; "
      f"fds idle before {idle_fds}, after the load {after_fds}")
if l_rss > e_rss * 1.10 + 1024:
    failures.append("RSS grew")
if l_fds > e_fds + 16:
    failures.append("open descriptors grew")
if after_fds > idle_fds:
    failures.append(f"{after_fds - idle_fds} descriptors still open after the load")
for log in sys.argv[7:]:
    lines = [l for l in open(log) if l.startswith("{")]
    if not lines:
        failures.append(f"no report in {log}")
        continue
    rep = json.loads(lines[-1])
    bad = {k: rep.get(k) for k in ("errors", "mismatches", "lost", "out_of_order", "corrupt", "dropped", "open_failures", "failures") if rep.get(k)}
    if bad:
        failures.append(f"{log}: {bad}")
if status:
    failures.append("a load process failed")
if stats:
    s = json.loads(stats)
    keys = [k for k in ("accepted", "connections", "messages_in", "messages_out", "bytes_in", "bytes_out") if k in s]
    print("server /stats: " + ", ".join(f"{k} {s[k]:,}" for k in keys))
if failures:
    print("SOAK FAILED: " + "; ".join(failures))
    sys.exit(1)
print("soak passed: no RSS or descriptor growth, every load clean")
EOF
