//! A router's data path: datagrams into their leg, publishers' RTP out to
//! every consumer as [`crate::media::forwarder`] decides, subscribers' RTCP
//! answered (NACKs from the history, keyframe requests to the publisher),
//! sender reports, and the legs' own timers.

use super::{Router, KEYFRAME_FOLLOWUPS};
use crate::ids::TrackId;
use crate::media::allocate::Layer;
use crate::media::codec;
use crate::media::consumer::{self, Consumer};
use crate::media::error::MediaError;
use crate::media::forwarder::{self, Decision};
use crate::media::ids::{LegId, Ssrc};
use crate::media::transport::{Side, Transport};
use crate::media::worker::Io;
use crate::media::{allocate, bwe};
use crate::media::{egress, MediaEvent, Role};
use crate::model::TrackKind;
use bytes::BytesMut;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::rtcp;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

/// A subscriber sent more than this many times its estimate is on a link
/// that shrank: a track moved down for bandwidth stops its old layer at once
/// ([`forwarder::Forwarder::set_target_now`]) instead of pushing it on until
/// the new layer's keyframe, when most of it would be lost anyway.
const CUT_OVERLOAD: f64 = 1.5;

/// An estimate that falls under this fraction of what it was with one
/// feedback message is shared again at once.
const FELL: f64 = 0.7;

/// How often layer bitrates are measured and each subscriber's estimate is
/// shared among its tracks.
const ALLOCATE_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Packets one NACK can have sent again.
const MAX_RESENT_PER_NACK: usize = 64;

