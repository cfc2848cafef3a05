//! Simulcast layer allocation (SPEC 5.1): which layer of each video track one
//! subscriber is forwarded within its downstream estimate, and why a forwarded
//! layer changed ([`Allocator`]); which layers a publisher is asked to keep
//! sending, dynacast ([`LayerDemand`]).
//!
//! Pure: inputs and a `now: Instant` in, decisions out; no clock reads, no I/O.
//! Hand-written rather than taken from a crate because allocation is the
//! product: its priorities, margin and hysteresis are ours to tune and test.

use std::time::{Duration, Instant};

/// At most one switch up per track within this, unless its ceiling changes.
pub const UP_HOLD: Duration = Duration::from_secs(5);
/// A switch up for bandwidth undone for bandwidth within this failed: the hold
/// before the track's next one grows fourfold, up to [`UP_HOLD_MAX`] (5, 20,
/// 40 s), until a switch up lasts this long or the ceiling changes. With REMB
/// there are no probes: trying a layer is sending it, and a try the link
/// cannot take costs its loss each time the hold is over (a 600 kbit/s
/// subscriber tried f every 5 s; with a hold that doubled, it still tried
/// twice in a 30 s cap and lost 5.5 % of its video).
pub const UP_FAILED: Duration = Duration::from_secs(3);
/// The longest hold failed switches up make.
pub const UP_HOLD_MAX: Duration = Duration::from_secs(40);
/// A layer stays advertised to its publisher this long after its last receiver.
pub const DEMAND_HOLD: Duration = Duration::from_secs(5);
/// A switch up is taken only if the estimate exceeds everything the resulting
/// allocation needs (audio included) by this many percent; holding a layer
/// needs no headroom, so an estimate within the margin changes nothing.
pub const HEADROOM_PCT: u64 = 10;

/// A simulcast layer. A single-layer track has only `Q`: there it stands for
/// "the one layer", whatever its resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Layer {
    /// ¼ resolution, rid `q`.
    Q = 0,
    /// ½ resolution, rid `h`.
    H = 1,
    /// Full resolution, rid `f`.
    F = 2,
}

impl Layer {
    pub const ALL: [Layer; 3] = [Layer::Q, Layer::H, Layer::F];

    pub fn rid(self) -> &'static str {
        ["q", "h", "f"][self as usize]
    }

    pub fn from_rid(rid: &str) -> Option<Layer> {
        Layer::ALL.into_iter().find(|l| l.rid() == rid)
    }

    /// The ceiling a `track-subscribe {quality}` asks for: low = q, medium = h, high = f.
    pub fn from_quality(quality: &str) -> Option<Layer> {
        match quality {
            "low" => Some(Layer::Q),
            "medium" => Some(Layer::H),
            "high" => Some(Layer::F),
            _ => None,
        }
    }

    fn up(self) -> Option<Layer> {
        Layer::ALL.get(self as usize + 1).copied()
    }
}

impl Reason {
    /// The wire name (`subscription-update`'s `reason`).
    pub fn name(self) -> &'static str {
        match self {
            Reason::Requested => "requested",
            Reason::Publisher => "publisher",
            Reason::Bandwidth => "bandwidth",
        }
    }
}

/// Why a track's forwarded layer changed. When several apply in one call the
/// first of these wins: `Requested`, then `Publisher`, then `Bandwidth`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The track's ceiling changed in this call (subscription included).
    Requested,
    /// The old layer stopped arriving, or the new one was not arriving when
    /// the track last settled (an up-switch it waited for counts).
    Publisher,
    /// Anything else: the estimate, or other tracks' needs (a new speaker).
    Bandwidth,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Audio,
    Camera,
    Screen,
}

/// One of the subscriber's tracks as it stands now. Ids must be unique.
#[derive(Clone, Copy, Debug)]
pub struct TrackInput {
    /// The caller's key.
    pub id: u32,
    pub kind: Kind,
    /// The subscriber's ceiling; `None` is unsubscribed: not allocated, and not
    /// counted in [`Allocator::desired_bps`]. Any `Some` subscribes audio.
    pub ceiling: Option<Layer>,
    /// Bitrate (bit/s) of each layer the publisher sends now, `None` when it is
    /// not arriving. Audio and single-layer video use `[Some(bps), None, None]`.
    pub available: [Option<u64>; 3],
    /// 0 = loudest; `None` after every ranked track.
    pub speaker_rank: Option<u32>,
}

/// A change of a video track's forwarded layer; `layer: None` is paused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    pub track: u32,
    pub layer: Option<Layer>,
    pub reason: Reason,
}

