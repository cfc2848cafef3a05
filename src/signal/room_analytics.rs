//! Call-quality analytics of rooms and `mode: "sfu"` calls (SPEC 8): the
//! media plane's 5-second stream reports become participant and room scores,
//! a bounded list of samples, `connection-quality` events when a rating
//! changes, the quality histograms, and a summary that is persisted when the
//! last participant leaves (history keeps it after a restart).

use super::messages::{QualityUpdate, ServerEvent};
use super::rooms::{RoomService, RoomState};
use crate::analytics::report::{
    self, Analytics, Directional, ParticipantReport, Quality, Sample, Source, StreamReport, MAX_SAMPLES,
};
use crate::analytics::score::{self, Rating};
use crate::clock::{self, Timestamp};
use crate::ids::{CallId, PeerId, RoomId, UserId};
use crate::media::{PeerStats, StreamSample, Streams};
use std::collections::{HashMap, VecDeque};

/// One participant's part of the summary.
#[derive(Clone, Debug)]
pub struct ParticipantAnalytics {
    pub user_id: UserId,
    pub peer_id: PeerId,
    pub joined_at: Timestamp,
    pub left_at: Option<Timestamp>,
    pub quality: Option<Quality>,
    pub publish: Directional,
    pub subscribe: Directional,
    /// The server's estimate of this participant's downstream (SPEC 5.1),
    /// once it receives anything.
    pub bandwidth_estimate_kbps: Option<f64>,
}

fn rfc3339(t: Timestamp) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

impl ParticipantAnalytics {
    fn report(&self) -> ParticipantReport {
        ParticipantReport {
            user_id: self.user_id.clone(),
            peer_id: Some(self.peer_id.clone()),
            joined_at: Some(rfc3339(self.joined_at)),
            left_at: self.left_at.map(rfc3339),
            quality: self.quality,
            publish: self.publish.clone(),
            subscribe: self.subscribe.clone(),
            bandwidth_estimate_kbps: self.bandwidth_estimate_kbps,
        }
    }
}

/// A room's analytics while it has participants.
#[derive(Debug)]
pub struct RoomAnalytics {
    started_at: Timestamp,
    pub call: Option<CallId>,
    participants: Vec<ParticipantAnalytics>,
    samples: VecDeque<Sample>,
    quality: Option<Quality>,
    ratings: HashMap<PeerId, Rating>,
}

impl RoomAnalytics {
    pub fn new(call: Option<CallId>) -> Self {
        Self {
            started_at: clock::now(),
            call,
            participants: Vec::new(),
            samples: VecDeque::new(),
            quality: None,
            ratings: HashMap::new(),
        }
    }

    pub fn joined(&mut self, user: &UserId, peer: &PeerId) {
        if !self.participants.iter().any(|p| &p.peer_id == peer) {
            self.participants.push(ParticipantAnalytics {
                user_id: user.clone(),
                peer_id: peer.clone(),
                joined_at: clock::now(),
                left_at: None,
                quality: None,
                publish: Directional::default(),
                subscribe: Directional::default(),
                bandwidth_estimate_kbps: None,
            });
        }
    }

    pub fn left(&mut self, peer: &PeerId) {
        if let Some(p) = self.participants.iter_mut().find(|p| &p.peer_id == peer && p.left_at.is_none()) {
            p.left_at = Some(clock::now());
        }
    }

    /// Fold in one 5-second report; returns the ratings that changed.
    pub fn update(&mut self, peers: Vec<PeerStats>, metrics: &crate::metrics::QualityMetrics) -> Vec<QualityUpdate> {
        let mut changed = Vec::new();
        for r in peers {
            let (publish, subscribe) = (directional(r.publish), directional(r.subscribe));
            let Some(p) = self.participants.iter_mut().find(|p| p.peer_id == r.peer && p.left_at.is_none()) else {
                continue;
            };
            for s in [&publish.audio, &publish.video, &subscribe.audio, &subscribe.video].into_iter().flatten() {
                metrics.stream_packet_loss.observe(s.interval_loss);
                metrics.stream_jitter_seconds.observe(s.jitter_ms / 1000.0);
                if let Some(rtt) = s.rtt_ms {
                    metrics.stream_rtt_seconds.observe(rtt / 1000.0);
                }
            }
            let q = report::participant_quality(&measured(&publish), &measured(&subscribe));
            p.publish = publish;
            p.subscribe = subscribe;
            p.bandwidth_estimate_kbps = r.bandwidth_estimate_bps.map(|b| (b as f64 / 10.0).round() / 100.0);
            if let Some(b) = r.bandwidth_estimate_bps {
                metrics.bandwidth_estimate_bytes_per_second.observe(b as f64 / 8.0);
            }
            if let Some(q) = q {
                p.quality = Some(q);
                if self.ratings.insert(p.peer_id.clone(), q.rating) != Some(q.rating) {
                    changed.push(QualityUpdate { peer_id: p.peer_id.clone(), score: q.score, rating: q.rating });
                }
            }
        }
        let live: Vec<&ParticipantAnalytics> = self.participants.iter().filter(|p| p.left_at.is_none()).collect();
        let scores: Vec<f64> = live.iter().filter_map(|p| p.quality.map(|q| q.score)).collect();
        if let Some(score) = score::call_score(&scores) {
            self.quality = Some(Quality::of(score));
            metrics.call_quality_mos.observe(score);
            let dirs: Vec<(&Directional, &Directional)> = live.iter().map(|p| (&p.publish, &p.subscribe)).collect();
            let at = clock::now().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
            self.samples.push_back(report::sample(at, score, &dirs));
            while self.samples.len() > MAX_SAMPLES {
                self.samples.pop_front();
            }
        }
        changed
    }

