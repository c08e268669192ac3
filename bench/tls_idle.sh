#!/usr/bin/env bash
# Memory of idle sessions with and without TLS: starts the release proxy with a
# STARTTLS listener (certificate made here with openssl), holds SESSIONS sessions past
# EHLO in plaintext, then as many after STARTTLS, and prints the proxy's RSS for each.
# Usage: SESSIONS=2000 bench/tls_idle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
sessions="${SESSIONS:-2000}"
ulimit -n "$(ulimit -Hn)"
work="$(mktemp -d)"
trap 'kill "${proxy:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
cargo build --release -q -p portcullis
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=mail.example.test -addext subjectAltName=DNS:mail.example.test \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat > "$work/portcullis.toml" <<TOML
[server]
max_connections = $((sessions + 100))
# The load comes from one address: no per-client session limit.
[client_limits]
max_sessions = 0
[[listener]]
name = "bench"
address = "127.0.0.1:0"
tls = "starttls"
[[tls.certificate]]
cert = "$work/cert.pem"
key = "$work/key.pem"
[upstream]
development_folder = "$work/mail"
TOML
run_one() {
  ./target/release/portcullis --log-format json run --config "$work/portcullis.toml" 2>"$work/log" &
  proxy=$!
  for _ in $(seq 100); do grep -q '"listener":"bench"' "$work/log" 2>/dev/null && break; sleep 0.1; done
  port="$(grep '"listener":"bench"' "$work/log" | grep -o '"address":"127.0.0.1:[0-9]*"' | head -1 | grep -o '[0-9]*"$' | tr -d '"')"
  python3 bench/tls_idle.py "$proxy" "$port" "$work/cert.pem" "$sessions" "$1"
  kill "$proxy"; wait "$proxy" 2>/dev/null || true
}
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
run_one plain
run_one tls
