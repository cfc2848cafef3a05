//! What a router tells signaling on its own: who is speaking, and every
//! [`crate::media::stats::REPORT_EVERY`] what each participant published
//! and received.

use super::Router;
use crate::ids::PeerId;
use crate::media::ids::LegId;
use crate::media::stats::{PeerStats, StreamSample, Streams};
use crate::media::transport::Side;
use crate::model::{TrackKind, TrackSource};
use std::collections::HashMap;

impl Router {
    /// The speakers heard since the last call, loudest first, if the list
    /// changed (SPEC 5: `active-speakers` on change).
    pub fn active_speakers(&mut self) -> Option<Vec<(PeerId, f64)>> {
        let mut speakers = Vec::new();
        for p in self.producers.values_mut().filter(|p| p.kind == TrackKind::Audio) {
            if let (Some(l), false) = (p.level.take(), p.muted) {
                speakers.push((p.peer.clone(), l));
            }
        }
        speakers.sort_by(|a, b| b.1.total_cmp(&a.1));
        speakers.dedup_by(|a, b| a.0 == b.0);
        let ids: Vec<PeerId> = speakers.iter().map(|s| s.0.clone()).collect();
        if self.speakers == ids {
            return None;
        }
        self.speakers = ids;
        Some(speakers)
    }

    /// Close an analytics interval of `secs` seconds: every participant's streams.
    pub fn report(&mut self, secs: f64) -> Vec<PeerStats> {
        let mut publish: HashMap<PeerId, Streams> = HashMap::new();
        let mut subscribe: HashMap<PeerId, (Streams, [u32; 2])> = HashMap::new();
        // RTT is only measured on subscriber legs (the SFU sends SRs and
        // transport-wide numbers there): from their receiver reports, and
        // from their TWCC feedback where they send it.
        let twcc: HashMap<LegId, f64> = self
            .transports
            .iter()
            .filter_map(|(&id, l)| Some((id, l.observed.take_rtt()?.as_secs_f64() * 1000.0)))
            .collect();
        let mut rtt: HashMap<PeerId, f64> = HashMap::new();
        for p in self.producers.values() {
            for c in &p.consumers {
                if let Some(r) = c.report.rtt_ms.or_else(|| twcc.get(&c.leg).copied()) {
                    rtt.insert(c.peer.clone(), r);
                }
            }
        }
        for p in self.producers.values_mut() {
            let iv = p.stats.take_interval(secs);
            let video = p.kind == TrackKind::Video;
            let primary = matches!(p.source, TrackSource::Camera | TrackSource::Microphone);
            let dir = publish.entry(p.peer.clone()).or_default();
            let slot = if video { &mut dir.video } else { &mut dir.audio };
            if primary || slot.is_none() {
                *slot = Some(StreamSample {
                    packets: p.stats.received(),
                    bytes: p.stats.bytes(),
                    packets_lost: p.stats.lost() as i64,
                    packet_loss: p.stats.loss(),
                    jitter_ms: p.stats.jitter_ms(),
                    rtt_ms: rtt.get(&p.peer).copied(),
                    bitrate_kbps: iv.bitrate_kbps,
                    nack_count: self.transports.get(&p.leg).map_or(0, |l| l.observed.nacks_sent(p.media_ssrc.0)),
                    pli_count: p.stats.plis,
                    fir_count: p.stats.firs,
                    frame_rate: video.then_some(iv.frame_rate),
                    frame_size: p.frame_size,
                    interval_loss: iv.loss,
                    ..Default::default()
                });
            }
            for c in p.consumers.iter_mut() {
                let (dir, n) = subscribe.entry(c.peer.clone()).or_default();
                let slot = if video { &mut dir.video } else { &mut dir.audio };
                let s = slot.get_or_insert_with(StreamSample::default);
                let r = &mut c.report;
                s.packets += r.packets;
                s.bytes += r.bytes;
                s.packets_lost += r.packets_lost;
                s.bitrate_kbps += (r.bytes - r.bytes_at_last_interval) as f64 * 8.0 / 1000.0 / secs.max(0.001);
                r.bytes_at_last_interval = r.bytes;
                // Means over the tracks of this kind, fixed below.
                s.interval_loss += r.fraction_lost;
                s.jitter_ms = s.jitter_ms.max(r.jitter_ms);
                s.rtt_ms = r.rtt_ms.or(s.rtt_ms);
                if let Some(&t) = twcc.get(&c.leg) {
                    s.twcc_rtt_ms = Some(t);
                    s.rtt_ms = s.rtt_ms.or(Some(t));
                }
                s.nack_count += r.nacks;
                s.pli_count += r.plis;
                s.fir_count += r.firs;
                if c.forwarder.is_simulcast() {
                    s.layer = s.layer.max(c.forwarder.current());
                    s.layer_switches = Some(s.layer_switches.unwrap_or(0) + c.switches);
                }
                n[usize::from(video)] += 1;
            }
        }
        self.participants
            .keys()
            .map(|peer| {
                let subscribe = match subscribe.remove(peer) {
                    Some((mut d, n)) => {
                        for (slot, count) in [(&mut d.audio, n[0]), (&mut d.video, n[1])] {
                            if let Some(s) = slot {
                                s.interval_loss /= f64::from(count.max(1));
                                s.packet_loss = s.interval_loss;
                            }
                        }
                        d
                    }
                    None => Streams::default(),
                };
                let bandwidth_estimate_bps = self.participants.get(peer).and_then(|p| p.subscriber).and_then(|l| {
                    match self.transports.get(&l).map(|t| &t.side) {
                        Some(Side::Subscriber { bwe, .. }) => Some(bwe.estimate_bps()),
                        _ => None,
                    }
                });
                PeerStats {
                    peer: peer.clone(),
                    publish: publish.remove(peer).unwrap_or_default(),
                    subscribe,
                    bandwidth_estimate_bps,
                }
            })
            .collect()
    }
}