    /// The SPEC 8 `{analytics}` object.
    pub fn summary(&self, room: &RoomId, live: bool) -> Analytics {
        Analytics {
            call_id: self.call.clone(),
            room_id: room.clone(),
            source: Source::Sfu,
            status: if live { "live" } else { "ended" }.into(),
            started_at: Some(rfc3339(self.started_at)),
            duration: clock::seconds_between(self.started_at, clock::now()),
            setup_time_ms: None,
            quality: self.quality,
            participants: self.participants.iter().map(ParticipantAnalytics::report).collect(),
            samples: self.samples.iter().cloned().collect(),
        }
    }
}

/// The streams that carried something. A track is reported from the moment
/// it is published, before its first packet (ICE may still be connecting):
/// with nothing measured, its frame rate of 0 would score the participant
/// "bad". Until one of their streams has packets they have no score, and
/// the page says "unknown".
fn measured(d: &Directional) -> Directional {
    let carried = |s: &Option<StreamReport>| s.clone().filter(|s| s.packets > 0);
    Directional { audio: carried(&d.audio), video: carried(&d.video) }
}

/// The media plane's measurements as the API shows them (SPEC 8).
fn directional(s: Streams) -> Directional {
    Directional { audio: s.audio.map(stream_report), video: s.video.map(stream_report) }
}

/// Readable numbers in the API: loss to 4 decimals, the rest to 2.
fn stream_report(s: StreamSample) -> StreamReport {
    let r = |x: f64, d: f64| (x * d).round() / d;
    StreamReport {
        packets: s.packets,
        bytes: s.bytes,
        packets_lost: s.packets_lost,
        packet_loss: r(s.packet_loss, 1e4),
        jitter_ms: r(s.jitter_ms, 100.0),
        rtt_ms: s.rtt_ms.map(|x| r(x, 100.0)),
        twcc_rtt_ms: s.twcc_rtt_ms.map(|x| r(x, 100.0)),
        bitrate_kbps: r(s.bitrate_kbps, 100.0),
        nack_count: s.nack_count,
        pli_count: s.pli_count,
        fir_count: s.fir_count,
        frame_rate: s.frame_rate.map(|x| r(x, 100.0)),
        frame_width: s.frame_size.map(|(w, _)| u32::from(w)),
        frame_height: s.frame_size.map(|(_, h)| u32::from(h)),
        interval_loss: r(s.interval_loss, 1e4),
        layer: s.layer.map(|l| l.rid().to_owned()),
        layer_switches: s.layer_switches,
    }
}

/// The store key of a room's or call's summary.
pub fn key_room(id: &RoomId) -> String {
    format!("room:{id}")
}

pub fn key_call(id: &CallId) -> String {
    format!("call:{id}")
}

impl RoomService {
    /// Apply a media report; tell the room about changed ratings.
    pub(super) fn on_stats(&self, s: &mut RoomState, peers: Vec<PeerStats>) {
        let Some(a) = s.analytics.as_mut() else { return };
        let updates = a.update(peers, &self.metrics.quality);
        if !updates.is_empty() {
            let ev = ServerEvent::ConnectionQuality { room_id: s.room.id.clone(), updates };
            self.tell_room(s, None, &ev);
        }
    }

    /// The summary to persist when a room's last participant has left
    /// (written by the caller once the rooms lock is released).
    pub(super) fn finish_analytics(&self, s: &mut RoomState) -> AnalyticsWrites {
        if s.has_joined() {
            return AnalyticsWrites::default();
        }
        let Some(a) = s.analytics.take() else { return AnalyticsWrites::default() };
        let summary = a.summary(&s.room.id, false);
        let mut keys = vec![key_room(&s.room.id)];
        if let Some(call) = &a.call {
            keys.push(key_call(call));
        }
        AnalyticsWrites(keys.into_iter().map(|k| (k, summary.clone())).collect())
    }

    /// `GET /rooms/:id/analytics`: live while the room has participants, then
    /// the persisted summary.
    pub async fn analytics(&self, actor: &super::Actor, id: &RoomId) -> Result<Analytics, super::SignalError> {
        self.load(id).await?;
        let exists = {
            let mut rooms = self.rooms.lock();
            match rooms.get_mut(id) {
                Some(s) => {
                    super::rooms::check_access(actor, s)?;
                    if let Some(a) = &s.analytics {
                        return Ok(a.summary(id, true));
                    }
                    true
                }
                None => false,
            }
        };
        let v = self.stored_analytics(&key_room(id)).await?;
        // A deleted room's history is for its participants and admins only.
        let took_part = v.participants.iter().any(|p| &p.user_id == actor.user());
        if !exists && !took_part && !actor.is_admin() {
            return Err(super::SignalError::NotFound("no analytics recorded yet".into()));
        }
        Ok(v)
    }

