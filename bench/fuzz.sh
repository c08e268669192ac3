#!/usr/bin/env bash
# Fuzzes each parser the proxy puts between the wire and the upstream (fuzz/: the
# command reader and parser, the upstream reply parser, the DATA reader and
# dot-stuffer, the SASL exchanges, the credentials and sender-login files) with
# libFuzzer, one target after the other, and prints a Markdown report for
# bench/RESULTS.md. A crash stops the run and leaves its input in
# target/fuzz-corpus/artifacts/TARGET/ (replay: cargo +nightly fuzz run TARGET FILE).
#
#   bench/fuzz.sh                    # every target, 10 minutes each
#   SECONDS_EACH=60 bench/fuzz.sh    # shorter runs
#   TARGETS="command data" bench/fuzz.sh
#   FUZZ_TARGET_DIR=target/fuzz2 bench/fuzz.sh   # a second run beside a first
#
# Needs the nightly toolchain (rustup toolchain install nightly) and cargo-fuzz
# (installed here with cargo install if missing). The corpus grows in
# target/fuzz-corpus/TARGET, so a later run starts where this one ended; the
# hand-written seeds in fuzz/seeds are read, never written.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${SECONDS_EACH:-600}
targets=${TARGETS:-"command reply data sasl credentials sender_logins proxy_header"}

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
cargo +nightly fuzz --version >/dev/null 2>&1 || cargo install --locked cargo-fuzz
# The fuzz crate's own target dir, next to the workspace's (a target/ link to the
# build cache keeps it there too).
fuzz=(cargo +nightly fuzz)
options=(--fuzz-dir fuzz --target-dir "${FUZZ_TARGET_DIR:-target/fuzz}" --debug-assertions)
"${fuzz[@]}" build "${options[@]}" >/dev/null 2>&1 || "${fuzz[@]}" build "${options[@]}"

echo "## Fuzzing: $seconds s per target"
echo
echo "Machine: $(nproc) cores, load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)."
echo "Command: \`SECONDS_EACH=$seconds bench/fuzz.sh\` (libFuzzer via cargo-fuzz $(cargo +nightly fuzz --version | cut -d' ' -f2), one process, debug assertions on)."
echo
echo "| target | runs | runs/s | coverage (edges) | corpus entries | crashes |"
echo "|---|---|---|---|---|---|"
status=0
for target in $targets; do
  corpus="target/fuzz-corpus/$target"
  artifacts="target/fuzz-corpus/artifacts/$target/"
  mkdir -p "$corpus" "$artifacts"
  earlier=$(find "$artifacts" -type f | wc -l)
  log=$(mktemp)
  set +e
  "${fuzz[@]}" run "${options[@]}" "$target" "$corpus" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$artifacts" >"$log" 2>&1
  code=$?
  set -e
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  speed=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  edges=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2 || echo '?')
  entries=$(find "$corpus" -type f | wc -l)
  crashes=$(( $(find "$artifacts" -type f | wc -l) - earlier ))
  echo "| $target | $runs | $speed | $edges | $entries | $crashes |"
  if [ "$code" -ne 0 ]; then
    status=1
    echo
    echo "$target failed (exit $code):"
    echo '```'
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -20
    echo '```'
  fi
  rm -f "$log"
done
exit $status
