// Simulcast through the SFU, seen by real browsers (SPEC 5.1), all driven from
// page JavaScript on the server's own origin (no built-in page UI involved):
// a publisher context sends its fake 1280x720 camera as three VP8 layers
// (rids q, h, f with scaleResolutionDownBy 4, 2, 1) plus its microphone; two
// subscriber contexts A and B join the same room, answer the server's
// subscribe-offers, sample the camera's inbound-rtp every 250 ms and record
// every subscription-update. Phases:
//   default  no track-subscribe: both decode the widest layer the publisher sends
//   low      A asks quality "low": A decodes the q layer, B stays at f
//   high     A asks quality "high": A is back at f
//   medium   B asks quality "medium": B decodes the h layer, A stays at f
//   dynacast both ask "low"; within 5 s + slack the publisher hears
//            publish-layers ["q"] and, as the built-in page does, sets its h and
//            f encodings inactive: their bytesSent stops, q's keeps growing,
//            both still decode q. Then B asks "high": publish-layers brings f
//            back, the publisher re-activates it and B decodes f again.
// Over all of it framesDecoded keeps rising and packetsLost stays 0. The
// publisher records every publish-layers from the start (the server sends some
// during the earlier phases) but honours them only from the dynacast phase on.
// The script only observes and reports: it prints one JSON summary line last
// on stdout (also after a timeout or a crash, with `crash` set) and
// tests/simulcast.rs judges it. `failures` lists what this script itself
// thinks went wrong, for a human reading the line; exit code 0 when empty,
// 1 when not, 2 when the run crashed.
// usage: node simulcast.js http://HOST:PORT [vp8|h264]
'use strict';
const { launch, openPage } = require('./harness');

const base = process.argv[2];
// A second argument (or SIMULCAST_CODEC) h264: the publisher prefers H.264 (the default is VP8).
const CODEC = (process.argv[3] || process.env.SIMULCAST_CODEC || 'vp8').toLowerCase() === 'h264' ? 'H264' : 'VP8';
if (!base) { console.error('usage: node simulcast.js http://HOST:PORT'); process.exit(2); }
const T0 = Date.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const SWITCH_WAIT = 7000; // how long a phase waits for its layer (the test asserts <= 5000)
const DEFAULT_WAIT = 20000; // ramp-up may go q -> h -> f, one step up per 5 s
const HOLD = 3000; // observation after a phase reached its layer (the other subscriber must not move)
const NOMINAL = { q: 4, h: 2, f: 1 }; // scaleResolutionDownBy per rid
// Dynacast phase: how long each step may wait (the test asserts the tighter bounds in
// tests/simulcast.rs: ["q"] within 8 s, f listed again within 3 s, B at f within 8 s).
const DYN_Q_WAIT = 9000; // 5 s hold + slack
const DYN_F_WAIT = 4000;
const DYN_B_WAIT = 10000; // Chromium restarts an encoding, then a keyframe
const DYN_SETTLE = 1000; // packets in flight after setParameters
const DYN_GAP = 1000; // between bytesSent samples

const summary = {
  base, codec: CODEC, crash: null, failures: [], timeouts: [], errors: [], elapsedMs: 0,
  roomId: null, trackId: null,
  publisher: null, publisherLayers: null, publisherLayersOverTime: [], widths: null,
  phases: {}, subs: {}, dynacast: null, publishLayersAll: [],
};
let browser = null;
let finished = false;
const pages = {}; // pub, A, B once open
let tDecoding = null;
let collected = false;

