#!/usr/bin/env bash
# SFU fan-out cost: 1 aiortc publisher (VP8 640x480 + Opus) -> N aiortc
# subscribers through a release confer on loopback.
#
#   benches/sfu_fanout.sh [N] [SECONDS]        (default 20 subscribers, 15 s)
#   FANOUT_VIDEO=light benches/sfu_fanout.sh   (a low-rate stream the Python
#                                              subscribers can keep up with)
#
# Prints one JSON line (see benches/sfu_fanout.py): forwarded packets/s,
# server CPU us per forwarded packet, loss, server RSS. The clients share the
# machine's cores with the server; server CPU is measured from /proc.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20}
secs=${2:-15}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/confer-target}"
cargo build --release -q
bin="$CARGO_TARGET_DIR/release/confer"
py="${INTEROP_PYTHON:-.venv/bin/python}"
[ -x "$py" ] || { echo "aiortc is missing: run scripts/setup-test-deps.sh" >&2; exit 1; }
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

CONFER_MEDIA_LISTEN=127.0.0.1:0 CONFER_TURN_LISTEN=127.0.0.1:0 RUST_LOG=warn "$bin" serve --data "$work" --http 127.0.0.1:0 > "$work/out" 2> "$work/err" &
pid=$!
for _ in $(seq 50); do grep -q listening "$work/out" 2>/dev/null && break; sleep 0.1; done
addr=$(grep -o 'http=[^ ]*' "$work/out" | cut -d= -f2)
tokens=()
for i in $(seq 0 "$n"); do tokens+=("$("$bin" token --data "$work" --user "user$i")"); done
"$py" benches/sfu_fanout.py "$addr" "$pid" "$n" "$secs" "${tokens[@]}"
