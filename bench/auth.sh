#!/usr/bin/env bash
# Edge AUTH under attack, with the default [auth_throttle] settings: memory and
# responsiveness during a burst of simultaneous guesses, and how long a 535 takes for
# a known login against an unknown one (the login oracle). Not a test: it prints
# figures for bench/RESULTS.md.
#
#   bench/auth.sh                        # 1,000 attempts from 100 addresses
#   ATTEMPTS=100 ADDRESSES=1 bench/auth.sh
#   BEFORE=/path/to/old/portcullis bench/auth.sh   # the same burst against another
#                                                  # build first, side by side
#
# Needs python3 and openssl.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)"
cargo build --release --locked -p portcullis >/dev/null 2>&1
binary=$PWD/target/release/portcullis
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT

argon() { echo "$1:$(echo 'correct horse battery' | "$binary" hash-password)"; }
sha() { echo "$1:$(echo 'correct horse battery' | openssl passwd -6 -stdin)"; }
{ argon alice; sha bob; } > "$work/users"
{ sha bob; sha carol; sha dave; } > "$work/sha-users"
{ argon alice; argon erin; argon frank; } > "$work/argon-users"

# Starts $1 with the config in $work/$2.toml; sets $pid and $port.
start() {
  "$1" --log-format json run --config "$work/$2.toml" 2>"$work/$2.log" &
  pid=$!
  for _ in $(seq 100); do grep -q '"message":"listening"' "$work/$2.log" 2>/dev/null && break; sleep 0.1; done
  port=$(grep '"message":"listening"' "$work/$2.log" | grep -o '"address":"127.0.0.1:[0-9]*"' | grep -o '[0-9]*"$' | tr -d '"')
}

# config NAME EXTRA [USERS]: writes $work/NAME.toml.
config() {
  cat > "$work/$1.toml" <<TOML
[server]
max_connections = 5000
[[listener]]
name = "submission"
address = "127.0.0.1:0"
[listener.auth]
mode = "edge"
allow_plaintext = true
credentials = "$work/${3:-users}"
[upstream]
development_folder = "$work/mail"
$2
TOML
}

config burst ""
for build in ${BEFORE:+"$BEFORE"} "$binary"; do
  echo "== burst, $build"
  start "$build" burst
  python3 bench/auth.py burst "$pid" "$port" "${ATTEMPTS:-1000}" "${ADDRESSES:-100}"
  kill "$pid"; wait "$pid" 2>/dev/null || true
done

# Timing: no delay after failures and no limit, so only the check is timed. A file of
# SHA-512-crypt logins, one of Argon2 logins, and the mixed one.
no_delay='[auth_throttle]
max_failures = 100000
delay = "0s"
max_delay = "0s"'
for file in sha-users:bob argon-users:alice users:bob users:alice; do
  config timing "$no_delay" "${file%%:*}"
  for build in ${BEFORE:+"$BEFORE"} "$binary"; do
    echo "== 535 timing, ${file%%:*}, $build"
    start "$build" timing
    python3 bench/auth.py timing "$port" "${file##*:}" "${ROUNDS:-100}"
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done