impl Router {
    /// One datagram for `leg`, read at `now`.
    pub fn datagram(&mut self, leg: LegId, data: &[u8], from: SocketAddr, now: Instant, io: &mut Io) {
        // RTP headers travel in the clear under SRTP: count what arrives,
        // before any NACK recovery, for the publisher's statistics.
        if data.len() >= 12 && data[0] >> 6 == 2 && !(192..=223).contains(&data[1]) {
            let ssrc = Ssrc(u32::from_be_bytes([data[8], data[9], data[10], data[11]]));
            if let Some(p) = self.by_ssrc.get(&(leg, ssrc)).and_then(|t| self.producers.get_mut(t)) {
                let seq = u16::from_be_bytes([data[2], data[3]]);
                let ts = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
                p.stats.on_packet(seq, ts, io.arrival(now), data.len(), data[1] & 0x80 != 0);
            }
        }
        let Some(l) = self.transports.get_mut(&leg) else { return };
        let msg = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: io.ice_local,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(data),
        };
        if let Err(e) = l.pc.handle_read(msg) {
            io.metrics.datagrams_dropped.inc();
            tracing::trace!(error = %e, %from, "media: datagram rejected");
        }
        self.dirty.push(leg);
    }

    /// Drain every leg that may have something to say, until none has, and
    /// queue what they send. Forwarding happens in here too (reading a
    /// publisher's packets queues their copies).
    pub fn flush(&mut self, io: &mut Io, now: Instant, wall: SystemTime) {
        while let Some(id) = self.dirty.pop() {
            if !self.transports.contains_key(&id) {
                continue;
            }
            self.drain_events(id, io, now);
            self.drain_reads(id, io, wall);
            if let Some(leg) = self.transports.get_mut(&id) {
                while let Some(o) = leg.pc.poll_write() {
                    leg.out.on_transmit(&o.message, o.transport.peer_addr);
                    io.send(&o.message, o.transport.peer_addr);
                }
            }
        }
    }

    fn drain_events(&mut self, id: LegId, io: &mut Io, now: Instant) {
        let mut events = Vec::new();
        if let Some(leg) = self.transports.get_mut(&id) {
            while let Some(e) = leg.pc.poll_event() {
                events.push(e);
            }
        }
        for e in events {
            match e {
                RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                    self.track_open(id, init.receiver_id, init.track_id, init.ssrc, init.rid, io, now)
                }
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) => {
                    let Some(leg) = self.transports.get_mut(&id) else { continue };
                    let role = leg.role();
                    tracing::debug!(peer = %leg.peer, ?role, state = %s, "media: connection state");
                    match s {
                        RTCPeerConnectionState::Connected if !leg.connected => {
                            leg.connected = true;
                            if role == Role::Subscriber {
                                self.subscriber_connected(id, now);
                            }
                        }
                        RTCPeerConnectionState::Failed => io.error(&leg.peer.clone(), MediaError::Failed(role)),
                        _ => {}
                    }
                }
                _ => {}
            }
        }
    }

    /// Keyframes sent before DTLS was up were lost: ask again for everything
    /// the leg carries. The server finishes DTLS a moment before the client
    /// does, and a keyframe arriving in that moment is lost: ask again a
    /// little later too.
    fn subscriber_connected(&mut self, leg: LegId, now: Instant) {
        let wanted: Vec<TrackId> = self
            .producers
            .values()
            .filter(|p| p.consumers.iter().any(|c| c.leg == leg))
            .map(|p| p.id.clone())
            .collect();
        for t in wanted {
            self.keyframe(&t, now);
            for after in KEYFRAME_FOLLOWUPS {
                self.followups.push((now + after, t.clone()));
            }
        }
    }

    fn drain_reads(&mut self, id: LegId, io: &mut Io, wall: SystemTime) {
        let Some(leg) = self.transports.get_mut(&id) else { return };
        let role = leg.role();
        // One buffer for every drain: no allocation per packet here.
        let mut msgs = std::mem::take(&mut io.reads);
        while let Some(m) = leg.pc.poll_read() {
            msgs.push(m);
        }
        for TaggedRTCMessage { now, message } in msgs.drain(..) {
            match (role, message) {
                (Role::Publisher, RTCMessage::RtpPacket(track, pkt)) => self.forward(id, &track, pkt, now, io),
                (_, RTCMessage::RtcpPacket(track, pkts)) => self.rtcp(id, role, &track, &pkts, now, wall, io),
                _ => {}
            }
        }
        io.reads = msgs;
    }

    fn forward(&mut self, leg_id: LegId, remote_track: &str, pkt: rtc::rtp::Packet, now: Instant, io: &mut Io) {
        let Some(Transport { side: Side::Publisher { remote }, .. }) = self.transports.get(&leg_id) else { return };
        let Some(track) = remote.get(remote_track) else { return };
        let Some(p) = self.producers.get_mut(track) else { return };
        io.metrics.received(p.kind).inc();
        if let Some(ext) = p.audio_level_ext {
            if let Some(e) = pkt.header.extensions.iter().find(|e| e.id == ext) {
                p.level.on_extension(&e.payload);
            }
        }
        let Some(layer) = p.layer_of(Ssrc(pkt.header.ssrc)) else { return };
        // A packet already forwarded: a retransmission of one that was not
        // lost, or RTX sent as padding (libwebrtc probes with old packets);
        // webrtc-rs hands both over as the original. Subscribers get it once.
        if p.history[layer as usize].get(pkt.header.sequence_number).is_some() {
            return;
        }
        let simulcast = p.is_simulcast();
        p.last_seen[layer as usize] = Some(now);
        p.layer_bytes[layer as usize] += (pkt.payload.len() + 12) as u64;
        let top = p.layers.iter().rposition(Option::is_some).unwrap_or(0);
        if p.vp8 && layer as usize == top {
            if let Some(size) = crate::media::producer::vp8_keyframe_size(&pkt.payload) {
                p.frame_size = Some(size);
            }
        }
        let keyframe = simulcast && codec::is_keyframe(p.codec_kind, &pkt.payload);
        let (forwarded, bytes) = (io.metrics.forwarded(p.kind), io.metrics.forwarded_bytes(p.kind));
        let info = forwarder::Packet::of(&pkt).with_layer(layer, keyframe);
        for c in p.consumers.iter_mut() {
            let leg = self.transports.get_mut(&c.leg).filter(|l| l.connected);
            let Decision::Send(send) = c.forwarder.decide(&info, leg.is_some(), now) else { continue };
            let Some(leg) = leg else { continue };
            if send.switched {
                // A single-layer track's one layer is its full one.
                layer_changed(io, c, &p.id, Some(if simulcast { layer } else { Layer::F }));
            }
            let Some(size) = write_copy(leg, io, c, &pkt, &send, None, now) else { continue };
            forwarded.inc();
            bytes.inc_by(size as u64);
            c.report.packets += 1;
            c.report.bytes += size as u64;
            c.last_sent = Some((send.ts, now));
        }
        p.history[layer as usize].put(pkt);
    }

    /// Answer a subscriber's NACK from the producer's history: the packets
    /// it names are written to it again, with the numbers it knows them by;
    /// those the leg's budget has no room for yet wait in the consumer's
    /// [`crate::media::consumer::Deferred`].
    fn retransmit(
        &mut self,
        leg_id: LegId,
        track: &TrackId,
        nack: &rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack,
        now: Instant,
        io: &mut Io,
    ) {
        let Some(p) = self.producers.get_mut(track) else { return };
        let Some(c) = p.consumers.iter_mut().find(|c| c.leg == leg_id && c.forwarder.ssrc() == Ssrc(nack.media_ssrc))
        else {
            return;
        };
        let Some(leg) = self.transports.get_mut(&leg_id).filter(|l| l.connected) else { return };
        let newly = consumer::newly_nacked(&mut c.nacked_up_to, nack.nacks.iter().flat_map(|pair| *pair));
        if let Side::Subscriber { bwe, .. } = &mut leg.side {
            bwe.on_nack(newly, leg.out.sent_packets, leg.out.stamped_bytes, now);
        }
        // A NACK names at most 17 packets per pair; how many pairs fit is up
        // to the sender, so what one NACK may cost is capped.
        for seq in nack.nacks.iter().flat_map(|pair| *pair).take(MAX_RESENT_PER_NACK) {
            if resend(leg, &p.history, c, seq, false, now, io) == Resend::NoRoom {
                io.metrics.retransmit_over_budget.inc();
                c.deferred.push(seq, now);
            }
        }
    }

    /// Resends what NACKs asked for while the budget had no room, as far as it has now.
    fn resend_deferred(&mut self, now: Instant, io: &mut Io) {
        for p in self.producers.values_mut() {
            for c in p.consumers.iter_mut().filter(|c| !c.deferred.is_empty()) {
                let Some(leg) = self.transports.get_mut(&c.leg).filter(|l| l.connected) else { continue };
                let mut deferred = std::mem::take(&mut c.deferred);
                deferred.retry(now, |seq, overdue| resend(leg, &p.history, c, seq, overdue, now, io) != Resend::NoRoom);
                c.deferred = deferred;
            }
        }
    }

    /// Sender reports for every forwarded stream that has sent something.
    pub(super) fn sender_reports(&mut self, now: Instant, wall: SystemTime, io: &mut Io) {
        for p in self.producers.values() {
            let clock = p.clock_rate();
            for c in &p.consumers {
                let Some(last) = c.last_sent else { continue };
                let Some(leg) = self.transports.get_mut(&c.leg).filter(|l| l.connected) else { continue };
                let (Some(remote), Some(ctx)) = (leg.out.remote, leg.pc.local_srtp_context()) else { continue };
                let octets = c.report.bytes.saturating_sub(12 * c.report.packets);
                let sr = egress::sender_report(c.forwarder.ssrc().0, clock, last, c.report.packets, octets, now, wall);
                match egress::protect_rtcp(ctx, &sr) {
                    Ok(data) => io.send(&data, remote),
                    Err(e) => tracing::debug!(error = %e, "media: sender report not protected"),
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn rtcp(
        &mut self,
        leg: LegId,
        role: Role,
        track: &str,
        pkts: &[Box<dyn rtcp::packet::Packet>],
        now: Instant,
        wall: SystemTime,
        io: &mut Io,
    ) {
        use rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
        use rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
        use rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
        let mut wants_keyframe = false;
        for p in pkts {
            let any = p.as_any();
            let ty = if any.is::<PictureLossIndication>() {
                wants_keyframe = true;
                "pli"
            } else if any.is::<FullIntraRequest>() {
                wants_keyframe = true;
                "fir"
            } else if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                io.metrics.nack.inc();
                if role == Role::Subscriber {
                    self.retransmit(leg, &TrackId::from(track), nack, now, io);
                }
                "nack"
            } else if any.is::<rtcp::receiver_report::ReceiverReport>() {
                "rr"
            } else if any.is::<rtcp::sender_report::SenderReport>() {
                "sr"
            } else if any.is::<rtcp::source_description::SourceDescription>() {
                "sdes"
            } else if any.is::<rtcp::goodbye::Goodbye>() {
                "bye"
            } else {
                "other"
            };
            io.metrics.rtcp(ty).inc();
        }
        if role != Role::Subscriber {
            return;
        }
        self.feed_estimate(leg, pkts, now);
        // A subscriber's feedback names our sender's track, which is the producer's id.
        let track = TrackId::from(track);
        if let Some(p) = self.producers.get_mut(&track) {
            let clock = p.clock_rate();
            if let Some(c) = p.consumers.iter_mut().find(|c| c.leg == leg) {
                let ours = c.forwarder.ssrc().0;
                for p in pkts {
                    let any = p.as_any();
                    if let Some(rr) = any.downcast_ref::<rtcp::receiver_report::ReceiverReport>() {
                        for r in rr.reports.iter().filter(|r| r.ssrc == ours) {
                            c.report.apply(r, clock, wall);
                        }
                    } else if let Some(sr) = any.downcast_ref::<rtcp::sender_report::SenderReport>() {
                        for r in sr.reports.iter().filter(|r| r.ssrc == ours) {
                            c.report.apply(r, clock, wall);
                        }
                    } else if any.is::<PictureLossIndication>() {
                        c.report.plis += 1;
                    } else if any.is::<FullIntraRequest>() {
                        c.report.firs += 1;
                    } else if any.is::<TransportLayerNack>() {
                        c.report.nacks += 1;
                    }
                }
            }
        }
        if wants_keyframe {
            self.keyframe(&track, now);
        }
    }

    /// A subscriber's feedback about its downstream: transport-wide feedback
    /// (send-side estimate), REMB, or receiver-report loss.
    fn feed_estimate(&mut self, leg: LegId, pkts: &[Box<dyn rtcp::packet::Packet>], now: Instant) {
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
                if let Some(worst) = rr.reports.iter().map(|r| r.fraction_lost).max() {
                    bwe.on_receiver_report(f64::from(worst) / 256.0, now);
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

    /// Ask a publisher for a keyframe of every layer some consumer forwards
    /// or waits for (the one layer of a single-layer track), within the
    /// rate limit.
    pub(super) fn keyframe(&mut self, track: &TrackId, now: Instant) {
        let Some(p) = self.producers.get(track) else { return };
        if p.kind != TrackKind::Video {
            return;
        }
        let mut wanted = [!p.is_simulcast(), false, false];
        for c in &p.consumers {
            for l in [c.forwarder.current(), c.forwarder.wants_keyframe()].into_iter().flatten() {
                wanted[l as usize] = true;
            }
        }
        for l in Layer::ALL.into_iter().filter(|l| wanted[*l as usize]) {
            self.keyframe_of(track, l, now);
        }
    }

    /// Ask for a keyframe of one layer, within the rate limit.
    pub(super) fn keyframe_of(&mut self, track: &TrackId, layer: Layer, now: Instant) {
        let Some(p) = self.producers.get_mut(track) else { return };
        if p.kind == TrackKind::Video && p.keyframes[layer as usize].request(now) {
            self.send_pli(track, layer, now);
        }
    }

    fn send_pli(&mut self, track: &TrackId, layer: Layer, now: Instant) {
        let Some(p) = self.producers.get_mut(track) else { return };
        let Some(leg) = self.transports.get_mut(&p.leg) else { return };
        let ssrc = p.ssrc_of(layer);
        let pli = rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: ssrc.0,
        };
        if let Some(mut r) = leg.pc.rtp_receiver(p.codec.receiver) {
            if r.write_rtcp(now, vec![Box::new(pli)]).is_ok() {
                tracing::trace!(%track, %ssrc, "media: PLI to the publisher");
                self.plis.inc();
                p.stats.plis += 1;
            }
        }
        self.dirty.push(p.leg);
    }

    /// Simulcast: keep asking for the keyframe of every layer a consumer
    /// waits to switch to (within the rate limit). Dynacast (SPEC 5.1): the
    /// publisher hears which layers anyone receives or asks for (its
    /// ceiling), kept for 5 s after the last, and for a subscriber paused
    /// for bandwidth the layer the allocator would resume it at if it
    /// arrived ([`Allocator::demand`]'s second entry). Without that, a
    /// subscriber paused while everyone else took `f` had only `f` to come
    /// back to, for good: q and h were off because nobody received them, and
    /// SPEC's "resumes when it fits again" could never happen. A subscriber
    /// that gets some layer already names the top one it wants by its
    /// ceiling; naming the next step up too only made the publisher turn
    /// layers on and off again within milliseconds.
    ///
    /// [`Allocator::demand`]: crate::media::allocate::Allocator::demand
    pub(super) fn choose_layers(&mut self, now: Instant, io: &Io) {
        let mut wanted = Vec::new();
        let transports = &self.transports;
        for p in self.producers.values_mut().filter(|p| p.is_simulcast()) {
            let receiving = p
                .consumers
                .iter()
                .filter(|c| !c.forwarder.paused())
                .flat_map(|c| {
                    let resume_at = match transports.get(&c.leg) {
                        Some(Transport { side: Side::Subscriber { allocator, .. }, .. })
                            if c.forwarder.current().is_none() =>
                        {
                            allocator.demand(c.alloc_id)[1]
                        }
                        _ => None,
                    };
                    [Some(c.ceiling), c.forwarder.current(), resume_at]
                })
                .flatten();
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

    /// The legs' timers, deferred and repeated keyframe requests, and
    /// (when `sender_reports`) the consumers' sender reports.
    pub fn timers(&mut self, now: Instant, wall: SystemTime, sender_reports: bool, io: &mut Io) {
        if sender_reports {
            self.sender_reports(now, wall, io);
        }
        for (id, leg) in self.transports.iter_mut() {
            if leg.pc.poll_timeout().is_some_and(|t| t <= now) {
                let _ = leg.pc.handle_timeout(now);
                self.dirty.push(*id);
            }
        }
        let mut i = 0;
        while i < self.followups.len() {
            if self.followups[i].0 <= now {
                let (_, t) = self.followups.swap_remove(i);
                self.keyframe(&t, now);
            } else {
                i += 1;
            }
        }
        let mut due = Vec::new();
        for p in self.producers.values_mut() {
            for l in Layer::ALL {
                if p.keyframes[l as usize].due(now) {
                    due.push((p.id.clone(), l));
                }
            }
        }
        for (t, l) in due {
            self.send_pli(&t, l, now);
        }
        self.resend_deferred(now, io);
        self.choose_layers(now, io);
        self.pad(now, io);
        if now >= self.next_allocation {
            self.next_allocation = now + ALLOCATE_EVERY;
            self.allocate(now, io);
        }
    }
}

impl Router {
    /// While a subscriber's estimator runs a probe cluster, top what the leg
    /// sends up to the probe's rate with padding on the RTX stream of one of
    /// its video consumers. Called every worker tick; the padding for a tick
    /// goes out at once (the cluster measures what arrives, so bursts are fine).
    fn pad(&mut self, now: Instant, io: &mut Io) {
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

/// What became of one NACKed packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resend {
    Sent,
    /// Not resendable: not forwarded from a layer we still hold, or the leg refused it.
    Gone,
    /// The leg's budget has no room for it now.
    NoRoom,
}

/// Resend the packet a subscriber knows as `seq` from the producer's
/// `history`, if the leg's budget has room (with the estimator on) or it is
/// `overdue` (see [`consumer::DEFERRED_OVERDUE`]).
fn resend(
    leg: &mut Transport,
    history: &[crate::media::producer::History; 3],
    c: &mut Consumer,
    seq: u16,
    overdue: bool,
    now: Instant,
    io: &mut Io,
) -> Resend {
    let Some((layer, original)) = c.forwarder.source_of(seq) else { return Resend::Gone };
    let Some(pkt) = history[layer as usize].get(original) else { return Resend::Gone };
    let h = &pkt.header;
    if io.bandwidth_estimation && !overdue {
        if let Side::Subscriber { bwe, budget, .. } = &mut leg.side {
            if !budget.fits(pkt.payload.len() + 40, bwe.estimate_bps(), now) {
                return Resend::NoRoom;
            }
        }
    }
    let Some(send) = c.forwarder.resend(seq, h.payload_type) else { return Resend::Gone };
    let rtx = c.rewrite.rtx_for(send.pt).map(|(ssrc, pt)| {
        c.rtx_seq = c.rtx_seq.wrapping_add(1);
        (ssrc, pt, c.rtx_seq)
    });
    if write_copy(leg, io, c, pkt, &send, rtx, now).is_none() {
        return Resend::Gone;
    }
    io.metrics.retransmitted.inc();
    Resend::Sent
}

/// Tell signaling a consumer's forwarded layer changed.
pub(super) fn layer_changed(io: &Io, c: &mut Consumer, track: &TrackId, layer: Option<Layer>) {
    c.switches += 1;
    io.metrics.layer_switches(c.reason.name()).inc();
    io.event(MediaEvent::LayerChanged { peer: c.peer.clone(), track: track.clone(), layer, reason: c.reason });
}

/// Write one forwarded copy to a subscriber leg as `send` decided (as an
/// RTX retransmission with `rtx`, see [`egress::Writer::protect`]): number
/// it on the leg, protect, queue. The size counted (payload plus the fixed
/// header), or `None` when the leg cannot take it (no address or SRTP
/// context yet, a protect error).
fn write_copy(
    leg: &mut Transport,
    io: &mut Io,
    c: &Consumer,
    pkt: &rtc::rtp::Packet,
    send: &forwarder::Send,
    rtx: Option<(u32, u8, u16)>,
    now: Instant,
) -> Option<usize> {
    let remote = leg.out.remote?;
    let ctx = leg.pc.local_srtp_context()?;
    let stamps = stamps(&mut leg.out, &c.rewrite, now);
    let data = match io.writer.protect(ctx, &c.rewrite, pkt, send, stamps, rtx) {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!(error = %e, "media: a forwarded packet was not protected");
            return None;
        }
    };
    let size = data.len();
    io.failed += io.out.push(&io.socket, data, remote);
    sent(leg, stamps, size, pkt.payload.len() + rtx.map_or(0, |_| 2), now);
    Some(pkt.payload.len() + 12)
}

/// What the next packet to `rewrite`'s leg is stamped with: its transport-wide
/// number, or (without transport-cc) its abs-send-time.
fn stamps(out: &mut egress::LegOut, rewrite: &crate::media::rewrite::Rewrite, now: Instant) -> egress::Stamps {
    egress::Stamps {
        transport_seq: rewrite.transport_cc.map(|_| out.transport_seq()),
        send_time: rewrite.abs_send_time.filter(|_| rewrite.transport_cc.is_none()).map(|_| out.send_time(now)),
    }
}

/// Account for `size` bytes just written to a subscriber leg directly: the
/// leg's byte count (and `counted`, the payload and padding a REMB receiver
/// counts, when stamped with a send time), its retransmission budget, and its
/// estimator (with the transport-wide number, when the leg numbers its packets).
fn sent(leg: &mut Transport, stamps: egress::Stamps, size: usize, counted: usize, now: Instant) {
    let transport_seq = stamps.transport_seq;
    leg.out.sent_bytes += size as u64;
    leg.out.sent_packets += 1;
    if stamps.send_time.is_some() {
        leg.out.stamped_bytes += counted as u64;
    }
    if let Some(n) = transport_seq {
        leg.observed.sent.record(n, now);
    }
    if let Side::Subscriber { bwe, budget, .. } = &mut leg.side {
        budget.spend(size);
        if let Some(n) = transport_seq {
            bwe.on_sent(bwe::SentPacket { transport_seq: n, size, at: now });
        }
    }
}

/// One padding-only packet of a bandwidth probe on `c`'s RTX stream (see
/// [`egress::Writer::padding`]); its size on the wire, or `None` when the
/// leg cannot take it or `c` has no RTX.
fn write_padding(leg: &mut Transport, io: &mut Io, c: &mut Consumer, now: Instant) -> Option<usize> {
    let remote = leg.out.remote?;
    let (ssrc, pt) = c.rewrite.rtx.as_ref().and_then(|r| r.payload_types.first().map(|&(_, pt)| (r.ssrc, pt)))?;
    let ctx = leg.pc.local_srtp_context()?;
    c.rtx_seq = c.rtx_seq.wrapping_add(1);
    let ts = c.last_sent.map_or(0, |(ts, _)| ts);
    let stamps = stamps(&mut leg.out, &c.rewrite, now);
    let data = match io.writer.padding(ctx, &c.rewrite, (ssrc, pt, c.rtx_seq), ts, stamps, egress::MAX_PADDING) {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!(error = %e, "media: a padding packet was not protected");
            return None;
        }
    };
    let size = data.len();
    io.failed += io.out.push(&io.socket, data, remote);
    sent(leg, stamps, size, egress::MAX_PADDING, now);
    Some(size)
}
