#!/usr/bin/env bash
# confer's fan-out on loopback with `confer loadtest`: 1 publisher (VP8 1.5 Mbit/s
# at 30 fps with a keyframe every 2 s, plus Opus: the loadtest defaults) -> N
# subscribers, then the many-small-rooms meeting (10 rooms x 4, everyone
# publishing and receiving the others). A fresh release server per run, pinned to
# core 1 and the clients to core 0 (the meeting unpinned, as a real host would
# run it); runs interleaved; the table shows medians.
#
#   benches/loopback_fanout.sh [N ...] [SECONDS]   (default 10 50 100 200, 12 s;
#                                                  with two or more numbers the last is SECONDS)
#   RUNS=4 benches/loopback_fanout.sh ...           (rounds; default 3)
#   MEETING=0 ...                                   (skip the meeting)
#   EXTRA="--pacing 0" ...                          (more loadtest flags for the 1 -> N runs)
#   KEEP=results.jsonl ...                          (keep every report, one JSON per line)
#
# On a shared machine, serialise with other benchmarks:
#   flock /tmp/bench.lock benches/loopback_fanout.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/fanout_lib.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/confer-target}"
cargo build --release -q
bin="$CARGO_TARGET_DIR/release/confer"

secs=12
sizes=(10 50 100 200)
parse_sizes_and_secs "$@"
runs=${RUNS:-3}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
results="${KEEP:-$work/results}"
: > "$results"

# One run: a fresh server on free ports, the loadtest against it, the report.
#   run SERVER_CPUS CLIENT_CPUS LOADTEST_ARGS...
run() {
  local server_cpus=$1 client_cpus=$2 data="$work/data-$RANDOM"
  shift 2
  start_confer "$server_cpus" "$data"
  taskset -c "$client_cpus" "$bin" loadtest --url "http://$server_url" --data "$data" --seconds "$secs" "$@" \
    2>> "$work/loadtest.log" >> "$results" || { echo "loadtest $* failed" >&2; tail -20 "$work/loadtest.log" >&2; exit 1; }
  kill -INT $server_pid; wait $server_pid 2>/dev/null || true
  rm -rf "$data"
  tail -1 "$results" | python3 -c 'import json, sys; r = json.load(sys.stdin); print("  %4d subscribers x %d rooms: %s us/pkt, loss %.3f %%, p99 %s ms" % (r["subscribersPerRoom"], r["rooms"], r["serverCpuUsPerForwardedPacket"], r["loss"] * 100, r["latencyMs"]["p99"]), file=sys.stderr)'
}

for round in $(seq "$runs"); do
  echo "round $round/$runs" >&2
  for n in "${sizes[@]}"; do
    # shellcheck disable=SC2086
    run 1 0 --subscribers "$n" ${EXTRA:-}
  done
  if [ "${MEETING:-1}" = 1 ]; then
    run 0,1 0,1 --rooms 10 --publishers 4 --subscribers 0 --meeting
  fi
done
echo "medians of $runs run(s), $secs s measured each, on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) ($(nproc) cores)"
python3 benches/fanout_table.py "$results"
