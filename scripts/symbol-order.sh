#!/usr/bin/env bash
# Writes src/bin/wsloop/symbol-order.txt: the functions of the release `wsloop` binary that
# start-up and serving run, which build.rs has the linker place side by side (see build.rs for
# why). Run it after a change of compiler, dependencies, or much of the code: names that are
# gone are skipped at link time, so a stale list does no harm, it only helps less.
#
# usage: scripts/symbol-order.sh
#
# How: the release binary runs under valgrind's callgrind on a free loopback port while wsload
# opens and closes connections and echoes 32 B, 1 KiB, 64 KiB, 4 MiB and 16 MiB messages; it
# is stopped with SIGINT (so the shutdown path is listed too), and every function of the binary
# callgrind saw run is written, by its mangled name, in callgrind's order. Then the binary is
# built again with the new list. Needs valgrind and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "symbol-order.sh: valgrind is needed" >&2; exit 1; }
cargo build --release --quiet --bin wsloop --bin wsload
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp target/release/wsloop "$tmp/wsloop"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url=ws://127.0.0.1:$port/
valgrind --tool=callgrind --demangle=no --callgrind-out-file="$tmp/callgrind.out" \
  "$tmp/wsloop" --addr "127.0.0.1:$port" --max-message 67108864 >/dev/null 2>&1 &
server=$!
for _ in $(seq 200); do
  (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
load() { target/release/wsload "$@" --url "$url" >/dev/null 2>&1; }
load connect --duration 2
load echo --warmup 0 --conns 4 --inflight 4 --size 32 --duration 2
for size in 1024 65536 4194304 16777216; do
  load echo --warmup 0 --conns 2 --inflight 2 --size "$size" --binary --duration 2
done
kill -INT "$server"
wait "$server" || true
python3 - "$tmp/callgrind.out" "$tmp/wsloop" src/bin/wsloop/symbol-order.txt <<'PY'
import os, re, sys
out, binary, dest = sys.argv[1:4]
binary = os.path.realpath(binary)
objects, functions, ordered, seen, current = {}, {}, [], set(), None
for line in open(out):
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
            functions[m.group(2)] = m.group(3)
        if m.group(1) == "fn" and current == binary:
            name = re.sub(r"'\d+$", "", functions[m.group(2)])
            if not name.startswith("0x") and name not in seen:
                seen.add(name)
                ordered.append(name)
open(dest, "w").write("".join(n + "\n" for n in ordered))
print(f"symbol-order.sh: {len(ordered)} functions written to {dest}")
PY
cargo build --release --quiet --bin wsloop