#[derive(Debug)]
struct Track {
    id: u32,
    kind: Kind,
    ceiling: Option<Layer>,
    available: [Option<u64>; 3],
    /// Last bitrate seen of each layer, 0 if never: what a layer that is not
    /// arriving would cost.
    last_bps: [u64; 3],
    rank: Option<u32>,
    current: Option<Layer>,
    last_up: Option<Instant>,
    /// The last switch up was for bandwidth and has not lasted [`UP_FAILED`] yet.
    trying: bool,
    /// Switches up that failed in a row ([`UP_FAILED`]).
    failed_ups: u32,
    /// A layer was ever forwarded.
    started: bool,
    /// Moved down for bandwidth and not back at its ceiling since: climbs
    /// one layer at a time ([`Track::skips_a_step`]).
    recovering: bool,
    /// Which layers were arriving when the current layer was settled on.
    settled: [bool; 3],
    // Scratch of one `allocate` call.
    seen: bool,
    ceiling_changed: bool,
    alloc: Option<Layer>,
    done: bool,
    held: bool,
}

impl Track {
    fn new(t: &TrackInput) -> Track {
        Track {
            id: t.id,
            kind: t.kind,
            ceiling: None,
            available: t.available,
            last_bps: [0; 3],
            rank: None,
            current: None,
            last_up: None,
            trying: false,
            failed_ups: 0,
            started: false,
            recovering: false,
            settled: t.available.map(|b| b.is_some()),
            seen: false,
            ceiling_changed: false,
            alloc: None,
            done: false,
            held: false,
        }
    }

    fn sync(&mut self, t: &TrackInput) {
        self.seen = true;
        self.ceiling_changed = self.ceiling != t.ceiling;
        if self.ceiling_changed {
            self.last_up = None;
            self.recovering = false;
            self.failed_ups = 0;
        }
        self.kind = t.kind;
        self.ceiling = t.ceiling;
        self.available = t.available;
        self.rank = t.speaker_rank;
        for (last, now) in self.last_bps.iter_mut().zip(t.available) {
            *last = now.unwrap_or(*last);
        }
        self.alloc = None;
        self.done = false;
        self.held = false;
    }

    /// A switch up for bandwidth that has lasted [`UP_FAILED`] worked.
    fn settle_try(&mut self, now: Instant) {
        if self.trying && self.last_up.is_some_and(|t| now.saturating_duration_since(t) >= UP_FAILED) {
            self.trying = false;
            self.failed_ups = 0;
        }
    }

    fn video(&self) -> bool {
        self.kind != Kind::Audio && self.ceiling.is_some()
    }

    fn arriving(&self, l: Layer) -> bool {
        self.available[l as usize].is_some()
    }

    fn bps(&self, l: Option<Layer>) -> u64 {
        l.and_then(|l| self.available[l as usize]).unwrap_or(0)
    }

    /// Hysteresis is about the estimate: a track whose layer stopped arriving,
    /// or that was paused because nothing it may take arrived, moves at once.
    fn may_go_up(&self, now: Instant) -> bool {
        self.forced() || self.last_up.is_none_or(|t| now.saturating_duration_since(t) >= self.hold())
    }

    /// [`UP_HOLD`], four times as long per failed switch up ([`UP_FAILED`]).
    fn hold(&self) -> Duration {
        (UP_HOLD * 4u32.pow(self.failed_ups.min(3))).min(UP_HOLD_MAX)
    }

    /// The publisher forces a move: the current layer stopped arriving, or
    /// the track was paused because nothing it may take arrived.
    fn forced(&self) -> bool {
        match (self.current, self.ceiling) {
            (Some(l), _) => !self.arriving(l),
            (None, Some(c)) => !self.settled[..=c as usize].contains(&true),
            (None, None) => false,
        }
    }

    /// Whether `layer` is more than one step above the current layer (or,
    /// paused, above q) for a track moved down for bandwidth: it climbs back
    /// one layer per [`UP_HOLD`], so a link that recovers is tried at h
    /// before f and a pause resumes at q (a relapse costs one layer, not a
    /// jump from nothing to f). A new subscription, a ceiling change and a
    /// move the publisher forces take what fits at once.
    fn skips_a_step(&self, layer: Layer) -> bool {
        let next = self.current.map_or(Some(Layer::Q), Layer::up);
        self.recovering && !self.ceiling_changed && !self.forced() && Some(layer) > next
    }

    fn reason(&self, old: Option<Layer>, new: Option<Layer>) -> Reason {
        if self.ceiling_changed {
            Reason::Requested
        } else if old.is_some_and(|l| !self.arriving(l)) || new.is_some_and(|l| !self.settled[l as usize]) {
            Reason::Publisher
        } else {
            Reason::Bandwidth
        }
    }
}

/// One subscriber's allocation state. Tracks are found by linear search:
/// a subscriber has tens of tracks, not thousands.
#[derive(Debug, Default)]
pub struct Allocator {
    tracks: Vec<Track>,
    order: Vec<usize>,
}

impl Allocator {
    pub fn new() -> Allocator {
        Allocator::default()
    }