async function finish(crash) {
  if (finished) return;
  finished = true;
  if (crash) summary.crash = String(crash && crash.stack || crash);
  if (!collected && pages.pub && pages.A && pages.B) {
    // Stopped early: still report what the pages saw.
    try { await Promise.race([collect(), sleep(5000)]); } catch (e) { summary.errors.push(`collect: ${e.message}`); }
  }
  if (!collected) { try { verdict(); } catch (e) { summary.errors.push(`verdict: ${e.message}`); } }
  summary.elapsedMs = Date.now() - T0;
  try { if (browser) await Promise.race([browser.close(), sleep(5000)]); } catch (e) { summary.errors.push(`browser.close: ${e.message}`); }
  console.log(JSON.stringify(summary));
  process.exit(summary.crash ? 2 : summary.failures.length ? 1 : 0);
}
const watchdog = setTimeout(() => finish('watchdog: the script ran over 100 s'), 100000);
watchdog.unref();

// ---------------------------------------------------------------------------
async function main() {
  browser = await launch();
  const mk = async (name) => (await openPage(browser, base, name, summary.errors)).page;
  const pub = pages.pub = await mk('Publisher');
  const A = pages.A = await mk('SubA');
  const B = pages.B = await mk('SubB');
  const subsP = { A, B };

  const roomName = `simulcast-${Date.now()}`;
  summary.roomId = await pub.evaluate((n) => H.createRoom(n), roomName);
  await pub.evaluate((r) => H.join(r), summary.roomId);
  await A.evaluate((r) => H.join(r), summary.roomId);
  await B.evaluate((r) => H.join(r), summary.roomId);
  for (const p of [A, B]) await p.evaluate(() => H.startSampling('sub', 250));

  // SIMULCAST_NO_MUNGE=1 leaves the answer as the server wrote it (to see what Chromium does unaided).
  const fmtp = process.env.SIMULCAST_NO_MUNGE ? null : 'x-google-min-bitrate=1500;x-google-start-bitrate=2000';
  summary.publisher = await pub.evaluate((o) => H.publish(o), { width: 1280, height: 720, fmtp, codec: CODEC });
  await pub.evaluate(() => H.startSampling('pub', 500));

  // The camera's server track id, as each subscriber learns it.
  const tid = await until(async () => {
    const a = await A.evaluate(() => H.cameraTrack()), b = await B.evaluate(() => H.cameraTrack());
    return a && b ? [a, b] : null;
  }, 10000);
  if (!tid) return timeout('track-published for the camera at both subscribers');
  if (tid[0] !== tid[1]) summary.failures.push(`A and B disagree on the camera track id: ${tid}`);
  summary.trackId = tid[0];
  for (const p of [A, B]) await p.evaluate((t) => { H.cameraTrackId = t; }, summary.trackId);

  // Publisher: the three rids send (bytesSent rising, a frame size each).
  const pubLayers = async () => (await pub.evaluate(() => H.pubStats())).layers;
  let first = await pubLayers();
  const allSend = await until(async () => {
    await sleep(500);
    const now = await pubLayers();
    const ok = ['q', 'h', 'f'].every((r) => now[r] && first[r] && now[r].bytesSent > first[r].bytesSent && now[r].frameWidth > 0);
    if (!ok) first = now;
    return ok ? now : null;
  }, 12000, 0);
  summary.publisherLayers = allSend || await pubLayers();
  if (!allSend) summary.timeouts.push(`publisher: not all of q, h, f sending within 12 s: ${Object.keys(summary.publisherLayers)}`);
  const pubWidth = async (rid) => {
    const l = (await pubLayers())[rid];
    return l && l.frameWidth ? l.frameWidth : Math.round((summary.publisher.capture.width || 1280) / NOMINAL[rid]);
  };
  const widest = async () => {
    const ls = Object.values(await pubLayers()).filter((l) => l.frameWidth > 0);
    return ls.length ? Math.max(...ls.map((l) => l.frameWidth)) : 1280;
  };

  // Both subscribers decode something.
  const decoding = await until(async () => {
    const [a, b] = [await latestVideo(A), await latestVideo(B)];
    return a && b && a.framesDecoded > 5 && b.framesDecoded > 5;
  }, 10000);
  if (!decoding) summary.timeouts.push('subscribers: no decoded video at both within 10 s');
  tDecoding = Date.now();

  // ---- phase default: no track-subscribe; both at the widest layer.
  const phase = async (label, { sender, quality, watch, target, wantLayer, wait }) => {
    const t0 = Date.now();
    const widthAtStart = (await latestVideo(subsP[watch]))?.frameWidth ?? null;
    if (sender) await subsP[sender].evaluate(({ roomId, trackId, quality }) => H.send({ type: 'track-subscribe', roomId, trackId, subscribe: true, quality }), { roomId: summary.roomId, trackId: summary.trackId, quality });
    let tgt = null;
    const reached = await until(async () => {
      tgt = await target();
      const v = await latestVideo(subsP[watch]);
      return v && v.frameWidth === tgt ? Date.now() : null;
    }, wait);
    // The subscription-update that says so (it may come a little after the frames).
    let update = null;
    if (wantLayer) {
      update = await until(async () => {
        const ups = await subsP[watch].evaluate(() => H.subUpdates);
        return ups.filter((u) => u.t >= t0 && u.trackId === summary.trackId && u.layer === wantLayer).pop() || null;
      }, reached ? 2000 : 500);
    }
    if (reached) await sleep(HOLD);
    const t1 = Date.now();
    summary.phases[label] = { sender: sender || null, quality: quality || null, watch, widthAtStart, target: tgt, startMs: t0 - T0, endMs: t1 - T0, reachedMs: reached ? reached - t0 : null, update, _t0: t0, _t1: t1, _reached: reached };
    if (!reached) summary.timeouts.push(`${label}: ${watch} not at width ${tgt} within ${wait} ms`);
    if (wantLayer && !update) summary.timeouts.push(`${label}: ${watch} got no subscription-update layer ${wantLayer}`);
  };
  await phase('default', { watch: 'A', target: widest, wait: DEFAULT_WAIT });
  // B must be there too before the ceilings differ.
  const bDefault = await until(async () => {
    const v = await latestVideo(B);
    return v && v.frameWidth === (await widest()) ? Date.now() : null;
  }, 5000);
  summary.phases.default.bReachedMs = bDefault ? bDefault - summary.phases.default._t0 : null;
  if (!bDefault) summary.timeouts.push('default: B not at the widest layer');
  summary.phases.default._t1 = Date.now();
  summary.phases.default.endMs = Date.now() - T0;
  summary.widths = { q: await pubWidth('q'), h: await pubWidth('h'), f: await pubWidth('f'), widest: await widest() };

  await phase('low', { sender: 'A', quality: 'low', watch: 'A', target: () => pubWidth('q'), wantLayer: 'q', wait: SWITCH_WAIT });
  await phase('high', { sender: 'A', quality: 'high', watch: 'A', target: widest, wantLayer: 'f', wait: SWITCH_WAIT });
  await phase('medium', { sender: 'B', quality: 'medium', watch: 'B', target: () => pubWidth('h'), wantLayer: 'h', wait: SWITCH_WAIT });
  await dynacast();
}

