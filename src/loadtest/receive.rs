//! The load tool's subscribers: join (confer over `/rtc`, or Janus), answer
//! the server's offers, ask for ceilings, and count what arrives: per layer,
//! sequence gaps, latency, and what a capped one went through.

use super::*;

/// One subscriber: join, answer every subscribe-offer, count what arrives.
pub(super) async fn subscriber(
    me: Client,
    janus: Option<(Arc<janus::Janus>, tokio::sync::watch::Receiver<Option<u64>>)>,
    role: Role,
) -> anyhow::Result<Latencies> {
    let Client { opts, token, room, c, epoch, stop } = me;
    match janus {
        Some((j, mut feed)) => {
            let p = RtcPeer::start_with(false, local_ip_towards(opts.target()).await?).await?;
            let feed = feed.wait_for(Option::is_some).await?.expect("waited for Some");
            let (handle, mid) = j.subscribe(room.parse()?, feed, &p).await?;
            // --switch: Janus's VideoRoom picks a subscriber's layer by
            // `substream` (0 lowest, as the publisher's offer says).
            let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
            let switching = opts.switch.then(|| {
                let (mut want, asked) = (switch_schedule(c.clone(), epoch), asked.clone());
                tokio::spawn(async move {
                    while let Some(layer) = want.recv().await {
                        let t = now_us(epoch);
                        if j.configure_substream(&handle, &mid, layer).await.is_ok() {
                            asked.lock().unwrap_or_else(|e| e.into_inner()).push((t, layer));
                        }
                    }
                })
            });
            let (latencies, run) = count_as(p, c.clone(), epoch, stop, role).await;
            if let Some(s) = switching {
                s.abort();
                let asked = std::mem::take(&mut *asked.lock().unwrap_or_else(|e| e.into_inner()));
                c.switches.lock().unwrap_or_else(|e| e.into_inner()).push(SwitchRun { asked, layers: run.layers });
            }
            Ok(latencies)
        }
        None => {
            let (ws, p, joined) = join(&opts, &token, &room, role.cap.clone()).await?;
            Ok(receive(ws, p, c, epoch, stop, role, joined).await)
        }
    }
}

/// Per packet received inside the window: µs from its send to its arrival,
/// and to its read.
pub(super) type Latencies = Vec<(u32, u32)>;

/// How one subscriber takes part: the ceiling it asks for on every video
/// track, and the cap on its link.
#[derive(Clone, Default)]
pub(super) struct Role {
    pub ceiling: Option<String>,
    pub cap: Option<Arc<peer::Cap>>,
    /// Asks for `low`, then `high` (`--switch`).
    pub switch: bool,
}

/// What a group of subscribers received of the window's video, from the
/// one stream the SFU sends each of them per track: packets per layer (by
/// the layer byte the publisher wrote), and the sequence numbers received
/// against the span they cover (the SFU keeps them contiguous across layer
/// switches, so a gap is a loss).
#[derive(Debug, Default, Clone)]
pub(super) struct Reception {
    subscribers: u64,
    layers: [u64; 3],
    unique: u64,
    span: u64,
}

impl Reception {
    pub(super) fn add(&mut self, o: &Reception) {
        self.subscribers += o.subscribers;
        for (a, b) in self.layers.iter_mut().zip(o.layers) {
            *a += b;
        }
        self.unique += o.unique;
        self.span += o.span;
    }

    pub(super) fn loss(&self) -> Option<f64> {
        (self.span > 0).then(|| (1.0 - self.unique as f64 / self.span as f64).max(0.0))
    }

    pub(super) fn json(&self) -> Value {
        json!({
            "subscribers": self.subscribers,
            "packetsByLayer": {"q": self.layers[0], "h": self.layers[1], "f": self.layers[2]},
            "loss": self.loss().map(|l| (l * 1e5).round() / 1e5),
        })
    }
}

/// The sequence numbers of one stream a subscriber received (extended past
/// wraps), for [`Reception`].
#[derive(Default)]
pub(super) struct SeqSpan {
    seen: std::collections::HashSet<u64>,
    last: Option<u64>,
    range: Option<(u64, u64)>,
}

impl SeqSpan {
    pub(super) fn add(&mut self, seq: u16) {
        let ext = match self.last {
            None => (1u64 << 16) + u64::from(seq),
            Some(last) => {
                let delta = seq.wrapping_sub(last as u16) as i16;
                last.saturating_add_signed(i64::from(delta))
            }
        };
        if self.last.is_none_or(|l| ext > l) {
            self.last = Some(ext);
        }
        self.seen.insert(ext);
        self.range = Some(self.range.map_or((ext, ext), |(a, b)| (a.min(ext), b.max(ext))));
    }

