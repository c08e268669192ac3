#!/usr/bin/env bash
# What each example plugin adds to the proxy's CPU per message: one proxy process with
# four listeners — no plugins; recipients + rate-limit (MAIL and RCPT hooks); headers
# (DATA hook, so the message is spooled); all three — loaded by smtp-source in turns.
# Not a test: prints a Markdown table for bench/RESULTS.md.
#
#   bench/chains.sh                # 10 KiB messages, one session per message, c=10
#   PER_SESSION=many bench/chains.sh
#   RUNS=3 MESSAGES=2000 CONCURRENCY=1 bench/chains.sh
#
# Needs smtp-source and smtp-sink (Debian's postfix package), python3, and the
# wasm32-wasip2 target.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v smtp-source >/dev/null || { echo "install postfix (smtp-source/smtp-sink)"; exit 1; }
ulimit -n "$(ulimit -Hn)"

cargo build --release --locked -p portcullis >/dev/null 2>&1
cargo build --locked --profile plugin --target wasm32-wasip2 --target-dir target/wasm \
  -p recipients -p headers -p rate-limit >/dev/null 2>&1
binary=target/release/portcullis
plugins=target/wasm/wasm32-wasip2/plugin
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sink_port=$(free_port)
smtp-sink -u nobody -m 1000 127.0.0.1:$sink_port 1000 &

names=(none recipients+rate-limit headers all-three)
chains=('[]' '["recipients", "rate-limit"]' '["headers"]' '["recipients", "headers", "rate-limit"]')
ports=()
{
  printf '[server]\nhostname = "bench.test"\nmax_connections = 20000\n'
  # The load comes from one address: no per-client session limit.
  printf '[client_limits]\nmax_sessions = 0\n'
  for i in "${!names[@]}"; do
    ports+=("$(free_port)")
    printf '[[listener]]\nname = "%s"\naddress = "127.0.0.1:%s"\nplugins = %s\n' \
      "${names[$i]}" "${ports[$i]}" "${chains[$i]}"
  done
  cat <<TOML
[upstream]
address = "127.0.0.1:$sink_port"
# smtp-sink takes every client; it has no XCLIENT.
client_address = "none"
[plugins.recipients]
path = "$plugins/recipients.wasm"
config = { domains = ["bench.test"], max_recipients = 100 }
[plugins.headers]
path = "$plugins/headers.wasm"
config = { remove = ["Authentication-Results"], add = [{ name = "X-Checked", value = "{listener} {client_ip}" }], subject_tags = [{ tag = "[EXTERNAL]", sender_domain_not_in = ["example.com"] }] }
[plugins.rate-limit]
path = "$plugins/rate_limit.wasm"
config = { per_client = { messages = 1000000000, window_seconds = 3600 } }
TOML
} > "$work/chains.toml"
RUST_LOG=warn "$binary" run --config "$work/chains.toml" 2>"$work/proxy.log" &
proxy_pid=$!
for _ in $(seq 100); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1', ${ports[3]})).close()" 2>/dev/null && break
  sleep 0.2
done

runs=${RUNS:-5} messages=${MESSAGES:-3000} concurrency=${CONCURRENCY:-10}
flags=()
[ "${PER_SESSION:-one}" = many ] && flags+=(-d)
cpu_ticks() { awk '{print $14 + $15}' /proc/$proxy_pid/stat; }
declare -A cpu
echo "Machine: $(nproc) cores, load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)."
echo "10 KiB messages, $messages per run, concurrency $concurrency, ${PER_SESSION:-one} message(s) per session;"
echo "CPU is the proxy's utime+stime per message, median of $runs runs (the listeners in turns)."
echo
for _ in $(seq "$runs"); do
  for i in "${!names[@]}"; do
    before=$(cpu_ticks)
    smtp-source "${flags[@]}" -s "$concurrency" -l 10240 -m "$messages" \
      -f from@bench.test -t to@bench.test "127.0.0.1:${ports[$i]}"
    after=$(cpu_ticks)
    cpu[$i]+="$(python3 -c "print(f'{($after - $before) * 1000 / $(getconf CLK_TCK) / $messages:.3f}')") "
  done
done
median() { printf '%s\n' "$@" | sort -g | sed -n "$(( ($# + 1) / 2 ))p"; }
base=$(median ${cpu[0]})
echo "| chain | CPU ms/msg | added to no plugins | runs |"
echo "|---|---|---|---|"
for i in "${!names[@]}"; do
  # shellcheck disable=SC2086
  m=$(median ${cpu[$i]})
  echo "| ${names[$i]} | $m | $(python3 -c "print(f'{$m - $base:+.3f}')") | ${cpu[$i]}|"
done
