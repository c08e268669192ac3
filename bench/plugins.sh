#!/usr/bin/env bash
# Plugins' cost, in one run: the sink directly, Portcullis without plugins, and
# Portcullis with recipients + headers + rate-limit on the chain (two listeners of one
# proxy process), then 10,000 concurrent sessions past MAIL that have each called all
# three plugins (served by shared instances, or with SHARE=false by instances of their
# own); recipients counts each session's recipients in its session store. Prints a
# Markdown report for bench/RESULTS.md.
#
#   bench/plugins.sh           # full run
#   QUICK=1 bench/plugins.sh   # fewer messages and sessions, for a smoke run
#   RUNS=3 bench/plugins.sh    # alternating runs per row (default 5; the median is shown)
#   POOL=0 bench/plugins.sh    # server.plugin_pool_size (default 1024; 0 = all on demand)
#   MEMORY_ONLY=1 SESSIONS=1000 bench/plugins.sh   # only the held sessions' memory
#   SHARE=false bench/plugins.sh   # share_instances = false: an instance per plugin
#                                  # per session, although the three are shareable
#
# 10,000 sessions x 3 instances need more memory mappings than Linux allows a process
# by default (vm.max_map_count = 65530); the script raises it when it may (root).
#
# Needs smtp-source and smtp-sink (Debian's postfix package), python3, and the
# wasm32-wasip2 target (rustup target add wasm32-wasip2).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v smtp-source >/dev/null || { echo "install postfix (smtp-source/smtp-sink)"; exit 1; }
# Each held session has a client and an upstream socket: 10,000 need over 20,000 files.
ulimit -Hn 1048576 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"
if [ "$(cat /proc/sys/vm/max_map_count)" -lt 1048576 ] && [ -w /proc/sys/vm/max_map_count ]; then
  echo 1048576 > /proc/sys/vm/max_map_count
fi

cargo build --release --locked -p portcullis >/dev/null 2>&1
cargo build --locked --profile plugin --target wasm32-wasip2 --target-dir target/wasm \
  -p recipients -p headers -p rate-limit >/dev/null 2>&1
binary=target/release/portcullis
plugins=target/wasm/wasm32-wasip2/plugin
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sink_port=$(free_port)
plain_port=$(free_port)
plugin_port=$(free_port)

smtp-sink -u nobody -m 20000 127.0.0.1:$sink_port 20000 &

cat > "$work/bench.toml" <<TOML
[server]
hostname = "bench.test"
max_connections = 20000
plugin_pool_size = ${POOL:-1024}
# The load comes from one address: no per-client session limit.
[client_limits]
max_sessions = 0
[[listener]]
name = "plain"
address = "127.0.0.1:$plain_port"
[[listener]]
name = "plugins"
address = "127.0.0.1:$plugin_port"
plugins = ["recipients", "headers", "rate-limit"]
[upstream]
address = "127.0.0.1:$sink_port"
# smtp-sink takes every client; it has no XCLIENT.
client_address = "none"
[plugins.recipients]
share_instances = ${SHARE:-true}
path = "$plugins/recipients.wasm"
# max_per_session keeps a counter in each session's store (the session-store import).
config = { domains = ["bench.test"], max_recipients = 100, max_per_session = 1000000 }
[plugins.headers]
share_instances = ${SHARE:-true}
path = "$plugins/headers.wasm"
config = { remove = ["Authentication-Results"], add = [{ name = "X-Checked", value = "{listener} {client_ip}" }], subject_tags = [{ tag = "[EXTERNAL]", sender_domain_not_in = ["example.com"] }] }
[plugins.rate-limit]
share_instances = ${SHARE:-true}
path = "$plugins/rate_limit.wasm"
config = { per_client = { messages = 1000000000, window_seconds = 3600 } }
TOML
RUST_LOG=warn "$binary" run --config "$work/bench.toml" 2>"$work/proxy.log" &
proxy_pid=$!
for _ in $(seq 100); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1', $plugin_port)).close()" 2>/dev/null && break
  sleep 0.2
