#!/usr/bin/env bash
# OpenDKIM as a milter, side by side in one run: Postfix's smtpd with smtpd_milters =
# OpenDKIM, relaying to smtp-sink through its queue (as Postfix is deployed), against
# Portcullis with the same OpenDKIM in its chain, in front of the same smtp-sink.
# Both sign every message (checked at the sink). Not a test: it prints a Markdown
# report (record it in bench/RESULTS.md with the machine's load).
#
#   bench/milters.sh              # 2,000 messages of 10 KiB per run
#   MESSAGES=500 bench/milters.sh # a smoke run
#
# Postfix's figure is the time until the last message left its queue for the sink
# (its client hears 250 once the message is queued; the proxy's only once the sink
# took it), so both count the same work: the message signed and at the sink.
# Needs postfix (smtp-source, smtp-sink), opendkim, opendkim-tools, python3; run as root
# (Postfix's private instance needs it).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
setup smtp-source smtp-sink postfix opendkim opendkim-genkey

sink_port=$(free_port); dkim_port=$(free_port); proxy_port=$(free_port); postfix_port=$(free_port)
proxy_unix_port=$(free_port); postfix_unix_port=$(free_port)
messages=${MESSAGES:-2000}

# The sink takes everything and keeps nothing (until the check at the end).
smtp-sink -u nobody -m 1000 127.0.0.1:$sink_port 1000 &
sink_pid=$!

# OpenDKIM signs mail from bench.test (smtp-source's From:) for internal clients.
opendkim-genkey -D "$work" -d bench.test -s bench
cat > "$work/opendkim.conf" <<CONF
Syslog no
Mode s
Domain bench.test
Selector bench
KeyFile $work/bench.private
Socket inet:$dkim_port@127.0.0.1
Canonicalization relaxed/simple
InternalHosts 127.0.0.1
RequireSafeKeys no
PidFile $work/opendkim.pid
UMask 000
CONF
opendkim -f -x "$work/opendkim.conf" &
# The same key and settings on a Unix socket: no TCP between the MTA and the milter.
sed "s|^Socket .*|Socket local:$work/dkim.sock|; s|opendkim.pid|opendkim-unix.pid|" \
  "$work/opendkim.conf" > "$work/opendkim-unix.conf"
opendkim -f -x "$work/opendkim-unix.conf" &

# A private Postfix: smtpd with the milter, relaying everything to the sink.
start_postfix "relayhost = [127.0.0.1]:$sink_port
default_transport = smtp
smtpd_milters = inet:127.0.0.1:$dkim_port
milter_default_action = tempfail
smtp_connection_cache_on_demand = yes" \
  "127.0.0.1:$postfix_port inet n - n - - smtpd
127.0.0.1:$postfix_unix_port inet n - n - - smtpd -o smtpd_milters=unix:$work/dkim.sock"

cat > "$work/portcullis.toml" <<TOML
[server]
hostname = "portcullis.bench"
max_connections = 20000
[client_limits]
max_sessions = 0
[[listener]]
name = "bench"
address = "127.0.0.1:$proxy_port"
plugins = ["dkim"]
[[listener]]
name = "bench-unix"
address = "127.0.0.1:$proxy_unix_port"
plugins = ["dkim-unix"]
[milters.dkim]
address = "inet:127.0.0.1:$dkim_port"
[milters.dkim-unix]
address = "unix:$work/dkim.sock"
[upstream]
address = "127.0.0.1:$sink_port"
client_address = "none"
TOML
RUST_LOG=warn "$binary" run --config "$work/portcullis.toml" 2>"$work/proxy.log" &
wait_ports $dkim_port $postfix_port $proxy_port $postfix_unix_port $proxy_unix_port

queue_empty() { postqueue -c "$work/etc" -p 2>/dev/null | grep -q "Mail queue is empty"; }

# run PORT CONCURRENCY PER_SESSION WAIT_QUEUE -> messages/s (until the queue is empty
# if WAIT_QUEUE)
run() {
  local port=$1 concurrency=$2 per_session=$3 wait_queue=$4 flags=() start end
  [ "$per_session" = many ] && flags+=(-d)
  start=$(date +%s.%N)
  smtp-source "${flags[@]}" -s "$concurrency" -l 10240 -m "$messages" \
    -f from@bench.test -t to@sink.test 127.0.0.1:$port
  if [ "$wait_queue" = yes ]; then
    for _ in $(seq 6000); do queue_empty && break; sleep 0.05; done
  fi
  end=$(date +%s.%N)
  python3 -c "print(f'{$messages / ($end - $start):.0f}')"
}


echo "## OpenDKIM as a milter: Postfix smtpd_milters vs Portcullis"
echo
echo "Machine: $(nproc) cores, load average before the run: $(cut -d' ' -f1-3 /proc/loadavg); $messages messages of 10 KiB per run, median of three alternating runs."
echo
echo "| milter socket | concurrency | sessions | Postfix msg/s (queued and relayed) | Portcullis msg/s | ratio |"
echo "|---|---|---|---|---|---|"
for socket in inet unix; do
  if [ $socket = inet ]; then pf=$postfix_port; px=$proxy_port; else pf=$postfix_unix_port; px=$proxy_unix_port; fi
  for concurrency in 10 100; do
    for per_session in one many; do
      postfix_runs=(); proxy_runs=()
      for _ in 1 2 3; do
        postfix_runs+=("$(run $pf $concurrency $per_session yes)")
        proxy_runs+=("$(run $px $concurrency $per_session no)")
      done
      p=$(median "${postfix_runs[@]}"); q=$(median "${proxy_runs[@]}")
      label=$([ "$per_session" = one ] && echo "one per message" || echo "many per session")
      echo "| $socket | $concurrency | $label | $p | $q | $(python3 -c "print(f'{$q / $p:.2f}')") |"
    done
  done
done
echo
# Both paths sign: a sink that keeps each message (-d) takes five through each.
kill $sink_pid; wait $sink_pid 2>/dev/null || true
mkdir -p "$work/sink" && chmod 777 "$work/sink"
smtp-sink -u nobody -d "$work/sink/%M." 127.0.0.1:$sink_port 100 &
sleep 0.5
messages=5
for port in $postfix_port $postfix_unix_port; do run $port 1 one yes >/dev/null; done
for port in $proxy_port $proxy_unix_port; do run $port 1 one no >/dev/null; done
signed=$(grep -l '^DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/simple; d=bench.test; s=bench' "$work"/sink/* | wc -l)
echo "Signed at the sink after the runs, five messages through each of the four: $signed of $(ls "$work"/sink | wc -l)."