// ---- phase dynacast (SPEC 5.1): publish-layers to the publisher, which honours it.
async function dynacast() {
  const { pub, A, B } = pages;
  const rel = (t) => (t == null ? null : t - T0);
  const w = summary.widths;
  const D = summary.dynacast = {
    startMs: null, endMs: null, layersAtStart: null, requestLowMs: {},
    q: null, appliedQ: null, bytes: null, subsLow: {},
    high: null, messages: [], applied: [],
  };
  const t0 = Date.now();
  D.startMs = rel(t0);
  const cam = (m) => m.trackId === summary.trackId;
  const lastMsg = (await pub.evaluate(() => H.publishLayers)).filter(cam).pop();
  D.layersAtStart = lastMsg ? lastMsg.layers : null;
  await pub.evaluate((t) => { H.cameraTrackId = t; H.honour = true; }, summary.trackId);
  const subscribe = (p, quality) => p.evaluate(({ roomId, trackId, quality }) => { H.send({ type: 'track-subscribe', roomId, trackId, subscribe: true, quality }); return Date.now(); }, { roomId: summary.roomId, trackId: summary.trackId, quality });
  // Step 2: both ask low.
  const tA = await subscribe(A, 'low'), tB = await subscribe(B, 'low');
  D.requestLowMs = { A: rel(tA), B: rel(tB) };
  const tFirst = Math.min(tA, tB), tLast = Math.max(tA, tB);
  const msgs = async () => (await pub.evaluate(() => H.publishLayers)).filter((m) => cam(m) && m.t >= t0);
  const applied = async () => pub.evaluate(() => H.applied);
  const same = (a, b) => Array.isArray(a) && a.length === b.length && a.every((x, i) => x === b[i]);
  const pubSample = async () => {
    const s = await pub.evaluate(() => H.pubStats());
    const [a, b] = [await latestVideo(A), await latestVideo(B)];
    const bytes = {}, active = {};
    for (const r of ['q', 'h', 'f']) { bytes[r] = s.layers[r] ? s.layers[r].bytesSent : null; active[r] = s.layers[r] ? s.layers[r].active : null; }
    return {
      t: s.t, atMs: rel(s.t), bytes, active, pubWidth: Object.fromEntries(['q', 'h', 'f'].map((r) => [r, s.layers[r] ? s.layers[r].frameWidth : null])),
      A: a && { w: a.frameWidth, frames: a.framesDecoded }, B: b && { w: b.frameWidth, frames: b.framesDecoded },
    };
  };
  // What a subscriber decoded between two instants (from its 250 ms samples).
  const decodedIn = async (p, from, to) => {
    const ss = (await p.evaluate(() => H.samples)).filter((s) => s.video && s.t >= from && s.t <= to);
    const widths = {};
    for (const s of ss) widths[s.video.frameWidth] = (widths[s.video.frameWidth] || 0) + 1;
    return { samples: ss.length, widths, framesDecodedDelta: ss.length ? ss[ss.length - 1].video.framesDecoded - ss[0].video.framesDecoded : 0 };
  };
  try {
    // Step 3: publish-layers exactly ["q"] within 5 s + slack.
    const q = await until(async () => (await msgs()).find((m) => same(m.layers, ['q'])) || null, DYN_Q_WAIT, 100);
    if (!q) {
      timeout(`dynacast: the publisher got no publish-layers ["q"] within ${DYN_Q_WAIT} ms of both asking low`);
      return;
    }
    D.q = { atMs: rel(q.t), sinceRequestMs: q.t - tLast, sinceFirstRequestMs: q.t - tFirst, layers: q.layers, trackId: q.trackId };
    // Step 4: the page applied it (setParameters resolved).
    const ap = await until(async () => (await applied()).find((a) => a.tMsg === q.t && a.encodings) || null, 3000, 100);
    if (!ap) { timeout('dynacast: the publisher did not apply publish-layers ["q"] within 3 s'); return; }
    D.appliedQ = { atMs: rel(ap.t), sinceMessageMs: ap.t - q.t, tookMs: ap.tookMs, changed: ap.changed, encodings: ap.encodings, error: ap.error };
    // Step 5: h and f stop, q goes on, both still decode q.
    await sleep(DYN_SETTLE);
    const s1 = await pubSample();
    await sleep(DYN_GAP);
    const s2 = await pubSample();
    await sleep(DYN_GAP);
    const s3 = await pubSample();
    const delta = (a, b) => Object.fromEntries(['q', 'h', 'f'].map((r) => [r, a.bytes[r] == null || b.bytes[r] == null ? null : b.bytes[r] - a.bytes[r]]));
    D.bytes = {
      settleMs: DYN_SETTLE, samples: [s1, s2, s3].map(({ t, ...rest }) => rest),
      delta: delta(s1, s2), deltaToLast: delta(s1, s3),
    };
    for (const [who, p] of [['A', A], ['B', B]]) D.subsLow[who] = await decodedIn(p, s1.t, s3.t);
    // Step 6: B asks high again; f is listed, re-activated, and B decodes it.
    const tHigh = await subscribe(B, 'high');
    const H6 = D.high = { requestMs: rel(tHigh), f: null, applied: null, bReachedMs: null, bWidth: null, update: null, subs: {}, pubAtReached: null };
    const f = await until(async () => (await msgs()).find((m) => m.t >= tHigh && Array.isArray(m.layers) && m.layers.includes('f')) || null, DYN_F_WAIT, 100);
    if (!f) { timeout(`dynacast: the publisher got no publish-layers with "f" within ${DYN_F_WAIT} ms of B asking high`); return; }
    H6.f = { atMs: rel(f.t), sinceRequestMs: f.t - tHigh, layers: f.layers };
    const apf = await until(async () => (await applied()).find((a) => a.tMsg === f.t && a.encodings) || null, 3000, 100);
    if (apf) H6.applied = { atMs: rel(apf.t), sinceMessageMs: apf.t - f.t, tookMs: apf.tookMs, changed: apf.changed, encodings: apf.encodings, error: apf.error };
    else timeout('dynacast: the publisher did not apply the publish-layers with "f" within 3 s');
    const reached = await until(async () => { const v = await latestVideo(B); return v && v.frameWidth === w.f ? Date.now() : null; }, Math.max(0, DYN_B_WAIT - (Date.now() - tHigh)), 100);
    if (reached) {
      H6.bReachedMs = reached - tHigh;
      H6.pubAtReached = await pubSample();
      delete H6.pubAtReached.t;
      await sleep(1000); // B stays at f, A stays at q
    } else timeout(`dynacast: B not back at width ${w.f} within ${DYN_B_WAIT} ms of asking high`);
    H6.bWidth = (await latestVideo(B))?.frameWidth ?? null;
    const upd = (await B.evaluate(() => H.subUpdates)).filter((u) => u.t >= tHigh && u.trackId === summary.trackId);
    H6.update = upd.find((u) => u.layer === 'f') || null;
    if (H6.update) H6.update = { layer: H6.update.layer, reason: H6.update.reason, atMs: rel(H6.update.t), sinceRequestMs: H6.update.t - tHigh };
    H6.updates = upd.map((u) => ({ layer: u.layer, reason: u.reason, sinceRequestMs: u.t - tHigh }));
    const tEnd = Date.now();
    for (const [who, p] of [['A', A], ['B', B]]) H6.subs[who] = await decodedIn(p, reached || tHigh, tEnd);
    H6.subs.B.untilReached = await decodedIn(B, tHigh, reached || tEnd);
  } finally {
    D.endMs = rel(Date.now());
    try {
      D.messages = (await msgs()).map((m) => ({ atMs: rel(m.t), layers: m.layers }));
      D.applied = (await applied()).map((a) => ({ atMs: rel(a.t), layers: a.layers, changed: a.changed, encodings: a.encodings, error: a.error, tookMs: a.tookMs }));
    } catch (e) { summary.errors.push(`dynacast report: ${e.message}`); }
  }
}

