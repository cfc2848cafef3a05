//! A capped link with a REMB-only subscriber we did not write (SPEC 5.1):
//! Debian's headless Chromium publishes its fake 1280x720 camera through the
//! built-in page as VP8 q/h/f (tests/browser/publish.js); two aiortc
//! subscribers decode it (tests/interop/sfu_simulcast.py cap). aiortc
//! negotiates no transport-cc: the SFU stamps abs-send-time on what it sends
//! them, and their estimate comes back as REMB (media/bwe/remb.rs) with loss
//! in receiver reports. U connects directly; C's subscriber link goes through
//! a 600 kbit/s token bucket with a short queue for 30 s: C is moved below f
//! within 15 s, told so for bandwidth, loses under 5 % of its video, hears
//! audio in every 5 s, never waits more than 3 s for a decoded frame (aiortc
//! waits on any hole: a retransmission lost again froze it for 10-25 s before
//! `consumer::FollowUp`, and an old layer's packet lost after a switch for
//! 11-15 s before `Forwarder::filler`), and U keeps f; within 25 s of the
//! lift C is at h or better and stays there. Each run prints C's loss while
//! capped (a filler counts as lost) and its longest wait for a frame.
//!
//! A benchmark of the scenario, not a test in the suite: on the loaded 2-core
//! VM Chromium's own ramp-up and aiortc's receive-side estimate (its arrival
//! times are Python's, late whenever the CPU is busy) make it pass only some
//! runs. `RUNS=3 cargo bench --bench remb_cap` prints, per run, the first
//! target missed or PASS, then the tally.

#[path = "../tests/common/mod.rs"]
mod common;

use common::simulcast_aiortc::*;

/// The longest C may wait between two decoded frames, from when both decode f to the end.
const CAPPED_STALL_MS: u64 = 3000;

fn an_aiortc_subscriber_on_a_capped_link_is_moved_down_by_its_remb_and_back() {
    let (s, _, all) = run("aiortc-cap", "cap", &[]);
    let f = s["widest"].as_i64().unwrap();
    let (start, cap, cap_end, end) = (
        phase(&s, "default", "reachedMs"),
        phase(&s, "cap", "startMs"),
        phase(&s, "cap", "endMs"),
        phase(&s, "end", "startMs"),
    );
    // Before the cap both kept f.
    for who in ["U", "C"] {
        for x in between(&s, who, start + 1000, cap) {
            assert_eq!(at(x, 1), f, "{who} left f before the cap: {x:?}\n{all}");
        }
    }
    // The cap: C moved below f within 15 s, told so for bandwidth ...
    let capped = between(&s, "C", cap, cap_end);
    let down = capped
        .iter()
        .find(|x| at(x, 1) < f && at(x, 1) > 0)
        .map(|x| at(x, 0) - cap)
        .unwrap_or_else(|| panic!("C stayed at f all through the {CAP_KBPS} kbit/s cap\n{all}"));
    assert!(down <= DOWN_MS, "C took {down} ms to drop below f\n{all}");
    assert!(
        s["updates"]["C"]
            .as_array()
            .is_some_and(|l| l.iter().any(|u| u[2] == "bandwidth" && at(u.as_array().unwrap(), 0) >= cap)),
        "C was never told of a bandwidth move while capped: {}",
        s["updates"]["C"]
    );
    // ... lost under 5 % of its video while capped ...
    let (first, last) = (capped.first().unwrap(), capped.last().unwrap());
    // (The script counts a filler as the loss it stands for, not as the
    // received packet aiortc takes it for.)
    let filled = s["server"]["filled"].as_f64().expect("the server's confer_retransmissions_filled_total");
    let (received, lost) = (at(last, 3) - at(first, 3), at(last, 4) - at(first, 4));
    let loss = lost as f64 / (received + lost).max(1) as f64;
    let stall = s["stallMs"]["C"].as_u64().unwrap_or(u64::MAX);
    println!(
        "  C while capped: {:.1} % of its video lost, longest wait for a frame {stall} ms ({filled} fillers sent in the run)",
        loss * 100.0
    );
    assert!(received > 0 && loss < MAX_LOSS, "C lost {lost} of {} video packets while capped\n{all}", received + lost);
    // ... decoded video all along, switches included ...
    assert!(stall <= CAPPED_STALL_MS, "C decoded no video for {stall} ms\n{all}");
    // ... and heard audio in every 5 s of it ...
    let mut t = cap;
    while t + AUDIO_WINDOW_MS <= cap_end {
        let w = between(&s, "C", t, t + AUDIO_WINDOW_MS);
        assert!(
            w.len() >= 2 && at(w.last().unwrap(), 2) > at(w[0], 2),
            "C heard no audio in {t}..{} ms while capped",
            t + AUDIO_WINDOW_MS
        );
        t += AUDIO_WINDOW_MS;
    }
    assert!(
        s["proxy"]["cappedOffered"].as_u64().unwrap_or(0) > 1000,
        "C's media did not go through the proxy: {}",
        s["proxy"]
    );
    // ... while U, uncapped, kept f.
    for x in between(&s, "U", cap, end) {
        assert_eq!(at(x, 1), f, "U (uncapped) left f during C's cap: {x:?}\n{all}");
    }
    no_stall_no_loss(&s, "U", start, end);
    // Lifted: C at h or better within 25 s, and staying there.
    let lifted = between(&s, "C", cap_end, end);
    let up = lifted
        .iter()
        .position(|x| at(x, 1) > f / 4)
        .unwrap_or_else(|| panic!("C never climbed back to h after the lift\n{all}"));
    assert!(
        at(lifted[up], 0) - cap_end <= UP_MS,
        "C took {} ms to climb back to h\n{all}",
        at(lifted[up], 0) - cap_end
    );
    for x in &lifted[up..] {
        assert!(at(x, 1) > f / 4, "C fell back below h after the lift: {x:?}");
    }
}

fn main() {
    common::bench_runs("remb_cap", an_aiortc_subscriber_on_a_capped_link_is_moved_down_by_its_remb_and_back);
}
