#!/usr/bin/env bash
# TURN relay cost, confer vs coturn, same load, same machine, alternating runs.
#
#   benches/turn_vs_coturn.sh [ROUNDS] [uclient args...]
#
# Default load (issue 4): turnutils_uclient -c -n 1000 -m 50 -l 1200 over UDP,
# 50 clients x 1000 packets of 1200 bytes to a turnutils_peer echo on loopback.
# Prints one JSON line per run and a summary with medians and the ratio
# confer/coturn of server CPU per relayed packet (each message crosses the relay
# twice: client -> peer and the echo peer -> client).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
shift || true
load=("$@")
[ ${#load[@]} -gt 0 ] || load=(-c -n 1000 -m 50 -l 1200)

command -v turnserver >/dev/null || { echo "coturn is missing: run scripts/setup-test-deps.sh" >&2; exit 1; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/confer-target}"
cargo build --release -q
bin="$CARGO_TARGET_DIR/release/confer"
secret="bench-turn-secret-$(date +%s)"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

turnutils_peer -L 127.0.0.1 -p 3481 >/dev/null 2>&1 &
sleep 0.3

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

start_confer() {
  CONFER_TURN_LISTEN=127.0.0.1:3479 CONFER_TURN_SECRET="$secret" CONFER_TURN_ALLOW_LOOPBACK_PEERS=true \
  CONFER_TURN_USER_QUOTA=10000 CONFER_TURN_RELAY_PORT_MIN=50000 CONFER_TURN_RELAY_PORT_MAX=50999 RUST_LOG=warn \
    "$bin" serve --http 127.0.0.1:0 --data "$work/data" >/dev/null 2>&1 &
  echo $!
}
start_coturn() {
  turnserver -n --listening-ip=127.0.0.1 --listening-port=3478 --relay-ip=127.0.0.1 --use-auth-secret \
    --static-auth-secret="$secret" --realm=confer --allow-loopback-peers --no-tls --no-dtls --no-cli \
    --min-port=51000 --max-port=51999 --log-file=/dev/null --no-stdout-log >/dev/null 2>&1 &
  echo $!
}

run() { # name port pid
  local name=$1 port=$2 pid=$3 c0 c1 t0 t1 out
  sleep 0.5
  c0=$(cpu "$pid"); t0=$(date +%s.%N)
  out=$(turnutils_uclient -p "$port" -e 127.0.0.1 -r 3481 -X -W "$secret" -u alice "${load[@]}" 127.0.0.1 2>&1 || true)
  t1=$(date +%s.%N); c1=$(cpu "$pid")
  local sent recv lost
  sent=$(grep -o 'tot_send_msgs=[0-9]*' <<<"$out" | tail -1 | cut -d= -f2)
  recv=$(grep -o 'tot_recv_msgs=[0-9]*' <<<"$out" | tail -1 | cut -d= -f2)
  lost=$(grep -o 'Total lost packets [0-9]* ([0-9.]*%)' <<<"$out" | tail -1 | grep -o '([0-9.]*%)' | tr -d '()%')
  python3 - "$name" "${sent:-0}" "${recv:-0}" "${lost:-100}" "$c0" "$c1" "$t0" "$t1" "$hz" <<'PY'
import json, sys
name, sent, recv, lost, c0, c1, t0, t1, hz = sys.argv[1:]
sent, recv = int(sent), int(recv)
secs = float(t1) - float(t0)
cpu_s = (float(c1) - float(c0)) / float(hz)
relayed = sent + recv
print(json.dumps({"server": name, "sent": sent, "received": recv, "lossPercent": float(lost), "seconds": round(secs, 2),
                  "msgsPerSec": round(relayed / secs) if secs else 0, "serverCpuSeconds": round(cpu_s, 3),
                  "cpuUsPerRelayedPacket": round(cpu_s * 1e6 / relayed, 2) if relayed else None}))
PY
}

results="$work/results"
for r in $(seq "$rounds"); do
  pid=$(start_confer); run confer 3479 "$pid" | tee -a "$results"; kill "$pid"; wait "$pid" 2>/dev/null || true
  pid=$(start_coturn); run coturn 3478 "$pid" | tee -a "$results"; kill "$pid"; wait "$pid" 2>/dev/null || true
done

python3 - "$results" <<'PY'
import json, statistics, sys, platform
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(name, key):
    v = [r[key] for r in rows if r["server"] == name and r[key] is not None]
    return statistics.median(v) if v else None
cpu = {n: med(n, "cpuUsPerRelayedPacket") for n in ("confer", "coturn")}
rate = {n: med(n, "msgsPerSec") for n in ("confer", "coturn")}
loss = {n: med(n, "lossPercent") for n in ("confer", "coturn")}
model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
print(json.dumps({"summary": True, "machine": {"cpu": model, "cores": len([l for l in open("/proc/cpuinfo") if l.startswith("processor")])},
                  "medianCpuUsPerRelayedPacket": cpu, "medianMsgsPerSec": rate, "medianLossPercent": loss,
                  "cpuRatioConferOverCoturn": round(cpu["confer"] / cpu["coturn"], 3) if cpu["confer"] and cpu["coturn"] else None}))
PY
