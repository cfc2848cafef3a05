//! A router's data path: datagrams into their leg, publishers' RTP out to
//! every consumer as [`crate::media::forwarder`] decides, subscribers' RTCP
//! answered (NACKs from the history, keyframe requests to the publisher),
//! sender reports, and the legs' own timers.

use super::{adapt, Router, KEYFRAME_FOLLOWUPS};
use crate::ids::TrackId;
use crate::media::allocate::Layer;
use crate::media::bwe;
use crate::media::codec;
use crate::media::consumer::{self, Consumer};
use crate::media::error::MediaError;
use crate::media::forwarder::{self, Decision};
use crate::media::ids::{LegId, Ssrc};
use crate::media::transport::{Side, Transport};
use crate::media::worker::Io;
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
        // A number never sent (lost on the way in, passed on as a gap) is NACKed
        // too, and says nothing about this link.
        let sent_here = nack.nacks.iter().flat_map(|pair| *pair).filter(|&s| c.forwarder.source_of(s).is_some());
        let newly = consumer::newly_nacked(&mut c.nacked_up_to, sent_here);
        if c.rewrite.transport_cc.is_none() {
            c.follow_up.nacked(nack.nacks.iter().flat_map(|pair| *pair), now);
        }
        if let Side::Subscriber { bwe, .. } = &mut leg.side {
            bwe.on_nack(newly, leg.out.sent_packets, leg.out.stamped_bytes, now);
        }
        // A NACK names at most 17 packets per pair; how many pairs fit is up
        // to the sender, so what one NACK may cost is capped.
        let (mut sent, mut deferred, mut gone) = (0, 0, None);
        for seq in nack.nacks.iter().flat_map(|pair| *pair).take(MAX_RESENT_PER_NACK) {
            match resend(leg, &p.history, c, seq, false, now, io) {
                Resend::Sent => sent += 1,
                Resend::NoRoom => {
                    io.metrics.retransmit_over_budget.inc();
                    c.deferred.push(seq, now);
                    deferred += 1;
                }
                Resend::Gone => gone = Some(gone.map_or((seq, 1), |(first, n): (u16, u32)| (first, n + 1))),
            }
        }
        tracing::trace!(ssrc = c.forwarder.ssrc().0, sent, deferred, gone = ?gone, nacks = ?nack.nacks, "media: a NACK answered (gone: first number, count)");
    }

    /// Resends what NACKs asked for while the budget had no room, as far as
    /// it has now, and then the follow-ups of receivers without transport-cc
    /// (see [`consumer::FollowUp`]).
    fn resend_deferred(&mut self, now: Instant, io: &mut Io) {
        for p in self.producers.values_mut() {
            for c in p.consumers.iter_mut().filter(|c| !c.deferred.is_empty() || c.follow_up.is_pending()) {
                let Some(leg) = self.transports.get_mut(&c.leg).filter(|l| l.connected) else { continue };
                let mut deferred = std::mem::take(&mut c.deferred);
                let expired = deferred
                    .retry(now, |seq, overdue| resend(leg, &p.history, c, seq, overdue, now, io) != Resend::NoRoom);
                if expired > 0 {
                    tracing::trace!(ssrc = c.forwarder.ssrc().0, expired, "media: NACKed packets expired unsent");
                }
                c.deferred = deferred;
                if c.deferred.is_empty() {
                    let mut follow_up = std::mem::take(&mut c.follow_up);
                    let mut sent = 0;
                    follow_up.due(now, |seq| {
                        let behind = c.forwarder.behind_newest(seq);
                        if behind.is_none_or(|d| d > consumer::FOLLOW_UP_MAX_BEHIND) {
                            tracing::trace!(
                                ssrc = c.forwarder.ssrc().0,
                                seq,
                                ?behind,
                                "media: follow-up skipped (too old)"
                            );
                            return true; // too old to send safely: skipped
                        }
                        let overdue = behind.is_some_and(|d| d >= consumer::FOLLOW_UP_OVERDUE_BEHIND);
                        match resend(leg, &p.history, c, seq, overdue, now, io) {
                            Resend::NoRoom => false,
                            r => {
                                sent += u32::from(r == Resend::Sent);
                                true
                            }
                        }
                    });
                    if sent > 0 {
                        io.metrics.retransmit_follow_up.inc_by(u64::from(sent));
                        tracing::trace!(ssrc = c.forwarder.ssrc().0, sent, "media: a NACK answered again (follow-up)");
                    }
                    c.follow_up = follow_up;
                }
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
            self.keyframe_where(&track, now, |c| c.leg == leg);
        }
    }

    /// Ask a publisher for a keyframe of every layer some consumer forwards
    /// or waits for (the one layer of a single-layer track), within the
    /// rate limit.
    pub(super) fn keyframe(&mut self, track: &TrackId, now: Instant) {
        self.keyframe_where(track, now, |_| true);
    }

    /// [`Router::keyframe`] for the layers of the consumers `of` picks. A
    /// subscriber's PLI asks for its own layers only: asking for every
    /// consumer's made a subscriber whose decoder kept failing (aiortc sends
    /// a PLI on each failed frame) bring a keyframe of every other
    /// subscriber's layer every 300 ms as well (`remb_cap`'s traces: `f`'s,
    /// for the uncapped subscriber, for 40 s after a failed step up).
    fn keyframe_where(&mut self, track: &TrackId, now: Instant, of: impl Fn(&Consumer) -> bool) {
        let Some(p) = self.producers.get(track) else { return };
        if p.kind != TrackKind::Video {
            return;
        }
        let mut wanted = [!p.is_simulcast(), false, false];
        for c in p.consumers.iter().filter(|c| of(c)) {
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
            self.next_allocation = now + adapt::ALLOCATE_EVERY;
            self.allocate(now, io);
        }
    }
}

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
/// `overdue` (see [`consumer::DEFERRED_OVERDUE`]). To a leg without
/// transport-cc, one sent before the last layer switch goes as a filler
/// instead ([`crate::media::forwarder::Forwarder::filler`]): a few dozen
/// bytes, so not held to the budget.
fn resend(
    leg: &mut Transport,
    history: &[crate::media::producer::History; 3],
    c: &mut Consumer,
    seq: u16,
    overdue: bool,
    now: Instant,
    io: &mut Io,
) -> Resend {
    if c.rewrite.transport_cc.is_none() {
        if let Some(fill) = c.forwarder.filler(seq) {
            let filler = Outgoing::Padding { stream: (fill.ssrc.0, fill.pt, fill.seq), ts: fill.ts, bytes: 1 };
            if write(leg, io, &c.rewrite, filler, now).is_none() {
                return Resend::Gone;
            }
            tracing::trace!(ssrc = c.forwarder.ssrc().0, seq, "media: resent as a filler");
            io.metrics.retransmit_filled.inc();
            return Resend::Sent;
        }
    }
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
    tracing::trace!(ssrc = c.forwarder.ssrc().0, seq, overdue, "media: resent");
    io.metrics.retransmitted.inc();
    Resend::Sent
}

