#!/usr/bin/env bash
# The key-value store in Redis against the store in memory: two proxies of one
# release build, each with recipients + headers + rate-limit on its chain (as
# bench/plugins.sh), one with [kv] backend = "memory", one with backend = "redis"
# (a local redis-server, started here), loaded in turns by smtp-source; then the
# criterion rows of one rate-limit call with its increment in memory and in Redis,
# and that call's p50 and p99 through Redis. Prints a Markdown report for
# bench/RESULTS.md.
#
#   bench/kv.sh
#   RUNS=3 bench/kv.sh
#   QUICK=1 bench/kv.sh    # fewer messages, no criterion rows
#
# Needs smtp-source and smtp-sink (Debian's postfix package), redis-server, python3
# and the wasm32-wasip2 target.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v smtp-source >/dev/null || { echo "install postfix (smtp-source/smtp-sink)"; exit 1; }
command -v redis-server >/dev/null || { echo "install redis-server"; exit 1; }
ulimit -n "$(ulimit -Hn)"

cargo build --release --locked -p portcullis >/dev/null 2>&1
cargo build --locked --profile plugin --target wasm32-wasip2 --target-dir target/wasm \
  -p recipients -p headers -p rate-limit >/dev/null 2>&1
binary=target/release/portcullis
plugins=$PWD/target/wasm/wasm32-wasip2/plugin
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sink_port=$(free_port)
redis_port=$(free_port)
memory_port=$(free_port)
redis_proxy_port=$(free_port)
smtp-sink -u nobody -m 20000 127.0.0.1:$sink_port 20000 &
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
redis_pid=$!

# config NAME PORT KV_TABLE
config() {
  cat > "$work/$1.toml" <<TOML
[server]
hostname = "bench.test"
max_connections = 20000
[client_limits]
max_sessions = 0
[[listener]]
name = "bench"
address = "127.0.0.1:$2"
plugins = ["recipients", "headers", "rate-limit"]
[upstream]
address = "127.0.0.1:$sink_port"
client_address = "none"
[plugins.recipients]
path = "$plugins/recipients.wasm"
config = { domains = ["bench.test"], max_recipients = 100, max_per_session = 1000000 }
[plugins.headers]
path = "$plugins/headers.wasm"
config = { remove = ["Authentication-Results"], add = [{ name = "X-Checked", value = "{listener} {client_ip}" }] }
[plugins.rate-limit]
path = "$plugins/rate_limit.wasm"
config = { per_client = { messages = 1000000000, window_seconds = 3600 } }
$3
TOML
}
config memory "$memory_port" ""
config redis "$redis_proxy_port" "[kv]
backend = \"redis\"
url = \"redis://127.0.0.1:$redis_port\""
RUST_LOG=warn "$binary" run --config "$work/memory.toml" 2>"$work/memory.log" &
memory_pid=$!
RUST_LOG=warn "$binary" run --config "$work/redis.toml" 2>"$work/redis.log" &
redis_proxy_pid=$!
for port in $memory_port $redis_proxy_port; do
  for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $port)).close()" 2>/dev/null && break
    sleep 0.2
  done
done

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

quick=${QUICK:-0}
messages=$(( quick ? 500 : 3000 ))
runs=${RUNS:-5}
echo "## The key-value store in Redis and in memory"
echo
echo "Machine: $(nproc) cores, load average before the run: $(cut -d' ' -f1-3 /proc/loadavg); redis-server $(redis-server --version | grep -o 'v=[^ ]*')."
echo "Two proxies of one release build, recipients + headers + rate-limit on each chain; one keeps the store in memory, one in a local Redis. 10 KiB messages, $messages per run, median of $runs runs taken in turns. CPU per message: the proxy's, and Redis' (the redis-server process)."
echo
echo "| concurrency | sessions | memory msg/s | Redis msg/s | Redis / memory | proxy CPU ms/msg memory | proxy CPU ms/msg Redis | redis-server CPU ms/msg |"
echo "|---|---|---|---|---|---|---|---|"
for concurrency in 10 100; do
  for per_session in one many; do
    memory=(); redis=(); memory_cpu=(); redis_cpu=(); server_cpu=()
    for n in $(seq "$runs"); do
      order=(memory redis)
      [ $((n % 2)) = 0 ] && order=(redis memory)
      for which in "${order[@]}"; do
        if [ "$which" = memory ]; then
          before=$(cpu_ticks "$memory_pid")
          memory+=("$(run "$memory_port" $messages $concurrency $per_session)")
          memory_cpu+=("$(python3 -c "print(f'{($(cpu_ticks "$memory_pid") - $before) * 1000 / $(getconf CLK_TCK) / $messages:.3f}')")")
        else
          before=$(cpu_ticks "$redis_proxy_pid"); server_before=$(cpu_ticks "$redis_pid")
          redis+=("$(run "$redis_proxy_port" $messages $concurrency $per_session)")
          redis_cpu+=("$(python3 -c "print(f'{($(cpu_ticks "$redis_proxy_pid") - $before) * 1000 / $(getconf CLK_TCK) / $messages:.3f}')")")
          server_cpu+=("$(python3 -c "print(f'{($(cpu_ticks "$redis_pid") - $server_before) * 1000 / $(getconf CLK_TCK) / $messages:.3f}')")")
        fi
      done
    done
    a=$(median "${memory[@]}"); b=$(median "${redis[@]}")
    label=$([ "$per_session" = one ] && echo "one per message" || echo "many per session")
    echo "| $concurrency | $label | $a | $b | $(python3 -c "print(f'{$b / $a:.2f}')") | $(median "${memory_cpu[@]}") | $(median "${redis_cpu[@]}") | $(median "${server_cpu[@]}") |"
  done
done
if [ "$quick" = 0 ]; then
  echo
  echo "One rate-limit MAIL hook call (criterion; its increment in memory, then in Redis):"
  echo
  echo '```'
  REDIS_URL="redis://127.0.0.1:$redis_port" cargo bench --locked -p portcullis --bench plugin_calls -- 'mail hook call .rate-limit' 2>&1 \
    | grep -E '^mail hook call|time:|p50' | sed 's/^ *//'
  echo '```'
fi
