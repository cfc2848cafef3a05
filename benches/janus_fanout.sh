#!/usr/bin/env bash
# confer vs Janus 1.1.2 (Debian's VideoRoom), same load, same clients, same run:
# 1 publisher (VP8 1.5 Mbit/s at 30 fps + Opus) -> N subscribers, both servers
# measured alike (CPU and RSS from /proc, packets as the subscribers received
# them), runs alternating.
#
#   benches/janus_fanout.sh [SECONDS] [N ...]     (default 12 s; 10 50 100)
#
# Janus (libnice) refuses loopback candidates, so everything runs in a private
# network namespace with a veth pair on 198.18.0.1 (the benchmarking range),
# never on the machine's real interfaces. Installs Janus with apt if missing.
# Prints one line per run and a table of the ratio confer / Janus of server CPU
# per forwarded packet.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${JANUS_FANOUT_INSIDE:-}" != 1 ]; then
  command -v janus >/dev/null || { echo "installing janus" >&2; apt-get install -y janus >/dev/null; }
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/confer-target}"
  cargo build --release -q
  exec unshare -n env JANUS_FANOUT_INSIDE=1 CARGO_TARGET_DIR="$CARGO_TARGET_DIR" bash "$0" "$@"
fi

# --- inside the namespace ---
ip link set lo up
ip link add v0 type veth peer name v1
ip addr add 198.18.0.1/24 dev v0
ip link set v0 up
ip link set v1 up
IP=198.18.0.1
secs=${1:-12}
shift || true
sizes=("${@:-10 50 100}")
[ $# -eq 0 ] && sizes=(10 50 100)
bin="$CARGO_TARGET_DIR/release/confer"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# A minimal Janus: the HTTP transport on $IP and the VideoRoom plugin only.
lib=/usr/lib/x86_64-linux-gnu/janus
mkdir -p "$work/janus"
cat > "$work/janus/janus.jcfg" <<EOF
general: {
  configs_folder = "$work/janus"
  plugins_folder = "$lib/plugins"
  transports_folder = "$lib/transports"
  events_folder = "$lib/events"
  loggers_folder = "$lib/loggers"
  debug_level = 2
  admin_secret = "unused"
}
media: { rtp_port_range = "30000-60000" }
nat: { ice_enforce_list = "v0" }
plugins: { disable = "libjanus_audiobridge.so,libjanus_duktape.so,libjanus_echotest.so,libjanus_lua.so,libjanus_nosip.so,libjanus_recordplay.so,libjanus_sip.so,libjanus_streaming.so,libjanus_textroom.so,libjanus_videocall.so,libjanus_voicemail.so" }
transports: { disable = "libjanus_websockets.so,libjanus_pfunix.so,libjanus_mqtt.so,libjanus_nanomsg.so,libjanus_rabbitmq.so" }
events: { broadcast = false }
loggers: { disable = "libjanus_jsonlog.so" }
EOF
cat > "$work/janus/janus.transport.http.jcfg" <<EOF
general: { json = "plain", base_path = "/janus", http = true, port = 8088, ip = "$IP", https = false }
admin: { admin_http = false, admin_https = false }
EOF
echo 'general: { }' > "$work/janus/janus.plugin.videoroom.jcfg"

run_confer() {
  local n=$1 data="$work/confer-$n"
  CONFER_MEDIA_LISTEN=$IP:0 CONFER_TURN_LISTEN=$IP:0 CONFER_ROOMS_MAX_PARTICIPANTS=1000 RUST_LOG=warn \
    "$bin" serve --http $IP:7880 --data "$data" > "$work/confer.out" 2> "$work/confer.err" &
  local pid=$!
  for _ in $(seq 100); do grep -q listening "$work/confer.out" 2>/dev/null && break; sleep 0.1; done
  "$bin" loadtest --url http://$IP:7880 --data "$data" --subscribers "$n" --seconds "$secs" --server-pid $pid 2>/dev/null
  kill $pid; wait $pid 2>/dev/null || true
}

run_janus() {
  local n=$1
  janus -C "$work/janus/janus.jcfg" -F "$work/janus" > "$work/janus.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -s -o /dev/null http://$IP:8088/janus/info && break; sleep 0.1; done
  "$bin" loadtest --janus http://$IP:8088/janus --url http://$IP:8088 --data "$work/janus-data" \
    --subscribers "$n" --seconds "$secs" --server-pid $pid 2>/dev/null
  kill $pid; wait $pid 2>/dev/null || true
}

summary() {
  python3 -c '
import json, sys
r = json.loads(sys.argv[1])
print(json.dumps({k: r[k] for k in ("target", "subscribersPerRoom", "forwardedPerSecond", "loss", "latencyMs",
      "serverCpuUsPerForwardedPacket", "serverRssMiB")}))' "$1"
}

results="$work/results"
for n in "${sizes[@]}"; do
  for target in confer janus; do
    out=$("run_$target" "$n") || { echo "$target at $n subscribers failed" >&2; cat "$work/$target"*.log "$work/$target.err" 2>/dev/null | tail -20 >&2; exit 1; }
    summary "$out"
    echo "$out" >> "$results"
  done
done
python3 - "$results" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("\n| subscribers | confer µs/pkt | Janus µs/pkt | confer / Janus | loss confer / Janus | latency p50/p99 ms confer | Janus |")
print("|---:|---:|---:|---:|---:|---:|---:|")
for n in sorted({r["subscribersPerRoom"] for r in rows}):
    c = next(r for r in rows if r["subscribersPerRoom"] == n and r["target"] == "confer")
    j = next(r for r in rows if r["subscribersPerRoom"] == n and r["target"] == "janus")
    cu, ju = c["serverCpuUsPerForwardedPacket"], j["serverCpuUsPerForwardedPacket"]
    lat = lambda r: f'{r["latencyMs"]["p50"]} / {r["latencyMs"]["p99"]}'
    print(f'| {n} | {cu} | {ju} | {cu / ju:.2f} | {c["loss"]} / {j["loss"]} | {lat(c)} | {lat(j)} |')
EOF
