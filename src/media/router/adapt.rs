//! How a router adapts to each subscriber (SPEC 5.1): its downstream
//! estimate fed from its feedback, the estimate shared among its tracks
//! every [`ALLOCATE_EVERY`], dynacast's `publish-layers` and keyframe
//! requests for the layers consumers wait for, and padding for the
//! estimator's probes.

use super::forward::{layer_changed, write, Outgoing};
use super::Router;
use crate::media::allocate::Layer;
use crate::media::consumer::Consumer;
use crate::media::ids::LegId;
use crate::media::transport::{Side, Transport};
use crate::media::worker::Io;
use crate::media::{allocate, bwe, MediaEvent};
use crate::model::TrackKind;
use rtc::rtcp;
use std::time::Instant;
/// A subscriber sent more than this many times its estimate is on a link
/// that shrank: a track moved down for bandwidth stops its old layer at once
/// ([`crate::media::forwarder::Forwarder::set_target_now`]) instead of pushing it on until
/// the new layer's keyframe, when most of it would be lost anyway.
const CUT_OVERLOAD: f64 = 1.5;

/// An estimate that falls under this fraction of what it was with one
/// feedback message is shared again at once.
const FELL: f64 = 0.7;

/// How often layer bitrates are measured and each subscriber's estimate is
/// shared among its tracks.
pub(super) const ALLOCATE_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

impl Router {
    /// A subscriber's feedback about its downstream: transport-wide feedback
    /// (send-side estimate), REMB, or receiver-report loss.
    pub(super) fn feed_estimate(&mut self, leg: LegId, pkts: &[Box<dyn rtcp::packet::Packet>], now: Instant) {
        use rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
        use rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
        let Some(Transport { side: Side::Subscriber { bwe, .. }, out, .. }) = self.transports.get_mut(&leg) else {
            return;
        };
        let before = bwe.estimate_bps();
        for p in pkts {
            let any = p.as_any();
            if let Some(fb) = any.downcast_ref::<TransportLayerCc>() {
                self.arrivals.clear();
                crate::media::observe::feedback_arrivals(fb, &mut self.arrivals);
                self.feedback.clear();
                self.feedback.extend(self.arrivals.iter().map(|&(seq, t)| bwe::Arrival {
                    transport_seq: seq,
                    arrived: t.map(|us| std::time::Duration::from_micros(us.max(0) as u64)),
                }));
                bwe.on_feedback(&self.feedback, now);
            } else if let Some(remb) = any.downcast_ref::<ReceiverEstimatedMaximumBitrate>() {
                bwe.on_remb(remb.bitrate as u64, out.stamped_bytes, now);
            } else if let Some(rr) = any.downcast_ref::<rtcp::receiver_report::ReceiverReport>() {
                // Of what was sent on this link (`Consumer::link_loss`).
                let mut worst: Option<f64> = None;
                for r in &rr.reports {
                    let c = self
                        .producers
                        .values_mut()
                        .flat_map(|p| p.consumers.iter_mut())
                        .find(|c| c.leg == leg && c.forwarder.ssrc().0 == r.ssrc);
                    let loss = match c {
                        Some(c) => c.link_loss(r.last_sequence_number, r.total_lost),
                        None => Some(f64::from(r.fraction_lost) / 256.0),
                    };
                    if let Some(l) = loss {
                        worst = Some(worst.map_or(l, |w| w.max(l)));
                    }
                }
                if let Some(worst) = worst {
                    bwe.on_receiver_report(worst, now);
                }
            }
        }
        // A link that shrank: share what is left now, not at the next tick.
        if (bwe.estimate_bps() as f64) < before as f64 * FELL {
            self.next_allocation = now;
        }
    }

