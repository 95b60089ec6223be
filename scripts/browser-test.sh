#!/usr/bin/env bash
# End-to-end test of the demo page (html/index.html) in headless Chromium against a real
# wsloop on a free loopback port. Installs what is missing on a fresh Debian machine (as root):
# Chromium and fonts for CJK/emoji from Debian, playwright-core from npm (tests/browser).
#
#   bash scripts/browser-test.sh
#
# A second wsloop with a self-signed certificate (openssl) serves the same page over https://
# and wss:// (WSLOOP_TLS_URL); Chromium runs with --ignore-certificate-errors for it. A third,
# with `--protocol chat`, is where a page asks for a subprotocol (WSLOOP_PROTOCOL_URL).
#
# Env: SCREENSHOT (default target/browser/demo.png), BROWSER_TEST_TIMEOUT (seconds, default 300).
# Exit code: the test's (124 if it timed out).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

log() { printf 'browser-test: %s\n' "$*" >&2; }

# ---- system packages (Debian) ------------------------------------------------------------
apt_missing=()
[[ -x /usr/bin/chromium ]] || apt_missing+=(chromium)
command -v openssl >/dev/null || apt_missing+=(openssl)
# Fonts only matter for the screenshot (CJK and emoji glyphs instead of boxes).
for pkg in fonts-noto-color-emoji fonts-wqy-zenhei; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || apt_missing+=("$pkg")
done
if ((${#apt_missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    log "missing Debian packages: ${apt_missing[*]} (run as root or install them)"
    [[ -x /usr/bin/chromium ]] || exit 1
  else
    log "installing ${apt_missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
  fi
fi
[[ -x /usr/bin/chromium ]] || { log "/usr/bin/chromium not found"; exit 1; }
command -v node >/dev/null || { log "node not found"; exit 1; }

# ---- npm -----------------------------------------------------------------------------------
if [[ ! -d tests/browser/node_modules/playwright-core ]]; then
  log "npm ci in tests/browser"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi

# ---- server --------------------------------------------------------------------------------
cargo build --release --bin wsloop

tmp="$(mktemp -d)"
server_pid=""
tls_pid=""
protocol_pid=""
stop_pid() {
  local pid=$1
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
}
cleanup() {
  stop_pid "$server_pid"
  stop_pid "$tls_pid"
  stop_pid "$protocol_pid"
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_listening PID OUT: prints the address from wsloop's "listening on" line.
wait_listening() {
  local pid=$1 out=$2 addr=""
  for _ in $(seq 200); do # up to 20 s
    addr="$(sed -n 's/.*listening on \([0-9.]*:[0-9]*\).*/\1/p' "$out" | head -n 1)"
    [[ -n "$addr" ]] && { echo "$addr"; return 0; }
    if ! kill -0 "$pid" 2>/dev/null; then
      log "wsloop exited before listening"
      cat "$out" >&2
      return 1
    fi
    sleep 0.1
  done
  log "no 'listening on' line from wsloop within 20 s"
  cat "$out" >&2
  return 1
}

target/release/wsloop --addr 127.0.0.1:0 --deflate >"$tmp/stdout" 2>"$tmp/stderr" &
server_pid=$!
addr="$(wait_listening "$server_pid" "$tmp/stdout")" || { cat "$tmp/stderr" >&2; exit 1; }
log "wsloop (pid $server_pid) listening on $addr"

command -v openssl >/dev/null || { log "openssl not found"; exit 1; }
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -keyout "$tmp/key.pem" -out "$tmp/cert.pem" -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -addext basicConstraints=critical,CA:FALSE 2>/dev/null
target/release/wsloop --addr 127.0.0.1:0 --tls-cert "$tmp/cert.pem" --tls-key "$tmp/key.pem" \
  >"$tmp/tls-stdout" 2>"$tmp/tls-stderr" &
tls_pid=$!
tls_addr="$(wait_listening "$tls_pid" "$tmp/tls-stdout")" || { cat "$tmp/tls-stderr" >&2; exit 1; }
log "wsloop with TLS (pid $tls_pid) listening on $tls_addr"

target/release/wsloop --addr 127.0.0.1:0 --protocol chat \
  >"$tmp/protocol-stdout" 2>"$tmp/protocol-stderr" &
protocol_pid=$!
protocol_addr="$(wait_listening "$protocol_pid" "$tmp/protocol-stdout")" || { cat "$tmp/protocol-stderr" >&2; exit 1; }
log "wsloop with --protocol chat (pid $protocol_pid) listening on $protocol_addr"

# ---- test ----------------------------------------------------------------------------------
export WSLOOP_URL="http://$addr/"
export WSLOOP_TLS_URL="https://$tls_addr/"
export WSLOOP_PROTOCOL_URL="http://$protocol_addr/"
export SCREENSHOT="${SCREENSHOT:-$root/target/browser/demo.png}"
mkdir -p "$(dirname "$SCREENSHOT")"
status=0
(cd tests/browser && timeout --kill-after=10 "${BROWSER_TEST_TIMEOUT:-300}" node --test) || status=$?
if ((status != 0)); then
  log "test failed (exit $status); wsloop stderr follows"
  tail -n 50 "$tmp/stderr" >&2 || true
  log "TLS wsloop stderr follows"
  tail -n 50 "$tmp/tls-stderr" >&2 || true
  log "--protocol wsloop stderr follows"
  tail -n 50 "$tmp/protocol-stderr" >&2 || true
fi
exit "$status"
