// What tests/browser/simulcast.js and bandwidth.js share: Chromium launched
// for WebRTC on loopback, and the harness that runs inside each page (same
// origin as the server): guest sign-in, the /rtc socket, one publisher and one
// subscriber PeerConnection, stats samplers. `installHarness` is handed to
// page.evaluate, so it uses nothing from this module's scope.
'use strict';
const { chromium } = require('playwright-core');

function launch() {
  return chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
      '--allow-loopback-in-peer-connection', '--autoplay-policy=no-user-gesture-required',
      // libwebrtc's default congestion window (QueueSize:350,DropFrame:true) drops
      // whole frames while feedback is late; on a CPU-starved 2-core machine the
      // feedback of every party is late, and the publisher then stopped sending f
      // (its outbound f at 0 fps, "bandwidth") minutes into a run on loopback. The
      // publisher's link is not what these tests are about: without QueueSize
      // the window is off (rtc_base/experiments/rate_control_settings.cc).
      '--force-fieldtrials=WebRTC-CongestionWindow/Disabled/'],
  });
}

// A new context's page on the server's origin with the harness installed and
// signed in as a guest called `name`; its errors go to `errors`. With
// `proxyFor` (host, port -> proxy port), the page reaches the server's media
// only through that proxy. Returns { page, userId, token }.
async function openPage(browser, base, name, errors, proxyFor = null) {
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  page.on('console', (m) => { if (m.type() === 'error') errors.push(`${name} console: ${m.text()}`); });
  page.on('pageerror', (e) => errors.push(`${name} pageerror: ${e.message}`));
  page.on('crash', () => errors.push(`${name}: page crashed`));
  if (proxyFor) await page.exposeFunction('confer_proxyFor', (host, port) => proxyFor(host, port));
  await page.goto(`${base}/`);
  await page.evaluate(installHarness, { name, viaProxy: !!proxyFor });
  const { userId, token } = await page.evaluate(() => H.signIn());
  return { page, userId, token };
}

