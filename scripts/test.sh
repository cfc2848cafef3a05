#!/usr/bin/env bash
# The whole test suite: installs what it needs (scripts/setup-test-deps.sh),
# then runs every Rust unit and integration test (and the vendored webrtc-rs's
# unit tests), including the interop tests
# that drive aiortc, schemathesis, promtool and coturn against the real server,
# then every fuzz target for FUZZ_SECONDS (default 20) each (scripts/fuzz.sh;
# FUZZ_SECONDS=0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

scripts/setup-test-deps.sh

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/confer-target}"
export INTEROP_PYTHON="$root/.venv/bin/python"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

started=$(date +%s)
cargo test --no-fail-fast -- --test-threads="${TEST_THREADS:-4}"
# The vendored webrtc-rs carries confer's patches (vendor/rtc/CONFER-PATCH.md):
# its own unit tests, the patches' included.
cargo test --lib -p rtc
echo "test.sh: all tests passed in $(( $(date +%s) - started ))s"
if [ "${FUZZ_SECONDS:-20}" != 0 ]; then
  scripts/fuzz.sh
fi
echo "test.sh: done in $(( $(date +%s) - started ))s"
