#!/usr/bin/env bash
# Where the server's CPU goes while it forwards: `confer loadtest` 1 -> N on
# loopback (server on core 1, clients on core 0, as benches/loopback_fanout.sh),
# `perf record -e cpu-clock --call-graph dwarf` on the server for SECONDS of the
# measured window, then the shares that matter for the forwarding path.
#
#   benches/profile_fanout.sh [N] [SECONDS]     (default 100 subscribers, 12 s)
#   PERF_DATA=/tmp/fanout.perf ...              (keep the profile for `perf report -i`)
#
# Needs perf (Debian's linux-perf); installs it with apt if missing. cpu-clock
# sampling works where hardware counters do not (this VM has none).
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/fanout_lib.sh
n=${1:-100}
secs=${2:-12}
command -v perf >/dev/null || { echo "installing linux-perf" >&2; apt-get install -y -qq linux-perf >/dev/null; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/confer-target}"
cargo build --release -q
bin="$CARGO_TARGET_DIR/release/confer"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
data="${PERF_DATA:-$work/perf.data}"

start_confer 1 "$work/data"
pid=$server_pid
taskset -c 0 "$bin" loadtest --url "http://$server_url" --data "$work/data" --subscribers "$n" --seconds $((secs + 4)) \
  > "$work/report.json" 2> "$work/loadtest.log" &
lt=$!
# The progress line starts once every client is connected and measuring.
for _ in $(seq 300); do grep -q '\[   2/' "$work/loadtest.log" 2>/dev/null && break; sleep 0.2; done
perf record -q -e cpu-clock -F 2000 --call-graph dwarf,16384 -p $pid -o "$data" -- sleep "$secs" 2> /dev/null
wait $lt
kill -INT $pid; wait $pid 2>/dev/null || true
python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print("1 -> %d: %s us of server CPU per forwarded packet, loss %s, latency p99 %s ms" % (r["subscribersPerRoom"], r["serverCpuUsPerForwardedPacket"], r["loss"], r["latencyMs"]["p99"]))' "$work/report.json"

# Inclusive shares of the server's samples for the parts of the path.
perf report -i "$data" --children --sort symbol --stdio -g none 2>/dev/null > "$work/report.txt"
share() {
  grep -F "$2" "$work/report.txt" | grep -v '(inlined)' | head -1 | awk -v what="$1" '{printf "%7s  %s\n", $1, what}' || true
}
echo "share of the server's CPU (inclusive; sampling with dwarf unwinding itself adds to the µs above):"
share "kernel: sendmmsg" "[k] __sys_sendmmsg"
share "  of which delivering to the receivers' sockets (loopback does it in the sender's softirq)" "[k] handle_softirqs"
share "kernel: recvmmsg" "[k] do_recvmmsg"
share "kernel: epoll_wait (waiting and waking)" "[k] do_epoll_wait"
share "writing forwarded copies: rewrite, marshal, SRTP (egress::Writer::protect)" "confer::media::egress::Writer::protect"
share "  of which SRTP protect in place" "Context>::encrypt_rtp_in_place"
share "reading what clients send (mostly their RTCP) through webrtc-rs (Engine::datagram)" "confer::media::engine::Engine::datagram"
share "timers: webrtc-rs timeouts, sender reports, keyframe requests (Engine::timers)" "confer::media::engine::Engine::timers"
perf report -i "$data" --no-children --sort dso --stdio -g none 2>/dev/null | grep '%' | head -4 | sed 's/^/  self by object: /'
