#!/usr/bin/env bash
# Builds every cargo-fuzz target in fuzz/ and runs each for a bounded time,
# seeded from the committed corpus (fuzz/corpus/<target>/, written by
# fuzz/make_seeds.py). Fails, naming the target and the crashing input, when any
# target crashes (a panic, a timeout or running out of memory); prints each
# target's execution count. scripts/test.sh runs it after the cargo tests.
#
#   FUZZ_SECONDS=20     seconds per target (libFuzzer -max_total_time)
#   FUZZ_RUNS=          instead: stop each target after this many executions
#   FUZZ_TARGETS=       space-separated subset (default: every target)
#   FUZZ_TARGET_DIR=    build directory (default ~/.cache/confer-target-fuzz;
#                       not CARGO_TARGET_DIR, which test.sh sets for the main
#                       build: instrumented artifacts would only evict those)
#   FUZZ_KEEP=1         keep the scratch directory (grown corpus, artifacts)
#
# libFuzzer grows its corpus in a scratch copy: nothing is written into the
# repository. On a crash the scratch directory is kept and its path printed.
#
# Why these build flags:
#   - --sanitizer none (FUZZ_SANITIZER to change it): everything fuzzed here is
#     safe Rust, whose failures are panics, and libFuzzer catches a panic
#     without a sanitizer. cargo-fuzz's default, AddressSanitizer, does build
#     and run here on stable with RUSTC_BOOTSTRAP=1 (tried: stun_message),
#     but without -Zbuild-std (nightly's rust-src, not installable here) std
#     stays uninstrumented, so it buys little for safe code, and it ran
#     stun_message at 216 k executions/s against 1.6 M/s without it.
#   - RUSTC_BOOTSTRAP=1: only the stable toolchain exists here; cargo-fuzz
#     passes -Z flags for any sanitizer, so FUZZ_SANITIZER=address needs it.
#   - one `cargo fuzz build` for all targets (they share one build of the
#     main crate and webrtc-rs), two jobs, --codegen-units 16: cargo-fuzz's
#     release default of one codegen unit per crate puts each big crate's
#     whole LLVM pass on one core, and the build is the larger part of this
#     script's time (cold: 7 m 45 s on this 2-core VM with another build
#     running; incremental after a change in src/: about 50 s).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

seconds="${FUZZ_SECONDS:-20}"
runs="${FUZZ_RUNS:-}"
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/confer-target-fuzz}"
export RUSTC_BOOTSTRAP=1
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
flags=(--sanitizer "${FUZZ_SANITIZER:-none}" --release --debug-assertions --codegen-units 16)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"
started=$(date +%s)
cargo fuzz build "${flags[@]}"
echo "fuzz: built every target in $(( $(date +%s) - started ))s"
bin_dir="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release"

scratch=$(mktemp -d "${TMPDIR:-/tmp}/confer-fuzz.XXXXXX")
keep="${FUZZ_KEEP:-}"
cleanup() { [ -n "$keep" ] || rm -rf "$scratch"; }
trap cleanup EXIT

if [ -n "$runs" ]; then bound=(-runs="$runs"); else bound=(-max_total_time="$seconds"); fi
failed=()
summary=()
for t in $targets; do
  seeds="$root/fuzz/corpus/$t"
  [ -d "$seeds" ] || { echo "fuzz: no seed corpus $seeds (run fuzz/make_seeds.py)"; exit 1; }
  mkdir -p "$scratch/corpus/$t" "$scratch/artifacts/$t"
  cp "$seeds"/* "$scratch/corpus/$t/"
  log="$scratch/$t.log"
  echo "fuzz: $t (${runs:+$runs runs}${runs:-${seconds}s}, $(ls "$seeds" | wc -l) seeds)"
  set +e
  "$bin_dir/$t" "${bound[@]}" -timeout="${FUZZ_TIMEOUT:-25}" -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$scratch/artifacts/$t/" "$scratch/corpus/$t" >"$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  corpus=$(ls "$scratch/corpus/$t" | wc -l)
  if [ "$rc" -ne 0 ]; then
    keep=1
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    echo "fuzz: $t FAILED (exit $rc) after ${execs:-?} executions"
    grep -E "panicked at|^==[0-9]+==|ERROR: libFuzzer|SUMMARY" "$log" | head -20 || true
    echo "fuzz: crashing input: ${artifact:-none written} (log $log)"
    if [ -n "$artifact" ] && [ -f "$artifact" ]; then
      # CI keeps only the log: the input itself, to paste into a regression test.
      echo "fuzz: input ($(wc -c <"$artifact") bytes, base64): $(base64 -w0 "$artifact" | head -c 8192)"
      echo "fuzz: reproduce with: $bin_dir/$t $artifact"
    fi
    failed+=("$t")
    summary+=("$(printf '%-16s FAILED  %12s execs' "$t" "${execs:-?}")")
  else
    summary+=("$(printf '%-16s ok      %12s execs  %8s/s  corpus %s' "$t" "$execs" "$rate" "$corpus")")
  fi
done

echo "fuzz: summary"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: ${#failed[@]} target(s) crashed: ${failed[*]}; inputs and logs kept in $scratch"
  exit 1
fi
echo "fuzz: all targets ran clean in $(( $(date +%s) - started ))s"
