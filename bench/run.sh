#!/usr/bin/env bash
# Throughput, CPU and memory of Portcullis against Postfix's smtp-sink, measured in one
# run as ratios against sending to the sink directly. Not a test: it prints a Markdown
# report (record it in bench/RESULTS.md with the machine's load).
#
#   bench/run.sh            # full matrix
#   QUICK=1 bench/run.sh    # fewer messages, for a smoke run
#   WORKERS=1 bench/run.sh  # the proxy with server.worker_threads = 1
#   REUSE=5s bench/run.sh   # the proxy keeps idle upstream sessions ([upstream.reuse])
#
# Needs smtp-source and smtp-sink (Debian's postfix package) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v smtp-source >/dev/null || { echo "install postfix (smtp-source/smtp-sink)"; exit 1; }
ulimit -n "$(ulimit -Hn)"

cargo build --release --locked -p portcullis >/dev/null 2>&1
binary=target/release/portcullis
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sink_port=$(free_port)
proxy_port=$(free_port)

# The sink accepts everything and discards it (-c counts, -u drops root privileges).
smtp-sink -u nobody -m 1000 127.0.0.1:$sink_port 1000 &
sink_pid=$!

cat > "$work/bench.toml" <<TOML
[server]
hostname = "bench.test"
max_connections = 20000
worker_threads = ${WORKERS:-0}
# The load comes from one address: no per-client session limit.
[client_limits]
max_sessions = 0
[smtp]
max_message_size = 104857600
[[listener]]
name = "bench"
address = "127.0.0.1:$proxy_port"
[upstream]
address = "127.0.0.1:$sink_port"
# smtp-sink takes every client; it has no XCLIENT.
client_address = "none"
reuse = { idle_timeout = "${REUSE:-0s}" }
TOML
RUST_LOG=warn "$binary" run --config "$work/bench.toml" 2>"$work/proxy.log" &
proxy_pid=$!
sleep 1

# utime + stime of a process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks_per_second=$(getconf CLK_TCK)

# run TARGET_PORT SIZE MESSAGES CONCURRENCY PER_SESSION PID -> "messages/s cpu_ms_per_message"
# where the CPU is that of PID over the run: the sink's on the direct runs (the
# reference: one side of each session, in C), the proxy's on the proxied runs.
run() {
  local port=$1 size=$2 messages=$3 concurrency=$4 per_session=$5 pid=$6
  local flags=()
  [ "$per_session" = many ] && flags+=(-d)
  local before after start end
  before=$(cpu_ticks "$pid")
  start=$(date +%s.%N)
  smtp-source "${flags[@]}" -s "$concurrency" -l "$size" -m "$messages" -f from@bench.test -t to@bench.test 127.0.0.1:$port
  end=$(date +%s.%N)
  after=$(cpu_ticks "$pid")
  python3 -c "
import sys
elapsed = $end - $start
print(f'{$messages / elapsed:.0f} {($after - $before) * 1000 / $ticks_per_second / $messages:.3f}')"
}

# Median of three alternating runs per side: the machine is a VM with noisy neighbours.
median() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
measure() {
  local size=$1 messages=$2 concurrency=$3 per_session=$4
  local direct=() proxied=() cpu=() sink_cpu=() d p c s
  for _ in 1 2 3; do
    read -r d s < <(run $sink_port "$size" "$messages" "$concurrency" "$per_session" $sink_pid)
    read -r p c < <(run $proxy_port "$size" "$messages" "$concurrency" "$per_session" $proxy_pid)
    direct+=("$d"); proxied+=("$p"); cpu+=("$c"); sink_cpu+=("$s")
  done
  echo "$(median "${direct[@]}") $(median "${proxied[@]}") $(median "${cpu[@]}") $(median "${sink_cpu[@]}")"
}

quick=${QUICK:-0}
echo "## Throughput (messages per second) and proxy CPU"
echo
echo "Machine: $(nproc) cores, load average before the run: $(cut -d' ' -f1-3 /proc/loadavg); proxy worker_threads = ${WORKERS:-0}, upstream reuse idle_timeout = ${REUSE:-0s}"
echo
echo "Each figure is the median of three runs; direct and proxied runs alternate. \"sink CPU\""
echo "is smtp-sink's own CPU per message on the direct runs: Postfix's C code serving one side"
echo "of each session, where the proxy serves two."
echo
echo "| size | concurrency | sessions | direct msg/s | proxy msg/s | ratio | proxy CPU ms/msg | sink CPU ms/msg (direct) |"
echo "|---|---|---|---|---|---|---|---|"
for size in 10240 1048576; do
  if [ "$size" = 10240 ]; then messages=$(( quick ? 1000 : 5000 )); else messages=$(( quick ? 50 : 200 )); fi
  for concurrency in 1 10 100; do
    for per_session in one many; do
      read -r direct proxied cpu sink_cpu < <(measure $size $messages $concurrency $per_session)
      ratio=$(python3 -c "print(f'{$proxied / $direct:.2f}')")
      label=$([ "$per_session" = one ] && echo "one per message" || echo "many per session")
      echo "| $((size / 1024)) KiB | $concurrency | $label | $direct | $proxied | $ratio | $cpu | $sink_cpu |"
    done
  done
done
echo
echo "Proxy peak RSS after the throughput runs: $(awk '/VmHWM/ {print $2 / 1024 " MiB"}' /proc/$proxy_pid/status)"
echo

# 10,000 idle sessions: connect, read the greeting, say EHLO, then hold the connection.
idle=${IDLE_SESSIONS:-10000}
rss_before=$(awk '/VmRSS/ {print $2}' /proc/$proxy_pid/status)
python3 - "$proxy_port" "$idle" "$proxy_pid" <<'PY'
import resource, socket, sys, time
port, count, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
sockets = []
for _ in range(count):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.recv(512)
    s.sendall(b"EHLO idle.test\r\n")
    sockets.append(s)
for s in sockets:
    s.recv(4096)
time.sleep(1)
rss = int(next(l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")).split()[1])
print(f"{count} idle sessions (each past EHLO): proxy RSS {rss / 1024:.0f} MiB")
for s in sockets:
    s.close()
PY
echo "(RSS before opening them: $((rss_before / 1024)) MiB)"
