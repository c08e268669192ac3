#!/usr/bin/env bash
# The one-message session, side by side in one run (issue 27): what a session with one
# message costs through Portcullis, with its logs at their default level (info: a
# line per message), against sending straight to smtp-sink.
#
#  1. Throughput and proxy CPU, 10 KiB, 10 and 100 at once, a session per message,
#     through the proxy as configured by default (a thread per core) and with
#     server.worker_threads = 1; the sink's own CPU per message in the direct runs is
#     the reference the proxy's is divided by (machines here differ ~2x in speed).
#  2. Time per one-message session, one at a time: direct vs through the proxy.
#  3. The same with the sink DELAY_MS (default 2) round trip away (bench/delay.py):
#     direct to the delayed sink, through Portcullis (upstream.open = "ehlo", the
#     default, "mail" and "connect"), and through Postfix's smtpd with the delayed sink as its
#     before-queue proxy filter (smtpd_proxy_filter).
#
#   bench/session.sh            # MESSAGES=5000 per throughput run
#   QUICK=1 bench/session.sh    # fewer messages
#
# Needs postfix (smtp-source, smtp-sink) and python3; run as root (Postfix's private
# instance).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
setup smtp-source smtp-sink postfix python3

quick=${QUICK:-0}
messages=$(( quick ? 1000 : 5000 ))
serial=$(( quick ? 300 : 1000 ))
delay=${DELAY_MS:-2}
sink=$(free_port); far=$(free_port); near_proxy=$(free_port); far_proxy=$(free_port)
far_proxy_mail=$(free_port); postfix_far=$(free_port); single_proxy=$(free_port)
far_proxy_connect=$(free_port); remote_ehlo=$(free_port); remote_mail=$(free_port)
remote_connect=$(free_port); near_connect=$(free_port)

smtp-sink -u nobody -m 1000 127.0.0.1:$sink 1000 &
sink_pid=$!
python3 bench/delay.py $far $sink "$delay" &

# One proxy per upstream, logging at the default level into a file, as under systemd.
start_proxy() {
  local name=$1 port=$2 upstream=$3 open=$4 threads=${5:-0}
  proxy_config "$work/$name.toml" "$port" "$upstream" "$open" "$threads"
  "$binary" run --config "$work/$name.toml" >/dev/null 2>"$work/$name.log" &
}
start_proxy near $near_proxy $sink ehlo
near_pid=$!
start_proxy single $single_proxy $sink ehlo 1
single_pid=$!
start_proxy far $far_proxy $far ehlo
start_proxy far-mail $far_proxy_mail $far mail
start_proxy far-connect $far_proxy_connect $far connect
start_proxy near-connect $near_connect $sink connect
# The client DELAY_MS away too, as clients on the internet are: the case the early
# open is for (its set-up overlaps the client's greeting and EHLO).
python3 bench/delay.py $remote_ehlo $far_proxy "$delay" &
python3 bench/delay.py $remote_mail $far_proxy_mail "$delay" &
python3 bench/delay.py $remote_connect $far_proxy_connect "$delay" &

# Postfix's smtpd with the delayed sink as its before-queue content filter.
start_postfix "" \
  "127.0.0.1:$postfix_far inet n - n - - smtpd -o smtpd_proxy_filter=127.0.0.1:$far"
wait_ports $far $near_proxy $single_proxy $near_connect $far_proxy $far_proxy_mail $far_proxy_connect \
  $postfix_far $remote_ehlo $remote_mail $remote_connect

ticks_per_second=$(getconf CLK_TCK)
# run PORT MESSAGES CONCURRENCY PID -> "msg/s cpu_ms_per_message ms_per_session"
run() {
  local port=$1 count=$2 concurrency=$3 pid=$4 before after start end
  before=$(cpu_ticks "$pid")
  start=$(date +%s.%N)
  smtp-source -s "$concurrency" -l 10240 -m "$count" -f from@bench.test -t to@bench.test 127.0.0.1:$port
  end=$(date +%s.%N)
  after=$(cpu_ticks "$pid")
  python3 -c "
elapsed = $end - $start
print(f'{$count / elapsed:.0f} {($after - $before) * 1000 / $ticks_per_second / $count:.3f} {elapsed * 1000 * $concurrency / $count:.3f}')"
}

