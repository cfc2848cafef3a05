//! A router's legs and their negotiation: creating and closing
//! PeerConnections, answering publisher offers, offering subscribers the
//! room's tracks, and turning what a subscriber agreed into consumers.

use super::{Router, KEYFRAME_FOLLOWUPS};
use crate::ids::{PeerId, TrackId};
use crate::media::allocate::{Layer, Reason};
use crate::media::consumer::{choose_layer, Consumer};
use crate::media::error::MediaError;
use crate::media::forwarder::Forwarder;
use crate::media::ids::{LegId, Ssrc};
use crate::media::producer::{Origin, Producer, Source};
use crate::media::rewrite::{Rewrite, Rtx};
use crate::media::transport::{Negotiation, Side, Transport};
use crate::media::worker::Io;
use crate::media::{egress, pc, MediaEvent, PublishTrack, Role};
use crate::model::TrackKind;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind};
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpSenderId};
use rtc::sansio::Protocol;
use std::collections::HashMap;
use std::time::Instant;

const MID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";

impl Router {
    fn new_leg(&mut self, peer: &PeerId, role: Role, io: &mut Io, now: Instant) -> Result<LegId, MediaError> {
        let (ufrag, pwd) = pc::credentials();
        let (conn, observed) = pc::build(role, &ufrag, &pwd, &io.advertised, None, now).map_err(|e| {
            tracing::warn!(error = %e, ?role, "media: cannot create a PeerConnection");
            MediaError::CannotCreate
        })?;
        let id = io.next_leg();
        io.demux.register(ufrag.clone(), self.id, id);
        let side = match role {
            Role::Publisher => Side::Publisher { remote: HashMap::new() },
            Role::Subscriber => crate::media::transport::subscriber_side(now),
        };
        self.transports.insert(
            id,
            Transport {
                id,
                pc: conn,
                peer: peer.clone(),
                ufrag,
                addrs: Vec::new(),
                connected: false,
                observed,
                out: egress::LegOut::default(),
                side,
            },
        );
        io.metrics.peer_connections.inc();
        Ok(id)
    }

    /// Close a leg; its goodbye (DTLS close) goes out with the next flush.
    pub(super) fn close_leg(&mut self, id: LegId, io: &mut Io) {
        let Some(mut leg) = self.transports.remove(&id) else { return };
        let _ = leg.pc.close();
        while let Some(out) = leg.pc.poll_write() {
            io.send(&out.message, out.transport.peer_addr);
        }
        io.demux.forget(&leg.ufrag, &leg.addrs);
        io.metrics.peer_connections.dec();
    }

    pub fn publish(&mut self, peer_id: &PeerId, sdp: String, tracks: Vec<PublishTrack>, io: &mut Io, now: Instant) {
        let Some(peer) = self.participants.get(peer_id) else {
            return io.error(peer_id, MediaError::NotJoined);
        };
        let leg_id = match peer.publisher {
            Some(l) => l,
            None => match self.new_leg(peer_id, Role::Publisher, io, now) {
                Ok(l) => l,
                Err(e) => return io.error(peer_id, e),
            },
        };
        let Some(peer) = self.participants.get_mut(peer_id) else { return };
        peer.publisher = Some(leg_id);
        for t in tracks {
            peer.announced.insert(t.mid.clone(), t);
        }
        for (_, ssrcs) in crate::media::sdp::simulcast_groups(&sdp) {
            peer.simulcast_ssrcs.extend(sim_layers(&ssrcs));
        }
        let Some(leg) = self.transports.get_mut(&leg_id) else { return };
        let answer = RTCSessionDescription::offer(sdp)
            .and_then(|offer| leg.pc.set_remote_description(now, offer))
            .and_then(|()| leg.pc.create_answer(None))
            .and_then(|answer| leg.pc.set_local_description(now, answer.clone()).map(|()| answer));
        match answer {
            Ok(a) => {
                let sdp = crate::media::sdp::candidates_everywhere(&a.sdp);
                io.event(MediaEvent::PublishAnswer { peer: peer_id.clone(), sdp: sdp.clone() });
                trickle(io, peer_id, Role::Publisher, &sdp);
            }
            Err(e) => {
                tracing::debug!(error = %e, peer = %peer_id, "media: publisher offer not usable");
                io.error(peer_id, MediaError::BadOffer);
            }
        }
        self.dirty.push(leg_id);
    }

