#!/usr/bin/env bash
# Writes src/bin/wsloop/symbol-order.txt: the functions of the release `wsloop` binary that
# serving runs, then those only start-up runs, which build.rs has the linker place in that
# order at the start of the code (see build.rs for why). Run it after a change of compiler,
# dependencies, or much of the code: names that are gone are skipped at link time, so a stale
# list does no harm, it only helps less.
#
# usage: scripts/symbol-order.sh
#
# How: the release binary runs under valgrind's callgrind on a free loopback port. When it
# has given back start-up's pages (`trim::drop_file_pages` returns), callgrind writes what
# start-up ran; then wsload opens and closes connections and echoes 32 B, 1 KiB, 64 KiB,
# 4 MiB and 16 MiB messages; then, with 20 connections held, SIGUSR2 upgrades it in place
# (the new process runs under callgrind too, its start-up split off the same way), an echo
# runs against the new process, and it is stopped with SIGINT (so the shutdown path is
# listed too). What every process ran after its start-up is serving. Serving's functions come
# first, by their cost (the hottest first), with every variant of the functions chosen by CPU
# features (valgrind's CPU lacks some the real one has, so callgrind sees other variants run),
# then `wsloop_serving_code_end`, which tells the server where the code to keep ends
# (trim.rs), then start-up's. Functions are written by their mangled names. Then the binary is built
# again with the new list. Needs valgrind, nm and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "symbol-order.sh: valgrind is needed" >&2; exit 1; }
# As `cargo run --release` builds it (features unified over the workspace's default members):
# built otherwise (`--package wsloop`, or beside the bench's peers), its dependencies get
# other features, which changes every symbol's hash (see benches/support/mod.rs).
cargo build --release --quiet --bin wsloop --bin wsload
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp target/release/wsloop "$tmp/wsloop"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url=ws://127.0.0.1:$port/
# --trace-children: the process an upgrade starts (the same program, exec'd) runs under
# callgrind too, each process writing its own dumps.
valgrind --tool=callgrind --demangle=no --callgrind-out-file="$tmp/callgrind.out.%p" \
  --dump-after='*drop_file_pages*' --trace-children=yes \
  "$tmp/wsloop" --addr "127.0.0.1:$port" --max-message 67108864 --pid-file "$tmp/pid" \
  >"$tmp/stdout" 2>/dev/null &
server=$!
for _ in $(seq 300); do
  grep -q "listening on" "$tmp/stdout" && break
  sleep 0.1
done
load() { target/release/wsload "$@" --url "$url" >/dev/null 2>&1; }
load connect --duration 2
load echo --warmup 0 --conns 4 --inflight 4 --size 32 --duration 2
for size in 1024 65536 4194304 16777216; do
  load echo --warmup 0 --conns 2 --inflight 2 --size "$size" --binary --duration 2
done
# An upgrade with connections to move: the old process's handoff, the new one's adoption and
# what both run after the takeover are serving code too (trim.rs gives back only start-up's).
target/release/wsload hold --conns 20 --duration 60 --ping-every 1 --url "$url" >/dev/null 2>&1 &
hold=$!
sleep 2
kill -USR2 "$server"
new=$server
for _ in $(seq 600); do
  new=$(cat "$tmp/pid" 2>/dev/null || echo "$server")
  [ "$new" != "$server" ] && break
  sleep 0.1
done
[ "$new" != "$server" ] || { echo "symbol-order.sh: the upgrade did not happen" >&2; exit 1; }
wait "$server" || true
load echo --warmup 0 --conns 2 --inflight 2 --size 1024 --duration 2
kill "$hold" 2>/dev/null || true
wait "$hold" 2>/dev/null || true
kill -INT "$new"
for _ in $(seq 600); do
  kill -0 "$new" 2>/dev/null || break
  sleep 0.1
done
nm "$tmp/wsloop" | awk '{print $3}' >"$tmp/symbols"
python3 - "$tmp/wsloop" src/bin/wsloop/symbol-order.txt "$tmp/symbols" "$tmp"/callgrind.out* <<'PY'
import os, re, sys
binary, dest, symbols, dumps = os.path.realpath(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
# Chosen at run time by CPU features: SHA-1 (the handshake), UTF-8 validation.
DISPATCHED = re.compile(r"sha1\d*compress|simdutf8\d*implementation")
MARKER = "wsloop_serving_code_end"


def functions(path):
    """The binary's functions in one callgrind dump, with their own instruction counts."""
    objects, names, cost, current, fn, after_call = {}, {}, {}, None, None, False
    for line in open(path):
        m = re.match(r"^(c?ob)=\((\d+)\)(?: (.*))?", line)
        if m:
            if m.group(3):
                objects[m.group(2)] = m.group(3)
            if m.group(1) == "ob":
                current = os.path.realpath(objects.get(m.group(2), ""))
            continue
        m = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?", line)
        if m:
            if m.group(3):
                names[m.group(2)] = m.group(3)
            if m.group(1) == "fn":
                name = re.sub(r"'\d+$", "", names.get(m.group(2), ""))
                # Not an address ("0x…") nor a pseudo-function ("(below main)").
                named = name and not name.startswith(("0x", "("))
                fn = name if current == binary and named else None
                if fn is not None:
                    cost.setdefault(fn, 0)
            continue
        # A cost line of the current function (not of a call's target, after "calls=").
        m = re.match(r"^[+-]?\d+ (\d+)", line)
        if m and fn is not None and not after_call:
            cost[fn] += int(m.group(1))
        after_call = line.startswith("calls=")
    return cost


# Each process's first dump (".1", written when start-up gives its pages back) is start-up;
# the rest (a new process's second one, after its takeover, and the final ones) is serving.
startup = [d for d in dumps if d.endswith(".1") and "drop_file_pages" in open(d).read(4096)]
serving = [d for d in dumps if d not in startup]
if len(startup) != 2 or len(serving) < 2:
    sys.exit(f"symbol-order.sh: expected two processes' start-up dumps and the rest, got {dumps}")
hot = {}
for d in serving:
    for name, ir in functions(d).items():
        hot[name] = hot.get(name, 0) + ir
ordered = sorted(hot, key=lambda n: -hot[n])
ordered += [n.strip() for n in open(symbols) if DISPATCHED.search(n) and n.strip() not in hot]
serving_count = len(ordered)
ordered.append(MARKER)
seen = set(ordered)
for d in startup:
    for name in functions(d):
        if name not in seen:
            seen.add(name)
            ordered.append(name)
open(dest, "w").write("".join(n + "\n" for n in ordered))
print(f"symbol-order.sh: {serving_count} serving and {len(ordered) - serving_count - 1} start-up functions written to {dest}")
PY
cargo build --release --quiet --bin wsloop
