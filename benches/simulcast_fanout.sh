#!/usr/bin/env bash
# What simulcast and the downstream estimate cost and do (SPEC 5.1, issue 13),
# with `confer loadtest` on loopback, side by side in one run:
#   single    1 publisher (VP8 at --video-kbps 1500 + Opus) -> N subscribers, one layer
#   simulcast the same publisher sending q, h, f (150, 450, 1500 kbit/s) -> N
#             subscribers asking high, medium, low in turn
#   cap       the simulcast publisher -> 2 subscribers, the first capped at
#             CAP kbit/s (token bucket, 15 kB burst, 60 ms queue) for the middle
#             third of 45 s: when it is moved down, the loss then, when it
#             climbs back after the lift
# A fresh release server per run, pinned to core 1 and the clients to core 0;
# runs interleaved; the table shows medians (benches/simulcast_table.py).
#
#   benches/simulcast_fanout.sh [N] [SECONDS]   (default 100 subscribers, 12 s)
#   RUNS=5 ...                                  (rounds; default 3)
#   CAP=600 ...                                 (the cap, kbit/s; CAP=0 skips it)
#   KEEP=results.jsonl ...                      (keep every report, one JSON per line)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/fanout_lib.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/confer-target}"
cargo build --release -q
bin="$CARGO_TARGET_DIR/release/confer"

n=${1:-100}
secs=${2:-12}
runs=${RUNS:-3}
cap=${CAP:-600}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
results="${KEEP:-$work/results}"
: > "$results"

# One run: a fresh server on free ports, the loadtest against it, its report
# (tagged with the scenario) appended to $results.
#   run SCENARIO SECONDS LOADTEST_ARGS...
run() {
  local scenario=$1 s=$2 data="$work/data-$RANDOM"
  shift 2
  start_confer 1 "$data"
  taskset -c 0 "$bin" loadtest --url "http://$server_url" --data "$data" --seconds "$s" "$@" \
    2>> "$work/loadtest.log" > "$work/report" || { echo "loadtest $* failed" >&2; tail -20 "$work/loadtest.log" >&2; exit 1; }
  kill -INT $server_pid; wait $server_pid 2>/dev/null || true
  rm -rf "$data"
  python3 -c 'import json, sys; r = json.load(open(sys.argv[2])); r["scenario"] = sys.argv[1]; print(json.dumps(r))' \
    "$scenario" "$work/report" >> "$results"
  tail -1 "$results" | python3 -c 'import json, sys; r = json.load(sys.stdin); c = r["cap"] or {}; print("  %-9s %s us/pkt, loss %.3f %%%s" % (r["scenario"], r["serverCpuUsPerForwardedPacket"], r["loss"] * 100, "" if not c else ", down %s ms, loss capped %s, up to h %s ms" % (c["downMs"], c["lossWhileCapped"], c["upToHMs"])), file=sys.stderr)'
}

for round in $(seq "$runs"); do
  echo "round $round/$runs" >&2
  run single "$secs" --subscribers "$n"
  run simulcast "$secs" --subscribers "$n" --simulcast --ceilings high,medium,low
  if [ "$cap" != 0 ]; then
    run cap 45 --subscribers 2 --simulcast --cap-kbps "$cap"
  fi
done
echo "medians of $runs run(s) on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) ($(nproc) cores)"
python3 benches/simulcast_table.py "$results"