    pub(super) fn unique_and_span(&self) -> (u64, u64) {
        self.range.map_or((0, 0), |(a, b)| (self.seen.len() as u64, b - a + 1))
    }
}

/// A capped subscriber's run: the layer changes it was told of
/// (`subscription-update`, µs since the epoch), its video loss while capped,
/// and the longest its audio stopped while capped; and (for any subscriber)
/// when the layer of its first video track's stream changed (arrival, µs
/// since the epoch, and the layer byte from then on).
#[derive(Debug, Default, Clone)]
pub(super) struct CappedRun {
    updates: Vec<(u64, Option<String>)>,
    capped: Reception,
    audio_gap_us: u64,
    layers: Vec<(u64, u8)>,
}

/// A `--switch` subscriber's run: when it asked for which layer (µs since
/// the epoch, 0 `q` .. 2 `f`), and when the layer it received changed.
#[derive(Debug, Default, Clone)]
pub(super) struct SwitchRun {
    pub asked: Vec<(u64, u8)>,
    pub layers: Vec<(u64, u8)>,
}

/// The layers a `--switch` subscriber asks for, each sent at its time: `q`
/// when the window's middle third starts, `f` when it ends.
fn switch_schedule(c: Arc<Counters>, epoch: Instant) -> tokio::sync::mpsc::Receiver<u8> {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        // The window (and its thirds) is fixed once every client is in.
        while c.middle_until.load(Relaxed) == u64::MAX {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for (at, layer) in [(&c.middle_from, 0), (&c.middle_until, 2)] {
            tokio::time::sleep_until((epoch + Duration::from_micros(at.load(Relaxed))).into()).await;
            if tx.send(layer).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// Answer every subscribe-offer on `ws` with `p`, ask for `role`'s ceiling
/// on every video track (those in `joined`, and each one published later),
/// and count what arrives until the run is done (see [`count`]).
pub(super) async fn receive(
    mut ws: Ws,
    p: RtcPeer,
    c: Arc<Counters>,
    epoch: Instant,
    stop: Instant,
    role: Role,
    joined: Value,
) -> Latencies {
    let ctl = p.ctl.clone();
    let updates = Arc::new(std::sync::Mutex::new(Vec::new()));
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (ceiling, seen_updates, seen_asked) = (role.ceiling.clone(), updates.clone(), asked.clone());
    let mut switches = role.switch.then(|| switch_schedule(c.clone(), epoch));
    let signaling = tokio::spawn(async move {
        let subscribe = |room: &Value, track: &Value| {
            let q = ceiling.as_ref().filter(|_| track["kind"] == "video")?;
            let m = json!({"type": "track-subscribe", "roomId": room, "trackId": track["id"], "subscribe": true, "quality": q});
            Some(Message::Text(m.to_string().into()))
        };
        let room = joined["roomId"].clone();
        let existing = joined["room"]["participants"].as_array().into_iter().flatten();
        // The video tracks, for --switch.
        let mut videos = Vec::new();
        for t in existing.flat_map(|p| p["tracks"].as_array().into_iter().flatten()) {
            if t["kind"] == "video" {
                videos.push(t["id"].clone());
            }
            if let Some(m) = subscribe(&room, t) {
                let _ = ws.send(m).await;
            }
        }
        loop {
            let next = tokio::select! {
                m = ws.next() => m,
                Some(layer) = async { switches.as_mut()?.recv().await } => {
                    let quality = if layer == 0 { "low" } else { "high" };
                    seen_asked.lock().unwrap_or_else(|e| e.into_inner()).push((now_us(epoch), layer));
                    for id in &videos {
                        let m = json!({"type": "track-subscribe", "roomId": room, "trackId": id, "subscribe": true, "quality": quality});
                        let _ = ws.send(Message::Text(m.to_string().into())).await;
                    }
                    continue;
                }
            };
            let Some(Ok(msg)) = next else { break };
            let Message::Text(t) = msg else { continue };
            let Ok(v) = serde_json::from_str::<Value>(&t) else { continue };
            if v["type"] == "track-published" {
                if v["track"]["kind"] == "video" {
                    videos.push(v["track"]["id"].clone());
                }
                if let Some(m) = subscribe(&v["roomId"], &v["track"]) {
                    let _ = ws.send(m).await;
                }
                continue;
            }
            if v["type"] == "subscription-update" {
                let layer = v["layer"].as_str().map(str::to_owned);
                seen_updates.lock().unwrap_or_else(|e| e.into_inner()).push((now_us(epoch), layer));
                continue;
            }
            if v["type"] != "subscribe-offer" {
                continue;
            }
            let (sdp, room) = (v["sdp"].as_str().unwrap_or_default().to_owned(), v["roomId"].clone());
            let answer = ctl
                .try_with(move |pc, now| -> Option<String> {
                    let offer = RTCSessionDescription::offer(sdp).ok()?;
                    pc.set_remote_description(now, offer).ok()?;
                    let answer = pc.create_answer(None).ok()?;
                    pc.set_local_description(now, answer.clone()).ok()?;
                    Some(answer.sdp)
                })
                .await
                .flatten();
            if let Some(sdp) = answer {
                let _ = ws
                    .send(Message::Text(
                        json!({"type": "subscribe-answer", "roomId": room, "sdp": sdp}).to_string().into(),
                    ))
                    .await;
            }
        }
    });
    let (capped, switching) = (role.cap.is_some(), role.switch);
    let (latencies, mut run) = count_as(p, c.clone(), epoch, stop, role).await;
    signaling.abort();
    if switching {
        let asked = std::mem::take(&mut *asked.lock().unwrap_or_else(|e| e.into_inner()));
        c.switches.lock().unwrap_or_else(|e| e.into_inner()).push(SwitchRun { asked, layers: run.layers.clone() });
    }
    if capped {
        run.updates = std::mem::take(&mut *updates.lock().unwrap_or_else(|e| e.into_inner()));
        c.capped.lock().unwrap_or_else(|e| e.into_inner()).push(run);
    }
    latencies
}

/// Count what arrives at `p` until the run is done: every packet sent inside
/// the window that arrives is received, timed from its send time. Every
/// track seen counts once towards `tracks_received`. What `role`'s
/// subscriber received is added to its ceiling's [`Reception`]; and its
/// [`CappedRun`] is returned.
pub(super) async fn count_as(
    mut p: RtcPeer,
    c: Arc<Counters>,
    epoch: Instant,
    stop: Instant,
    role: Role,
) -> (Latencies, CappedRun) {
    let mut latencies = Vec::new();
    let mut tracks = std::collections::HashSet::new();
    let until = tokio::time::Instant::from_std(stop);
    let mut done = c.done.subscribe();
    // Per video track: the SSRC of its first packet (the stream the SFU
    // keeps; retransmissions come on another) and its sequence numbers,
    // over the window and over the cap.
    let mut video: std::collections::HashMap<String, (u32, SeqSpan, SeqSpan)> = Default::default();
    let mut mine = Reception { subscribers: 1, ..Default::default() };
    let (mut last_audio, mut audio_gap) = (None::<u64>, 0u64);
    let (mut first_video, mut layers) = (None::<String>, Vec::<(u64, u8)>::new());
    loop {
        let s = tokio::select! {
            s = tokio::time::timeout_at(until, p.seen.recv()) => match s {
                Ok(Some(s)) => s,
                _ => break,
            },
            _ = done.wait_for(|d| *d) => break,
        };
        if let Seen::Rtp { track, ssrc, seq, payload, at, read, .. } = s {
            let Some(tail) = payload.len().checked_sub(9).map(|at| &payload[at..]) else { continue };
            let layer = tail[0];
            let sent = u64::from_be_bytes(tail[1..].try_into().expect("8 bytes"));
            if c.in_window(sent) {
                c.received.fetch_add(1, Relaxed);
                // From the publisher's send to the packet's arrival at the
                // subscriber (and to its read there): what the subscriber's
                // own pipeline and this task take afterwards is not the
                // server's.
                let since = |t: Instant| {
                    let us = t.saturating_duration_since(epoch).as_micros() as u64;
                    us.saturating_sub(sent).min(u64::from(u32::MAX)) as u32
                };
                latencies.push((since(at), since(read)));
                let cap = c.middle_from.load(Relaxed)..c.middle_until.load(Relaxed);
                if layer == AUDIO_LAYER {
                    if cap.contains(&sent) {
                        let t = at.saturating_duration_since(epoch).as_micros() as u64;
                        audio_gap = audio_gap.max(t - last_audio.unwrap_or(t).min(t));
                        last_audio = Some(t);
                    }
                } else {
                    let v =
                        video.entry(track.clone()).or_insert_with(|| (ssrc, SeqSpan::default(), SeqSpan::default()));
                    if v.0 == ssrc {
                        v.1.add(seq);
                        if cap.contains(&sent) {
                            v.2.add(seq);
                        }
                        if let Some(n) = mine.layers.get_mut(usize::from(layer)) {
                            *n += 1;
                        }
                        if *first_video.get_or_insert_with(|| track.clone()) == track
                            && layers.last().is_none_or(|l| l.1 != layer)
                        {
                            layers.push((at.saturating_duration_since(epoch).as_micros() as u64, layer));
                        }
                    }
                }
            }
            if tracks.insert(track) {
                c.tracks_received.fetch_add(1, Relaxed);
            }
        }
    }
    let mut capped = Reception { subscribers: 1, ..Default::default() };
    for (_, all, during_cap) in video.values() {
        let (u, s) = all.unique_and_span();
        (mine.unique, mine.span) = (mine.unique + u, mine.span + s);
        let (u, s) = during_cap.unique_and_span();
        (capped.unique, capped.span) = (capped.unique + u, capped.span + s);
    }
    // A capped subscriber is its own group, so the report shows what the
    // uncapped ones at the same ceiling kept.
    let ceiling = role.ceiling.clone().unwrap_or_else(|| "none".into());
    let group = if role.cap.is_some() { format!("{ceiling} capped") } else { ceiling };
    c.by_ceiling.lock().unwrap_or_else(|e| e.into_inner()).entry(group).or_default().add(&mine);
    let run = CappedRun { capped, audio_gap_us: audio_gap, layers, ..Default::default() };
    (latencies, run)
}

/// What the capped subscribers went through (the medians over them, ms from
/// the cap or its lift): the first layer change below `f` (`downMs`), the
/// last change while capped (`settledMs`, the layer then `settledLayer`),
/// back to at least `h` and to `f` after the lift, their video loss while
/// capped, and the longest audio gap then.
pub(super) fn cap_report(kbps: u32, runs: &[CappedRun], from: u64, until: u64) -> Value {
    let ms = |us: u64| (us as f64 / 100.0).round() / 10.0;
    let median = |mut v: Vec<f64>| -> Option<f64> {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    let after = |r: &CappedRun, at: u64, ok: &dyn Fn(Option<&str>) -> bool| {
        r.updates.iter().find(|(t, l)| *t >= at && ok(l.as_deref())).map(|(t, _)| ms(t - at))
    };
    let down: Vec<f64> = runs.iter().filter_map(|r| after(r, from, &|l| l != Some("f"))).collect();
    let settled: Vec<(f64, Option<String>)> = runs
        .iter()
        .filter_map(|r| r.updates.iter().rfind(|(t, _)| (from..until).contains(t)))
        .map(|(t, l)| (ms(t - from), l.clone()))
        .collect();
    // Already at h or above when the cap lifts is back at once.
    let at_least_h = |l: Option<&str>| matches!(l, Some("h" | "f"));
    let up_h: Vec<f64> = runs
        .iter()
        .filter_map(|r| match r.updates.iter().rfind(|(t, _)| *t < until) {
            Some((_, l)) if at_least_h(l.as_deref()) => Some(0.0),
            _ => after(r, until, &at_least_h),
        })
        .collect();
    let up_f: Vec<f64> = runs.iter().filter_map(|r| after(r, until, &|l| l == Some("f"))).collect();
    let mut during = Reception::default();
    runs.iter().for_each(|r| during.add(&r.capped));
    json!({
        "kbps": kbps,
        "subscribers": runs.len(),
        "capSeconds": ms(until - from) / 1000.0,
        "downMs": median(down),
        "settledMs": median(settled.iter().map(|s| s.0).collect()),
        "settledLayers": settled.iter().map(|s| s.1.clone()).collect::<Vec<_>>(),
        "upToHMs": median(up_h),
        "upToFMs": median(up_f),
        "lossWhileCapped": during.loss().map(|l| (l * 1e4).round() / 1e4),
        "audioGapMaxMs": runs.iter().map(|r| ms(r.audio_gap_us)).fold(None, |m: Option<f64>, g| Some(m.map_or(g, |m| m.max(g)))),
        "updates": runs.iter().map(|r| r.updates.iter().map(|(t, l)| json!([(*t as f64 - from as f64) / 1000.0, l])).collect::<Vec<_>>()).collect::<Vec<_>>(),
    })
}

/// What the `--switch` subscribers went through, per request (to `q`, then
/// to `f`): the median and the longest time from asking to the first packet
/// of that layer, how many got there, and the most layer changes on the
/// way (a server that steps through `h` makes two).
pub(super) fn switch_report(runs: &[SwitchRun]) -> Value {
    let one = |target: u8| {
        let mut ms = Vec::new();
        let mut changes = 0;
        for r in runs {
            let Some(&(asked, _)) = r.asked.iter().find(|a| a.1 == target) else { continue };
            let after: Vec<_> = r.layers.iter().filter(|l| l.0 >= asked).collect();
            if let Some(i) = after.iter().position(|l| l.1 == target) {
                ms.push((after[i].0 - asked) as f64 / 1000.0);
                changes = changes.max(i + 1);
            }
        }
        ms.sort_by(f64::total_cmp);
        let round = |v: f64| (v * 10.0).round() / 10.0;
        json!({
            "p50Ms": ms.get(ms.len() / 2).copied().map(round),
            "maxMs": ms.last().copied().map(round),
            "reached": ms.len(),
            "of": runs.len(),
            "layerChanges": changes,
        })
    };
    json!({"subscribers": runs.len(), "toLow": one(0), "toHigh": one(2)})
}
