#!/usr/bin/env bash
# wss:// measurements (benches/README.md, section "TLS"): wsloop against tokio-tungstenite +
# tokio-rustls (crates/peers/src/bin/tokio_wss_echo.rs), same certificate, both on 127.0.0.1.
# Each server is pinned to CPU 0 and the client (examples/wss_bench.rs) to CPU 1; a fresh
# server per point; every point twice. Servers are stopped by PID.
#
#   bash benches/tls.sh                 # echo points, handshakes/s, idle RSS per connection
#   BASE_BIN=/path/to/old/wsloop bash benches/tls.sh plain   # ws:// echo, old vs this binary
#
# Env: SECS (default 5) per point, ROUNDS (default 2), HOLD (default 10000) idle connections.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-5}
ROUNDS=${ROUNDS:-2}
HOLD=${HOLD:-10000}
what=${1:-tls}

cargo build --release --quiet --bin wsloop --example wss_bench
cargo build --release --quiet --package wsloop-peers --bin tokio_wss_echo
bench=target/release/examples/wss_bench
tmp=$(mktemp -d)
pid=""
stop() {
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid"; wait "$pid" 2>/dev/null || true
  fi
  pid=""
}
trap 'stop; rm -rf "$tmp"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -keyout "$tmp/key.pem" -out "$tmp/cert.pem" -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -addext basicConstraints=critical,CA:FALSE 2>/dev/null

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
addr=127.0.0.1:$port

# start NAME TLS(yes/no) [BIN]: a fresh server on $addr, pinned to CPU 0.
start() {
  local name=$1 tls=$2 bin=${3:-target/release/wsloop} tlsargs=()
  [[ $tls == yes ]] && tlsargs=(--tls-cert "$tmp/cert.pem" --tls-key "$tmp/key.pem")
  case $name in
    tokio) taskset -c 0 target/release/tokio_wss_echo "$addr" "${tlsargs[@]}" >"$tmp/out" 2>&1 & ;;
    *) taskset -c 0 "$bin" --addr "$addr" --max-conns 20000 --idle-timeout 0 --ping-interval 0 \
         "${tlsargs[@]}" >"$tmp/out" 2>&1 & ;;
  esac
  pid=$!
  for _ in $(seq 100); do grep -q "listening on" "$tmp/out" 2>/dev/null && return; sleep 0.05; done
  echo "server did not start"; cat "$tmp/out"; exit 1
}

client() { taskset -c 1 "$bench" "$@" --addr "$addr" --server-pid "$pid"; }

if [[ $what == plain ]]; then
  : "${BASE_BIN:?set BASE_BIN to the wsloop binary to compare with}"
  for round in $(seq "$ROUNDS"); do
    for bin in "$BASE_BIN" target/release/wsloop; do
      for point in "--conns 64 --size 32 --inflight 16" "--conns 8 --size 65536 --inflight 16"; do
        start wsloop no "$bin"
        printf 'round %s %-40s ' "$round" "$bin"
        # shellcheck disable=SC2086
        client echo $point --secs "$SECS"
        stop
      done
    done
  done
  exit 0
fi

for round in $(seq "$ROUNDS"); do
  for server in wsloop tokio; do
    for point in "--conns 64 --size 32 --inflight 16" "--conns 8 --size 65536 --inflight 16"; do
      start "$server" yes
      printf 'round %s %-7s ' "$round" "$server"
      # shellcheck disable=SC2086
      client echo $point --secs "$SECS" --ca "$tmp/cert.pem"
      stop
    done
    start "$server" yes
    printf 'round %s %-7s ' "$round" "$server"
    client handshakes --conns 32 --secs "$SECS" --ca "$tmp/cert.pem"
    stop
    start "$server" yes
    printf 'round %s %-7s ' "$round" "$server"
    client hold --conns "$HOLD" --ca "$tmp/cert.pem"
    stop
  done
done
