//! Quality scores on the 1–5 MOS scale and their ratings (SPEC 8, 12).
//!
//! Audio: the ITU-T G.107 E-model, R = 93.2 − Id − Ie_eff, with
//! Ie_eff = Ie + (95 − Ie)·Ppl/(Ppl + Bpl) (Ppl: packet loss in percent) and the
//! delay impairment Id = 0.024·d + 0.11·(d − 177.3)·H(d − 177.3), where the
//! one-way delay d = rtt/2 + 2·jitter + 20 ms (SPEC 12: half the round trip,
//! twice the jitter for the receiver's jitter buffer, 20 ms of packetisation).
//! MOS = 1 + 0.035R + 7·10⁻⁶·R(R − 60)(100 − R), 1 for R ≤ 0, 4.5 for R ≥ 100.

/// Equipment impairment values of a codec (ITU-T G.113 Appendix I).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Codec {
    /// Ie: impairment with no loss.
    pub ie: f64,
    /// Bpl: robustness to random packet loss.
    pub bpl: f64,
}

/// Opus (SPEC 12: Ie = 0, Bpl = 20).
pub const OPUS: Codec = Codec { ie: 0.0, bpl: 20.0 };
/// G.711 with packet loss concealment (G.113 Appendix I: Ie = 0, Bpl = 25.1).
pub const G711_PLC: Codec = Codec { ie: 0.0, bpl: 25.1 };
/// G.711 without concealment (G.113 Appendix I: Ie = 0, Bpl = 4.3).
pub const G711: Codec = Codec { ie: 0.0, bpl: 4.3 };

/// The delay impairment Id for a round trip and jitter in milliseconds.
pub fn delay_impairment(rtt_ms: f64, jitter_ms: f64) -> f64 {
    let d = rtt_ms.max(0.0) / 2.0 + 2.0 * jitter_ms.max(0.0) + 20.0;
    0.024 * d + if d > 177.3 { 0.11 * (d - 177.3) } else { 0.0 }
}

/// The E-model rating factor R for `loss` (fraction 0–1), RTT and jitter (ms).
pub fn r_factor(codec: Codec, loss: f64, rtt_ms: f64, jitter_ms: f64) -> f64 {
    let ppl = loss.clamp(0.0, 1.0) * 100.0;
    let ie_eff = codec.ie + (95.0 - codec.ie) * ppl / (ppl + codec.bpl);
    93.2 - delay_impairment(rtt_ms, jitter_ms) - ie_eff
}

/// MOS from R (G.107 Annex B), clamped to [1, 5].
pub fn mos_from_r(r: f64) -> f64 {
    let mos = if r <= 0.0 {
        1.0
    } else if r >= 100.0 {
        4.5
    } else {
        1.0 + 0.035 * r + 7e-6 * r * (r - 60.0) * (100.0 - r)
    };
    mos.clamp(1.0, 5.0)
}

/// Audio MOS for a stream.
pub fn audio_mos(codec: Codec, loss: f64, rtt_ms: f64, jitter_ms: f64) -> f64 {
    mos_from_r(r_factor(codec, loss, rtt_ms, jitter_ms))
}

/// A video score on the MOS scale, confer's own: start from 4.5 and take away
/// for loss (each percent costs 0.25: video with 4 % loss stutters visibly),
/// for a frame rate below the one expected (up to 1.5 at zero frames), and for
/// a bitrate below what the resolution needs (up to 1.0 at zero). Clamped to
/// [1, 5]. Expected values of 0 disable their term.
pub fn video_score(loss: f64, fps: f64, expected_fps: f64, bitrate_kbps: f64, expected_kbps: f64) -> f64 {
    let mut s = 4.5 - 25.0 * loss.clamp(0.0, 1.0);
    if expected_fps > 0.0 {
        s -= 1.5 * (1.0 - (fps / expected_fps).clamp(0.0, 1.0));
    }
    if expected_kbps > 0.0 {
        s -= 1.0 * (1.0 - (bitrate_kbps / expected_kbps).clamp(0.0, 1.0));
    }
    s.clamp(1.0, 5.0)
}