    pub fn subscribe_answer(&mut self, peer_id: &PeerId, sdp: String, io: &mut Io, now: Instant) {
        let Some(leg_id) = self.participants.get(peer_id).and_then(|p| p.subscriber) else {
            return io.error(peer_id, MediaError::NoOfferPending);
        };
        let Some(leg) = self.transports.get_mut(&leg_id) else { return };
        let Side::Subscriber { negotiation, senders, .. } = &mut leg.side else { return };
        if !matches!(negotiation, Negotiation::Offered { .. }) {
            return io.error(peer_id, MediaError::NoOfferPending);
        }
        let applied = RTCSessionDescription::answer(sdp).and_then(|a| leg.pc.set_remote_description(now, a));
        if let Err(e) = applied {
            tracing::debug!(error = %e, peer = %peer_id, "media: subscriber answer not usable");
            return io.error(peer_id, MediaError::BadAnswer);
        }
        let Some((carried, again)) = negotiation.answered() else { return };
        self.dirty.push(leg_id);
        // Every negotiated sender becomes a consumer of its producer.
        let agreed: Vec<(TrackId, RTCRtpSenderId, Ssrc)> =
            senders.iter().filter(|(t, _)| carried.contains(t)).map(|(t, (s, ssrc))| (t.clone(), *s, *ssrc)).collect();
        for (track, sender, ssrc) in agreed {
            self.add_consumer(peer_id, leg_id, &track, sender, ssrc, now);
        }
        if again {
            self.renegotiate(peer_id, io, now);
        }
    }