    /// Allocates `estimate_bps` across `tracks` (the subscriber's full list:
    /// state of tracks missing from it is dropped silently) and pushes a
    /// [`Change`] for every video track whose forwarded layer changed, in the
    /// order tracks were first seen. Audio is never reported.
    ///
    /// Subscribed audio is reserved first, even beyond the estimate. Then, by
    /// priority (screen shares, then cameras; within each, speaker rank, then
    /// id), each screen share climbs layer by layer, lowest first, and then the
    /// cameras do: every camera is offered q, then h, then f. A track takes a
    /// layer if the total fits: within the estimate to keep or go back to a
    /// layer at or below its current one, within the estimate less the
    /// headroom ([`HEADROOM_PCT`]) and at most once per [`UP_HOLD`] to go above
    /// it, a hold that grows fourfold per switch up undone within [`UP_FAILED`] (a
    /// ceiling change restarts that clock; a move the publisher forces,
    /// its layer gone or nothing it may take arriving, ignores it); a track
    /// moved down for bandwidth climbs back one layer per such step, a paused
    /// one from q. A track that misses a layer is skipped for the rest of the call; a
    /// cheaper one after it may still fit. Layers that are not arriving or are
    /// above the ceiling are never chosen; a track with none left is paused.
    pub fn allocate(&mut self, estimate_bps: u64, tracks: &[TrackInput], now: Instant, out: &mut Vec<Change>) {
        for t in &mut self.tracks {
            t.seen = false;
        }
        for (i, input) in tracks.iter().enumerate() {
            let at = match self.tracks.get(i) {
                Some(t) if t.id == input.id => i,
                _ => self.tracks.iter().position(|t| t.id == input.id).unwrap_or_else(|| {
                    self.tracks.push(Track::new(input));
                    self.tracks.len() - 1
                }),
            };
            self.tracks[at].sync(input);
            self.tracks[at].settle_try(now);
        }
        self.tracks.retain(|t| t.seen);

        let mut audio = 0u64;
        for t in self.tracks.iter_mut().filter(|t| t.kind == Kind::Audio && t.ceiling.is_some()) {
            audio = audio.saturating_add(t.bps(Some(Layer::Q)));
            t.alloc = Some(Layer::Q);
        }
        let hold_limit = estimate_bps.saturating_sub(audio);
        let up_limit = ((estimate_bps as u128 * 100 / (100 + HEADROOM_PCT as u128)) as u64).saturating_sub(audio);

        let (order, states) = (&mut self.order, &mut self.tracks);
        order.clear();
        order.extend((0..states.len()).filter(|&i| states[i].video()));
        order.sort_by_key(|&i| (states[i].kind != Kind::Screen, states[i].rank.unwrap_or(u32::MAX), states[i].id));
        let screens = order.iter().take_while(|&&i| states[i].kind == Kind::Screen).count();

        let mut used = 0u64;
        for phase in [&order[..screens], &order[screens..]] {
            for layer in Layer::ALL {
                for &i in phase {
                    let t = &mut states[i];
                    if t.done || !t.arriving(layer) || Some(layer) > t.ceiling {
                        continue;
                    }
                    let total = used.saturating_sub(t.bps(t.alloc)).saturating_add(t.bps(Some(layer)));
                    let fits = if Some(layer) <= t.current {
                        total <= hold_limit
                    } else if t.may_go_up(now) && !t.skips_a_step(layer) {
                        total <= up_limit
                    } else {
                        t.held = total <= up_limit;
                        false
                    };
                    if fits {
                        t.alloc = Some(layer);
                        used = total;
                    } else {
                        t.done = true;
                    }
                }
            }
        }

        for t in &mut self.tracks {
            let (old, new) = (t.current, t.alloc);
            if old != new {
                if t.kind != Kind::Audio {
                    let reason = t.reason(old, new);
                    if new < old && reason == Reason::Bandwidth {
                        t.recovering = true;
                        if std::mem::take(&mut t.trying) {
                            t.failed_ups += 1;
                        }
                    }
                    t.trying = new > old && reason == Reason::Bandwidth;
                    out.push(Change { track: t.id, layer: new, reason });
                }
                if new.is_some() && new == t.ceiling {
                    t.recovering = false;
                }
                // A track's first layer, below its ceiling only because nothing
                // higher has arrived yet (a publisher ramping up), starts no
                // hold: it takes the higher layers as soon as they come.
                let first_by_publisher = old.is_none()
                    && !t.started
                    && new < t.ceiling
                    && Layer::ALL
                        .into_iter()
                        .filter(|&l| Some(l) > new && Some(l) <= t.ceiling)
                        .all(|l| !t.arriving(l));
                if new > old && !first_by_publisher {
                    t.last_up = Some(now);
                }
                t.started |= new.is_some();
                t.current = new;
            }
            if old != new || !t.held {
                t.settled = t.available.map(|b| b.is_some());
            }
        }
    }

    /// The layer forwarded now; `Some(Q)` for subscribed audio.
    pub fn layer(&self, track: u32) -> Option<Layer> {
        self.find(track).and_then(|t| t.current)
    }