    /// Measure what each layer costs, then share every subscriber's
    /// estimate among its tracks (SPEC 5.1 allocation) and point each
    /// consumer at the layer it got.
    pub(super) fn allocate(&mut self, now: Instant, io: &Io) {
        use allocate::{Kind, TrackInput};
        // Measured over whole periods only: an allocation pulled forward (a
        // new subscription, a falling estimate) uses the last measurement.
        let since = now.saturating_duration_since(self.last_measure);
        if since >= ALLOCATE_EVERY {
            self.last_measure = now;
            for p in self.producers.values_mut() {
                p.measure(since.as_secs_f64());
            }
        }
        let subscribers: Vec<LegId> = self
            .transports
            .iter()
            .filter(|(_, t)| matches!(t.side, Side::Subscriber { .. }))
            .map(|(&id, _)| id)
            .collect();
        let mut inputs = Vec::new();
        let mut changes = Vec::new();
        let mut keyframes = Vec::new();
        for leg in subscribers {
            inputs.clear();
            let mut can_pad = false;
            // What the layers forwarded now add up to (audio included).
            let mut sending = 0u64;
            for p in self.producers.values() {
                let Some(c) = p.consumers.iter().find(|c| c.leg == leg) else { continue };
                can_pad |= c.rewrite.rtx.is_some() && c.rewrite.transport_cc.is_some();
                let kind = match (p.kind, p.source) {
                    (TrackKind::Audio, _) => Kind::Audio,
                    (_, crate::model::TrackSource::Screen) => Kind::Screen,
                    _ => Kind::Camera,
                };
                // An unsubscribed track takes no share (and keeps its place).
                if c.forwarder.paused() {
                    continue;
                }
                let ceiling = Some(if p.is_simulcast() { c.ceiling } else { Layer::Q });
                let speaker_rank = self.speakers.iter().position(|s| *s == p.peer).map(|i| i as u32);
                let available = p.layer_bitrates(now);
                sending += c.forwarder.current().and_then(|l| available[l as usize]).unwrap_or(0);
                inputs.push(TrackInput { id: c.alloc_id, kind, ceiling, available, speaker_rank });
            }
            let Some(Transport { side: Side::Subscriber { bwe, allocator, .. }, .. }) = self.transports.get_mut(&leg)
            else {
                continue;
            };
            changes.clear();
            if let Some(r) = bwe.poll_probe(now) {
                io.metrics.probe(r.raised).inc();
                tracing::debug!(%leg, target = r.target_bps, measured = r.measured_bps, raised = r.raised, sent = r.sent, received = r.received, lost = r.lost, estimate = bwe.estimate_bps(), "media: probe done");
            }
            // Off: a terabit, as good as unlimited and far from any overflow.
            let estimate = if io.bandwidth_estimation { bwe.estimate_bps() } else { 1_000_000_000_000 };
            allocator.allocate(estimate, &inputs, now, &mut changes);
            // Far over the estimate (a link that shrank, not one drifting
            // down), a track moved down for bandwidth stops its old layer at
            // once rather than at the new layer's keyframe.
            let overloaded = sending as f64 > estimate as f64 * CUT_OVERLOAD;
            // What the subscriber wants more than its estimate: probe towards it
            // (padding on the RTX stream, see `pad`), so the estimate can climb
            // where the media alone would not take it.
            if io.bandwidth_estimation && can_pad {
                if let Some(target) = bwe.start_probe(allocator.desired_bps(), now) {
                    tracing::debug!(%leg, target, estimate, "media: probe");
                }
            }
            tracing::trace!(%leg, estimate, acked = bwe.acknowledged_bps(), usage = ?bwe.usage(), loss = bwe.loss(), limits = ?bwe.limits(), "media: estimate");
            if !changes.is_empty() {
                tracing::debug!(
                    %leg,
                    estimate,
                    acked = bwe.acknowledged_bps(),
                    usage = ?bwe.usage(),
                    loss = bwe.loss(),
                    limits = ?bwe.limits(),
                    ?changes,
                    "media: allocation changed"
                );
            }
            for p in self.producers.values_mut().filter(|p| p.kind == TrackKind::Video) {
                for c in p.consumers.iter_mut().filter(|c| c.leg == leg) {
                    let Some(ch) = changes.iter().find(|ch| ch.track == c.alloc_id) else { continue };
                    c.reason = ch.reason;
                    let was = c.forwarder.current();
                    let down = ch.reason == allocate::Reason::Bandwidth && ch.layer < was;
                    let wants_keyframe = if overloaded && down {
                        c.forwarder.set_target_now(ch.layer)
                    } else {
                        c.forwarder.set_target(ch.layer)
                    };
                    if wants_keyframe {
                        keyframes.extend(ch.layer.map(|l| (p.id.clone(), l)));
                    }
                    if ch.layer.is_none() && was.is_some() {
                        layer_changed(io, c, &p.id, None);
                    }
                }
            }
        }
        for (track, layer) in keyframes {
            self.keyframe_of(&track, layer, now);
        }
        let paused = self
            .producers
            .values()
            .flat_map(|p| &p.consumers)
            .filter(|c| !c.forwarder.paused() && c.forwarder.target().is_none())
            .count() as i64;
        self.paused_gauge.add(paused - self.paused);
        self.paused = paused;
    }

