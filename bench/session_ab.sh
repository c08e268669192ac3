#!/usr/bin/env bash
# Two builds (or two settings) of the proxy side by side on one-message sessions: the
# same smtp-sink behind both, runs alternating A, B, A, B… so that the machine's
# drift touches both alike. Prints each side's runs sorted by CPU, and the medians.
#
#   bench/session_ab.sh OLD_BINARY NEW_BINARY
#   OPEN_A=ehlo OPEN_B=connect bench/session_ab.sh BIN BIN     # one build, two settings
#   THREADS_B=1 ROUNDS=9 CONCURRENCY=100 bench/session_ab.sh BIN BIN
#
# A binary is built from a commit with `git worktree add /tmp/old COMMIT && cargo
# build --release --manifest-path /tmp/old/Cargo.toml --target-dir target`; copy
# target/release/portcullis aside before building the other.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
[ $# -eq 2 ] || { sed -n 2,12p "$0"; exit 2; }
binary_a=$(realpath "$1"); binary_b=$(realpath "$2")
setup smtp-source smtp-sink python3

rounds=${ROUNDS:-5}; messages=${MESSAGES:-5000}; concurrency=${CONCURRENCY:-10}
sink=$(free_port); port_a=$(free_port); port_b=$(free_port)
smtp-sink -u nobody -m 1000 127.0.0.1:$sink 1000 &

# proxy NAME BINARY PORT OPEN THREADS: started in the background, logging at info.
proxy() {
  proxy_config "$work/$1.toml" "$3" "$sink" "$4" "$5"
  "$2" run --config "$work/$1.toml" >/dev/null 2>"$work/$1.log" &
}
proxy a "$binary_a" $port_a "${OPEN_A:-ehlo}" "${THREADS_A:-0}"
pid_a=$!
proxy b "$binary_b" $port_b "${OPEN_B:-ehlo}" "${THREADS_B:-0}"
pid_b=$!
wait_ports $sink $port_a $port_b

ticks_per_second=$(getconf CLK_TCK)
# run PORT PID -> "msg/s cpu_ms_per_message"
run() {
  local before after start end
  before=$(cpu_ticks "$2"); start=$(date +%s.%N)
  smtp-source -s "$concurrency" -l 10240 -m "$messages" -f from@bench.test -t to@bench.test 127.0.0.1:$1
  end=$(date +%s.%N); after=$(cpu_ticks "$2")
  python3 -c "print(f'{$messages / ($end - $start):.0f} {($after - $before) * 1000 / $ticks_per_second / $messages:.3f}')"
}
a=(); b=()
for _ in $(seq "$rounds"); do
  a+=("$(run $port_a $pid_a)"); b+=("$(run $port_b $pid_b)")
done
report() {
  local label=$1; shift
  local sorted; sorted=$(printf '%s\n' "$@" | sort -k2 -g)
  echo "$label (msg/s, CPU ms/msg, by CPU): $(echo "$sorted" | tr '\n' ';' | sed 's/;/; /g')"
  echo "$label median: $(echo "$sorted" | sed -n "$(( ($# + 1) / 2 ))p")"
}
echo "$concurrency at once, $messages one-message sessions of 10 KiB per run, $rounds runs each"
report "A $1 open=${OPEN_A:-ehlo} threads=${THREADS_A:-0}" "${a[@]}"
report "B $2 open=${OPEN_B:-ehlo} threads=${THREADS_B:-0}" "${b[@]}"