    /// The live analytics of a call's room (`mode: "sfu"`), if it is live.
    pub fn call_analytics(&self, room: &RoomId) -> Option<Analytics> {
        let rooms = self.rooms.lock();
        rooms.get(room).and_then(|s| s.analytics.as_ref().map(|a| a.summary(room, true)))
    }

    pub async fn stored_analytics(&self, key: &str) -> Result<Analytics, super::SignalError> {
        let v = self
            .store
            .get_analytics(key)
            .await?
            .ok_or_else(|| super::SignalError::NotFound("no analytics recorded yet".into()))?;
        Analytics::from_json(v).map_err(|e| {
            super::SignalError::Store(crate::store::StoreError::Corrupt { key: key.into(), reason: e.to_string() })
        })
    }
}

/// Summaries taken under the rooms lock, to be written to the store after it
/// is released (no lock is held across a store write).
#[must_use = "write them once the rooms lock is released"]
#[derive(Default)]
pub(super) struct AnalyticsWrites(Vec<(String, Analytics)>);

impl AnalyticsWrites {
    pub(super) fn add(&mut self, more: AnalyticsWrites) {
        self.0.extend(more.0);
    }

    /// Write each summary; a failure is logged (nobody waits on a summary).
    pub(super) async fn write(self, store: &dyn crate::store::Store) {
        for (k, summary) in self.0 {
            if let Err(e) = store.put_analytics(&k, &summary.to_json()).await {
                tracing::error!(error = %e, key = %k, "cannot persist analytics");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stream_has_rtt_ms_null_until_a_round_trip_is_measured() {
        let metrics = crate::metrics::Metrics::new().quality;
        let mut a = RoomAnalytics::new(None);
        let (alice, bob) = (PeerId::from("pa"), PeerId::from("pb"));
        a.joined(&UserId::from("alice"), &alice);
        a.joined(&UserId::from("bob"), &bob);
        let sample = |rtt| StreamSample { packets: 100, bytes: 10_000, rtt_ms: rtt, ..StreamSample::default() };
        // alice publishes and receives nothing: no round trip for her; bob's is measured.
        let report = vec![
            PeerStats {
                peer: alice.clone(),
                publish: Streams { audio: Some(sample(None)), video: Some(sample(None)) },
                subscribe: Streams::default(),
                bandwidth_estimate_bps: None,
            },
            PeerStats {
                peer: bob.clone(),
                publish: Streams::default(),
                subscribe: Streams { audio: Some(sample(Some(12.345))), video: None },
                bandwidth_estimate_bps: None,
            },
        ];
        a.update(report, &metrics);
        let v = a.summary(&RoomId::from("r"), true).to_json();
        let ps = v["participants"].as_array().unwrap();
        for kind in ["audio", "video"] {
            let s = ps[0]["publish"][kind].as_object().unwrap();
            assert_eq!(s.get("rttMs"), Some(&serde_json::Value::Null), "{kind}: {v}");
        }
        assert_eq!(ps[1]["subscribe"]["audio"]["rttMs"], 12.35, "{v}");
    }

    /// A published camera whose first packet has not arrived yet (frame rate
    /// 0 over the interval) gives no score and no connection-quality, instead
    /// of "bad"; once packets flow at 30 fps the first rating is excellent.
    #[test]
    fn no_score_before_a_stream_carried_anything() {
        let metrics = crate::metrics::Metrics::new().quality;
        let mut a = RoomAnalytics::new(None);
        let alice = PeerId::from("pa");
        a.joined(&UserId::from("alice"), &alice);
        let report = |packets: u64, fps: f64| {
            let video =
                StreamSample { packets, bytes: packets * 1000, frame_rate: Some(fps), ..StreamSample::default() };
            vec![PeerStats {
                peer: alice.clone(),
                publish: Streams { audio: None, video: Some(video) },
                subscribe: Streams::default(),
                bandwidth_estimate_bps: None,
            }]
        };
        assert_eq!(a.update(report(0, 0.0), &metrics), vec![], "nothing measured, nothing said");
        let v = a.summary(&RoomId::from("r"), true).to_json();
        assert_eq!(v["quality"], serde_json::Value::Null, "{v}");
        assert_eq!(v["participants"][0]["quality"], serde_json::Value::Null, "{v}");
        assert_eq!(v["samples"].as_array().map(Vec::len), Some(0), "{v}");
        assert!(v["participants"][0]["publish"]["video"].is_object(), "the stream is still listed: {v}");

        let updates = a.update(report(750, 30.0), &metrics);
        assert_eq!(updates.len(), 1, "{updates:?}");
        assert_eq!((&updates[0].peer_id, updates[0].rating), (&alice, Rating::Excellent), "{updates:?}");
    }
}
