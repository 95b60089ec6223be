#!/usr/bin/env bash
# Autobahn conformance (fuzzingclient cases) against a freshly built release wsloop.
#
# usage: scripts/autobahn.sh [INCLUDE_GLOBS] [EXCLUDE_GLOBS]
#   default: every case, 1.* to 13.*, against `wsloop --deflate --deflate-min-size 0`
#   (12.*/13.* are permessage-deflate). WSLOOP_ARGS replaces the extra server flags.
#
# Why --deflate-min-size 0: kosoku 0.1.0's case 12/13 code hashes a received text message
# without encoding it when it arrived uncompressed ("Strings must be encoded before hashing"),
# so a server that sends short messages uncompressed (RFC 7692 allows it; wsloop's default is
# 64 bytes) gets ERROR on the 16-byte cases through no fault of its own.
#
# The runner is `kosoku` (PyPI, pinned): a Python 3 runner of Autobahn's own case files (the
# original `autobahntestsuite` is Python 2 code and does not run here). It is installed into a
# venv under $TMPDIR on first use. wsloop is started on a free loopback port and stopped by PID.
# Exit 0 iff every case's behavior and behaviorClose are OK or INFORMATIONAL.
set -euo pipefail
cd "$(dirname "$0")/.."
include=${1:-}
exclude=${2:-}
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
# shellcheck disable=SC2086
target/release/wsloop --addr "127.0.0.1:$port" ${WSLOOP_ARGS:---deflate --deflate-min-size 0} >"$log" 2>&1 &
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
