//! The load tool's publishers: join, publish synthetic VP8 (one layer, or
//! three as simulcast) and Opus through a webrtc-rs peer, answer keyframe
//! requests as an encoder does, and count what they send.

use super::*;

/// One publisher: join, publish video (and audio), then send until the end.
pub(super) async fn publisher(
    me: Client,
    janus: Option<(Arc<janus::Janus>, tokio::sync::watch::Sender<Option<u64>>)>,
) -> anyhow::Result<Latencies> {
    let Client { opts, token, room, c, epoch, stop } = me;
    let (video_ssrcs, audio_ssrc) = (rand::random::<[u32; 3]>(), rand::random::<u32>());
    let (audio, simulcast, sim_group) = (opts.audio, opts.simulcast, opts.simulcast && opts.sim_group);
    let offer_with = move |pc: &mut rtc::peer_connection::RTCPeerConnection, now| -> anyhow::Result<_> {
        let track = if simulcast {
            peer::simulcast_track("video", video_ssrcs)
        } else {
            peer::video_track("video", video_ssrcs[2])
        };
        let v = pc.add_track(track)?;
        let a = if audio { Some(pc.add_track(peer::audio_track("audio", audio_ssrc))?) } else { None };
        let offer = pc.create_offer(None)?;
        pc.set_local_description(now, offer.clone())?;
        let ids: Vec<_> = pc.get_transceivers().collect();
        let mids: Vec<String> = ids.into_iter().filter_map(|t| pc.rtp_transceiver(t)?.mid().clone()).collect();
        let sources = ["camera", "microphone"];
        let tracks: Vec<Value> = mids
            .iter()
            .zip(sources)
            .map(|(m, s)| json!({"mid": m, "source": s, "simulcast": simulcast && s == "camera"}))
            .collect();
        let video_mid = mids.first().cloned().unwrap_or_default();
        let sdp = if sim_group { sim_group_offer(&offer.sdp, &video_mid, video_ssrcs) } else { offer.sdp };
        Ok((sdp, tracks, (v, a, video_mid)))
    };
    let (ws, mut p, senders) = match &janus {
        Some((j, feed)) => {
            let p = RtcPeer::start_with(false, local_ip_towards(opts.target()).await?).await?;
            let (offer, _, senders) =
                p.ctl.try_with(offer_with).await.ok_or_else(|| anyhow::anyhow!("publisher peer stopped"))??;
            let room: u64 = room.parse()?;
            feed.send_replace(Some(j.publish(room, &p, offer, simulcast).await?));
            (None, p, senders)
        }
        None => {
            let (mut ws, p, _) = join(&opts, &token, &room, None).await?;
            let (offer, tracks, senders) =
                p.ctl.try_with(offer_with).await.ok_or_else(|| anyhow::anyhow!("publisher peer stopped"))??;
            send(&mut ws, json!({"type": "publish-offer", "roomId": room, "sdp": offer, "tracks": tracks})).await?;
            let answer = expect(&mut ws, "publish-answer").await?["sdp"].as_str().unwrap_or_default().to_owned();
            let port =
                answer.lines().find_map(|l| l.split_once(" typ host")?.0.rsplit(' ').next()?.parse::<u16>().ok());
            c.media_ports.lock().unwrap_or_else(|e| e.into_inner()).extend(port);
            p.ctl
                .try_with(move |pc, now| {
                    RTCSessionDescription::answer(answer).and_then(|a| pc.set_remote_description(now, a))
                })
                .await;
            (Some(ws), p, senders)
        }
    };
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(s) = p.seen.recv().await {
            if matches!(s, Seen::Connected) {
                return;
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("publisher did not connect"))?;
    let (vs, as_, video_mid) = senders;
    let (pts, ext_ids) = p
        .ctl
        .try_with(move |pc, _| {
            let ext = |pc: &mut rtc::peer_connection::RTCPeerConnection, uri: &str| {
                let mut x = pc.rtp_sender(vs)?;
                let id = x.get_parameters().rtp_parameters.header_extensions.iter().find(|e| e.uri == uri)?.id;
                u8::try_from(id).ok()
            };
            let ids = (ext(pc, rtc::sdp::extmap::SDES_MID_URI), ext(pc, rtc::sdp::extmap::SDES_RTP_STREAM_ID_URI));
            let pt = |pc: &mut rtc::peer_connection::RTCPeerConnection, s, mime: &str| {
                pc.rtp_sender(s).and_then(|mut x| {
                    x.get_parameters()
                        .rtp_parameters
                        .codecs
                        .iter()
                        .find(|c| c.rtp_codec.mime_type == mime)
                        .map(|c| c.payload_type)
                })
            };
            ((pt(pc, vs, "video/VP8"), as_.and_then(|a| pt(pc, a, "audio/opus"))), ids)
        })
        .await
        .unwrap_or(((None, None), (None, None)));
    let vpt = pts.0.ok_or_else(|| anyhow::anyhow!("VP8 was not negotiated"))?;
    // A simulcast layer is named by its rid (and its m-line by the mid) in
    // every packet, as libwebrtc does until the SSRCs are known.
    let rid_exts = match ext_ids {
        _ if !simulcast || sim_group => None,
        (Some(mid), Some(rid)) => Some((mid, rid, bytes::Bytes::from(video_mid.into_bytes()))),
        _ => anyhow::bail!("simulcast needs the mid and rid header extensions, and the server did not negotiate them"),
    };
    // In a meeting everyone also subscribes on the same WebSocket; otherwise
    // keep it read so the server's pings are answered.
    let receiving = match ws {
        Some(ws) if opts.meeting => {
            let sub = RtcPeer::start_with(false, local_ip_towards(&opts.url).await?).await?;
            tokio::spawn(receive(ws, sub, c.clone(), epoch, stop, Role::default(), Value::Null))
        }
        Some(mut ws) => tokio::spawn(async move {
            while let Some(Ok(_)) = ws.next().await {}
            Vec::new()
        }),
        None => tokio::spawn(async move { Vec::new() }),
    };

    // Video: `fps` frames a second per layer, a keyframe every 2 s (and on a
    // PLI or FIR for that layer, at most one per KEY_MIN_GAP, as an encoder
    // answers the SFU's requests) that is KEY_RATIO times a delta frame, sized so each layer averages its
    // bitrate (at the frame size of `frame_size_for`, announced in
    // keyframes); frames split into packets of at most 1,100 bytes, which
    // leave paced at `pacing` times the bitrate of all layers, as
    // libwebrtc's pacer sends them (or back to back). Audio: a packet every
    // 20 ms, never held back by video. Each packet carries its layer and the
    // time it leaves.
    const KEY_RATIO: usize = 5;
    const KEY_MIN_GAP: Duration = Duration::from_millis(200);
    let fps = opts.fps.clamp(1, 120);
    let gop = u64::from(fps) * 2;
    let layers: Vec<(usize, u32, u32)> = if simulcast {
        (0..3).map(|l| (l, video_ssrcs[l], (f64::from(opts.video_kbps) * SIMULCAST_SHARE[l]) as u32)).collect()
    } else {
        vec![(2, video_ssrcs[2], opts.video_kbps)]
    };
    let delta_bytes = |kbps: u32| (kbps as usize * 1000 / 8 * 2 / (gop as usize - 1 + KEY_RATIO)).max(200);
    let total_kbps: u32 = layers.iter().map(|l| l.2).sum();
    let frame_every = Duration::from_secs_f64(1.0 / f64::from(fps));
    let audio_every = Duration::from_millis(20);
    let pace_bytes_per_sec = opts.pacing * f64::from(total_kbps) * 1000.0 / 8.0;
    let mut vseq: Vec<u16> = layers.iter().map(|_| rand::random()).collect();
    let mut aseq = rand::random::<u16>();
    let (mut frames, mut audio_n) = (0u64, 0u64);
    let mut next_video = tokio::time::Instant::now();
    let mut next_audio = next_video;
    // Video packets not yet sent: (index into `layers`, marker, frame head,
    // size, timestamp); and when the pacer lets the next one go.
    let mut queue: std::collections::VecDeque<(usize, bool, Vec<u8>, usize, u32)> = Default::default();
    let mut next_paced = next_video;
    // Per layer: a keyframe was asked for; when the last one went.
    let mut key_asked = vec![false; layers.len()];
    let mut last_key: Vec<Option<tokio::time::Instant>> = vec![None; layers.len()];
    while Instant::now() < stop && !c.is_done() {
        let wake =
            if queue.is_empty() { next_video.min(next_audio) } else { next_video.min(next_audio).min(next_paced) };
        tokio::time::sleep_until(wake).await;
        let now = tokio::time::Instant::now();
        let mut pkts = Vec::new();
        // Packets per layer (q, h, f, audio) in this batch.
        let mut batch = [0u64; 4];
        while let Ok(s) = p.seen.try_recv() {
            if let Seen::Rtcp { keyframes, .. } = s {
                for ssrc in keyframes {
                    if let Some(i) = layers.iter().position(|l| l.1 == ssrc) {
                        key_asked[i] = true;
                    }
                }
            }
        }
        if next_video <= now {
            let ts = (frames * 90_000 / u64::from(fps)) as u32;
            for (i, &(_, _, kbps)) in layers.iter().enumerate() {
                let may = last_key[i].is_none_or(|t| now.saturating_duration_since(t) >= KEY_MIN_GAP);
                let key = frames % gop == 0 || (key_asked[i] && may);
                if key {
                    (key_asked[i], last_key[i]) = (false, Some(now));
                }
                let mut left = if key { delta_bytes(kbps) * KEY_RATIO } else { delta_bytes(kbps) };
                let mut first = true;
                while left > 0 {
                    let size = left.min(1100);
                    left -= size;
                    let head = if first { vp8_frame_start(key, frame_size_for(kbps)) } else { vec![0x00] };
                    queue.push_back((i, left == 0, head, size, ts));
                    first = false;
                }
            }
            frames += 1;
            next_video += frame_every;
            next_paced = next_paced.max(now);
        }
        while let Some((i, marker, head, size, ts)) = queue.pop_front() {
            if pace_bytes_per_sec > 0.0 {
                if next_paced > now {
                    queue.push_front((i, marker, head, size, ts));
                    break;
                }
                next_paced += Duration::from_secs_f64(size as f64 / pace_bytes_per_sec);
            }
            let (layer, ssrc, _) = layers[i];
            let (mut header, payload) = rtp(vpt, vseq[i], ts, ssrc, marker, &head, size, layer as u8);
            if let Some((mid_id, rid_id, mid)) = &rid_exts {
                let _ = header.set_extension(*mid_id, mid.clone());
                let _ = header.set_extension(*rid_id, bytes::Bytes::from_static(RIDS[layer].as_bytes()));
            }
            pkts.push((vs, (header, payload)));
            batch[layer] += 1;
            vseq[i] = vseq[i].wrapping_add(1);
        }
        if next_audio <= now {
            if let (Some(a), Some(apt)) = (as_, pts.1) {
                pkts.push((a, rtp(apt, aseq, (audio_n * 960) as u32, audio_ssrc, false, &[], 80, AUDIO_LAYER)));
                aseq = aseq.wrapping_add(1);
                batch[3] += 1;
            }
            audio_n += 1;
            next_audio += audio_every;
        }
        if pkts.is_empty() {
            continue;
        }
        let count = pkts.len() as u64;
        // Stamped by the peer's task as it writes them, just before they go
        // through webrtc-rs to its socket, not when this loop woke.
        let sent = p
            .ctl
            .try_with(move |pc, now| {
                let t = now.saturating_duration_since(epoch).as_micros() as u64;
                for (s, (header, mut payload)) in pkts {
                    let at = payload.len() - 8;
                    payload[at..].copy_from_slice(&t.to_be_bytes());
                    if let Some(mut s) = pc.rtp_sender(s) {
                        let _ = s.write_rtp(now, rtc::rtp::Packet { header, payload: payload.into() });
                    }
                }
                t
            })
            .await;
        let Some(t) = sent else { break };
        if c.in_window(t) {
            c.sent.fetch_add(count, Relaxed);
            for (n, sent) in batch.iter().zip(&c.sent_by_layer) {
                sent.fetch_add(*n, Relaxed);
            }
        }
    }
    if opts.meeting {
        return Ok(receiving.await.unwrap_or_default());
    }
    receiving.abort();
    Ok(Vec::new())
}

/// `sdp` with the video section `mid`'s simulcast named the legacy way:
/// its `a=rid`, `a=simulcast` and any `a=ssrc` lines replaced by an `a=ssrc`
/// line per layer and `a=ssrc-group:SIM` (lowest layer first).
pub(super) fn sim_group_offer(sdp: &str, mid: &str, ssrcs: [u32; 3]) -> String {
    let mut sections: Vec<Vec<&str>> = vec![Vec::new()];
    for l in sdp.lines() {
        if l.starts_with("m=") {
            sections.push(Vec::new());
        }
        sections.last_mut().expect("never empty").push(l);
    }
    let legacy = |l: &&str| ["a=rid:", "a=simulcast:", "a=ssrc:", "a=ssrc-group:"].iter().any(|p| l.starts_with(p));
    let mut out = String::with_capacity(sdp.len() + 200);
    for section in sections {
        let video = section.iter().any(|l| l.strip_prefix("a=mid:") == Some(mid));
        for l in section.iter().filter(|l| !(video && legacy(l))) {
            out.push_str(l);
            out.push_str("\r\n");
        }
        if video {
            for s in ssrcs {
                out.push_str(&format!("a=ssrc:{s} cname:confer-load\r\n"));
            }
            out.push_str(&format!("a=ssrc-group:SIM {} {} {}\r\n", ssrcs[0], ssrcs[1], ssrcs[2]));
        }
    }
    out
}

/// The start of a synthetic VP8 frame: a payload descriptor with S set,
/// then the frame tag, and for a keyframe the start code and the frame size
/// (what the SFU's analytics read; RFC 7741, RFC 6386 9.1).
fn vp8_frame_start(key: bool, (w, h): (u16, u16)) -> Vec<u8> {
    if key {
        let (w, h) = (w.to_le_bytes(), h.to_le_bytes());
        vec![0x10, 0x50, 0x2d, 0x01, 0x9d, 0x01, 0x2a, w[0], w[1], h[0], h[1]]
    } else {
        vec![0x10, 0x51, 0x2d, 0x01]
    }
}

/// The frame size an encoder would choose for a bitrate (roughly
/// libwebrtc's ladder).
fn frame_size_for(kbps: u32) -> (u16, u16) {
    match kbps {
        1200.. => (1280, 720),
        700.. => (960, 540),
        300.. => (640, 360),
        _ => (320, 180),
    }
}

/// A packet's header and a payload of `size` bytes: `head`, then zeros,
/// then the layer it belongs to (0 `q`, 1 `h`, 2 `f` or single-layer,
/// [`AUDIO_LAYER`] for audio); the last 8 bytes are for the send time (µs
/// since the run's epoch), written when it is sent, which subscribers read
/// for latency.
#[allow(clippy::too_many_arguments)]
fn rtp(
    pt: u8,
    seq: u16,
    ts: u32,
    ssrc: u32,
    marker: bool,
    head: &[u8],
    size: usize,
    layer: u8,
) -> (rtc::rtp::header::Header, Vec<u8>) {
    let size = size.max(head.len() + 9);
    let mut payload = vec![0u8; size];
    payload[..head.len()].copy_from_slice(head);
    payload[size - 9] = layer;
    let header = rtc::rtp::header::Header {
        version: 2,
        payload_type: pt,
        sequence_number: seq,
        timestamp: ts,
        ssrc,
        marker,
        ..Default::default()
    };
    (header, payload)
}
