# Helpers the benchmark scripts share; sourced, not run.

# setup PROGRAM...: fails unless each program is installed, raises the open-files
# limit, builds the release binary (`binary`) and makes `work`, a directory removed
# on exit with everything the script started in the background (Postfix included).
setup() {
  local program
  for program in "$@"; do
    command -v "$program" >/dev/null || { echo "install $program (scripts/test installs it)"; exit 1; }
  done
  ulimit -n "$(ulimit -Hn)"
  cargo build --release --locked -p portcullis >/dev/null 2>&1
  binary=$PWD/target/release/portcullis
  work=$(mktemp -d)
  chmod 755 "$work"
  trap 'stop_postfix; kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
}

# A free loopback port.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits (at most 10 s each) until every port given accepts connections.
wait_ports() {
  local port
  for port in "$@"; do
    for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
  done
}

# proxy_config FILE PORT UPSTREAM_PORT OPEN THREADS: a proxy on 127.0.0.1:PORT in front
# of 127.0.0.1:UPSTREAM_PORT, as the session benchmarks run it (no client limits,
# client_address = "none", logs at the default level).
proxy_config() {
  cat > "$1" <<TOML
[server]
hostname = "bench.test"
max_connections = 20000
worker_threads = $5
[client_limits]
max_sessions = 0
[[listener]]
name = "bench"
address = "127.0.0.1:$2"
[upstream]
address = "127.0.0.1:$3"
client_address = "none"
open = "$4"
TOML
}

# utime + stime of a process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# The middle of three figures.
median() { printf '%s\n' "$@" | sort -g | sed -n 2p; }

# start_postfix MAIN_CF_LINES MASTER_CF_LINES: a private Postfix instance in
# $work/etc (queue, data and log under $work), listening only where the given
# master.cf lines say, with the services those need. Needs root.
start_postfix() {
  mkdir -p "$work/etc" "$work/queue" "$work/data"
  chown postfix "$work/data"
  cat > "$work/etc/main.cf" <<CONF
compatibility_level = 3.6
queue_directory = $work/queue
data_directory = $work/data
maillog_file = $work/maillog
maillog_file_prefixes = $work
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
default_process_limit = 200
smtpd_client_connection_count_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_client_connection_rate_limit = 0
$1
CONF
  cat > "$work/etc/master.cf" <<CONF
$2
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
CONF
  postfix -c "$work/etc" start >/dev/null 2>&1
}

stop_postfix() { postfix -c "$work/etc" stop >/dev/null 2>&1 || true; }
