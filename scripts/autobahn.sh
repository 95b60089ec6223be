#!/usr/bin/env bash
# Autobahn conformance (fuzzingclient cases) against a freshly built release wsloop.
#
# usage: scripts/autobahn.sh [INCLUDE_GLOBS] [EXCLUDE_GLOBS]
#   default: every case except 12.* and 13.* (permessage-deflate is not implemented yet)
#
# The runner is `kosoku` (PyPI, pinned): a Python 3 runner of Autobahn's own case files (the
# original `autobahntestsuite` is Python 2 code and does not run here). It is installed into a
# venv under $TMPDIR on first use. wsloop is started on a free loopback port and stopped by PID.
# Exit 0 iff every case's behavior and behaviorClose are OK or INFORMATIONAL.
set -euo pipefail
cd "$(dirname "$0")/.."
include=${1:-}
exclude=${2-12.*,13.*}
tmp=${TMPDIR:-/tmp}
venv=${AUTOBAHN_VENV:-$tmp/wsloop-kosoku-venv}
if [[ ! -x $venv/bin/kosoku ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'kosoku==0.1.0'
fi
cargo build --release --quiet --bin wsloop
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
out=$tmp/wsloop-autobahn-$port
log=$tmp/wsloop-autobahn-server-$port.log
target/release/wsloop --addr "127.0.0.1:$port" >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  grep -q 'listening on' "$log" && break
  sleep 0.1
done
args=(127.0.0.1:"$port" -p 2 -o "$out")
IFS=, read -ra inc <<<"$include"; for c in "${inc[@]}"; do [[ -n $c ]] && args+=(-i "$c"); done
IFS=, read -ra exc <<<"$exclude"; for c in "${exc[@]}"; do [[ -n $c ]] && args+=(-x "$c"); done
rm -rf "$out"
timeout 1200 "$venv/bin/kosoku" "${args[@]}" >"$out.log" 2>&1 || true
kill -0 "$pid" 2>/dev/null || { echo "autobahn: wsloop died during the run"; cat "$log"; exit 1; }
python3 scripts/autobahn_summary.py "$out"
