#!/usr/bin/env bash
# permessage-deflate measurements (benches/README.md, section "permessage-deflate"): what
# compression costs the server per message and per connection, with `wsload --deflate`
# against the release `wsloop` on 127.0.0.1.
#
#   bash benches/deflate.sh            # echo points and held-connection memory, ROUNDS times
#
# Three server settings per point, interleaved, a fresh server each time:
#   off      no --deflate (the client's offer is declined; same text payload, uncompressed)
#   shared   --deflate (wsloop's default: no context takeover, one context pair per reactor)
#   takeover --deflate --deflate-context-takeover (a context pair per connection)
# The client always offers deflate and sends JSON-like text (--payload text).
# With 2 CPUs or more the server runs on CPU 0 and wsload on CPU 1 (taskset). On a shared
# machine both also get real-time priority (chrt -f 10, as root; RT=0 turns it off) so other
# work does not starve them; the kernel still leaves others 5 % of each second.
#
# Env: SECS (default 5) per echo point, ROUNDS (default 2), HOLD (default 2000) connections,
# RT (default 1), OUT (default target/deflate-bench) for the JSON lines and the summary.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-5}
ROUNDS=${ROUNDS:-2}
HOLD=${HOLD:-2000}
OUT=${OUT:-target/deflate-bench}

cargo build --release --quiet --bin wsloop --bin wsload
mkdir -p "$OUT"
results=$OUT/results.jsonl
: >"$results"
server_pin=()
client_pin=()
if [[ $(nproc) -ge 2 ]] && command -v taskset >/dev/null; then
  server_pin=(taskset -c 0)
  client_pin=(taskset -c 1)
fi
if [[ ${RT:-1} != 0 && $(id -u) == 0 ]] && command -v chrt >/dev/null; then
  server_pin=(chrt -f 10 "${server_pin[@]}")
  client_pin=(chrt -f 10 "${client_pin[@]}")
fi
# hold needs a descriptor per connection, in wsload and in the server it starts.
ulimit -n "$(( HOLD + 1024 > $(ulimit -Hn) ? $(ulimit -Hn) : HOLD + 1024 ))"

tmp=$(mktemp -d)
pid=""
stop() {
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    wait "$pid" 2>/dev/null || true
  fi
  pid=""
}
trap 'stop; rm -rf "$tmp"' EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url=ws://127.0.0.1:$port/

# start SETTING: a fresh server with that deflate setting. The memory budget is raised so
# that it never sheds during a measurement (its per-connection estimate is what is checked).
start() {
  local flags=()
  case $1 in
    off) ;;
    shared) flags=(--deflate) ;;
    takeover) flags=(--deflate --deflate-context-takeover) ;;
  esac
  "${server_pin[@]}" target/release/wsloop --addr "127.0.0.1:$port" --max-conns 20000 \
    --idle-timeout 0 --ping-interval 0 --max-buffered 4294967296 "${flags[@]}" \
    >"$tmp/server.out" 2>&1 &
  pid=$!
  for _ in $(seq 200); do
    grep -q "listening on" "$tmp/server.out" 2>/dev/null && return
    sleep 0.05
  done
  echo "server did not start" >&2
  cat "$tmp/server.out" >&2
  exit 1
}

# run TAG SETTING ARGS...: one wsload run against a fresh server; its JSON line, tagged.
run() {
  local tag=$1 setting=$2
  shift 2
  start "$setting"
  local line
  line=$(timeout 300 "${client_pin[@]}" target/release/wsload "$@" --url "$url" \
    --server-pid "$pid" 2>"$tmp/table") || { cat "$tmp/table" >&2; }
  stop
  printf '{"tag":"%s","setting":"%s","result":%s}\n' "$tag" "$setting" "${line:-null}" >>"$results"
  printf '%-24s %-9s %s\n' "$tag" "$setting" "${line:-FAILED}"
}

echo "# $(date -u +%FT%TZ); nproc $(nproc); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); kernel $(uname -r)" | tee "$OUT/machine.txt"
for round in $(seq "$ROUNDS"); do
  for point in "64 1024 4" "16 16384 4" "8 65536 4"; do
    read -r conns size inflight <<<"$point"
    for setting in off shared takeover; do
      run "echo-${conns}x${size}-r$round" "$setting" echo --deflate --payload text \
        --conns "$conns" --size "$size" --inflight "$inflight" --duration "$SECS" --warmup 1
    done
  done
  for size in 1024 65536; do
    for setting in off shared takeover; do
      run "hold-${HOLD}x${size}-r$round" "$setting" hold --deflate --payload text \
        --conns "$HOLD" --size "$size" --duration 3 --ping-every 2
    done
  done
done

python3 - "$results" <<'EOF' | tee "$OUT/summary.md"
import json, sys
from collections import defaultdict
rows = defaultdict(list)
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["result"] is None:
        continue
    rows[(r["tag"].rsplit("-r", 1)[0], r["setting"])].append(r["result"])
def fmt(values, spec):
    return " / ".join(format(v, spec) if v is not None else "-" for v in values)
print("| point | server | msgs/s | MB/s payload | server CPU µs/msg | server CPU % | wire ratio recv (sent) | RTT p50 µs | client CPU % | ok |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for (point, setting), rs in rows.items():
    if not point.startswith("echo"):
        continue
    print(f"| {point[5:]} | {setting} | {fmt([r['msgs_per_sec'] for r in rs], ',.0f')} "
          f"| {fmt([r['mb_per_sec'] for r in rs], '.1f')} "
          f"| {fmt([r['server_cpu_us_per_msg'] for r in rs], '.2f')} "
          f"| {fmt([r['server_cpu_pct'] for r in rs], '.0f')} "
          f"| {fmt([r['wire_ratio_recv'] for r in rs], '.3f')} ({fmt([r['wire_ratio_sent'] for r in rs], '.3f')}) "
          f"| {fmt([r['p50_us'] for r in rs], '.0f')} "
          f"| {fmt([r['client_cpu_pct'] for r in rs], '.0f')} "
          f"| {all(r['mismatches'] == 0 and r['errors'] == 0 for r in rs)} |")
print()
print("| point | server | deflate conns | echoes ok | RSS before → open → after message, KiB | RSS per conn, B | of which the message, B |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for (point, setting), rs in rows.items():
    if not point.startswith("hold"):
        continue
    print(f"| {point[5:]} | {setting} | {fmt([r['deflate_conns'] for r in rs], 'd')} "
          f"| {fmt([r['echoes_ok'] for r in rs], 'd')} "
          f"| {' / '.join(str(r['server_rss_before_kib']) + ' → ' + str(r['server_rss_open_kib']) + ' → ' + str(r['server_rss_after_kib']) for r in rs)} "
          f"| {fmt([r['server_rss_per_conn_bytes'] for r in rs], ',.0f')} "
          f"| {fmt([r['server_rss_message_per_conn_bytes'] for r in rs], ',.0f')} |")
EOF