    /// Make `sender` on the subscriber leg a consumer of `track`, with the
    /// payload types, extension ids, mid and RTX the leg agreed.
    fn add_consumer(
        &mut self,
        peer_id: &PeerId,
        leg_id: LegId,
        track: &TrackId,
        sender: RTCRtpSenderId,
        ssrc: Ssrc,
        now: Instant,
    ) {
        let Some(prod) = self.producers.get(track) else { return };
        if prod.consumers.iter().any(|c| &c.peer == peer_id) {
            return;
        }
        let pub_pts = self.publisher_payload_types(track);
        let Some(prod) = self.producers.get(track) else { return };
        let Some(leg) = self.transports.get_mut(&leg_id) else { return };
        let Some(mut s) = leg.pc.rtp_sender(sender) else { return };
        let send_params = s.get_parameters();
        let rtx_ssrc = send_params.encodings.iter().find_map(|e| e.rtp_coding_parameters.rtx.as_ref()).map(|r| r.ssrc);
        let params = send_params.rtp_parameters.clone();
        let payload_types: Vec<(u8, u8)> = pub_pts
            .iter()
            .filter_map(|(pt, mime)| {
                params
                    .codecs
                    .iter()
                    .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime))
                    .map(|c| (*pt, c.payload_type))
            })
            .collect();
        let extensions: Vec<(u8, u8)> = prod
            .codec
            .extensions
            .iter()
            // mid and rid name the publisher's m-line and layers; they mean
            // nothing (or something else) on the subscriber's leg.
            // Transport-wide numbers and send times are per hop: the leg
            // writes its own.
            .filter(|(uri, _)| {
                !uri.starts_with("urn:ietf:params:rtp-hdrext:sdes:")
                    && uri != crate::media::observe::TRANSPORT_CC_URI
                    && uri != crate::media::observe::ABS_SEND_TIME_URI
            })
            .filter_map(|(uri, id)| params.header_extensions.iter().find(|h| &h.uri == uri).map(|h| (*id, h.id as u8)))
            .collect();
        let mid_ext = params.header_extensions.iter().find(|h| h.uri == MID_URI).map(|h| h.id as u8);
        let transport_cc = params
            .header_extensions
            .iter()
            .find(|h| h.uri == crate::media::observe::TRANSPORT_CC_URI && h.id != 0)
            .map(|h| h.id as u8);
        // A leg without transport-cc feedback gets send times for its
        // receiver's own estimate (REMB) instead.
        let abs_send_time = params
            .header_extensions
            .iter()
            .find(|h| h.uri == crate::media::observe::ABS_SEND_TIME_URI && h.id != 0)
            .map(|h| h.id as u8)
            .filter(|_| transport_cc.is_none());
        // RFC 4588: the sender's RTX SSRC and, per media type, its RTX type.
        let rtx = rtx_ssrc.map(|ssrc| Rtx {
            ssrc,
            payload_types: params
                .codecs
                .iter()
                .filter(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case("video/rtx"))
                .filter_map(|c| {
                    let apt = c.rtp_codec.sdp_fmtp_line.split(';').find_map(|p| p.trim().strip_prefix("apt="))?;
                    Some((apt.trim().parse().ok()?, c.payload_type))
                })
                .collect(),
        });
        let ids: Vec<_> = leg.pc.get_transceivers().collect();
        let mid = ids.into_iter().find_map(|t| {
            let tr = leg.pc.rtp_transceiver(t)?;
            (tr.sender() == Some(sender)).then(|| tr.mid().clone()).flatten()
        });
        let mid = mid_ext.zip(mid.map(bytes::Bytes::from));
        let Some(prod) = self.producers.get_mut(track) else { return };
        tracing::debug!(peer = %peer_id, %track, ?payload_types, ?extensions, "media: consumer added");
        let video = prod.kind == TrackKind::Video;
        let mut forwarder = Forwarder::new(ssrc, payload_types);
        if prod.is_simulcast() {
            let target = choose_layer(Layer::F, prod.available(now));
            forwarder = forwarder.simulcast(prod.clock_rate(), prod.vp8, Some(target));
        }
        prod.consumers.push(Consumer {
            leg: leg_id,
            peer: peer_id.clone(),
            forwarder,
            rewrite: Rewrite { extensions, mid, transport_cc, abs_send_time, rtx },
            report: Default::default(),
            last_sent: None,
            rtx_seq: rand::random(),
            ceiling: Layer::F,
            reason: Reason::Requested,
            switches: 0,
            alloc_id: self.next_alloc_id,
            deferred: Default::default(),
            follow_up: Default::default(),
            nacked_up_to: None,
            rr_mark: None,
        });
        self.next_alloc_id = self.next_alloc_id.wrapping_add(1);
        if let Some((subscribe, ceiling)) = self.early.remove(&(peer_id.clone(), track.clone())) {
            let (simulcast, available) = (prod.is_simulcast(), prod.available(now));
            if let Some(c) = prod.consumers.last_mut() {
                c.forwarder.set_paused(!subscribe);
                c.ceiling = ceiling.unwrap_or(c.ceiling);
                if let Some(l) = ceiling.filter(|_| simulcast) {
                    c.forwarder.set_target(Some(choose_layer(l, available)));
                }
            }
        }
        if video {
            self.keyframe(track, now);
            for after in KEYFRAME_FOLLOWUPS {
                self.followups.push((now + after, track.clone()));
            }
        }
    }

    /// The publisher's payload types for a producer's codec: (pt, mime).
    fn publisher_payload_types(&mut self, track: &TrackId) -> Vec<(u8, String)> {
        let Some(prod) = self.producers.get(track) else { return Vec::new() };
        let Some(leg) = self.transports.get_mut(&prod.leg) else { return Vec::new() };
        let Some(mut r) = leg.pc.rtp_receiver(prod.codec.receiver) else { return Vec::new() };
        r.get_parameters()
            .rtp_parameters
            .codecs
            .iter()
            .filter(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(&prod.codec.codec.mime_type))
            .map(|c| (c.payload_type, c.rtp_codec.mime_type.clone()))
            .collect()
    }

    /// Send (or re-send) the subscriber offer, unless one is still unanswered.
    pub(super) fn renegotiate(&mut self, peer_id: &PeerId, io: &mut Io, now: Instant) {
        let Some(leg_id) = self.participants.get(peer_id).and_then(|p| p.subscriber) else { return };
        let Some(leg) = self.transports.get_mut(&leg_id) else { return };
        let Side::Subscriber { negotiation, senders, .. } = &mut leg.side else { return };
        if !negotiation.want_offer() {
            return;
        }
        let offer = leg.pc.create_offer(None).and_then(|o| leg.pc.set_local_description(now, o.clone()).map(|()| o));
        match offer {
            Ok(o) => {
                let first = negotiation.offered(senders.keys().cloned().collect());
                let sdp = crate::media::sdp::candidates_everywhere(&o.sdp);
                io.event(MediaEvent::SubscribeOffer { peer: peer_id.clone(), sdp: sdp.clone() });
                if first {
                    trickle(io, peer_id, Role::Subscriber, &sdp);
                }
            }
            Err(e) => tracing::warn!(error = %e, peer = %peer_id, "media: cannot create a subscriber offer"),
        }
        self.dirty.push(leg_id);
    }

    /// Add a producer to a subscriber's leg (created on first use), unless
    /// the participant may not subscribe. The caller renegotiates.
    pub(super) fn add_sender(&mut self, peer_id: &PeerId, track: &TrackId, io: &mut Io, now: Instant) {
        let Some(prod) = self.producers.get(track) else { return };
        if &prod.peer == peer_id {
            return;
        }
        let Some(peer) = self.participants.get(peer_id).filter(|p| p.may_subscribe) else { return };
        let kind = match prod.kind {
            TrackKind::Audio => RtpCodecKind::Audio,
            TrackKind::Video => RtpCodecKind::Video,
        };
        let (stream, codec) = (prod.peer.to_string(), prod.codec.codec.clone());
        let leg_id = match peer.subscriber {
            Some(l) => l,
            None => match self.new_leg(peer_id, Role::Subscriber, io, now) {
                Ok(l) => {
                    if let Some(p) = self.participants.get_mut(peer_id) {
                        p.subscriber = Some(l);
                    }
                    l
                }
                Err(_) => return,
            },
        };
        let Some(leg) = self.transports.get_mut(&leg_id) else { return };
        let Side::Subscriber { senders, .. } = &mut leg.side else { return };
        if senders.contains_key(track) {
            return;
        }
        let ssrc = rand::random::<u32>();
        let t = MediaStreamTrack::new(
            stream,
            track.to_string(),
            track.to_string(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
                codec,
                ..Default::default()
            }],
        );
        match leg.pc.add_track(t) {
            Ok(sender) => {
                senders.insert(track.clone(), (sender, Ssrc(ssrc)));
            }
            Err(e) => tracing::warn!(error = %e, %track, "media: cannot add a track to a subscriber"),
        }
    }

    pub(super) fn remove_producer(&mut self, track: &TrackId, io: &mut Io, now: Instant) {
        let Some(prod) = self.producers.remove(track) else { return };
        self.early.retain(|(_, t), _| t != track);
        self.by_ssrc.retain(|_, t| t != track);
        io.metrics.tracks_published(prod.kind).dec();
        if let Some(Side::Publisher { remote }) = self.transports.get_mut(&prod.leg).map(|l| &mut l.side) {
            remote.retain(|_, t| t != track);
        }
        let mut subscribers = Vec::new();
        for leg in self.transports.values_mut() {
            let Side::Subscriber { senders, .. } = &mut leg.side else { continue };
            if let Some((sender, _)) = senders.remove(track) {
                if let Err(e) = leg.pc.remove_track(sender) {
                    tracing::debug!(error = %e, "media: remove_track");
                }
                subscribers.push(leg.peer.clone());
            }
        }
        for s in subscribers {
            self.renegotiate(&s, io, now);
        }
    }

    /// A publisher's track sent its first RTP: make it a producer.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn track_open(
        &mut self,
        leg_id: LegId,
        receiver: RTCRtpReceiverId,
        remote_track: String,
        ssrc: u32,
        rid: Option<String>,
        io: &mut Io,
        now: Instant,
    ) {
        let Some(leg) = self.transports.get_mut(&leg_id) else { return };
        let Side::Publisher { remote } = &mut leg.side else { return };
        let peer_id = leg.peer.clone();
        let mid = leg.pc.get_transceivers().collect::<Vec<_>>().into_iter().find_map(|t| {
            let tr = leg.pc.rtp_transceiver(t)?;
            (tr.receiver() == Some(receiver)).then(|| tr.mid().clone()).flatten()
        });
        let Some(announced) = mid.and_then(|m| self.participants.get(&peer_id)?.announced.get(&m).cloned()) else {
            tracing::debug!(peer = %peer_id, "media: a track that publish-offer did not list is ignored");
            return;
        };
        let Some(mut r) = leg.pc.rtp_receiver(receiver) else { return };
        let kind = match r.track().kind() {
            RtpCodecKind::Audio => TrackKind::Audio,
            _ => TrackKind::Video,
        };
        let Some(codec) = r.track().codec(ssrc).cloned() else { return };
        let extensions: Vec<(String, u8)> =
            r.get_parameters().rtp_parameters.header_extensions.iter().map(|h| (h.uri.clone(), h.id as u8)).collect();
        remote.insert(remote_track, announced.id.clone());
        let ssrc = Ssrc(ssrc);
        // SPEC 5.1: rids q, h, f name the layers; another rid (or none) is
        // a single-layer track.
        // A publisher without rids may name them by `a=ssrc-group:SIM` instead.
        let sim = self.participants.get(&peer_id).and_then(|p| p.simulcast_ssrcs.get(&ssrc.0).copied());
        let layer = rid.as_deref().and_then(Layer::from_rid).or(sim).filter(|_| kind == TrackKind::Video);
        // webrtc-rs opens existing tracks again after a renegotiation, and
        // each simulcast layer once.
        if let Some(p) = self.producers.get_mut(&announced.id) {
            match layer {
                Some(l) => {
                    tracing::debug!(track = %announced.id, rid = l.rid(), %ssrc, "media: simulcast layer");
                    p.add_layer(l, ssrc);
                }
                None => {
                    self.by_ssrc.retain(|_, t| *t != announced.id);
                    self.by_ssrc.insert((leg_id, ssrc), announced.id.clone());
                    p.media_ssrc = ssrc;
                }
            }
            return;
        }
        self.by_ssrc.insert((leg_id, ssrc), announced.id.clone());
        let audio_level_ext = extensions.iter().find(|(u, _)| u == pc::AUDIO_LEVEL_URI).map(|(_, id)| *id);
        let origin =
            Origin { id: announced.id.clone(), peer: peer_id.clone(), kind, source: announced.source, leg: leg_id };
        let source = Source { codec, receiver, extensions };
        let mut producer = Producer::new(origin, source, ssrc, audio_level_ext, now);
        if let Some(l) = layer {
            tracing::debug!(track = %announced.id, rid = l.rid(), %ssrc, "media: simulcast layer");
            producer.add_layer(l, ssrc);
        }
        self.producers.insert(announced.id.clone(), producer);
        io.metrics.tracks_published(kind).inc();
        io.event(MediaEvent::TrackPublished { peer: peer_id.clone(), track: announced.id.clone(), kind });
        let others: Vec<PeerId> = self.participants.keys().filter(|p| **p != peer_id).cloned().collect();
        for o in others {
            self.add_sender(&o, &announced.id, io, now);
            self.renegotiate(&o, io, now);
        }
    }
}