async function latestVideo(p) { return (await p.evaluate(() => H.latest()))?.video || null; }

async function until(fn, ms, step = 250) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() >= end) return null;
    if (step) await sleep(step);
  }
}

function timeout(what) { summary.timeouts.push(what); }

// Widths, frames, stalls and losses per subscriber per phase, from the samples.
async function collect() {
  const { pub, A, B } = pages;
  const from = tDecoding || T0;
  summary.publisherLayersOverTime = (await pub.evaluate(() => H.pubSamples)).filter((_, i) => i % 4 === 0)
    .map((s) => ({ atMs: s.t - T0, ...Object.fromEntries(Object.entries(s.layers).map(([r, l]) => [r, { w: l.frameWidth, kB: Math.round(l.bytesSent / 1000), fps: l.framesPerSecond, lim: l.qualityLimitationReason }])) }));
  summary.publisherLayersEnd = (await pub.evaluate(() => H.pubStats())).layers;
  summary.publisherReport = await pub.evaluate(() => H.report());
  summary.publishLayersAll = summary.publisherReport.publishLayers.map((m) => ({ atMs: m.t - T0, trackId: m.trackId, layers: m.layers }));
  for (const [who, p] of [['A', A], ['B', B]]) {
    const samples = (await p.evaluate(() => H.samples)).filter((s) => s.video);
    const rep = await p.evaluate(() => H.report());
    const last = samples[samples.length - 1]?.video || {};
    const firstDecode = samples.find((s) => s.video.framesDecoded > 0);
    const stall = (from, to) => {
      let max = 0, lastT = null, lastF = null;
      for (const s of samples) {
        if (s.t < from || s.t > to) continue;
        if (lastF === null || s.video.framesDecoded > lastF) { lastF = s.video.framesDecoded; lastT = s.t; } else max = Math.max(max, s.t - lastT);
      }
      return max;
    };
    const phases = {};
    for (const [label, ph] of Object.entries(summary.phases)) {
      const inP = samples.filter((s) => s.t >= ph._t0 && s.t <= ph._t1);
      const widths = {};
      for (const s of inP) widths[s.video.frameWidth] = (widths[s.video.frameWidth] || 0) + 1;
      // After the watched subscriber reached its layer: what this one showed.
      const after = ph._reached ? inP.filter((s) => s.t >= ph._reached) : [];
      const widthsAfter = {};
      for (const s of after) widthsAfter[s.video.frameWidth] = (widthsAfter[s.video.frameWidth] || 0) + 1;
      phases[label] = {
        widths, widthsAfterReached: widthsAfter, samples: inP.length,
        framesStart: inP[0]?.video.framesDecoded ?? null, framesEnd: inP[inP.length - 1]?.video.framesDecoded ?? null,
        framesDecodedDelta: inP.length ? inP[inP.length - 1].video.framesDecoded - inP[0].video.framesDecoded : 0,
        maxStallMs: stall(ph._t0, ph._t1),
        packetsLostEnd: inP[inP.length - 1]?.video.packetsLost ?? null,
        updates: rep.subUpdates.filter((u) => u.t >= ph._t0 && u.t <= ph._t1).map((u) => ({ ...u, atMs: u.t - ph._t0 })),
      };
    }
    summary.subs[who] = {
      firstDecodeMs: firstDecode ? firstDecode.t - T0 : null,
      maxStallMs: stall(from, Infinity),
      packetsLost: last.packetsLost ?? null, packetsLostMax: Math.max(0, ...samples.map((s) => s.video.packetsLost)),
      audioLost: samples[samples.length - 1]?.audio?.packetsLost ?? null,
      framesDecoded: last.framesDecoded ?? 0, framesDropped: last.framesDropped ?? 0, keyFramesDecoded: last.keyFramesDecoded ?? 0,
      pliCount: last.pliCount ?? 0, nackCount: last.nackCount ?? 0, firCount: last.firCount ?? 0, freezeCount: last.freezeCount ?? 0,
      ssrcs: [...new Set(samples.map((s) => s.video.ssrc))],
      codecs: [...new Set(samples.map((s) => s.video.codec).filter(Boolean))],
      widthsSeen: [...new Set(samples.map((s) => s.video.frameWidth))],
      subscriptionUpdates: rep.subUpdates.map((u) => ({ ...u, atMs: u.t - T0 })),
      phases, counts: rep.counts, wsErrors: rep.wsErrors, errors: rep.errors, pcStates: rep.pcStates.map((s) => ({ ...s, atMs: s.t - T0 })), offers: rep.offers, closed: rep.closed,
    };
  }
  for (const ph of Object.values(summary.phases)) { delete ph._reached; delete ph._t0; delete ph._t1; }
  collected = true;
  verdict();
}