function installHarness({ name, viaProxy = false }) {
  const now = () => Date.now();
  const H = {
    name, viaProxy, token: null, userId: null, ws: null, roomId: null, peerId: null,
    pub: null, sub: null, pending: { publisher: [], subscriber: [] },
    waiters: [], counts: {}, subUpdates: [], publishLayers: [], applied: [], honour: false, applyChain: Promise.resolve(),
    wsErrors: [], errors: [],
    tracks: {}, midToTrack: {}, samples: [], pubSamples: [], pcStates: [],
    subChain: Promise.resolve(), offers: 0, sdp: {},
    cands: { offered: [], rewritten: [], dropped: [], trickledIn: [] },
  };
  window.H = H;
  const fail = (what, e) => H.errors.push(`${what}: ${e && e.message || e}`);
  H.send = (m) => H.ws.send(JSON.stringify(m));
  H.wait = (pred, ms, what) => new Promise((resolve, reject) => {
    const w = { pred, resolve };
    H.waiters.push(w);
    setTimeout(() => {
      if (!H.waiters.includes(w)) return;
      H.waiters = H.waiters.filter((x) => x !== w);
      reject(new Error(`${name}: no ${what} within ${ms} ms`));
    }, ms);
  });
  H.api = async (method, path, body) => {
    const r = await fetch(path, { method, headers: { Authorization: `Bearer ${H.token}`, 'Content-Type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) });
    const j = await r.json().catch(() => null);
    if (!r.ok) throw new Error(`${method} ${path}: HTTP ${r.status} ${JSON.stringify(j)}`);
    return j;
  };
  const noteTrack = (peerId, t) => { if (t && t.id) H.tracks[t.id] = { peerId, kind: t.kind, source: t.source, simulcast: t.simulcast }; };
  // "candidate:F 1 udp PRIO ADDR PORT typ host ..." -> the same pointing at the proxy; null: dropped.
  const rewriteCandidate = async (line) => {
    const prefix = line.startsWith('a=') ? 'a=' : '';
    const tok = line.slice(prefix.length).trim().split(/\s+/);
    if (tok.length < 8 || tok[2].toLowerCase() !== 'udp' || !/^\d+\.\d+\.\d+\.\d+$/.test(tok[4])) { H.cands.dropped.push(line); return null; }
    const port = await window.confer_proxyFor(tok[4], Number(tok[5]));
    tok[4] = '127.0.0.1'; tok[5] = String(port);
    const out = prefix + tok.join(' ');
    H.cands.offered.push(line); H.cands.rewritten.push(out);
    return out;
  };
  const rewriteSdp = async (sdp) => {
    const eol = sdp.includes('\r\n') ? '\r\n' : '\n';
    const out = [];
    for (const l of sdp.split(/\r?\n/)) {
      if (l.startsWith('a=candidate:')) { const r = await rewriteCandidate(l); if (r) out.push(r); } else out.push(l);
    }
    return out.join(eol);
  };
  const addCandidate = (role, c) => {
    const pc = role === 'publisher' ? H.pub : H.sub;
    if (!pc || !pc.remoteDescription) { H.pending[role].push(c); return; }
    pc.addIceCandidate(c).catch((e) => fail(`addIceCandidate(${role})`, e));
  };
  const flush = (role) => { const l = H.pending[role]; H.pending[role] = []; for (const c of l) addCandidate(role, c); };
  H.onMessage = (m) => {
    H.counts[m.type] = (H.counts[m.type] || 0) + 1;
    switch (m.type) {
      case 'subscription-update': H.subUpdates.push({ t: now(), trackId: m.trackId, layer: m.layer, reason: m.reason }); break;
      case 'publish-layers':
      {
        const t = now();
        H.publishLayers.push({ t, trackId: m.trackId, layers: m.layers });
        // Dynacast as the built-in page does it, once a script turns it on (H.honour).
        if (H.honour && H.vsender && (!H.cameraTrackId || m.trackId === H.cameraTrackId)) {
          const layers = Array.isArray(m.layers) ? m.layers : [];
          H.applyChain = H.applyChain.then(() => H.applyLayers(layers, t)).catch((e) => fail('applyLayers', e));
        }
        break;
      }
      case 'error': H.wsErrors.push({ t: now(), code: m.code, message: m.message, reqId: m.reqId }); break;
      case 'room-joined':
        for (const p of (m.room && m.room.participants) || []) for (const t of p.tracks || []) noteTrack(p.peerId, t);
        break;
      case 'track-published': noteTrack(m.peerId, m.track); break;
      case 'participant-updated': for (const t of (m.participant && m.participant.tracks) || []) noteTrack(m.participant.peerId, t); break;
      case 'room-ice-candidate':
        if (!m.candidate) break;
        if (m.pc === 'subscriber' && H.viaProxy) {
          H.cands.trickledIn.push(m.candidate.candidate);
          H.subChain = H.subChain.then(async () => {
            if (!m.candidate.candidate) return addCandidate('subscriber', m.candidate);
            const c = await rewriteCandidate(m.candidate.candidate);
            if (c) addCandidate('subscriber', { ...m.candidate, candidate: c });
          }).catch((e) => fail('room-ice-candidate', e));
        } else addCandidate(m.pc, m.candidate);
        break;
      case 'subscribe-offer': H.subChain = H.subChain.then(() => H.onSubscribeOffer(m)).catch((e) => fail('subscribe-offer', e)); break;
    }
    for (const w of [...H.waiters]) {
      let hit = false;
      try { hit = w.pred(m); } catch { /* a predicate on another shape */ }
      if (hit) { H.waiters = H.waiters.filter((x) => x !== w); w.resolve(m); }
    }
  };
  H.signIn = async () => {
    const r = await fetch('/auth/guest', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ name }) });
    if (!r.ok) throw new Error(`POST /auth/guest: HTTP ${r.status}`);
    const j = await r.json();
    H.token = j.token; H.userId = j.userId;
    await new Promise((resolve, reject) => {
      const ws = new WebSocket(`ws://${location.host}/rtc?token=${encodeURIComponent(H.token)}`);
      H.ws = ws;
      ws.onopen = resolve;
      ws.onerror = () => reject(new Error('the /rtc WebSocket failed'));
      ws.onclose = (e) => { H.closed = { t: now(), code: e.code, reason: e.reason }; };
      ws.onmessage = (ev) => { let m; try { m = JSON.parse(ev.data); } catch { return fail('ws json', ev.data); } H.onMessage(m); };
    });
    return { userId: H.userId, token: H.token };
  };
  H.createRoom = async (roomName) => (await H.api('POST', '/rooms', { name: roomName })).room.id;
  const newPc = (role) => {
    const pc = new RTCPeerConnection({ iceServers: [] });
    pc.onicecandidate = (e) => { if (e.candidate) H.send({ type: 'room-ice-candidate', roomId: H.roomId, pc: role, candidate: e.candidate.toJSON() }); };
    pc.onconnectionstatechange = () => H.pcStates.push({ t: now(), pc: role, state: pc.connectionState });
    return pc;
  };
  H.join = async (roomId) => {
    H.roomId = roomId;
    H.sub = newPc('subscriber');
    H.sub.ontrack = (e) => {
      const el = document.createElement(e.track.kind === 'audio' ? 'audio' : 'video');
      el.muted = true; el.autoplay = true;
      if (e.track.kind === 'video') { el.playsInline = true; el.width = 320; el.height = 180; }
      el.srcObject = new MediaStream([e.track]);
      document.body.append(el);
      el.play().catch(() => {});
    };
    const joined = H.wait((m) => m.type === 'room-joined' || (m.type === 'error' && m.reqId === 'join'), 10000, 'room-joined');
    H.send({ type: 'room-join', roomId, reqId: 'join' });
    const m = await joined;
    if (m.type === 'error') throw new Error(`room-join: ${m.code} ${m.message}`);
    H.peerId = m.peerId;
    return m.peerId;
  };
  H.onSubscribeOffer = async (m) => {
    H.offers++;
    let mid = null;
    for (const line of m.sdp.split(/\r?\n/)) {
      if (line.startsWith('a=mid:')) mid = line.slice(6).trim();
      else if (line.startsWith('a=msid:') && mid !== null) {
        const [stream, track] = line.slice(7).trim().split(' ');
        H.midToTrack[mid] = { stream, track };
      }
    }
    H.sdp.lastSubscribeOffer = m.sdp;
    const sdp = H.viaProxy ? await rewriteSdp(m.sdp) : m.sdp;
    H.sdp.lastApplied = sdp;
    await H.sub.setRemoteDescription({ type: 'offer', sdp });
    flush('subscriber');
    await H.sub.setLocalDescription(await H.sub.createAnswer());
    H.sdp.lastAnswer = H.sub.localDescription.sdp;
    H.send({ type: 'subscribe-answer', roomId: H.roomId, sdp: H.sub.localDescription.sdp });
  };
  // The lines of the video m-section that say anything about simulcast.
  const simLines = (sdp) => {
    const out = []; let video = false;
    for (const l of sdp.split(/\r?\n/)) {
      if (l.startsWith('m=')) { video = l.startsWith('m=video'); if (video) out.push(l); continue; }
      if (video && /^a=(simulcast|rid|ssrc-group|mid|extmap:\d+ .*(rtp-stream-id|repaired-rtp-stream-id|sdes:mid))|^a=rtpmap:\d+ (VP8|H264|rtx)|^a=fmtp:/i.test(l)) out.push(l);
    }
    return out;
  };
  // Add `extra` to the fmtp of every payload type of `codec` (VP8, H264) in the video sections.
  const munge = (sdp, extra, codec) => {
    const rtpmap = new RegExp(`^a=rtpmap:(\\d+) ${codec}\\/90000`, 'i');
    const eol = sdp.includes('\r\n') ? '\r\n' : '\n';
    const lines = sdp.split(/\r?\n/);
    const vp8 = new Set(); let video = false;
    for (const l of lines) {
      if (l.startsWith('m=')) video = l.startsWith('m=video');
      const mm = video && rtpmap.exec(l);
      if (mm) vp8.add(mm[1]);
    }
    const hasFmtp = new Set();
    for (const l of lines) { const mm = /^a=fmtp:(\d+) /.exec(l); if (mm && vp8.has(mm[1])) hasFmtp.add(mm[1]); }
    const out = [];
    for (const l of lines) {
      const f = /^a=fmtp:(\d+) (.*)$/.exec(l);
      if (f && vp8.has(f[1])) { out.push(`a=fmtp:${f[1]} ${f[2]};${extra}`); continue; }
      out.push(l);
      const r = rtpmap.exec(l);
      if (r && !hasFmtp.has(r[1])) out.push(`a=fmtp:${r[1]} ${extra}`);
    }
    return out.join(eol);
  };
  // As src/http/web/app.js does: encodings[i].active = layers.includes(rid), q
  // kept on when the list names none of ours, setParameters only on a change.
  H.applyLayers = async (layers, tMsg) => {
    const t = now(), rec = { t, tMsg, layers, changed: false, encodings: null, error: null, tookMs: null };
    H.applied.push(rec);
    try {
      const p = H.vsender.getParameters();
      const rids = p.encodings.map((e) => e.rid);
      let on = layers.filter((r) => rids.includes(r));
      if (on.length === 0) on = ['q'];
      for (const e of p.encodings) if (e.active !== on.includes(e.rid)) { e.active = on.includes(e.rid); rec.changed = true; }
      if (rec.changed) await H.vsender.setParameters(p);
    } catch (e) { rec.error = String(e && e.message || e); }
    rec.tookMs = now() - t;
    rec.encodings = Object.fromEntries(H.vsender.getParameters().encodings.map((e) => [e.rid, e.active]));
  };
  H.publish = async ({ width, height, fmtp, codec = 'VP8' }) => {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: { ideal: width }, height: { ideal: height } } });
    const vt = stream.getVideoTracks()[0], at = stream.getAudioTracks()[0];
    H.pub = newPc('publisher');
    const vtx = H.pub.addTransceiver(vt, {
      direction: 'sendonly', streams: [stream],
      sendEncodings: [ // the built-in page's layers (src/http/web/app.js SIMULCAST)
        { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
        { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 450_000 },
        { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
      ],
    });
    const atx = H.pub.addTransceiver(at, { direction: 'sendonly', streams: [stream] });
    H.vsender = vtx.sender;
    // The codec first in the offer: H264 as browsers send it (packetization
    // mode 1, constrained baseline 42e01f), else Chromium's default VP8.
    if (codec === 'H264') {
      const all = RTCRtpSender.getCapabilities('video').codecs;
      const first = all.filter((c) => c.mimeType === 'video/H264' && /packetization-mode=1/.test(c.sdpFmtpLine || '') && /profile-level-id=42e01f/.test(c.sdpFmtpLine || ''));
      if (!first.length) throw new Error('this Chromium cannot send H264 (packetization-mode=1, 42e01f)');
      vtx.setCodecPreferences([...first, ...all.filter((c) => !first.includes(c))]);
    }
    // Keep the resolution when the machine is busy: layers must stay at their size.
    let degradation = null;
    try {
      const p = vtx.sender.getParameters();
      p.degradationPreference = 'maintain-resolution';
      await vtx.sender.setParameters(p);
      degradation = vtx.sender.getParameters().degradationPreference || 'unsupported';
    } catch (e) { degradation = `failed: ${e.message}`; }
    await H.pub.setLocalDescription(await H.pub.createOffer());
    const offer = H.pub.localDescription.sdp;
    const answered = H.wait((m) => m.type === 'publish-answer' || (m.type === 'error' && m.reqId === 'publish'), 10000, 'publish-answer');
    H.send({
      type: 'publish-offer', roomId: H.roomId, sdp: offer, reqId: 'publish',
      tracks: [{ mid: vtx.mid, source: 'camera', simulcast: true }, { mid: atx.mid, source: 'microphone' }],
    });
    const m = await answered;
    if (m.type === 'error') throw new Error(`publish-offer: ${m.code} ${m.message}`);
    const sdp = fmtp ? munge(m.sdp, fmtp, codec) : m.sdp;
    await H.pub.setRemoteDescription({ type: 'answer', sdp });
    flush('publisher');
    H.sdp.offer = offer; H.sdp.answer = m.sdp; H.sdp.munged = sdp;
    return {
      capture: vt.getSettings(), videoMid: vtx.mid, audioMid: atx.mid, degradation,
      offerVideo: simLines(offer), answerVideo: simLines(m.sdp), mungedFmtp: simLines(sdp).filter((l) => l.startsWith('a=fmtp:')),
      answerCandidates: m.sdp.split(/\r?\n/).filter((l) => l.startsWith('a=candidate:')),
      senderEncodings: vtx.sender.getParameters().encodings.map((e) => ({ rid: e.rid, active: e.active, scaleResolutionDownBy: e.scaleResolutionDownBy })),
    };
  };
  // Publisher: outbound video per rid.
  H.pubStats = async () => {
    const out = { t: now(), layers: {} };
    if (!H.pub) return out;
    const rep = await H.pub.getStats();
    rep.forEach((s) => {
      if (s.type === 'outbound-rtp' && s.kind === 'video') {
        out.layers[s.rid || `ssrc${s.ssrc}`] = {
          codec: rep.get(s.codecId)?.mimeType || null,
          ssrc: s.ssrc, frameWidth: s.frameWidth || 0, frameHeight: s.frameHeight || 0, framesPerSecond: s.framesPerSecond || 0,
          bytesSent: s.bytesSent || 0, framesEncoded: s.framesEncoded || 0, keyFramesEncoded: s.keyFramesEncoded || 0,
          pliCount: s.pliCount || 0, nackCount: s.nackCount || 0, active: s.active, targetBitrate: s.targetBitrate,
          qualityLimitationReason: s.qualityLimitationReason, encoderImplementation: s.encoderImplementation, scalabilityMode: s.scalabilityMode,
        };
      }
      if (s.type === 'outbound-rtp' && s.kind === 'audio') out.audio = { packetsSent: s.packetsSent || 0, bytesSent: s.bytesSent || 0 };
      if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') out.availableOutgoingBitrate = s.availableOutgoingBitrate;
    });
    return out;
  };
  // Subscriber: the camera's inbound-rtp, the audio's, and the selected candidate pair.
  H.subStats = async () => {
    const rep = await H.sub.getStats();
    const s = { t: now(), video: null, audio: null, path: null };
    let selected = null;
    rep.forEach((r) => {
      if (r.type === 'transport' && r.selectedCandidatePairId) selected = r.selectedCandidatePairId;
      if (r.type !== 'inbound-rtp') return;
      if (r.kind === 'audio') {
        const a = s.audio || (s.audio = { packetsReceived: 0, packetsLost: 0, bytesReceived: 0, tracks: 0 });
        a.packetsReceived += r.packetsReceived || 0; a.packetsLost += r.packetsLost || 0; a.bytesReceived += r.bytesReceived || 0; a.tracks++;
        return;
      }
      if (r.kind !== 'video') return;
      const ids = H.midToTrack[r.mid] || {};
      const trackId = ids.track || r.trackIdentifier;
      if (H.cameraTrackId && trackId !== H.cameraTrackId && s.video) return;
      s.video = {
        trackId, ssrc: r.ssrc, codec: rep.get(r.codecId)?.mimeType || null, frameWidth: r.frameWidth || 0, frameHeight: r.frameHeight || 0,
        framesDecoded: r.framesDecoded || 0, framesReceived: r.framesReceived || 0, framesPerSecond: r.framesPerSecond || 0, framesDropped: r.framesDropped || 0,
        keyFramesDecoded: r.keyFramesDecoded || 0, packetsLost: r.packetsLost || 0, packetsReceived: r.packetsReceived || 0,
        retransmittedPacketsReceived: r.retransmittedPacketsReceived || 0,
        bytesReceived: r.bytesReceived || 0, pliCount: r.pliCount || 0, nackCount: r.nackCount || 0, firCount: r.firCount || 0,
        freezeCount: r.freezeCount || 0, totalFreezesDuration: r.totalFreezesDuration || 0,
      };
    });
    if (selected) {
      const pair = rep.get(selected);
      const remote = pair && rep.get(pair.remoteCandidateId);
      const local = pair && rep.get(pair.localCandidateId);
      s.path = pair ? {
        state: pair.state, bytesReceived: pair.bytesReceived || 0, bytesSent: pair.bytesSent || 0, rtt: pair.currentRoundTripTime,
        remoteAddress: remote && (remote.address || remote.ip), remotePort: remote && remote.port, remoteType: remote && remote.candidateType,
        localAddress: local && (local.address || local.ip), localPort: local && local.port, localType: local && local.candidateType,
      } : null;
    }
    return s;
  };
  H.startSampling = (role, ms) => {
    const tick = async () => {
      try {
        if (role === 'pub') { H.pubSamples.push(await H.pubStats()); if (H.pubSamples.length > 400) H.pubSamples.shift(); } else H.samples.push(await H.subStats());
      } catch (e) { fail('getStats', e); }
    };
    tick();
    H.timer = setInterval(tick, ms);
  };
  H.latest = () => H.samples[H.samples.length - 1] || null;
  H.trackOf = (kind, source) => {
    for (const [id, t] of Object.entries(H.tracks)) if (t.peerId !== H.peerId && t.kind === kind && t.source === source) return id;
    return null;
  };
  H.cameraTrack = () => H.trackOf('video', 'camera');
  // The subscriber's last offer, video section: what the server sends with.
  const offerVideo = (sdp) => {
    if (!sdp) return null;
    const out = []; let video = false;
    for (const l of sdp.split(/\r?\n/)) {
      if (l.startsWith('m=')) { video = l.startsWith('m=video'); if (video) out.push(l); continue; }
      if (video && /^a=(mid|msid|ssrc|ssrc-group|extmap|rtcp-fb|rtpmap|fmtp)[:]/.test(l)) out.push(l);
    }
    return out;
  };
  H.sdpFacts = () => {
    const o = H.sdp.lastSubscribeOffer || '', a = H.sdp.lastAnswer || '';
    const tw = (s) => ({ rtcpFb: /a=rtcp-fb:\S+ transport-cc/.test(s), extmap: /a=extmap:\d+\S* http:\/\/www\.ietf\.org\/id\/draft-holmer-rmcat-transport-wide-cc-extensions-01/.test(s), remb: /goog-remb/.test(s), absSendTime: /abs-send-time/.test(s) });
    const twccId = (/a=extmap:(\d+)\S* http:\/\/www\.ietf\.org\/id\/draft-holmer-rmcat-transport-wide-cc-extensions-01/.exec(a) || [])[1] || null;
    const rtcpRsize = { offer: /a=rtcp-rsize/.test(o), answer: /a=rtcp-rsize/.test(a) };
    const rtpmap = Object.fromEntries(o.split(/\r?\n/).map((l) => /^a=rtpmap:(\d+) (\S+)/.exec(l)).filter(Boolean).map((m) => [m[1], m[2]]));
    return { rtpmap, twccId, rtcpRsize, offer: tw(o), answer: tw(a), offerCandidates: o.split(/\r?\n/).filter((l) => l.startsWith('a=candidate:')), appliedCandidates: (H.sdp.lastApplied || '').split(/\r?\n/).filter((l) => l.startsWith('a=candidate:')) };
  };
  H.report = () => ({
    subscribeOfferVideo: offerVideo(H.sdp.lastSubscribeOffer),
    userId: H.userId, peerId: H.peerId, counts: H.counts, subUpdates: H.subUpdates, publishLayers: H.publishLayers, applied: H.applied,
    wsErrors: H.wsErrors, errors: H.errors, pcStates: H.pcStates, offers: H.offers, closed: H.closed || null, cands: H.cands,
  });
  return true;
}

module.exports = { launch, openPage, installHarness };