/// Trickle the server's candidate after the description that carries it,
/// for clients that only read trickled ones (SPEC 4: both ways).
fn trickle(io: &Io, peer: &PeerId, role: Role, sdp: &str) {
    let mid = sdp.lines().find_map(|l| l.strip_prefix("a=mid:")).map(str::to_owned);
    for line in sdp.lines().filter_map(|l| l.strip_prefix("a=")).filter(|l| l.starts_with("candidate:")) {
        // Component 1 only: every m-section is rtcp-muxed.
        if line.split_whitespace().nth(1) != Some("1") {
            continue;
        }
        io.event(MediaEvent::LocalCandidate { peer: peer.clone(), role, candidate: line.to_owned(), mid: mid.clone() });
        break;
    }
}

/// The layers of one `a=ssrc-group:SIM` (its SSRCs lowest first): the top
/// one is `f`, the one under it `h`, then `q`; a group of two is `h` and `f`,
/// as two layers of a browser's simulcast are. SSRCs under the third from the
/// top get no layer (SPEC 5.1 names three).
fn sim_layers(ssrcs: &[u32]) -> impl Iterator<Item = (u32, Layer)> + '_ {
    ssrcs.iter().rev().zip([Layer::F, Layer::H, Layer::Q]).map(|(&s, l)| (s, l))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sim_group_names_its_layers_from_the_top() {
        let got: Vec<_> = sim_layers(&[1, 2, 3]).collect();
        assert_eq!(got, [(3, Layer::F), (2, Layer::H), (1, Layer::Q)]);
        let got: Vec<_> = sim_layers(&[7, 8]).collect();
        assert_eq!(got, [(8, Layer::F), (7, Layer::H)]);
        let got: Vec<_> = sim_layers(&[1, 2, 3, 4]).collect();
        assert_eq!(got, [(4, Layer::F), (3, Layer::H), (2, Layer::Q)], "a fourth, lowest layer is left out");
    }
}