    /// What the subscriber needs to get every subscribed track at its ceiling,
    /// headroom included (so a bandwidth estimator probing up to it lets the
    /// last up-switch happen): audio, plus per video track the highest layer at
    /// or below its ceiling that arrives or was seen (last seen bitrate).
    pub fn desired_bps(&self) -> u64 {
        let sum: u64 = self
            .tracks
            .iter()
            .filter(|t| t.ceiling.is_some())
            .map(|t| {
                let top = if t.kind == Kind::Audio { Layer::Q } else { t.ceiling.unwrap_or(Layer::Q) };
                (0..=top as usize)
                    .rev()
                    .find_map(|l| t.available[l].or(Some(t.last_bps[l]).filter(|&b| b > 0)))
                    .unwrap_or(0)
            })
            .sum();
        (sum as u128 * (100 + HEADROOM_PCT as u128) / 100) as u64
    }

    /// Forgets a track now (it is also forgotten when missing from the next
    /// `allocate`). Nothing is reported.
    pub fn remove(&mut self, track: u32) {
        self.tracks.retain(|t| t.id != track);
    }

    fn find(&self, track: u32) -> Option<&Track> {
        self.tracks.iter().find(|t| t.id == track)
    }
}

/// The layers one subscriber makes dynacast keep (feed them to
/// [`LayerDemand::update`]): every layer up to its `ceiling`, and the one it
/// is forwarded now (above the ceiling only when nothing under it arrives).
///
/// SPEC 5.1 says "receives now"; this is wider on purpose, as LiveKit's
/// dynacast is (every quality up to the highest subscribed one stays on). A
/// layer under a ceiling is one the allocator may move the subscriber to at
/// any moment, and one the publisher has turned off takes at least a round
/// trip, an encoder restart and a keyframe to come back. Asked for only by
/// what subscribers received, a subscriber moved down to `q` for bandwidth
/// while the others took `f` found `h` off when its link recovered, and had
/// only `f` to climb to (the aiortc REMB run, `benches/remb_cap.rs`, stuck at
/// `q` for the 30 s after the cap); one paused for bandwidth had nothing at
/// all to resume at. Switching down onto a congested link waited for the
/// publisher too. Turning a layer back on only when the allocator would take
/// it instead made Chromium's publisher toggle h within 34 ms and its H.264
/// encoder then never restarted f. What a ceiling excludes (all subscribers
/// at `low`: `h` and `f`) still stops.
pub fn dynacast_layers(ceiling: Layer, current: Option<Layer>) -> impl Iterator<Item = Layer> {
    Layer::ALL.into_iter().filter(move |&l| l <= ceiling || Some(l) == current)
}

/// Dynacast for one published track: which layers its publisher is asked to
/// send. A layer is advertised while some subscriber receives it, and for
/// [`DEMAND_HOLD`] after the last one stopped. Call [`LayerDemand::update`]
/// on every allocation round (or a timer): a layer expires only when asked.
#[derive(Debug, Clone)]
pub struct LayerDemand {
    last_wanted: [Option<Instant>; 3],
    advertised: [bool; 3],
}

impl LayerDemand {
    /// A publisher starts out sending every layer; each is treated as received
    /// at `now`, so one nobody takes stops [`DEMAND_HOLD`] later.
    pub fn new(now: Instant) -> LayerDemand {
        LayerDemand { last_wanted: [Some(now); 3], advertised: [true; 3] }
    }

    /// Feeds every subscriber's layers for this track (e.g. each
    /// [`Allocator::demand`] flattened; repeats are fine). Returns the layers
    /// to advertise, lowest first, when they changed.
    pub fn update(&mut self, receiving: impl IntoIterator<Item = Layer>, now: Instant) -> Option<Vec<Layer>> {
        for l in receiving {
            self.last_wanted[l as usize] = Some(now);
        }
        let wanted = self.last_wanted.map(|t| t.is_some_and(|t| now.saturating_duration_since(t) < DEMAND_HOLD));
        if wanted == self.advertised {
            return None;
        }
        self.advertised = wanted;
        Some(self.layers())
    }

