#!/usr/bin/env bash
# What a live reload costs: one release proxy (recipients and headers plugins on its
# chain) in front of smtp-sink, loaded by smtp-source with one message per session;
# the same load once without reloads and once with a reload every INTERVAL seconds
# through the control socket, each changing the headers plugin's settings (so that
# plugin is initialised anew and the other kept). Reports throughput with and
# without, messages lost (sent by smtp-source minus accepted by the sink), the time
# each reload took inside the proxy, and the proxy's memory after many reloads.
# Prints a Markdown report for bench/RESULTS.md.
#
#   bench/reload.sh
#   MESSAGES=4000 RELOADS=100 bench/reload.sh
#   VIA=sighup bench/reload.sh    # SIGHUP instead of `portcullis reload`, whose own
#                                 # check (compiling every plugin) competes for the CPU
#
# Needs smtp-source and smtp-sink (Debian's postfix package), python3 and the
# wasm32-wasip2 target.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v smtp-source >/dev/null || { echo "install postfix (smtp-source/smtp-sink)"; exit 1; }
ulimit -n "$(ulimit -Hn)"

cargo build --release --locked -p portcullis >/dev/null 2>&1
cargo build --locked --profile plugin --target wasm32-wasip2 --target-dir target/wasm \
  -p recipients -p headers >/dev/null 2>&1
binary=$PWD/target/release/portcullis
plugins=$PWD/target/wasm/wasm32-wasip2/plugin
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT

messages=${MESSAGES:-4000}
reloads=${RELOADS:-100}
interval=${INTERVAL:-0.3}
via=${VIA:-reload}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sink_port=$(free_port)
port=$(free_port)
smtp-sink -u nobody -c 127.0.0.1:$sink_port 1000 >"$work/sink.out" 2>&1 &
sink_pid=$!

# config VERSION
config() {
  cat > "$work/portcullis.toml" <<TOML
[server]
hostname = "bench.test"
control_socket = "$work/control.sock"
[client_limits]
max_sessions = 0
[[listener]]
name = "bench"
address = "127.0.0.1:$port"
plugins = ["recipients", "headers"]
[upstream]
address = "127.0.0.1:$sink_port"
client_address = "none"
[plugins.recipients]
path = "$plugins/recipients.wasm"
config = { domains = ["bench.test"] }
[plugins.headers]
path = "$plugins/headers.wasm"
config = { add = [{ name = "X-Version", value = "$1" }] }
TOML
}
config 0
RUST_LOG=info "$binary" --log-format json run --config "$work/portcullis.toml" 2>"$work/proxy.log" &
proxy_pid=$!
for _ in $(seq 100); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1', $port)).close()" 2>/dev/null && break
  sleep 0.2
done
rss() { awk '/VmRSS/ {print $2}' /proc/$proxy_pid/status; }
# The sink's count (smtp-sink -c prints a running count on standard output).
sunk() { tr '\r' '\n' < "$work/sink.out" | grep -Eo '[0-9]+' | tail -1 || echo 0; }

# load -> "messages/s errors"
load() {
  local start end
  start=$(date +%s.%N)
  smtp-source -s 10 -l 4096 -m "$messages" -f from@bench.test -t to@bench.test \
    127.0.0.1:$port 2>"$work/source.err" || true
  end=$(date +%s.%N)
  echo "$(python3 -c "print(f'{$messages / ($end - $start):.0f}')") $(wc -l < "$work/source.err")"
}

echo "## Live reload"
echo
echo "Machine: $(nproc) cores, load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)."
echo "One release proxy, recipients and headers plugins on the chain, in front of smtp-sink; smtp-source with 10 sessions at once, one 4 KiB message each, $messages messages per run."
echo
rss_start=$(rss)
read -r quiet quiet_errors < <(load)
before=$(sunk)
# Reloads in the background while the same load runs again.
(
  for n in $(seq "$reloads"); do
    config "$n"
    if [ "$via" = sighup ]; then
      kill -HUP "$proxy_pid"
    elif ! "$binary" reload --config "$work/portcullis.toml" >/dev/null 2>"$work/one.err"; then
      { echo "reload $n failed:"; cat "$work/one.err"; } >>"$work/reload.err"
    fi
    sleep "$interval"
  done
) &
reloader=$!
read -r busy busy_errors < <(load)
wait "$reloader" || true
sleep 1
after=$(sunk)
done_reloads=$(grep -c '"message":"reloaded"' "$work/proxy.log" || true)
rss_end=$(rss)
python3 - "$work/proxy.log" <<'PY' > "$work/times"
import json, sys
times = sorted(json.loads(l)["elapsed_ms"] for l in open(sys.argv[1]) if '"message":"reloaded"' in l)
print(times[len(times) // 2] if times else "-", times[-1] if times else "-")
PY
read -r median_ms max_ms < "$work/times"
echo "| run | msg/s | smtp-source errors | messages the sink got |"
echo "|---|---|---|---|"
echo "| no reloads | $quiet | $quiet_errors | $before of $messages |"
echo "| $done_reloads reloads during the run (every ${interval}s, by $via) | $busy | $busy_errors | $((after - before)) of $messages |"
echo
echo "Throughput with reloads / without: $(python3 -c "print(f'{$busy / $quiet:.2f}')"). Each reload inside the proxy (re-read, headers plugin compiled and initialised, recipients kept, swap): median ${median_ms} ms, longest ${max_ms} ms (\`elapsed_ms\` of the \"reloaded\" log lines)."
echo "Proxy RSS: $((rss_start / 1024)) MiB at start, $((rss_end / 1024)) MiB after $done_reloads reloads and $((2 * messages)) messages."
if [ -s "$work/reload.err" ]; then
  echo
  echo "Reload errors:"
  sed 's/^/    /' "$work/reload.err" | head -5
fi
kill "$proxy_pid" "$sink_pid" 2>/dev/null || true