echo "## One-message sessions (\`bench/session.sh\`)"
echo
echo "Machine: $(nproc) cores, load average before the run: $(cut -d' ' -f1-3 /proc/loadavg). Release build, logs at the default level (info) into a file; 10 KiB messages, a session per message; median of three alternating runs."
echo
echo "| concurrency | path | msg/s | ratio to direct | CPU ms/msg | CPU / sink's CPU |"
echo "|---|---|---|---|---|---|"
for concurrency in 10 100; do
  d=(); k=(); p=(); c=(); q=(); e=()
  for _ in 1 2 3; do
    read -r rate cpu _ < <(run $sink $messages $concurrency $sink_pid); d+=("$rate"); k+=("$cpu")
    read -r rate cpu _ < <(run $near_proxy $messages $concurrency $near_pid); p+=("$rate"); c+=("$cpu")
    read -r rate cpu _ < <(run $single_proxy $messages $concurrency $single_pid); q+=("$rate"); e+=("$cpu")
  done
  dm=$(median "${d[@]}"); km=$(median "${k[@]}")
  echo "| $concurrency | direct to smtp-sink (sink's CPU) | $dm | | $km | |"
  for row in "Portcullis, a thread per core|$(median "${p[@]}")|$(median "${c[@]}")" \
             "Portcullis, worker_threads = 1|$(median "${q[@]}")|$(median "${e[@]}")"; do
    IFS='|' read -r label rate cpu <<< "$row"
    echo "| $concurrency | $label | $rate | $(python3 -c "print(f'{$rate / $dm:.2f}')") | $cpu | $(python3 -c "print(f'{$cpu / $km:.2f}')") |"
  done
done
echo
echo "One session at a time ($serial sessions per run), time per session:"
echo
echo "| path | ms per session | added to direct |"
echo "|---|---|---|"
row() {
  local label=$1 port=$2 reference=$3 t=()
  for _ in 1 2 3; do read -r _ _ ms < <(run $port $serial 1 $sink_pid); t+=("$ms"); done
  local m; m=$(median "${t[@]}")
  echo "| $label | $m | $(python3 -c "print(f'{$m - $reference:+.3f}')") |" >&2
  echo "$m"
}
direct=$(row "direct to smtp-sink" $sink 0 2>/dev/null)
echo "| direct to smtp-sink | $direct | |"
row "through Portcullis" $near_proxy "$direct" 2>&1 >/dev/null
row "through Portcullis, worker_threads = 1" $single_proxy "$direct" 2>&1 >/dev/null
row "through Portcullis, open = connect" $near_connect "$direct" 2>&1 >/dev/null
far_direct=$(row "direct to the sink $delay ms away" $far 0 2>/dev/null)
echo "| direct to the sink $delay ms away | $far_direct | |"
row "Portcullis, upstream $delay ms away, open = ehlo" $far_proxy "$far_direct" 2>&1 >/dev/null
row "Portcullis, upstream $delay ms away, open = mail" $far_proxy_mail "$far_direct" 2>&1 >/dev/null
row "Portcullis, upstream $delay ms away, open = connect" $far_proxy_connect "$far_direct" 2>&1 >/dev/null
row "Postfix smtpd_proxy_filter, filter $delay ms away" $postfix_far "$far_direct" 2>&1 >/dev/null
remote=$(row "client and upstream $delay ms away, open = mail" $remote_mail 0 2>/dev/null)
echo "| client and upstream $delay ms away, open = mail | $remote | |"
row "client and upstream $delay ms away, open = ehlo" $remote_ehlo "$remote" 2>&1 >/dev/null
row "client and upstream $delay ms away, open = connect" $remote_connect "$remote" 2>&1 >/dev/null
