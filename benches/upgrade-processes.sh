#!/usr/bin/env bash
# The handoff's duration under `--processes N`: `SIGUSR2` to the supervisor upgrades its
# processes one at a time while idle WebSocket connections are held open.
#
#   bash benches/upgrade-processes.sh [CONNS] [PROCESSES]     # defaults: 60000 4
#
# Starts the release wsloop supervisor on a free loopback port (open-file limit 20 000 per
# process, the machine's hard limit), opens CONNS connections with `wsload hold` spread over
# enough client processes (15 000 each, every one from its own 127.0.x.1 source address, since
# one source address has only ~28 000 ephemeral ports toward one port), sends SIGUSR2 and times,
# every 10 ms, each "process K upgraded" line of the supervisor. Then the holders report how
# many connections stayed up to the end (a dropped one would show there), and the supervisor
# is stopped by its pid. Bounded: 60 s to open, 60 s for the upgrade, the holders' own time.
set -euo pipefail

CONNS="${1:-60000}"
PROCESSES="${2:-4}"
PER_CLIENT=15000
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin wsloop -p wsloop
cargo build --release --quiet -p wsload
ulimit -n 20000

out="target/upgrade-processes"
rm -rf "$out" && mkdir -p "$out"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RUST_LOG=warn target/release/wsloop --addr "127.0.0.1:$port" --processes "$PROCESSES" \
    --max-conns 20000 --pid-file "$out/supervisor.pid" >"$out/supervisor.log" 2>&1 &
sup=$!
cleanup() { kill -TERM "$sup" 2>/dev/null || true; wait "$sup" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 100); do
    [ "$(grep -c 'listening on' "$out/supervisor.log" || true)" -ge "$PROCESSES" ] && break
    sleep 0.1
done

clients=$(( (CONNS + PER_CLIENT - 1) / PER_CLIENT ))
holders=()
for i in $(seq 1 "$clients"); do
    n=$(( i < clients ? PER_CLIENT : CONNS - PER_CLIENT * (clients - 1) ))
    target/release/wsload hold --url "ws://127.0.0.1:$port/" --conns "$n" --duration "${HOLD_SECS:-40}" \
        --ping-every 5 --source-base "127.0.$i.1" >"$out/hold-$i.json" 2>"$out/hold-$i.log" &
    holders+=($!)
done

children() { cat "/proc/$sup/task/$sup/children" 2>/dev/null; }
held() {
    local total=0
    for pid in $(children); do
        total=$(( total + $(ls "/proc/$pid/fd" 2>/dev/null | wc -l) ))
    done
    echo "$total"
}
for _ in $(seq 600); do
    [ "$(held)" -ge "$CONNS" ] && break
    sleep 0.1
done
echo "open: $(held) descriptors in $PROCESSES processes (pids $(children | xargs))"
sleep 2

start=$(date +%s.%N)
kill -USR2 "$sup"
seen=0
for _ in $(seq 6000); do
    now=$(grep -c ' upgraded (pid' "$out/supervisor.log" || true)
    if [ "$now" -gt "$seen" ]; then
        seen=$now
        printf 'process upgraded %d of %d at %.3f s\n' "$seen" "$PROCESSES" \
            "$(echo "$(date +%s.%N) - $start" | bc)"
    fi
    [ "$seen" -ge "$PROCESSES" ] && break
    sleep 0.01
done
[ "$seen" -ge "$PROCESSES" ] || echo "NOT all processes upgraded within 60 s ($seen of $PROCESSES)"
echo "after: $(held) descriptors in processes $(children | xargs)"
grep -E 'upgraded|exited|restarted' "$out/supervisor.log" || true

for pid in "${holders[@]}"; do wait "$pid" || true; done
for f in "$out"/hold-*.json; do
    echo "$f: $(cat "$f")"
done
