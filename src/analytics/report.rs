//! The SPEC 8 shapes, and how a set of per-participant stream reports becomes
//! scores, a sample and a summary. Pure: the media plane fills
//! [`StreamReport`]s every 5 s, signaling keeps the history and serves it.

use super::score::{self, Rating};
use serde::{Deserialize, Serialize};

/// SPEC 8 `Stream`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamReport {
    pub packets: u64,
    pub bytes: u64,
    pub packets_lost: i64,
    /// Fraction 0–1: cumulative for a summary.
    pub packet_loss: f64,
    pub jitter_ms: f64,
    /// From RTCP SR/RR (LSR/DLSR) where the receiver reports on it, else
    /// from TWCC feedback. A publish stream has the round trip of the same
    /// participant's subscriber leg (the SFU sends no SR on publisher legs).
    /// `null` until something was measured: SPEC 8 lists it on every
    /// Stream, so the key is always there.
    #[serde(default)]
    pub rtt_ms: Option<f64>,
    /// The round trip from transport-wide congestion-control feedback, where
    /// the subscriber negotiated it (subscribe streams only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub twcc_rtt_ms: Option<f64>,
    pub bitrate_kbps: f64,
    pub nack_count: u64,
    pub pli_count: u64,
    pub fir_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frame_rate: Option<f64>,
    /// Video: the size of the last keyframe, where the SFU can read it
    /// (VP8); the video score's bitrate term measures against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_height: Option<u32>,
    /// The last interval's loss (what the live score and samples use).
    #[serde(skip)]
    pub interval_loss: f64,
    /// Subscribed simulcast video: the layer forwarded now (`q`, `h`, `f`;
    /// absent when paused) and how often it changed (SPEC 5.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_switches: Option<u64>,
}

/// `{audio?, video?}` of one direction.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Directional {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio: Option<StreamReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub video: Option<StreamReport>,
}

/// `{score, rating}`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Quality {
    pub score: f64,
    pub rating: Rating,
}

impl Quality {
    pub fn of(score: f64) -> Self {
        Self { score: (score * 100.0).round() / 100.0, rating: score::rating(score) }
    }
}

/// A frame rate below this counts against the video score (cameras send
/// 24–30 fps; screen shares may legitimately send less and are not scored).
pub const EXPECTED_FPS: f64 = 24.0;

/// A participant's score from what they publish and receive.
///
/// - Audio: the E-model with Opus values, loss = the worse of their upstream
///   loss (measured at the SFU) and their downstream loss (their receiver
///   reports), jitter likewise, and the RTT of their subscriber leg (the SFU
///   sends no SR on publisher legs, so that RTT stands for both directions).
/// - Video: [`score::video_score`] from the same losses, the frame rate they
///   publish, and their bitrate against what their resolution needs
///   ([`score::min_video_kbps`]). The resolution is the size of the last
///   keyframe the SFU read (VP8 announces it) or the client's `frameWidth`
///   and `frameHeight`; where neither is known, that term is off.
/// - The participant's score is the worse of the two.
pub fn participant_quality(publish: &Directional, subscribe: &Directional) -> Option<Quality> {
    let rtt = subscribe.audio.as_ref().or(subscribe.video.as_ref()).and_then(|s| s.rtt_ms).unwrap_or(0.0);
    let worst = |a: Option<&StreamReport>, b: Option<&StreamReport>, f: fn(&StreamReport) -> f64| {
        a.into_iter().chain(b).map(f).fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
    };
    let audio = worst(publish.audio.as_ref(), subscribe.audio.as_ref(), |s| s.interval_loss).map(|loss| {
        let jitter = worst(publish.audio.as_ref(), subscribe.audio.as_ref(), |s| s.jitter_ms).unwrap_or(0.0);
        score::audio_mos(score::OPUS, loss, rtt, jitter)
    });
    let video = worst(publish.video.as_ref(), subscribe.video.as_ref(), |s| s.interval_loss).map(|loss| {
        let v = publish.video.as_ref();
        let fps = v.and_then(|v| v.frame_rate);
        let needed = v
            .filter(|v| v.bitrate_kbps > 0.0)
            .and_then(|v| Some(score::min_video_kbps(v.frame_width?, v.frame_height?)))
            .unwrap_or(0.0);
        let bitrate = v.map_or(0.0, |v| v.bitrate_kbps);
        score::video_score(loss, fps.unwrap_or(0.0), if fps.is_some() { EXPECTED_FPS } else { 0.0 }, bitrate, needed)
    });
    score::participant_score(audio, video).map(Quality::of)
}

/// One 5-second point of `samples`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    pub at: String,
    pub score: f64,
    pub bitrate_kbps: f64,
    pub packet_loss: f64,
    pub jitter_ms: f64,
    pub rtt_ms: f64,
}