    /// Simulcast: keep asking for the keyframe of every layer a consumer
    /// waits to switch to (within the rate limit). Dynacast (SPEC 5.1): the
    /// publisher hears which layers any subscriber receives or may be moved
    /// to, kept for 5 s after the last: see [`allocate::dynacast_layers`].
    pub(super) fn choose_layers(&mut self, now: Instant, io: &Io) {
        let mut wanted = Vec::new();
        for p in self.producers.values_mut().filter(|p| p.is_simulcast()) {
            let receiving = p
                .consumers
                .iter()
                .filter(|c| !c.forwarder.paused())
                .flat_map(|c| allocate::dynacast_layers(c.ceiling, c.forwarder.current()));
            if let Some(layers) = p.demand.update(receiving, now) {
                tracing::debug!(track = %p.id, ?layers, "media: publish-layers");
                io.event(MediaEvent::PublishLayers { peer: p.peer.clone(), track: p.id.clone(), layers });
            }
            for c in p.consumers.iter().filter(|c| !c.forwarder.paused()) {
                if let Some(l) = c.forwarder.wants_keyframe() {
                    wanted.push((p.id.clone(), l));
                }
            }
        }
        for (track, layer) in wanted {
            self.keyframe_of(&track, layer, now);
        }
    }
}

impl Router {
    /// While a subscriber's estimator runs a probe cluster, top what the leg
    /// sends up to the probe's rate with padding on the RTX stream of one of
    /// its video consumers. Called every worker tick; the padding for a tick
    /// goes out at once (the cluster measures what arrives, so bursts are fine).
    pub(super) fn pad(&mut self, now: Instant, io: &mut Io) {
        for (&id, leg) in self.transports.iter_mut() {
            let Side::Subscriber { bwe, padding_since, .. } = &mut leg.side else { continue };
            let Some(target) = bwe.probing(now) else {
                *padding_since = None;
                continue;
            };
            let (since, base) = *padding_since.get_or_insert((now, leg.out.sent_bytes));
            let elapsed = now.saturating_duration_since(since) + PAD_AHEAD;
            let due = target as f64 / 8.0 * elapsed.as_secs_f64() - leg.out.sent_bytes.saturating_sub(base) as f64;
            if due <= 0.0 {
                continue;
            }
            let Some(c) = self
                .producers
                .values_mut()
                .filter(|p| p.kind == TrackKind::Video)
                .flat_map(|p| p.consumers.iter_mut())
                .find(|c| c.leg == id && c.rewrite.rtx.is_some())
            else {
                continue;
            };
            let mut left = due;
            for _ in 0..MAX_PADDING_PER_TICK {
                let Some(size) = write_padding(leg, io, c, now) else { break };
                io.metrics.padding_bytes.inc_by(size as u64);
                left -= size as f64;
                if left <= 0.0 {
                    break;
                }
            }
        }
    }
}

/// A probe's padding runs this far ahead of its clock: one worker tick, so
/// the first tick of a cluster already sends.
const PAD_AHEAD: std::time::Duration = std::time::Duration::from_millis(10);

/// Padding packets one leg sends per tick at most (about 18 kB: 15 Mbit/s).
const MAX_PADDING_PER_TICK: usize = 64;

/// One padding-only packet of a bandwidth probe on `c`'s RTX stream (see
/// [`crate::media::egress::Writer::padding`]); its size on the wire, or `None` when the
/// leg cannot take it or `c` has no RTX.
fn write_padding(leg: &mut Transport, io: &mut Io, c: &mut Consumer, now: Instant) -> Option<usize> {
    leg.out.remote?;
    leg.pc.local_srtp_context()?;
    let (ssrc, pt) = c.rewrite.rtx.as_ref().and_then(|r| r.payload_types.first().map(|&(_, pt)| (r.ssrc, pt)))?;
    c.rtx_seq = c.rtx_seq.wrapping_add(1);
    let ts = c.last_sent.map_or(0, |(ts, _)| ts);
    write(
        leg,
        io,
        &c.rewrite,
        Outgoing::Padding { stream: (ssrc, pt, c.rtx_seq), ts, bytes: crate::media::egress::MAX_PADDING },
        now,
    )
}