/// The bitrate (kbit/s) video of `width`×`height` at 30 fps needs to look good
/// (roughly WebRTC's own targets: 360p ≈ 500, 720p ≈ 1500, 1080p ≈ 2500).
pub fn expected_video_kbps(width: u32, height: u32) -> f64 {
    let pixels = f64::from(width) * f64::from(height);
    (pixels / (1280.0 * 720.0) * 1500.0).clamp(150.0, 4000.0)
}

/// Below this the video score's bitrate term starts to count: half of
/// [`expected_video_kbps`]. Encoders legitimately send well under their
/// target for still scenes; half of it is where blocky video begins.
pub fn min_video_kbps(width: u32, height: u32) -> f64 {
    expected_video_kbps(width, height) / 2.0
}

/// SPEC 8's rating names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Rating {
    Excellent,
    Good,
    Fair,
    Poor,
    Bad,
}

pub fn rating(mos: f64) -> Rating {
    match mos {
        m if m >= 4.3 => Rating::Excellent,
        m if m >= 4.0 => Rating::Good,
        m if m >= 3.6 => Rating::Fair,
        m if m >= 3.1 => Rating::Poor,
        _ => Rating::Bad,
    }
}

/// A participant's score: the worse of its audio and video, since either one
/// failing ruins the call for the others.
pub fn participant_score(audio: Option<f64>, video: Option<f64>) -> Option<f64> {
    match (audio, video) {
        (Some(a), Some(v)) => Some(a.min(v)),
        (a, v) => a.or(v),
    }
}

/// A call's or room's score: the mean of its participants' (a single bad
/// participant shows in their own score, not as the whole room's).
pub fn call_score(participants: &[f64]) -> Option<f64> {
    (!participants.is_empty()).then(|| participants.iter().sum::<f64>() / participants.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_loopback_is_excellent() {
        let mos = audio_mos(OPUS, 0.0, 1.0, 1.0);
        assert!(mos >= 4.3, "{mos}");
        assert_eq!(rating(mos), Rating::Excellent);
    }

    #[test]
    fn ten_percent_opus_loss_is_about_3_2() {
        let mos = audio_mos(OPUS, 0.10, 1.0, 1.0);
        assert!((mos - 3.2).abs() < 0.1, "{mos}");
        assert_eq!(rating(mos), Rating::Poor);
    }

    #[test]
    fn mos_at_known_r_values() {
        assert_eq!(mos_from_r(-5.0), 1.0);
        assert_eq!(mos_from_r(100.0), 4.5);
        // G.107 Annex B: R = 50 → 2.58, R = 70 → 3.60, R = 80 → 4.02, R = 93.2 → 4.41.
        for (r, want) in [(50.0, 2.58), (70.0, 3.60), (80.0, 4.02), (93.2, 4.41)] {
            assert!((mos_from_r(r) - want).abs() < 0.01, "R={r}: {}", mos_from_r(r));
        }
    }

    #[test]
    fn delay_term_kicks_in_past_177_ms() {
        assert!((delay_impairment(0.0, 0.0) - 0.48).abs() < 1e-9);
        let below = delay_impairment(2.0 * 157.0, 0.0); // d = 177
        let above = delay_impairment(2.0 * 257.3, 0.0); // d = 277.3
        assert!((below - 0.024 * 177.0).abs() < 1e-9);
        assert!((above - (0.024 * 277.3 + 11.0)).abs() < 1e-9);
    }

    #[test]
    fn video_and_aggregates() {
        assert_eq!(video_score(0.0, 30.0, 30.0, 1500.0, 1500.0), 4.5);
        assert!(video_score(0.04, 30.0, 30.0, 1500.0, 1500.0) < 3.6);
        assert!(video_score(0.0, 10.0, 30.0, 1500.0, 1500.0) < 3.6);
        assert_eq!(video_score(1.0, 0.0, 30.0, 0.0, 1500.0), 1.0);
        assert_eq!(participant_score(Some(4.4), Some(3.0)), Some(3.0));
        assert_eq!(participant_score(None, Some(3.0)), Some(3.0));
        assert_eq!(call_score(&[4.0, 3.0]), Some(3.5));
        assert_eq!(call_score(&[]), None);
        assert_eq!(rating(4.0), Rating::Good);
        assert_eq!(rating(3.0), Rating::Bad);
        assert!((expected_video_kbps(1280, 720) - 1500.0).abs() < 1e-9);
    }
}