/// SPEC 8 keeps at most this many samples (an hour at one per 5 s).
/// Who measured a call or room: the SFU, or the call's clients (`call-stats`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Sfu,
    Client,
}

/// One participant of [`Analytics`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParticipantReport {
    pub user_id: crate::ids::UserId,
    /// The room seat (`null` for a P2P call's party).
    pub peer_id: Option<crate::ids::PeerId>,
    /// RFC 3339.
    #[serde(default)]
    pub joined_at: Option<String>,
    #[serde(default)]
    pub left_at: Option<String>,
    pub quality: Option<Quality>,
    pub publish: Directional,
    pub subscribe: Directional,
    /// The server's estimate of this participant's downstream (SPEC 5.1),
    /// once it receives anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_estimate_kbps: Option<f64>,
}

/// SPEC 8's `{analytics}` of a room or a call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Analytics {
    #[serde(default)]
    pub call_id: Option<crate::ids::CallId>,
    pub room_id: crate::ids::RoomId,
    pub source: Source,
    /// A room's `live` or `ended`; a call's status.
    pub status: String,
    /// RFC 3339; rooms (SFU) only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// Seconds.
    pub duration: f64,
    /// From `call-initiate` to active; calls only.
    #[serde(default)]
    pub setup_time_ms: Option<f64>,
    /// The whole call's or room's (`null` until something was measured).
    pub quality: Option<Quality>,
    pub participants: Vec<ParticipantReport>,
    /// Every 5 s, at most [`MAX_SAMPLES`].
    pub samples: Vec<Sample>,
}

impl Analytics {
    /// As the store keeps it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// From the store (a summary another version wrote may lack a field:
    /// those are optional).
    pub fn from_json(v: serde_json::Value) -> Result<Self, serde_json::Error> {
        serde_json::from_value(v)
    }
}

pub const MAX_SAMPLES: usize = 720;