// This script's own reading of the observations (tests/simulcast.rs asserts them itself).
function verdict() {
  const f = summary.failures, w = summary.widths || {}, P = summary.phases, S = summary.subs;
  const pl = summary.publisherLayers || {};
  for (const r of ['q', 'h', 'f']) if (!pl[r] || !pl[r].bytesSent) f.push(`publisher does not send rid ${r}`);
  if (!(w.widest >= 1280 || w.widest === w.f)) f.push(`default width ${w.widest}`);
  for (const [label, ph] of Object.entries(P)) {
    if (ph.reachedMs === null || ph.reachedMs > 5000) f.push(`${label}: ${ph.watch} not at ${ph.target} within 5 s (${ph.reachedMs})`);
    if (ph.quality && !ph.update) f.push(`${label}: no subscription-update`);
    for (const who of ['A', 'B']) if (S[who] && !(S[who].phases[label]?.framesDecodedDelta > 0)) f.push(`${label}: ${who} decoded no frames`);
  }
  if (S.B?.phases.low && Object.keys(S.B.phases.low.widths).some((x) => Number(x) !== w.widest)) f.push(`B left the full layer while A was low: ${JSON.stringify(S.B.phases.low.widths)}`);
  for (const who of ['A', 'B']) if (S[who] && S[who].packetsLost !== 0) f.push(`${who} lost ${S[who].packetsLost} packets`);
  const D = summary.dynacast;
  if (!D) f.push('dynacast: phase not run');
  else {
    if (!D.q) f.push('dynacast: no publish-layers ["q"]');
    else if (D.q.sinceRequestMs > 8000 || D.q.sinceFirstRequestMs < 4800) f.push(`dynacast: publish-layers ["q"] ${D.q.sinceRequestMs} ms after both asked low (want 5..8 s)`);
    if (D.q && !(D.appliedQ && !D.appliedQ.error && D.appliedQ.encodings.q === true && D.appliedQ.encodings.h === false && D.appliedQ.encodings.f === false)) f.push(`dynacast: ["q"] not applied: ${JSON.stringify(D.appliedQ)}`);
    if (D.bytes) {
      const d = D.bytes.delta;
      if (!(d.h <= 2500 && d.f <= 2500)) f.push(`dynacast: h/f bytesSent still growing: ${JSON.stringify(d)}`);
      if (!(d.q > 0)) f.push(`dynacast: q bytesSent not growing: ${JSON.stringify(d)}`);
      for (const who of ['A', 'B']) {
        const x = D.subsLow[who];
        if (!x || !(x.framesDecodedDelta > 0) || Object.keys(x.widths).some((k) => Number(k) !== w.q)) f.push(`dynacast: ${who} not decoding q with h/f off: ${JSON.stringify(x)}`);
      }
    }
    if (D.bytes && !(D.high && D.high.f && D.high.f.sinceRequestMs <= 3000)) f.push(`dynacast: no publish-layers with "f" within 3 s of B asking high: ${JSON.stringify(D.high && D.high.f)}`);
    if (D.high && D.high.f && !(D.high.applied && !D.high.applied.error && D.high.applied.encodings.f === true)) f.push(`dynacast: f not re-activated: ${JSON.stringify(D.high.applied)}`);
    if (D.high && D.high.f && !(D.high.bReachedMs !== null && D.high.bReachedMs <= 8000)) f.push(`dynacast: B not back at f within 8 s (${D.high.bReachedMs})`);
  }
  if (summary.errors.length) f.push(`page errors: ${summary.errors.length}`);
  if (summary.timeouts.length) f.push(...summary.timeouts.map((t) => `timeout: ${t}`));
}

process.on('unhandledRejection', (e) => finish(e));
main().then(() => finish(null), (e) => finish(e));