    /// The layers advertised now, lowest first.
    pub fn layers(&self) -> Vec<Layer> {
        Layer::ALL.into_iter().filter(|&l| self.advertised[l as usize]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Layer::{F, H, Q};

    const CAM: [Option<u64>; 3] = [Some(150_000), Some(400_000), Some(1_200_000)];

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn video(id: u32, kind: Kind, ceiling: Option<Layer>, available: [Option<u64>; 3]) -> TrackInput {
        TrackInput { id, kind, ceiling, available, speaker_rank: None }
    }

    fn cam(id: u32, rank: u32) -> TrackInput {
        TrackInput { speaker_rank: Some(rank), ..video(id, Kind::Camera, Some(F), CAM) }
    }

    fn audio(id: u32, bps: u64) -> TrackInput {
        video(id, Kind::Audio, Some(F), [Some(bps), None, None])
    }

    fn run(a: &mut Allocator, est: u64, tracks: &[TrackInput], now: Instant) -> Vec<Change> {
        let mut out = Vec::new();
        a.allocate(est, tracks, now, &mut out);
        out
    }

    fn layers(est: u64, tracks: &[TrackInput]) -> Vec<Option<Layer>> {
        let mut a = Allocator::new();
        run(&mut a, est, tracks, Instant::now());
        tracks.iter().map(|t| a.layer(t.id)).collect()
    }

    fn change(track: u32, layer: Option<Layer>, reason: Reason) -> Vec<Change> {
        vec![Change { track, layer, reason }]
    }

    #[test]
    fn layer_names() {
        assert_eq!(Layer::ALL.map(Layer::rid), ["q", "h", "f"]);
        assert_eq!(Layer::from_rid("h"), Some(H));
        assert_eq!(Layer::from_quality("low"), Some(Q));
        assert_eq!(Layer::from_quality("high"), Some(F));
    }

    #[test]
    fn ceiling_caps_and_resets_hysteresis() {
        let (mut a, t0) = (Allocator::new(), Instant::now());
        let mut t = [video(1, Kind::Camera, Some(F), CAM)];
        assert_eq!(run(&mut a, 10_000_000, &t, t0), change(1, Some(F), Reason::Requested));
        assert!(run(&mut a, 10_000_000, &t, ms(t0, 500)).is_empty());
        t[0].ceiling = Some(Q);
        assert_eq!(run(&mut a, 10_000_000, &t, ms(t0, 1000)), change(1, Some(Q), Reason::Requested));
        t[0].ceiling = Some(F);
        assert_eq!(run(&mut a, 10_000_000, &t, ms(t0, 1500)), change(1, Some(F), Reason::Requested));
        t[0].ceiling = None;
        assert_eq!(run(&mut a, 10_000_000, &t, ms(t0, 2000)), change(1, None, Reason::Requested));
        assert_eq!(a.desired_bps(), 0);
    }

    #[test]
    fn a_first_layer_held_down_by_the_publisher_starts_no_hold() {
        let (mut a, t0) = (Allocator::new(), Instant::now());
        // Only q has arrived when the subscription starts (a publisher ramping up) ...
        let mut t = [video(1, Kind::Camera, Some(F), [Some(150_000), None, None])];
        assert_eq!(run(&mut a, 10_000_000, &t, t0), change(1, Some(Q), Reason::Requested));
        // ... f arrives a second later: taken at once, no 5 s hold.
        t[0].available = CAM;
        assert_eq!(run(&mut a, 10_000_000, &t, ms(t0, 1000)), change(1, Some(F), Reason::Publisher));
        // That was a switch up: the next one waits.
        assert_eq!(run(&mut a, 500_000, &t, ms(t0, 1500)), change(1, Some(H), Reason::Bandwidth));
        assert!(run(&mut a, 10_000_000, &t, ms(t0, 3000)).is_empty(), "held: one switch up per 5 s");
        assert_eq!(run(&mut a, 10_000_000, &t, ms(t0, 6100)), change(1, Some(F), Reason::Bandwidth));
    }

    #[test]
    fn cameras_bottom_up_in_speaker_order() {
        let t = [cam(1, 0), cam(2, 1), cam(3, 2)];
        assert_eq!(layers(300_000, &t), [Some(Q), None, None]);
        assert_eq!(layers(500_000, &t), [Some(Q); 3]);
        assert_eq!(layers(1_000_000, &t), [Some(H), Some(Q), Some(Q)]);
        assert_eq!(layers(1_500_000, &t), [Some(H); 3]);
        assert_eq!(layers(3_000_000, &t), [Some(F), Some(H), Some(H)]);
        assert_eq!(layers(5_000_000, &t), [Some(F); 3]);
        let t = [cam(1, 2), cam(2, 1), cam(3, 0)];
        assert_eq!(layers(1_000_000, &t), [Some(Q), Some(Q), Some(H)]);
        assert_eq!(layers(300_000, &t), [None, None, Some(Q)]);
    }

    #[test]
    fn new_speaker_takes_the_only_slot() {
        let (mut a, t0) = (Allocator::new(), Instant::now());
        let mut t = [cam(1, 0), cam(2, 1)];
        run(&mut a, 200_000, &t, t0);
        assert_eq!((a.layer(1), a.layer(2)), (Some(Q), None));
        (t[0].speaker_rank, t[1].speaker_rank) = (Some(1), Some(0));
        let mut out = run(&mut a, 200_000, &t, ms(t0, 1000));
        out.sort_by_key(|c| c.track);
        let want = [
            Change { track: 1, layer: None, reason: Reason::Bandwidth },
            Change { track: 2, layer: Some(Q), reason: Reason::Bandwidth },
        ];
        assert_eq!(out, want);
    }

    #[test]
    fn screen_share_before_cameras() {
        let screen = [Some(200_000), Some(600_000), Some(1_500_000)];
        let t = [cam(1, 0), cam(2, 1), video(3, Kind::Screen, Some(F), screen)];
        assert_eq!(layers(2_000_000, &t), [Some(Q), Some(Q), Some(F)]);
        assert_eq!(layers(1_850_000, &t), [Some(Q), None, Some(F)]);
        // The same track as a camera would be one of equals.
        let t = [cam(1, 0), cam(2, 1), video(3, Kind::Camera, Some(F), screen)];
        assert_eq!(layers(2_000_000, &t), [Some(H); 3]);
    }

    #[test]
    fn audio_never_dropped() {
        let (mut a, t0) = (Allocator::new(), Instant::now());
        let t = [audio(1, 64_000), cam(2, 0), video(3, Kind::Screen, Some(H), CAM)];
        let out = run(&mut a, 5_000_000, &t, t0);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|c| c.track != 1 && c.reason == Reason::Requested));
        let out = run(&mut a, 50_000, &t, ms(t0, 1000));
        assert_eq!(a.layer(1), Some(Q));
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|c| c.track != 1 && c.layer.is_none() && c.reason == Reason::Bandwidth));
        // Back at once, but the last up-switch was at t0: wait until t0 + 5 s,
        // then climb back a layer per 5 s.
        assert!(run(&mut a, 5_000_000, &t, ms(t0, 2000)).is_empty());
        assert!(run(&mut a, 5_000_000, &t, ms(t0, 4999)).is_empty());
        let out = run(&mut a, 5_000_000, &t, ms(t0, 5000));
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|c| c.reason == Reason::Bandwidth));
        assert_eq!((a.layer(2), a.layer(3)), (Some(Q), Some(Q)));
        run(&mut a, 5_000_000, &t, ms(t0, 10_000));
        assert_eq!((a.layer(2), a.layer(3)), (Some(H), Some(H)));
        run(&mut a, 5_000_000, &t, ms(t0, 15_000));
        assert_eq!((a.layer(2), a.layer(3)), (Some(F), Some(H)));
    }

    #[test]
    fn a_track_moved_down_climbs_back_one_layer_per_hold() {
        let (mut a, t0) = (Allocator::new(), Instant::now());
        let t = [cam(1, 0)];
        assert_eq!(run(&mut a, 10_000_000, &t, t0), change(1, Some(F), Reason::Requested));
        // The link collapses: paused.
        assert_eq!(run(&mut a, 100_000, &t, ms(t0, 1000)), change(1, None, Reason::Bandwidth));
        // It recovers, far above f: after the hold (from the switch up at t0)
        // back at q, then h, then f, 5 s apart.
        assert!(run(&mut a, 10_000_000, &t, ms(t0, 1500)).is_empty(), "held");
        assert_eq!(run(&mut a, 10_000_000, &t, ms(t0, 5000)), change(1, Some(Q), Reason::Bandwidth));
        assert!(run(&mut a, 10_000_000, &t, ms(t0, 8000)).is_empty(), "held");
        assert_eq!(run(&mut a, 10_000_000, &t, ms(t0, 10_000)), change(1, Some(H), Reason::Bandwidth));
        assert!(run(&mut a, 10_000_000, &t, ms(t0, 13_000)).is_empty(), "held");
        assert_eq!(run(&mut a, 10_000_000, &t, ms(t0, 15_000)), change(1, Some(F), Reason::Bandwidth));
        // A ceiling change is not a climb: low, then high, goes straight back to f.
        let mut t = t;
        assert_eq!(run(&mut a, 100_000, &t, ms(t0, 16_000)), change(1, None, Reason::Bandwidth));
        t[0].ceiling = Some(Q);
        assert_eq!(run(&mut a, 10_000_000, &t, ms(t0, 16_500)), change(1, Some(Q), Reason::Requested));
        t[0].ceiling = Some(F);
        assert_eq!(run(&mut a, 10_000_000, &t, ms(t0, 17_000)), change(1, Some(F), Reason::Requested));
    }

    #[test]
    fn hysteresis_and_margin() {
        let (mut a, t0) = (Allocator::new(), Instant::now());
        let t = [cam(1, 0)];
        let mut ups = Vec::new();
        for k in 0..40u64 {
            let (now, est) = (ms(t0, 500 * k), if k % 2 == 0 { 1_400_000 } else { 1_100_000 });
            let before = a.layer(1);
            for c in run(&mut a, est, &t, now) {
                if c.layer > before {
                    ups.push(now);
                } else {
                    assert_eq!(c.reason, Reason::Bandwidth);
                }
            }
            if est == 1_100_000 && before == Some(F) {
                assert_eq!(a.layer(1), Some(H), "down at once at {k}");
            }
        }
        // Each switch up for bandwidth is undone half a second later, so the hold grows: up at
        // 0 (subscribed) and 5 s (a hold after it); the next is due 20 s after that, past the end.
        let gaps: Vec<u64> = ups.windows(2).map(|w| (w[1] - w[0]).as_millis() as u64).collect();
        assert_eq!(gaps, [5000], "{ups:?}");
        // 1.25 Mbit/s holds f (1.2 M) but is not 10 % above it: no way up from h.
        run(&mut a, 1_100_000, &t, ms(t0, 30_000));
        assert_eq!(a.layer(1), Some(H));
        assert!(run(&mut a, 1_250_000, &t, ms(t0, 40_000)).is_empty());
        assert_eq!(run(&mut a, 1_320_000, &t, ms(t0, 40_500)), change(1, Some(F), Reason::Bandwidth));
        assert!(run(&mut a, 1_250_000, &t, ms(t0, 41_000)).is_empty());
    }

    #[test]
    fn a_switch_up_that_fails_lengthens_the_hold_until_one_lasts() {
        let (mut a, t0) = (Allocator::new(), Instant::now());
        let t = [cam(1, 0)];
        // h fits, f does not; each try at f is undone within a second.
        let (room, tight) = (1_500_000, 1_000_000);
        assert_eq!(run(&mut a, tight, &t, t0), change(1, Some(H), Reason::Requested));
        let mut at = 0;
        for hold in [5_000, 20_000, 40_000, 40_000] {
            assert!(run(&mut a, room, &t, ms(t0, at + hold - 250)).is_empty(), "held {hold} ms after {at}");
            at += hold;
            assert_eq!(run(&mut a, room, &t, ms(t0, at)), change(1, Some(F), Reason::Bandwidth), "at {at}");
            assert_eq!(run(&mut a, tight, &t, ms(t0, at + 500)), change(1, Some(H), Reason::Bandwidth));
        }
        // A try that lasts 3 s worked: the next one waits the plain 5 s again.
        at += 40_000;
        assert_eq!(run(&mut a, room, &t, ms(t0, at)), change(1, Some(F), Reason::Bandwidth));
        assert!(run(&mut a, room, &t, ms(t0, at + 3000)).is_empty());
        assert_eq!(run(&mut a, tight, &t, ms(t0, at + 4000)), change(1, Some(H), Reason::Bandwidth));
        assert_eq!(run(&mut a, room, &t, ms(t0, at + 5000)), change(1, Some(F), Reason::Bandwidth));
        // So does a ceiling change.
        assert_eq!(run(&mut a, tight, &t, ms(t0, at + 5500)), change(1, Some(H), Reason::Bandwidth));
        let mut t = t;
        t[0].ceiling = Some(H);
        assert!(run(&mut a, room, &t, ms(t0, at + 6000)).is_empty());
        t[0].ceiling = Some(F);
        assert_eq!(run(&mut a, room, &t, ms(t0, at + 6500)), change(1, Some(F), Reason::Requested));
        assert_eq!(run(&mut a, tight, &t, ms(t0, at + 7000)), change(1, Some(H), Reason::Bandwidth));
        assert!(run(&mut a, room, &t, ms(t0, at + 11_000)).is_empty());
        assert_eq!(run(&mut a, room, &t, ms(t0, at + 11_500)), change(1, Some(F), Reason::Bandwidth));
    }

    #[test]
    fn publisher_layers_come_and_go() {
        let (mut a, t0) = (Allocator::new(), Instant::now());
        let mut t = [cam(1, 0)];
        run(&mut a, 5_000_000, &t, t0);
        t[0].available[2] = None;
        assert_eq!(run(&mut a, 5_000_000, &t, ms(t0, 1000)), change(1, Some(H), Reason::Publisher));
        t[0].available = CAM;
        assert!(run(&mut a, 5_000_000, &t, ms(t0, 2000)).is_empty(), "up-switch waits for t0 + 5 s");
        assert_eq!(run(&mut a, 5_000_000, &t, ms(t0, 5000)), change(1, Some(F), Reason::Publisher));
        t[0].available[2] = None;
        assert_eq!(run(&mut a, 5_000_000, &t, ms(t0, 11_000)), change(1, Some(H), Reason::Publisher));
        t[0].available = CAM;
        assert_eq!(run(&mut a, 5_000_000, &t, ms(t0, 12_000)), change(1, Some(F), Reason::Publisher));
        // A layer that returns while bandwidth keeps the track below it is not the publisher's doing.
        t[0].available[2] = None;
        run(&mut a, 1_000_000, &t, ms(t0, 20_000));
        t[0].available = CAM;
        assert!(run(&mut a, 1_000_000, &t, ms(t0, 21_000)).is_empty());
        assert_eq!(run(&mut a, 5_000_000, &t, ms(t0, 30_000)), change(1, Some(F), Reason::Bandwidth));
    }

    #[test]
    fn lost_layer_moves_up_when_none_below() {
        let (mut a, t0) = (Allocator::new(), Instant::now());
        let mut t = [cam(1, 0)];
        run(&mut a, 200_000, &t, t0);
        assert_eq!(a.layer(1), Some(Q));
        assert!(run(&mut a, 600_000, &t, ms(t0, 1000)).is_empty(), "hysteresis");
        t[0].available[0] = None;
        assert_eq!(run(&mut a, 600_000, &t, ms(t0, 1500)), change(1, Some(H), Reason::Publisher));
        t[0].available = [None; 3];
        assert_eq!(run(&mut a, 600_000, &t, ms(t0, 2000)), change(1, None, Reason::Publisher));
        t[0].available[0] = CAM[0];
        assert_eq!(run(&mut a, 600_000, &t, ms(t0, 2500)), change(1, Some(Q), Reason::Publisher), "no hysteresis");
        assert!(run(&mut a, 600_000, &t, ms(t0, 2600)).is_empty());
    }

    #[test]
    fn single_layer_video() {
        let (mut a, t0) = (Allocator::new(), Instant::now());
        let t = [audio(1, 32_000), video(2, Kind::Camera, Some(H), [Some(500_000), None, None])];
        assert_eq!(run(&mut a, 1_000_000, &t, t0), change(2, Some(Q), Reason::Requested));
        assert_eq!(run(&mut a, 500_000, &t, ms(t0, 100)), change(2, None, Reason::Bandwidth));
        assert_eq!(run(&mut a, 1_000_000, &t, ms(t0, 5000)), change(2, Some(Q), Reason::Bandwidth));
    }

    #[test]
    fn desired_is_the_sum_at_ceilings_plus_headroom() {
        let mut a = Allocator::new();
        let t = [
            audio(1, 64_000),
            cam(2, 0),
            video(3, Kind::Camera, Some(Q), CAM),
            video(4, Kind::Screen, Some(H), [Some(200_000), Some(600_000), None]),
            video(5, Kind::Camera, None, CAM),
        ];
        run(&mut a, 100_000, &t, Instant::now());
        let sum = 64_000 + 1_200_000 + 150_000 + 600_000;
        assert_eq!(a.desired_bps(), sum * 110 / 100);
        assert_eq!(layers(a.desired_bps(), &t), [Some(Q), Some(F), Some(Q), Some(H), None]);
        assert_ne!(layers(sum, &t)[1], Some(F));
    }

    #[test]
    fn dynacast_keeps_every_layer_a_subscriber_may_be_moved_to() {
        let t0 = Instant::now();
        let mut d = LayerDemand::new(t0);
        // U takes f; C, moved down to q for bandwidth, and P, paused, both have
        // the ceiling f: h must stay on for them to climb back to.
        let subs = [(F, Some(F)), (F, Some(Q)), (F, None)];
        let round = |d: &mut LayerDemand, subs: &[(Layer, Option<Layer>)], at| {
            d.update(subs.iter().flat_map(|&(ceiling, current)| dynacast_layers(ceiling, current)), at)
        };
        for s in 0..=20 {
            assert_eq!(round(&mut d, &subs, ms(t0, s * 1000)), None, "{s} s: nothing under a ceiling turns off");
        }
        assert_eq!(d.layers(), [Q, H, F]);
        // All ceilings at q: h and f go 5 s after the last receiver left them,
        // and the layer one is still forwarded (above a new ceiling until the
        // switch) keeps its layer.
        let low = [(Q, Some(F)), (Q, Some(Q)), (Q, None)];
        assert_eq!(round(&mut d, &low, ms(t0, 21_000)), None, "f still forwarded");
        let low = [(Q, Some(Q)), (Q, Some(Q)), (Q, None)];
        assert_eq!(round(&mut d, &low, ms(t0, 21_500)), None);
        assert_eq!(round(&mut d, &low, ms(t0, 24_900)), None, "h and f held");
        assert_eq!(round(&mut d, &low, ms(t0, 25_000)), Some(vec![Q, F]), "h last wanted at 20 s");
        assert_eq!(round(&mut d, &low, ms(t0, 25_900)), None, "f last received at 21 s");
        assert_eq!(round(&mut d, &low, ms(t0, 26_000)), Some(vec![Q]));
        assert_eq!(round(&mut d, &low, ms(t0, 26_600)), None);
        // One ceiling back at f brings h and f back at once.
        let back = [(F, Some(Q)), (Q, Some(Q)), (Q, None)];
        assert_eq!(round(&mut d, &back, ms(t0, 27_000)), Some(vec![Q, H, F]));
    }

    #[test]
    fn layer_demand_holds_layers_five_seconds() {
        let t0 = Instant::now();
        let mut d = LayerDemand::new(t0);
        assert_eq!(d.layers(), [Q, H, F]);
        assert_eq!(d.update([Q, F], ms(t0, 1000)), None);
        assert_eq!(d.update([Q, F], ms(t0, 5000)), Some(vec![Q, F]));
        // The f subscriber drops to q at 6 s.
        let changes: Vec<_> = (60..=111).filter_map(|k| d.update([Q, Q], ms(t0, 100 * k))).collect();
        assert_eq!(changes, [vec![Q]]);
        assert_eq!(d.update([Q, Q], ms(t0, 10_999)), None);
        assert_eq!(d.update([F], ms(t0, 11_500)), Some(vec![Q, F]));
        assert_eq!(d.update([], ms(t0, 17_000)), Some(vec![]));
        assert_eq!(d.update([], ms(t0, 18_000)), None);
    }
}