/// Tell signaling a consumer's forwarded layer changed.
pub(super) fn layer_changed(io: &Io, c: &mut Consumer, track: &TrackId, layer: Option<Layer>) {
    c.switches += 1;
    io.metrics.layer_switches(c.reason.name()).inc();
    io.event(MediaEvent::LayerChanged { peer: c.peer.clone(), track: track.clone(), layer, reason: c.reason });
}

/// A forwarded packet, or its retransmission (on the RTX stream when `rtx`
/// is set), written to `c`'s leg: the payload's size plus its RTP header,
/// what the API counts as sent.
fn write_copy(
    leg: &mut Transport,
    io: &mut Io,
    c: &Consumer,
    pkt: &rtc::rtp::Packet,
    send: &forwarder::Send,
    rtx: Option<(u32, u8, u16)>,
    now: Instant,
) -> Option<usize> {
    write(leg, io, &c.rewrite, Outgoing::Copy { pkt, send, rtx }, now)?;
    Some(pkt.payload.len() + 12)
}

/// What one write to a subscriber leg carries.
pub(super) enum Outgoing<'a> {
    /// A publisher's packet as `send` says, on the RTX stream `(ssrc, pt, seq)` when set.
    Copy { pkt: &'a rtc::rtp::Packet, send: &'a forwarder::Send, rtx: Option<(u32, u8, u16)> },
    /// A padding-only packet of `bytes` padding on the stream `(ssrc, pt,
    /// seq)`: a bandwidth probe's on the RTX stream, or a filler on the media
    /// stream ([`crate::media::forwarder::Forwarder::filler`]).
    Padding { stream: (u32, u8, u16), ts: u32, bytes: usize },
}

/// Stamp, protect and queue one packet to a subscriber leg, and account for
/// it ([`sent`]): the one write path of forwarding, retransmission and
/// padding. Its size on the wire, or `None` when the leg cannot take it.
pub(super) fn write(
    leg: &mut Transport,
    io: &mut Io,
    rewrite: &crate::media::rewrite::Rewrite,
    out: Outgoing,
    now: Instant,
) -> Option<usize> {
    let remote = leg.out.remote?;
    let ctx = leg.pc.local_srtp_context()?;
    let stamps = stamps(&mut leg.out, rewrite, now);
    // What a REMB receiver counts of it: the payload (with RTX's original
    // sequence number) or the padding.
    let (data, counted) = match out {
        Outgoing::Copy { pkt, send, rtx } => {
            (io.writer.protect(ctx, rewrite, pkt, send, stamps, rtx), pkt.payload.len() + rtx.map_or(0, |_| 2))
        }
        Outgoing::Padding { stream, ts, bytes } => (io.writer.padding(ctx, rewrite, stream, ts, stamps, bytes), bytes),
    };
    let data = match data {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!(error = %e, "media: a packet to a subscriber was not protected");
            return None;
        }
    };
    let size = data.len();
    io.failed += io.out.push(&io.socket, data, remote);
    sent(leg, stamps, size, counted, now);
    Some(size)
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
