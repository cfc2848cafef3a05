//! Simulcast layers with subscribers we did not write (SPEC 5.1): Debian's
//! headless Chromium publishes its fake 1280x720 camera through the built-in
//! page as VP8 q/h/f (tests/browser/publish.js), and two aiortc subscribers
//! decode it (tests/interop/sfu_simulcast.py ceilings). The estimate is off,
//! as in tests/simulcast.rs: this is about ceilings. With no
//! `track-subscribe` A and B decode the full layer; A's `low` brings it the ¼
//! layer within 5 s and `high` the full one, B's `medium` the ½ layer, each
//! told with `subscription-update`, the other unmoved, frames coming on with
//! no packet lost.
//!
//! With the estimate on and one subscriber behind a 600 kbit/s proxy,
//! aiortc's REMB path (SPEC 5.1): aiortc negotiates no transport-cc, so the
//! SFU stamps abs-send-time on what it sends, and the estimate comes back as
//! REMB (media/bwe/remb.rs) with NACKs and loss in receiver reports. U
//! connects directly; C's subscriber link goes through a 600 kbit/s token
//! bucket with a short queue for 30 s: C is moved below f within 15 s, told
//! so for bandwidth, loses under 5 % of its video (a filler counts as lost),
//! hears audio in every 5 s and never waits more than 3 s for a decoded
//! frame (aiortc waits on any hole: a retransmission lost again froze it for
//! 10-25 s before `consumer::FollowUp`, and an old layer's packet lost after
//! a switch for 11-15 s before `Forwarder::filler`), and U keeps f; within
//! 25 s of the lift C is at h or better and stays there.
//! `cargo bench --bench remb_cap` runs the same `RUNS` times.
//!
//! The scripts only observe and print JSON; every judgement is here.

mod common;

use common::simulcast_aiortc::*;

#[test]
fn aiortc_subscribers_get_the_simulcast_layer_they_ask_for() {
    let (s, _, all) = run("aiortc-ceilings", "ceilings", &[("CONFER_MEDIA_BANDWIDTH_ESTIMATION", "false")]);
    let f = s["widest"].as_i64().unwrap();
    // Dynacast keeps every layer up to a ceiling on: B's h is there at once.
    for (ph, who, layer, reason) in
        [("A-low", "A", "q", "requested"), ("A-high", "A", "f", "requested"), ("B-medium", "B", "h", "requested")]
    {
        let p = &s["phases"][ph];
        let after = p["afterMs"].as_u64().unwrap_or_else(|| panic!("{ph}: {who} never reached {layer}: {p}\n{all}"));
        assert!(after <= SWITCH_MS, "{ph}: {who} took {after} ms to decode {layer}\n{all}");
        assert!(has_update(&s, who, layer, reason), "{who} was not told {layer} ({reason}): {}", s["updates"][who]);
    }
    let (start, end) = (phase(&s, "default", "reachedMs"), phase(&s, "end", "startMs"));
    // While A went low and back, B stayed at f; then A stayed at f while B went to h.
    for x in between(&s, "B", start, phase(&s, "B-medium", "startMs")) {
        assert_eq!(at(x, 1), f, "B moved while A changed its ceiling: {x:?}");
    }
    for x in between(&s, "A", phase(&s, "A-high", "reachedMs"), end) {
        assert_eq!(at(x, 1), f, "A moved while B changed its ceiling: {x:?}");
    }
    for who in ["A", "B"] {
        no_stall_no_loss(&s, who, start, end);
    }
}

#[test]
fn an_aiortc_subscriber_on_a_capped_link_is_moved_down_by_its_remb_and_back() {
    common::simulcast_aiortc::an_aiortc_subscriber_on_a_capped_link_is_moved_down_by_its_remb_and_back();
}
