#!/usr/bin/env bash
# confer vs Janus 1.1.2 (Debian's VideoRoom), same load, same clients, same run:
# 1 publisher (VP8 1.5 Mbit/s at 30 fps + Opus, the loadtest defaults) -> N
# subscribers, both servers measured alike (CPU and RSS from /proc/PID via
# `confer loadtest --server-pid`), runs alternating confer, Janus, confer, ...
#
#   benches/janus_fanout.sh [N ...] [SECONDS]   (default 10 50 100 subscribers, 12 s;
#                                               with two or more numbers the last is SECONDS)
#   RUNS=3 benches/janus_fanout.sh ...          (rounds, interleaved; the table shows medians)
#   JANUS_EVENT_LOOPS=2 benches/janus_fanout.sh (Janus's `event_loops`; unset = its default,
#                                               one thread per handle)
#   KEEP=results.jsonl ...                      (keep every report, one JSON per line;
#                                               benches/fanout_table.py prints the table again)
#   CONFER_BIN=path/to/confer ...               (that build instead of building the release one)
#   LOADTEST_ARGS="--simulcast --switch" ...    (more `confer loadtest` options for both: here a
#                                               simulcast publisher, every subscriber asking for
#                                               the low layer a third in and the high one two
#                                               thirds in; the report's `switch` times each)
#
# Packets forwarded: confer's own counter (/metrics); Janus has none, so there it
# is what the subscribers received (the report says `forwardedFrom`).
# Janus (libnice) refuses loopback candidates, so everything runs in a private
# network namespace with a veth pair on 198.18.0.1 (the benchmarking range),
# never on the machine's real interfaces. Installs Janus with apt if missing.
# On a shared machine, serialise with other benchmarks:
#   flock /tmp/bench.lock benches/janus_fanout.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${JANUS_FANOUT_INSIDE:-}" != 1 ]; then
  command -v janus >/dev/null || { echo "installing janus" >&2; apt-get install -y janus >/dev/null; }
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/confer-target}"
  [ -n "${CONFER_BIN:-}" ] || cargo build --release -q
  exec unshare -n env JANUS_FANOUT_INSIDE=1 CARGO_TARGET_DIR="$CARGO_TARGET_DIR" bash "$0" "$@"
fi

# --- inside the namespace: lo, and a veth pair whose v0 end holds $IP ---
ip link set lo up
ip link add v0 type veth peer name v1
ip addr add 198.18.0.1/24 dev v0
ip link set v0 up
ip link set v1 up
IP=198.18.0.1
secs=12
sizes=(10 50 100)
. benches/fanout_lib.sh
parse_sizes_and_secs "$@"
runs=${RUNS:-1}
read -r -a extra <<< "${LOADTEST_ARGS:-}"
bin="${CONFER_BIN:-$CARGO_TARGET_DIR/release/confer}"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# A minimal Janus: the HTTP transport on $IP, the VideoRoom plugin only, ICE on v0 only.
lib=$(dirname "$(dirname "$(find /usr/lib -path '*/janus/plugins/libjanus_videoroom.so' | head -1)")")
mkdir -p "$work/janus"
others() { (cd "$lib/$1" && ls lib*.so | grep -v "^$2\$" | paste -sd, -); }
cat > "$work/janus/janus.jcfg" <<EOF
general: {
  configs_folder = "$work/janus"
  plugins_folder = "$lib/plugins"
  transports_folder = "$lib/transports"
  events_folder = "$lib/events"
  loggers_folder = "$lib/loggers"
  debug_level = 2
  admin_secret = "unused"
  interface = "$IP"
  ${JANUS_EVENT_LOOPS:+event_loops = $JANUS_EVENT_LOOPS}
}
media: { rtp_port_range = "30000-60000" }
nat: { ice_enforce_list = "v0" }
plugins: { disable = "$(others plugins libjanus_videoroom.so)" }
transports: { disable = "$(others transports libjanus_http.so)" }
events: { broadcast = false, disable = "$(others events -)" }
loggers: { disable = "$(others loggers -)" }
EOF
cat > "$work/janus/janus.transport.http.jcfg" <<EOF
general: { json = "plain", base_path = "/janus", http = true, port = 8088, ip = "$IP", https = false }
admin: { admin_http = false, admin_https = false }
EOF
echo 'general: { }' > "$work/janus/janus.plugin.videoroom.jcfg"

run_confer() {
  local n=$1 data="$work/confer-$n"
  CONFER_MEDIA_LISTEN=$IP:0 CONFER_TURN_LISTEN=$IP:0 CONFER_ROOMS_MAX_PARTICIPANTS=1000 RUST_LOG=warn \
    "$bin" serve --http $IP:7880 --data "$data" > "$work/confer.out" 2> "$work/confer.log" &
  local pid=$!
  for _ in $(seq 100); do grep -q listening "$work/confer.out" 2>/dev/null && break; sleep 0.1; done
  "$bin" loadtest --url http://$IP:7880 --data "$data" --subscribers "$n" --seconds "$secs" \
    --server-pid $pid "${extra[@]}" 2>> "$work/loadtest.log"
  kill $pid; wait $pid 2>/dev/null || true
}

run_janus() {
  local n=$1
  janus -C "$work/janus/janus.jcfg" -F "$work/janus" > "$work/janus.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -s -o /dev/null http://$IP:8088/janus/info && break; sleep 0.1; done
  # --url/--data are unused for Janus but still parsed (signing keys).
  "$bin" loadtest --janus http://$IP:8088/janus --url http://$IP:8088 --data "$work/janus-data" \
    --subscribers "$n" --seconds "$secs" --server-pid $pid "${extra[@]}" 2>> "$work/loadtest.log"
  kill $pid; wait $pid 2>/dev/null || true
}

summary() {
  python3 -c '
import json, sys
r = json.loads(sys.argv[1])
print(json.dumps({k: r[k] for k in ("target", "subscribersPerRoom", "forwardedPerSecond", "loss", "latencyMs",
      "serverCpuUsPerForwardedPacket", "serverRssMiB", "forwardedFrom", "videoByCeiling", "switch") if k in r}))' "$1"
}

results="${KEEP:-$work/results}"
: > "$results"
for round in $(seq "$runs"); do
  for n in "${sizes[@]}"; do
    for target in confer janus; do
      out=$("run_$target" "$n") || {
        echo "$target at $n subscribers failed" >&2
        tail -20 "$work/loadtest.log" "$work/$target.log" >&2 2>/dev/null
        exit 1
      }
      summary "$out"
      echo "$out" >> "$results"
    done
  done
done
echo "medians of $runs run(s), $secs s measured each, on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) ($(nproc) cores), Janus event_loops=${JANUS_EVENT_LOOPS:-unset}"
python3 benches/fanout_table.py "$results"