/// A sample across participants: total published bitrate, mean interval loss,
/// jitter and RTT over every stream that reported them.
pub fn sample(at: String, score: f64, peers: &[(&Directional, &Directional)]) -> Sample {
    let mut bitrate = 0.0;
    let (mut loss, mut jitter, mut rtt) = (Vec::new(), Vec::new(), Vec::new());
    for (publish, subscribe) in peers {
        for s in [&publish.audio, &publish.video].into_iter().flatten() {
            bitrate += s.bitrate_kbps;
        }
        for s in [&publish.audio, &publish.video, &subscribe.audio, &subscribe.video].into_iter().flatten() {
            loss.push(s.interval_loss);
            jitter.push(s.jitter_ms);
            if let Some(r) = s.rtt_ms {
                rtt.push(r);
            }
        }
    }
    let mean = |v: &[f64]| if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
    let r2 = |x: f64| (x * 100.0).round() / 100.0;
    Sample {
        at,
        score: r2(score),
        bitrate_kbps: r2(bitrate),
        packet_loss: (mean(&loss) * 10_000.0).round() / 10_000.0,
        jitter_ms: r2(mean(&jitter)),
        rtt_ms: r2(mean(&rtt)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(loss: f64, jitter: f64, rtt: Option<f64>, fps: Option<f64>) -> StreamReport {
        StreamReport {
            interval_loss: loss,
            packet_loss: loss,
            jitter_ms: jitter,
            rtt_ms: rtt,
            frame_rate: fps,
            bitrate_kbps: 100.0,
            ..Default::default()
        }
    }

    #[test]
    fn clean_streams_score_excellent_and_loss_lowers_it() {
        let publish =
            Directional { audio: Some(stream(0.0, 2.0, None, None)), video: Some(stream(0.0, 3.0, None, Some(30.0))) };
        let subscribe = Directional { audio: Some(stream(0.0, 2.0, Some(1.0), None)), video: None };
        let clean = participant_quality(&publish, &subscribe).unwrap();
        assert_eq!(clean.rating, Rating::Excellent, "{clean:?}");

        let lossy = Directional {
            audio: Some(stream(0.10, 2.0, None, None)),
            video: Some(stream(0.10, 3.0, None, Some(30.0))),
        };
        let q = participant_quality(&lossy, &subscribe).unwrap();
        assert!(q.score < clean.score - 1.0, "{q:?} vs {clean:?}");
        assert!(q.score <= 3.2, "10% loss is poor or worse: {q:?}");
    }

    #[test]
    fn nothing_to_score_is_none_and_samples_average() {
        assert_eq!(participant_quality(&Directional::default(), &Directional::default()), None);
        let a = Directional { audio: Some(stream(0.02, 4.0, Some(10.0), None)), video: None };
        let b = Directional { audio: Some(stream(0.0, 2.0, Some(30.0), None)), video: None };
        let s = sample("t".into(), 4.123, &[(&a, &b)]);
        assert_eq!((s.score, s.bitrate_kbps, s.packet_loss, s.jitter_ms, s.rtt_ms), (4.12, 100.0, 0.01, 3.0, 20.0));
    }
}

/// A P2P party's `call-stats` (the W3C `getStats()` dictionaries, SPEC 12) as
/// publish and subscribe streams: `outbound-rtp` with its `remote-inbound-rtp`
/// (the other side's view: loss, jitter, RTT) is what the party publishes,
/// `inbound-rtp` what it receives, and the nominated `candidate-pair` gives an
/// RTT when no remote report has one. Bitrates come from the byte counters
/// of the `previous` report of the same stream (by `id`, else by type and
/// kind) and the two `timestamp`s. Unknown types and fields are ignored.
pub fn client_streams(stats: &[serde_json::Value], previous: &[serde_json::Value]) -> (Directional, Directional) {
    use serde_json::Value;
    let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64);
    let kind = |v: &Value| v.get("kind").or_else(|| v.get("mediaType")).and_then(Value::as_str).map(str::to_owned);
    // Bits per millisecond are kbit/s.
    let rate = |s: &Value| -> f64 {
        let key = if s["type"] == "inbound-rtp" { "bytesReceived" } else { "bytesSent" };
        let same = |p: &&Value| match (s.get("id"), p.get("id")) {
            (Some(a), Some(b)) => a == b,
            _ => p["type"] == s["type"] && kind(p) == kind(s),
        };
        let Some(p) = previous.iter().find(same) else { return 0.0 };
        match (num(s, key), num(p, key), num(s, "timestamp"), num(p, "timestamp")) {
            (Some(b), Some(pb), Some(t), Some(pt)) if t > pt && b >= pb => {
                ((b - pb) * 8.0 / (t - pt) * 100.0).round() / 100.0
            }
            _ => 0.0,
        }
    };
    let pair_rtt = stats
        .iter()
        .filter(|s| s["type"] == "candidate-pair" && (s["nominated"] == true || s["state"] == "succeeded"))
        .find_map(|s| num(s, "currentRoundTripTime"))
        .map(|s| s * 1000.0);
    // What inbound-rtp and outbound-rtp report alike.
    let feedback = |s: &Value| StreamReport {
        rtt_ms: pair_rtt,
        nack_count: num(s, "nackCount").unwrap_or(0.0) as u64,
        pli_count: num(s, "pliCount").unwrap_or(0.0) as u64,
        fir_count: num(s, "firCount").unwrap_or(0.0) as u64,
        frame_rate: if kind(s).as_deref() == Some("video") { num(s, "framesPerSecond") } else { None },
        frame_width: num(s, "frameWidth").map(|x| x as u32),
        frame_height: num(s, "frameHeight").map(|x| x as u32),
        bitrate_kbps: rate(s),
        ..Default::default()
    };
    let (mut publish, mut subscribe) = (Directional::default(), Directional::default());
    for s in stats {
        let Some(k) = kind(s) else { continue };
        let video = k == "video";
        match s["type"].as_str() {
            Some("inbound-rtp") => {
                let received = num(s, "packetsReceived").unwrap_or(0.0);
                let lost = num(s, "packetsLost").unwrap_or(0.0);
                let r = StreamReport {
                    packets: received as u64,
                    bytes: num(s, "bytesReceived").unwrap_or(0.0) as u64,
                    packets_lost: lost as i64,
                    packet_loss: if received + lost > 0.0 { (lost / (received + lost)).max(0.0) } else { 0.0 },
                    jitter_ms: num(s, "jitter").unwrap_or(0.0) * 1000.0,
                    ..feedback(s)
                };
                let r = StreamReport { interval_loss: r.packet_loss, ..r };
                if video {
                    subscribe.video = Some(r)
                } else {
                    subscribe.audio = Some(r)
                }
            }
            Some("outbound-rtp") => {
                let r = StreamReport {
                    packets: num(s, "packetsSent").unwrap_or(0.0) as u64,
                    bytes: num(s, "bytesSent").unwrap_or(0.0) as u64,
                    ..feedback(s)
                };
                let target = if video { &mut publish.video } else { &mut publish.audio };
                let merged = target.take().map(|old| StreamReport {
                    packets: r.packets,
                    bytes: r.bytes,
                    bitrate_kbps: r.bitrate_kbps,
                    frame_rate: r.frame_rate,
                    frame_width: r.frame_width,
                    frame_height: r.frame_height,
                    nack_count: r.nack_count,
                    pli_count: r.pli_count,
                    fir_count: r.fir_count,
                    ..old
                });
                *target = Some(merged.unwrap_or(r));
            }
            Some("remote-inbound-rtp") => {
                let target = if video { &mut publish.video } else { &mut publish.audio };
                let t = target.get_or_insert_with(StreamReport::default);
                t.packets_lost = num(s, "packetsLost").unwrap_or(0.0) as i64;
                t.packet_loss = num(s, "fractionLost").unwrap_or(0.0).clamp(0.0, 1.0);
                t.interval_loss = t.packet_loss;
                t.jitter_ms = num(s, "jitter").unwrap_or(0.0) * 1000.0;
                t.rtt_ms = num(s, "roundTripTime").map(|x| x * 1000.0).or(pair_rtt);
            }
            _ => {}
        }
    }
    (publish, subscribe)
}

#[cfg(test)]
mod client_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn browser_stats_become_streams() {
        let stats = vec![
            json!({"type": "inbound-rtp", "kind": "audio", "packetsReceived": 950, "packetsLost": 50, "jitter": 0.004, "bytesReceived": 90000}),
            json!({"type": "outbound-rtp", "kind": "video", "packetsSent": 3000, "bytesSent": 2500000, "framesPerSecond": 30}),
            json!({"type": "remote-inbound-rtp", "kind": "video", "packetsLost": 3, "fractionLost": 0.01, "jitter": 0.002, "roundTripTime": 0.04}),
            json!({"type": "candidate-pair", "nominated": true, "currentRoundTripTime": 0.05}),
            json!({"type": "codec", "mimeType": "video/VP8"}),
        ];
        let (publish, subscribe) = client_streams(&stats, &[]);
        let a = subscribe.audio.unwrap();
        assert_eq!((a.packets, a.packets_lost), (950, 50));
        assert!((a.packet_loss - 0.05).abs() < 1e-9 && (a.jitter_ms - 4.0).abs() < 1e-9 && a.rtt_ms == Some(50.0));
        let v = publish.video.unwrap();
        assert_eq!((v.packets, v.frame_rate, v.rtt_ms), (3000, Some(30.0), Some(40.0)));
        assert!((v.packet_loss - 0.01).abs() < 1e-9);
        assert!(client_streams(&[json!({"type": "inbound-rtp"}), json!(7)], &[]).1.audio.is_none());
    }

    /// Bitrates from two reports a second apart; the frame size puts the
    /// bitrate term into the video score.
    #[test]
    fn bitrates_come_from_consecutive_reports_and_starved_video_scores_lower() {
        let at = |t: f64, sent: f64, w: u32| {
            vec![
                json!({"type": "outbound-rtp", "id": "OT01V", "kind": "video", "timestamp": t, "bytesSent": sent,
                       "framesPerSecond": 30, "frameWidth": w, "frameHeight": w * 9 / 16}),
                json!({"type": "inbound-rtp", "kind": "audio", "timestamp": t, "bytesReceived": sent / 10.0,
                       "packetsReceived": 100, "packetsLost": 0}),
            ]
        };
        let (publish, subscribe) = client_streams(&at(2000.0, 250_000.0, 1280), &at(1000.0, 100_000.0, 1280));
        let v = publish.video.as_ref().unwrap();
        assert_eq!((v.bitrate_kbps, v.frame_width, v.frame_height), (1200.0, Some(1280), Some(720)));
        assert_eq!(subscribe.audio.as_ref().unwrap().bitrate_kbps, 120.0);
        let good = participant_quality(&publish, &Directional::default()).unwrap();
        // 150 kbit/s for 720p: starved.
        let (starved, _) = client_streams(&at(2000.0, 118_750.0, 1280), &at(1000.0, 100_000.0, 1280));
        let bad = participant_quality(&starved, &Directional::default()).unwrap();
        assert!(good.score >= 4.4 && bad.score < good.score - 0.5, "{good:?} vs {bad:?}");
        // The same bitrate is plenty at 320×180.
        let (small, _) = client_streams(&at(2000.0, 118_750.0, 320), &at(1000.0, 100_000.0, 320));
        assert!(participant_quality(&small, &Directional::default()).unwrap().score >= 4.4);
        // No previous report, or a counter that went back: no bitrate, no term.
        let (first, _) = client_streams(&at(2000.0, 250_000.0, 1280), &[]);
        assert_eq!(first.video.as_ref().unwrap().bitrate_kbps, 0.0);
        assert!(participant_quality(&first, &Directional::default()).unwrap().score >= 4.4);
        let (reset, _) = client_streams(&at(2000.0, 1_000.0, 1280), &at(1000.0, 100_000.0, 1280));
        assert_eq!(reset.video.as_ref().unwrap().bitrate_kbps, 0.0);
    }
}