done

# run PORT SIZE MESSAGES CONCURRENCY PER_SESSION -> messages/s
run() {
  local port=$1 size=$2 messages=$3 concurrency=$4 per_session=$5 flags=()
  [ "$per_session" = many ] && flags+=(-d)
  local start end
  start=$(date +%s.%N)
  smtp-source "${flags[@]}" -s "$concurrency" -l "$size" -m "$messages" -f from@bench.test -t to@bench.test 127.0.0.1:$port
  end=$(date +%s.%N)
  python3 -c "print(f'{$messages / ($end - $start):.0f}')"
}
median() { printf '%s\n' "$@" | sort -g | sed -n "$(( ($# + 1) / 2 ))p"; }
cpu_ticks() { awk '{print $14 + $15}' /proc/$proxy_pid/stat; }
# proxied PORT SIZE MESSAGES CONCURRENCY PER_SESSION -> "messages/s proxy-CPU-ms/message"
proxied() {
  local before rate after
  before=$(cpu_ticks)
  rate=$(run "$@")
  after=$(cpu_ticks)
  echo "$rate $(python3 -c "print(f'{($after - $before) * 1000 / $(getconf CLK_TCK) / $3:.3f}')")"
}

quick=${QUICK:-0}
messages=$(( quick ? 500 : 3000 ))
echo "## Plugins: recipients + headers + rate-limit"
echo
echo "Machine: $(nproc) cores, load average before the run: $(cut -d' ' -f1-3 /proc/loadavg); plugin_pool_size = ${POOL:-1024}; share_instances = ${SHARE:-true}; vm.max_map_count = $(cat /proc/sys/vm/max_map_count)."
runs=${RUNS:-5}
echo "10 KiB messages, $messages per run; each figure is the median of $runs runs (direct, then the two listeners, in turns first)."
echo "CPU is the proxy's utime+stime over a run, per message (both listeners are one process)."
echo
echo "| concurrency | sessions | direct msg/s | no plugins msg/s | three plugins msg/s | plugins / no plugins | CPU ms/msg no plugins | CPU ms/msg three plugins |"
echo "|---|---|---|---|---|---|---|---|"
concurrencies=(1 10)
[ "${MEMORY_ONLY:-0}" = 1 ] && concurrencies=()
for concurrency in "${concurrencies[@]}"; do
  for per_session in one many; do
    direct=(); plain=(); with=(); plain_cpu=(); with_cpu=()
    for n in $(seq "$runs"); do
      direct+=("$(run $sink_port 10240 $messages $concurrency $per_session)")
      # Every other run the plugins go first: a run leaves thousands of TIME_WAIT
      # sockets that the next one's connects and accepts pay for.
      order=("$plain_port" "$plugin_port")
      [ $((n % 2)) = 0 ] && order=("$plugin_port" "$plain_port")
      for port in "${order[@]}"; do
        read -r rate cpu < <(proxied "$port" 10240 $messages $concurrency $per_session)
        if [ "$port" = "$plain_port" ]; then
          plain+=("$rate"); plain_cpu+=("$cpu")
        else
          with+=("$rate"); with_cpu+=("$cpu")
        fi
      done
    done
    d=$(median "${direct[@]}"); p=$(median "${plain[@]}"); w=$(median "${with[@]}")
    label=$([ "$per_session" = one ] && echo "one per message" || echo "many per session")
    echo "| $concurrency | $label | $d | $p | $w | $(python3 -c "print(f'{$w / $p:.2f}')") | $(median "${plain_cpu[@]}") | $(median "${with_cpu[@]}") |"
  done
done
echo

