//! The REMB capped-subscriber scenario of `tests/simulcast_aiortc.rs`
//! (its doc says what it shows), run `RUNS` times for how often it meets
//! every target: `RUNS=4 cargo bench --profile dev --bench remb_cap` prints,
//! per run, C's video loss while capped (a filler counts as lost), its
//! longest wait for a frame and PASS or the first target missed, then the
//! tally. `SIMULCAST_SUMMARY=path` keeps the script's summary (with what
//! aiortc did with each missing packet, and each PLI it sent), and
//! `CHILD_RUST_LOG=warn,confer::media::router=trace` the router's trace of
//! every resend, filler and layer change.

#[path = "../tests/common/mod.rs"]
mod common;

use common::simulcast_aiortc::*;

fn main() {
    common::bench_runs("remb_cap", an_aiortc_subscriber_on_a_capped_link_is_moved_down_by_its_remb_and_back);
}
