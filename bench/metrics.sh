#!/usr/bin/env bash
# What the metrics cost: two proxies of the same build in front of one smtp-sink, one
# with [metrics] (and its endpoint scraped every second, as Prometheus would), one
# without, loaded in turns with the recipients plugin on their chain. Prints a
# Markdown report for bench/RESULTS.md.
#
#   bench/metrics.sh            # 5 alternating runs per row
#   RUNS=3 bench/metrics.sh
#   QUICK=1 bench/metrics.sh    # fewer messages, for a smoke run
#
# Needs smtp-source and smtp-sink (Debian's postfix package), python3, curl and the
# wasm32-wasip2 target.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v smtp-source >/dev/null || { echo "install postfix (smtp-source/smtp-sink)"; exit 1; }
ulimit -n "$(ulimit -Hn)"

cargo build --release --locked -p portcullis >/dev/null 2>&1
cargo build --locked --profile plugin --target wasm32-wasip2 --target-dir target/wasm \
  -p recipients >/dev/null 2>&1
binary=target/release/portcullis
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sink_port=$(free_port)
off_port=$(free_port)
on_port=$(free_port)
metrics_port=$(free_port)
smtp-sink -u nobody -m 1000 127.0.0.1:$sink_port 1000 &

# config NAME PORT [METRICS_TABLE]
config() {
  cat > "$work/$1.toml" <<TOML
[server]
hostname = "bench.test"
[client_limits]
max_sessions = 0
[[listener]]
name = "bench"
address = "127.0.0.1:$2"
plugins = ["recipients"]
[upstream]
address = "127.0.0.1:$sink_port"
client_address = "none"
[plugins.recipients]
path = "target/wasm/wasm32-wasip2/plugin/recipients.wasm"
config = { domains = ["bench.test"] }
${3:-}
TOML
}
config off "$off_port"
config on "$on_port" "[metrics]
address = \"127.0.0.1:$metrics_port\""
RUST_LOG=warn "$binary" run --config "$work/off.toml" 2>"$work/off.log" &
off_pid=$!
RUST_LOG=warn "$binary" run --config "$work/on.toml" 2>"$work/on.log" &
on_pid=$!
for port in $off_port $on_port; do
  for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $port)).close()" 2>/dev/null && break
    sleep 0.2
  done
done
# Prometheus scrapes: once a second, for as long as the bench runs.
(while sleep 1; do curl -s -o /dev/null "http://127.0.0.1:$metrics_port/metrics" || true; done) &

run() {
  local port=$1 messages=$2 concurrency=$3 per_session=$4 flags=()
  [ "$per_session" = many ] && flags+=(-d)
  local start end
  start=$(date +%s.%N)
  smtp-source "${flags[@]}" -s "$concurrency" -l 10240 -m "$messages" -f from@bench.test -t to@bench.test 127.0.0.1:$port
  end=$(date +%s.%N)
  python3 -c "print(f'{$messages / ($end - $start):.0f}')"
}
median() { printf '%s\n' "$@" | sort -g | sed -n "$(( ($# + 1) / 2 ))p"; }
cpu_ticks() { awk '{print $14 + $15}' /proc/$1/stat; }
# measured PID PORT MESSAGES CONCURRENCY PER_SESSION -> "messages/s CPU-ms/message"
measured() {
  local pid=$1 before rate after
  shift
  before=$(cpu_ticks "$pid")
  rate=$(run "$@")
  after=$(cpu_ticks "$pid")
  echo "$rate $(python3 -c "print(f'{($after - $before) * 1000 / $(getconf CLK_TCK) / $2:.3f}')")"
}

quick=${QUICK:-0}
messages=$(( quick ? 500 : 3000 ))
runs=${RUNS:-5}
echo "## Metrics on and off"
echo
echo "Machine: $(nproc) cores, load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)."
echo "Two proxies of one release build, the recipients plugin on each chain, one with [metrics] scraped every second; 10 KiB messages, $messages per run, median of $runs runs taken in turns (the order swapped every other run)."
echo
echo "| concurrency | sessions | metrics off msg/s | metrics on msg/s | on / off | CPU ms/msg off | CPU ms/msg on |"
echo "|---|---|---|---|---|---|---|"
for concurrency in 1 10; do
  for per_session in one many; do
    off=(); on=(); off_cpu=(); on_cpu=()
    for n in $(seq "$runs"); do
      order=(off on)
      [ $((n % 2)) = 0 ] && order=(on off)
      for which in "${order[@]}"; do
        if [ "$which" = off ]; then
          read -r rate cpu < <(measured "$off_pid" "$off_port" $messages $concurrency $per_session)
          off+=("$rate"); off_cpu+=("$cpu")
        else
          read -r rate cpu < <(measured "$on_pid" "$on_port" $messages $concurrency $per_session)
          on+=("$rate"); on_cpu+=("$cpu")
        fi
      done
    done
    a=$(median "${off[@]}"); b=$(median "${on[@]}")
    label=$([ "$per_session" = one ] && echo "one per message" || echo "many per session")
    echo "| $concurrency | $label | $a | $b | $(python3 -c "print(f'{$b / $a:.3f}')") | $(median "${off_cpu[@]}") | $(median "${on_cpu[@]}") |"
  done
done