# Concurrent sessions, each past MAIL having called all three plugins: a first
# message calls headers (DATA), then MAIL and RCPT call rate-limit and recipients,
# and the session is held open. With SHARE=false each session keeps an instance of
# each; otherwise they were lent one for each call.
sessions=${SESSIONS:-$(( quick ? 1000 : 10000 ))}
# Each held session takes two of the proxy's file descriptors (client and upstream).
# Where the hard limit cannot be raised (a container without CAP_SYS_RESOURCE), hold
# as many as it allows and say so, rather than fail half-way.
fd_room=$(( ($(ulimit -n) - 200) / 2 ))
if [ "$sessions" -gt "$fd_room" ]; then
  echo "(the open-files limit, $(ulimit -n), allows $fd_room held sessions: measuring $fd_room, not $sessions)"
  sessions=$fd_room
fi
rss_before=$(awk '/VmRSS/ {print $2}' /proc/$proxy_pid/status)
instances=$([ "${SHARE:-true}" = true ] && echo "shared by sessions" || echo "one per plugin per session")
python3 - "$plugin_port" "$sessions" "$proxy_pid" "$instances" <<'PY'
import resource, socket, sys, time
port, count, pid, instances = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

def expect(s, code):
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit(f"connection closed waiting for {code}")
        data += chunk
        lines = data.split(b"\r\n")
        done = [l for l in lines if len(l) >= 4 and l[3:4] == b" "]
        if done:
            assert done[-1].startswith(str(code).encode()), (code, data)
            return

held = []
start = time.time()
for n in range(count):
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    expect(s, 220)
    s.sendall(b"EHLO held.test\r\n"); expect(s, 250)
    s.sendall(b"MAIL FROM:<a@bench.test>\r\n"); expect(s, 250)
    s.sendall(b"RCPT TO:<b@bench.test>\r\n"); expect(s, 250)
    s.sendall(b"DATA\r\n"); expect(s, 354)
    s.sendall(b"Subject: held\r\n\r\nfirst message\r\n.\r\n"); expect(s, 250)
    s.sendall(b"MAIL FROM:<a@bench.test>\r\n"); expect(s, 250)
    s.sendall(b"RCPT TO:<b@bench.test>\r\n"); expect(s, 250)
    held.append(s)
elapsed = time.time() - start
time.sleep(1)
rss = int(next(l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")).split()[1])
pss = int(next(l for l in open(f"/proc/{pid}/smaps_rollup") if l.startswith("Pss:")).split()[1])
print(f"{count} concurrent sessions past MAIL, each having called the three plugins "
      f"(instances: {instances}): proxy RSS {rss / 1024:.0f} MiB "
      f"({rss / count:.0f} KiB per session), PSS {pss / 1024:.0f} MiB; opened in {elapsed:.0f} s")

# Where that memory is, by kind of mapping (from /proc/PID/smaps).
kinds = {}
kind = None
for line in open(f"/proc/{pid}/smaps"):
    fields = line.split()
    if "-" in fields[0] and len(fields) >= 5:
        start, end = (int(x, 16) for x in fields[0].split("-"))
        size, name = end - start, " ".join(fields[5:])
        if "memfd" in name:
            kind = "plugin memory images (copy-on-write, /memfd)"
        elif name:
            kind = "the binary, libraries, [heap], [stack]"
        elif size >= 1 << 30:
            kind = "plugin linear memories (pages written or read outside the image)"
        elif (2 << 20) <= size <= (2 << 20) + 65536:
            kind = "fiber stacks"
        else:
            kind = "other anonymous memory (malloc arenas: stores, instances, sessions)"
        kinds.setdefault(kind, [0, 0, 0])[0] += 1
    elif fields[0] == "Rss:":
        kinds[kind][1] += int(fields[1])
    elif fields[0] == "Pss:":
        kinds[kind][2] += int(fields[1])
print()
print("| mappings | count | RSS MiB | PSS MiB | RSS KiB per session |")
print("|---|---|---|---|---|")
for kind, (n, rss_k, pss_k) in sorted(kinds.items(), key=lambda kv: -kv[1][1]):
    print(f"| {kind} | {n} | {rss_k / 1024:.0f} | {pss_k / 1024:.0f} | {rss_k / count:.0f} |")
for s in held:
    s.close()
PY
echo "(proxy RSS before opening them: $((rss_before / 1024)) MiB)"
