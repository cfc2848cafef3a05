// Bandwidth adaptation through the SFU, seen by real browsers (SPEC 5.1
// "Downstream estimate", "Allocation", "Telling the client"): a publisher
// context sends its fake 1280x720 camera as three VP8 layers (rids q, h, f,
// scaleResolutionDownBy 4, 2, 1) plus its fake microphone; two subscriber
// contexts join the same room and answer the server's subscribe-offers:
//   U  connects to the server directly (uncapped),
//   C  reaches the server only through a UDP proxy written here (node dgram,
//      127.0.0.1 only). Its page rewrites the server's candidates in every
//      subscribe-offer (and every trickled subscriber room-ice-candidate) to the
//      proxy's port before applying them; the proxy opens one upstream socket per
//      client source address to the server's media port and relays both ways.
//      The server->client direction goes through a token bucket (cap, bucket
//      15 kB) with a short drop-tail queue (60 ms at the cap); what does not fit
//      is dropped. Client->server (transport-cc feedback, NACK, PLI) is not limited.
//      Datagrams from sources other than 127.0.0.1 (Chromium also checks from its
//      other interfaces) are refused, so C's only working path is loopback via the
//      proxy. The proxy counts what it carried by kind, RTP payload type and
//      header extensions, and C's RTCP by type (transport-cc feedback is 205/15).
// Both subscribers are Chromium, so they negotiate transport-cc with the server.
// Phases:
//   warmup  no cap: C and U both decode f (the widest layer the publisher sends)
//   capped  the proxy caps C at 600 kbit/s for CAP_HOLD: when C's decoded width
//           first drops below f, every subscription-update C gets, C's video
//           loss (inbound-rtp deltas over the phase), C's audio packetsReceived
//           per 5 s window, U's widths (should stay f); at its end the room's
//           analytics (bandwidthEstimateKbps per participant) and /metrics
//   lifted  no cap: when C is back at >= h, when it has stayed >= h for 3 s, and
//           when it is at f (waits up to LIFT_WAIT)
// The room's analytics are polled every 2 s throughout (estimates over time).
// The script only observes and reports: it prints one JSON summary line last on
// stdout (also after a timeout or a crash, with `crash` set); tests/bandwidth.rs
// judges it. `failures` lists what this script itself thinks went wrong, for a
// human reading the line; exit code 0 when empty, 1 when not, 2 on a crash.
// usage: node bandwidth.js http://HOST:PORT
'use strict';
const dgram = require('dgram');
const { performance } = require('perf_hooks');
const { launch, openPage } = require('./harness');

const base = process.argv[2];
if (!base) { console.error('usage: node bandwidth.js http://HOST:PORT'); process.exit(2); }
const T0 = Date.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (...a) => console.error(`[${((Date.now() - T0) / 1000).toFixed(1)}s]`, ...a);
const rel = (t) => (t == null ? null : t - T0);

const CAP_BPS = 600000; // the capped link, bits per second
const BUCKET_BYTES = 15000; // token bucket depth
const QUEUE_BYTES = Math.round(CAP_BPS * 0.060 / 8); // drop-tail queue: 60 ms at the cap (4500 B)
const WARM_WAIT = 20000; // both subscribers at f (ramp-up may go q -> h -> f, one step up per 5 s)
const WARM_HOLD = 4000; // the estimator sees the uncapped link for a while
const CAP_HOLD = 25000; // how long the cap stays on (the test wants C below f within 15 s)
const LIFT_WAIT = 35000; // after the lift: C back at >= h (the test wants <= 25 s) and at f
const LIFT_HOLD = 3000; // observation after C is back at f
const H_STABLE = 3000; // C counts as back at >= h once it stayed there this long
const WINDOW_MS = 5000; // audio must grow in every window of this length while capped
const DEADLINE = 104000; // phases end early to finish before the watchdog
const NOMINAL = { q: 4, h: 2, f: 1 };

const summary = {
  base, crash: null, failures: [], timeouts: [], errors: [], elapsedMs: 0,
  roomId: null, trackId: null, users: {},
  link: { capBps: CAP_BPS, bucketBytes: BUCKET_BYTES, queueBytes: QUEUE_BYTES },
  publisher: null, publisherLayers: null, widths: null,
  estimates: null, proxy: null, proxyRateColumns: ['atMs', 'offeredKbps', 'deliveredKbps', 'dropped', 'offeredByPayloadType'], path: {}, twcc: null, candidates: null,
  warmup: null, capped: null, lifted: null,
  subs: {}, timeline: {}, analyticsOverTime: [], analyticsAtCapEnd: null, metrics: {}, proxyRate: [], publisherOverTime: [],
};
let browser = null;
let finished = false;
const pages = {}; // pub, U, C once open
let collected = false;
const tokens = {}; // guest tokens per page (kept out of the summary)
const phaseT = {}; // warm0, warm1, cap0, cap1, lift0, lift1 (ms since epoch)
let analyticsTimer = null;

// ---------------------------------------------------------------------------
// The capped link: one UDP proxy per upstream (server media) address.
class Shaper {
  constructor(stats) { this.rate = Infinity; this.tokens = BUCKET_BYTES; this.last = performance.now(); this.queue = []; this.qbytes = 0; this.timer = null; this.stats = stats; }
  refill() {
    const t = performance.now();
    if (Number.isFinite(this.rate)) this.tokens = Math.min(BUCKET_BYTES, this.tokens + (t - this.last) / 1000 * this.rate / 8);
    this.last = t;
  }
  setRate(bps) {
    this.refill();
    this.rate = bps;
    this.tokens = BUCKET_BYTES;
    if (!Number.isFinite(bps)) { if (this.timer) clearTimeout(this.timer); this.timer = null; const q = this.queue; this.queue = []; this.qbytes = 0; for (const p of q) p.send(); }
  }
  push(len, send, kind) {
    const st = this.stats;
    st.offered++; st.offeredBytes += len; st.byKind[kind] = st.byKind[kind] || { offered: 0, dropped: 0 }; st.byKind[kind].offered++;
    if (!Number.isFinite(this.rate)) { st.delivered++; st.deliveredBytes += len; send(); return; }
    this.refill();
    const deliver = () => { st.delivered++; st.deliveredBytes += len; send(); };
    if (this.queue.length === 0 && this.tokens >= len) { this.tokens -= len; deliver(); return; }
    if (this.qbytes + len > QUEUE_BYTES) { st.dropped++; st.droppedBytes += len; st.byKind[kind].dropped++; return; }
    this.queue.push({ len, send: deliver, at: performance.now() });
    this.qbytes += len;
    st.maxQueueBytes = Math.max(st.maxQueueBytes, this.qbytes);
    this.schedule();
  }
  schedule() {
    if (this.timer || this.queue.length === 0) return;
    const need = this.queue[0].len - this.tokens;
    const ms = need <= 0 ? 0 : need * 8 / this.rate * 1000;
    this.timer = setTimeout(() => { this.timer = null; this.drain(); }, Math.max(0, ms));
  }
  drain() {
    this.refill();
    while (this.queue.length && (!Number.isFinite(this.rate) || this.tokens >= this.queue[0].len)) {
      const p = this.queue.shift();
      this.qbytes -= p.len;
      if (Number.isFinite(this.rate)) this.tokens -= p.len;
      this.stats.maxQueueDelayMs = Math.max(this.stats.maxQueueDelayMs, performance.now() - p.at);
      p.send();
    }
    this.schedule();
  }
}

// The header extension ids of an RTP packet (the header is in the clear under SRTP).
function rtpExtIds(m) {
  const ids = [];
  if (m.length < 12 || !(m[0] & 0x10)) return ids;
  let i = 12 + 4 * (m[0] & 0x0f);
  if (m.length < i + 4) return ids;
  const profile = m.readUInt16BE(i), end = i + 4 + 4 * m.readUInt16BE(i + 2);
  i += 4;
  if (end > m.length) return ids;
  while (i < end) {
    if (profile === 0xbede) {
      const b = m[i]; if (b === 0) { i++; continue; }
      const id = b >> 4; if (id === 15) break;
      ids.push(id); i += 1 + (b & 0x0f) + 1;
    } else if ((profile & 0xfff0) === 0x1000) {
      const id = m[i]; if (id === 0) { i++; continue; }
      ids.push(id); i += 2 + m[i + 1];
    } else break;
  }
  return ids;
}
// What the link carried, by type: server->client RTP by "pt:extension ids", client->server
// RTCP by "pt/fmt" of the first (unencrypted) header: 205/15 is transport-cc feedback,
// 205/1 NACK, 206/1 PLI, 206/15 REMB, 201 RR, 200 SR.
const wire = { s2cRtpExt: {}, c2sRtcp: {} };
const kindOf = (m) => {
  const b = m[0];
  if (b <= 3) return 'stun';
  if (b >= 20 && b <= 63) return 'dtls';
  if (b >= 128 && b <= 191) return m.length > 1 && m[1] >= 192 && m[1] <= 223 ? 'rtcp' : 'rtp';
  return 'other';
};

const proxies = new Map(); // "host:port" upstream -> proxy
const newStats = () => ({ offered: 0, offeredBytes: 0, delivered: 0, deliveredBytes: 0, dropped: 0, droppedBytes: 0, maxQueueBytes: 0, maxQueueDelayMs: 0, byKind: {} });
async function proxyFor(host, port) {
  const key = `${host}:${port}`;
  if (proxies.has(key)) return (await proxies.get(key).ready).port;
  const P = { upstream: key, host, port: null, clients: new Map(), refused: {}, c2s: { packets: 0, bytes: 0 }, s2c: newStats(), sock: dgram.createSocket('udp4') };
  P.shaper = new Shaper(P.s2c);
  if (Number.isFinite(currentCap)) P.shaper.setRate(currentCap);
  proxies.set(key, P);
  P.sock.on('error', (e) => summary.errors.push(`proxy ${key}: ${e.message}`));
  P.sock.on('message', (msg, rinfo) => {
    const ck = `${rinfo.address}:${rinfo.port}`;
    // 127.0.0.1 only: Chromium also checks from its other interfaces; those pairs must fail.
    if (rinfo.address !== '127.0.0.1') { P.refused[ck] = (P.refused[ck] || 0) + 1; return; }
    let c = P.clients.get(ck);
    if (!c) {
      c = { addr: rinfo.address, port: rinfo.port, up: dgram.createSocket('udp4'), bound: false, backlog: [], firstAt: Date.now(), upPort: null };
      P.clients.set(ck, c);
      c.up.on('error', (e) => summary.errors.push(`proxy upstream ${ck}: ${e.message}`));
      c.up.on('message', (m) => {
        const kind = kindOf(m);
        if (kind === 'rtp') {
          const pt = m[1] & 0x7f, e = ptNow[pt] || (ptNow[pt] = { bytes: 0, packets: 0, padded: 0 }); e.bytes += m.length; e.packets++; if (m[0] & 0x20) e.padded++;
          const ids = rtpExtIds(m), k = `${pt}:${ids.length ? ids.join(',') : '-'}`;
          wire.s2cRtpExt[k] = (wire.s2cRtpExt[k] || 0) + 1;
        }
        P.shaper.push(m.length, () => P.sock.send(m, c.port, c.addr), kind);
      });
      c.up.bind({ address: '127.0.0.1', port: 0 }, () => {
        c.bound = true; c.upPort = c.up.address().port;
        for (const m of c.backlog) c.up.send(m, port, host);
        c.backlog = [];
      });
    }
    P.c2s.packets++; P.c2s.bytes += msg.length;
    if (kindOf(msg) === 'rtcp') { const k = `${msg[1]}/${msg[0] & 0x1f}`; wire.c2sRtcp[k] = (wire.c2sRtcp[k] || 0) + 1; }
    if (c.bound) c.up.send(msg, port, host); else c.backlog.push(msg);
  });
  P.ready = new Promise((resolve, reject) => {
    P.sock.once('error', reject);
    P.sock.bind({ address: '127.0.0.1', port: 0 }, () => { P.port = P.sock.address().port; resolve(P); });
  });
  await P.ready;
  log(`proxy 127.0.0.1:${P.port} -> ${key}`);
  return P.port;
}
let currentCap = Infinity;
let ptNow = {}; // RTP the server sent towards C this second, by payload type (before the cap)
const capEvents = [];
function setCap(bps) {
  currentCap = bps;
  capEvents.push({ atMs: rel(Date.now()), bps: Number.isFinite(bps) ? bps : null });
  for (const P of proxies.values()) P.shaper.setRate(bps);
}
// What the proxies carried so far (all upstreams together).
function proxyTotals() {
  const t = { c2sPackets: 0, c2sBytes: 0, ...newStats(), byKind: {} };
  for (const P of proxies.values()) {
    t.c2sPackets += P.c2s.packets; t.c2sBytes += P.c2s.bytes;
    for (const k of ['offered', 'offeredBytes', 'delivered', 'deliveredBytes', 'dropped', 'droppedBytes']) t[k] += P.s2c[k];
    t.maxQueueBytes = Math.max(t.maxQueueBytes, P.s2c.maxQueueBytes);
    t.maxQueueDelayMs = Math.max(t.maxQueueDelayMs, Math.round(P.s2c.maxQueueDelayMs));
    for (const [k, v] of Object.entries(P.s2c.byKind)) { t.byKind[k] = t.byKind[k] || { offered: 0, dropped: 0 }; t.byKind[k].offered += v.offered; t.byKind[k].dropped += v.dropped; }
  }
  return t;
}
const diffTotals = (a, b) => {
  const d = {};
  for (const k of ['c2sPackets', 'c2sBytes', 'offered', 'offeredBytes', 'delivered', 'deliveredBytes', 'dropped', 'droppedBytes']) d[k] = b[k] - a[k];
  d.dropFraction = d.offered ? +(d.dropped / d.offered).toFixed(4) : null;
  return d;
};
// Per second: what the server offered C's link and what got through.
let lastRate = null;
const rateTimer = setInterval(() => {
  const t = proxyTotals();
  if (lastRate && proxies.size) {
    const dt = (Date.now() - lastRate.at) / 1000;
    const byPt = Object.fromEntries(Object.entries(ptNow).map(([pt, e]) => [pt, `${Math.round(e.bytes * 8 / dt / 1000)}k/${e.packets}p${e.padded ? `/${e.padded}pad` : ''}`]));
    summary.proxyRate.push([rel(Date.now()), Math.round((t.offeredBytes - lastRate.t.offeredBytes) * 8 / dt / 1000), Math.round((t.deliveredBytes - lastRate.t.deliveredBytes) * 8 / dt / 1000), t.dropped - lastRate.t.dropped, byPt]);
  }
  ptNow = {};
  lastRate = { at: Date.now(), t };
}, 1000);
rateTimer.unref();

// ---------------------------------------------------------------------------
async function finish(crash) {
  if (finished) return;
  finished = true;
  if (crash) summary.crash = String(crash && crash.stack || crash);
  if (analyticsTimer) clearInterval(analyticsTimer);
  if (!collected && pages.C && pages.U) {
    try { await Promise.race([collect(), sleep(8000)]); } catch (e) { summary.errors.push(`collect: ${e.message}`); }
  }
  if (!collected) { try { verdict(); } catch (e) { summary.errors.push(`verdict: ${e.message}`); } }
  summary.elapsedMs = Date.now() - T0;
  try { if (browser) await Promise.race([browser.close(), sleep(5000)]); } catch (e) { summary.errors.push(`browser.close: ${e.message}`); }
  for (const P of proxies.values()) { try { P.sock.close(); for (const c of P.clients.values()) c.up.close(); } catch { /* closed */ } }
  console.log(JSON.stringify(summary));
  process.exit(summary.crash ? 2 : summary.failures.length ? 1 : 0);
}
const watchdog = setTimeout(() => finish('watchdog: the script ran over 110 s'), 110000);
watchdog.unref();

// ---------------------------------------------------------------------------
async function latest(p) { return (await p.evaluate(() => H.latest())) || null; }
async function latestVideo(p) { return (await latest(p))?.video || null; }
async function until(fn, ms, step = 250) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() >= end) return null;
    if (step) await sleep(step);
  }
}
const timeout = (what) => { summary.timeouts.push(what); log(`timeout: ${what}`); };
const left = () => DEADLINE - (Date.now() - T0);

async function getJson(path, token) {
  const r = await fetch(`${base}${path}`, { headers: token ? { Authorization: `Bearer ${token}` } : {}, signal: AbortSignal.timeout(3000) });
  const text = await r.text();
  if (!r.ok) throw new Error(`GET ${path}: HTTP ${r.status} ${text.slice(0, 200)}`);
  return path === '/metrics' ? text : JSON.parse(text);
}
const METRIC_RE = /^confer_(bandwidth_estimate_bytes_per_second|layer_switches_total|tracks_paused)/;
async function metricsSnapshot(label) {
  try {
    const text = await getJson('/metrics');
    summary.metrics[label] = { atMs: rel(Date.now()), lines: text.split('\n').filter((l) => METRIC_RE.test(l)) };
  } catch (e) { summary.metrics[label] = { error: e.message }; }
}
// The room's analytics, reduced to what this test reads, per participant name.
function reduceAnalytics(a) {
  const byUser = Object.fromEntries(Object.entries(summary.users).map(([n, u]) => [u.userId, n]));
  const out = { atMs: rel(Date.now()) };
  a = (a && a.analytics) || a;
  for (const p of (a && a.participants) || []) {
    const n = byUser[p.userId] || p.userId;
    const v = p.subscribe && p.subscribe.video, au = p.subscribe && p.subscribe.audio;
    out[n] = {
      bwe: p.bandwidthEstimateKbps ?? null,
      layer: v ? v.layer ?? null : null, switches: v ? v.layerSwitches ?? null : null,
      vKbps: v ? v.bitrateKbps ?? null : null, vPackets: v ? v.packets ?? null : null, vLost: v ? v.packetsLost ?? null : null, vNack: v ? v.nackCount ?? null : null,
      aPackets: au ? au.packets ?? null : null,
    };
  }
  return out;
}
async function pollAnalytics() {
  const tok = tokens.C;
  if (!tok || !summary.roomId) return null;
  try {
    const a = await getJson(`/rooms/${summary.roomId}/analytics`, tok);
    const r = reduceAnalytics(a);
    summary.analyticsOverTime.push(r);
    return { raw: a, reduced: r };
  } catch (e) { summary.analyticsOverTime.push({ atMs: rel(Date.now()), error: e.message }); return null; }
}

// ---------------------------------------------------------------------------
async function main() {
  browser = await launch();
  const mk = async (name, key, viaProxy) => {
    const { page, userId, token } = await openPage(browser, base, name, summary.errors, viaProxy ? proxyFor : null);
    summary.users[key] = { userId };
    tokens[key] = token;
    return page;
  };
  const pub = pages.pub = await mk('Publisher', 'pub', false);
  const U = pages.U = await mk('SubU', 'U', false);
  const C = pages.C = await mk('SubC', 'C', true);
  log('pages open');

  summary.roomId = await pub.evaluate((n) => H.createRoom(n), `bandwidth-${Date.now()}`);
  await pub.evaluate((r) => H.join(r), summary.roomId);
  const fmtp = 'x-google-min-bitrate=1500;x-google-start-bitrate=2000';
  summary.publisher = await pub.evaluate((o) => H.publish(o), { width: 1280, height: 720, fmtp });
  await pub.evaluate(() => H.startSampling('pub', 500));
  await U.evaluate((r) => H.join(r), summary.roomId);
  await C.evaluate((r) => H.join(r), summary.roomId);
  for (const p of [U, C]) await p.evaluate(() => H.startSampling('sub', 250));
  analyticsTimer = setInterval(() => { pollAnalytics(); }, 2000);
  log('joined');

  const tid = await until(async () => {
    const u = await U.evaluate(() => H.trackOf('video', 'camera')), c = await C.evaluate(() => H.trackOf('video', 'camera'));
    return u && c ? [u, c] : null;
  }, 10000);
  if (!tid) return timeout('track-published for the camera at both subscribers');
  if (tid[0] !== tid[1]) summary.failures.push(`U and C disagree on the camera track id: ${tid}`);
  summary.trackId = tid[0];
  for (const p of [U, C]) await p.evaluate((t) => { H.cameraTrackId = t; }, summary.trackId);

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
  if (!allSend) timeout(`publisher: not all of q, h, f sending within 12 s: ${Object.keys(summary.publisherLayers)}`);
  const pubWidth = async (rid) => {
    const l = (await pubLayers())[rid];
    return l && l.frameWidth ? l.frameWidth : Math.round((summary.publisher.capture.width || 1280) / NOMINAL[rid]);
  };
  const widest = async () => {
    const ls = Object.values(await pubLayers()).filter((l) => l.frameWidth > 0);
    return ls.length ? Math.max(...ls.map((l) => l.frameWidth)) : 1280;
  };

  // ---- warmup: no cap, both at f.
  phaseT.warm0 = Date.now();
  log('warmup');
  let wf = null;
  const warm = await until(async () => {
    wf = await widest();
    const [u, c] = [await latestVideo(U), await latestVideo(C)];
    return u && c && u.frameWidth === wf && c.frameWidth === wf ? Date.now() : null;
  }, WARM_WAIT);
  summary.widths = { q: await pubWidth('q'), h: await pubWidth('h'), f: await pubWidth('f'), widest: wf };
  const [u0, c0] = [await latestVideo(U), await latestVideo(C)];
  summary.warmup = { startMs: rel(phaseT.warm0), reachedMs: warm ? warm - phaseT.warm0 : null, target: wf, U: u0 && u0.frameWidth, C: c0 && c0.frameWidth };
  if (!warm) timeout(`warmup: C (${c0 && c0.frameWidth}) and U (${u0 && u0.frameWidth}) not both at width ${wf} within ${WARM_WAIT} ms`);
  else await sleep(WARM_HOLD);
  phaseT.warm1 = Date.now();
  summary.path.warmupEnd = { C: (await latest(C))?.path || null, U: (await latest(U))?.path || null };
  await metricsSnapshot('warmupEnd');
  await pollAnalytics();

  // ---- capped: 600 kbit/s on C's link.
  const wF = summary.widths.f, wH = summary.widths.h;
  const P0 = proxyTotals();
  phaseT.cap0 = Date.now();
  setCap(CAP_BPS);
  log(`cap ${CAP_BPS} bit/s`);
  const cap = summary.capped = { startMs: rel(phaseT.cap0), holdMs: CAP_HOLD, firstBelowFMs: null, widthWhenBelow: null };
  while (Date.now() - phaseT.cap0 < CAP_HOLD && left() > LIFT_WAIT / 2) {
    if (cap.firstBelowFMs === null) {
      const v = await latestVideo(C);
      if (v && v.frameWidth > 0 && v.frameWidth < wF) { cap.firstBelowFMs = Date.now() - phaseT.cap0; cap.widthWhenBelow = v.frameWidth; log(`C below f: ${v.frameWidth}`); }
    }
    await sleep(250);
  }
  phaseT.cap1 = Date.now();
  cap.endMs = rel(phaseT.cap1);
  cap.proxy = diffTotals(P0, proxyTotals());
  summary.path.capEnd = { C: (await latest(C))?.path || null, U: (await latest(U))?.path || null };
  const a = await pollAnalytics();
  summary.analyticsAtCapEnd = a ? a.reduced : null;
  summary.analyticsAtCapEndRaw = a ? { participants: (((a.raw && a.raw.analytics) || a.raw).participants || []).map((p) => ({ userId: p.userId, bandwidthEstimateKbps: p.bandwidthEstimateKbps, subscribe: p.subscribe })) } : null;
  await metricsSnapshot('capEnd');

  // ---- lifted: no cap; C climbs back.
  const P1 = proxyTotals();
  phaseT.lift0 = Date.now();
  setCap(Infinity);
  log('cap lifted');
  const lift = summary.lifted = { startMs: rel(phaseT.lift0), reachedHMs: null, reachedHStableMs: null, stableForMs: H_STABLE, reachedFMs: null, widthAtLift: (await latestVideo(C))?.frameWidth ?? null };
  const liftWait = Math.min(LIFT_WAIT, Math.max(5000, left()));
  lift.waitMs = liftWait;
  let heldSince = null, hSince = null;
  while (Date.now() - phaseT.lift0 < liftWait) {
    const v = await latestVideo(C);
    if (v && lift.reachedHMs === null && v.frameWidth >= wH) lift.reachedHMs = Date.now() - phaseT.lift0;
    // ... and stayed there (a flicker up and straight back down is not a climb back).
    if (v && v.frameWidth >= wH) { if (hSince === null) hSince = Date.now(); } else hSince = null;
    if (hSince !== null && lift.reachedHStableMs === null && Date.now() - hSince >= H_STABLE) lift.reachedHStableMs = hSince - phaseT.lift0;
    if (v && lift.reachedFMs === null && v.frameWidth >= wF) { lift.reachedFMs = Date.now() - phaseT.lift0; heldSince = Date.now(); log('C back at f'); }
    if (heldSince && Date.now() - heldSince >= LIFT_HOLD) break;
    await sleep(250);
  }
  if (lift.reachedHStableMs === null) timeout(`lifted: C did not stay at >= ${wH} for ${H_STABLE} ms within ${liftWait} ms`);
  if (lift.reachedHMs === null) timeout(`lifted: C not back at >= ${wH} within ${liftWait} ms`);
  if (lift.reachedFMs === null) timeout(`lifted: C not back at ${wF} within ${liftWait} ms`);
  phaseT.lift1 = Date.now();
  lift.endMs = rel(phaseT.lift1);
  lift.proxy = diffTotals(P1, proxyTotals());
  await pollAnalytics();
  await metricsSnapshot('end');
}

// ---------------------------------------------------------------------------
const hist = (ss) => { const h = {}; for (const s of ss) if (s.video) h[s.video.frameWidth] = (h[s.video.frameWidth] || 0) + 1; return h; };
const at = (ss, t) => { let r = null; for (const s of ss) { if (s.t <= t) r = s; else break; } return r; };
const firstAfter = (ss, t) => ss.find((s) => s.t >= t) || null;
function maxStall(ss, from, to) {
  let max = 0, lastT = null, lastF = null;
  for (const s of ss) {
    if (!s.video || s.t < from || s.t > to) continue;
    if (lastF === null || s.video.framesDecoded > lastF) { lastF = s.video.framesDecoded; lastT = s.t; } else max = Math.max(max, s.t - lastT);
  }
  return max;
}

async function collect() {
  const { pub, U, C } = pages;
  summary.proxy = {
    upstreams: [...proxies.values()].map((P) => ({
      upstream: P.upstream, port: P.port, clients: [...P.clients.values()].map((c) => ({ from: `${c.addr}:${c.port}`, upstreamPort: c.upPort, firstAtMs: rel(c.firstAt) })),
      refusedSources: P.refused, c2s: P.c2s, s2c: { ...P.s2c, maxQueueDelayMs: Math.round(P.s2c.maxQueueDelayMs) },
    })),
    ports: [...proxies.values()].map((P) => P.port), totals: proxyTotals(), capEvents, wire,
  };
  // The server's STUN answers tell C the address they came from: with the proxy in
  // between, C's local (srflx/prflx) candidate is the proxy's upstream socket.
  const upPorts = [...proxies.values()].flatMap((P) => [...P.clients.values()].map((c) => c.upPort));
  for (const v of Object.values(summary.path)) if (v && v.C) v.C.serverSeesProxyUpstream = upPorts.includes(v.C.localPort);
  const facts = await C.evaluate(() => H.sdpFacts());
  summary.twcc = { extId: facts.twccId, rtcpRsize: facts.rtcpRsize, C: { offer: facts.offer, answer: facts.answer }, U: await U.evaluate(() => { const f = H.sdpFacts(); return { offer: f.offer, answer: f.answer }; }) };
  summary.payloadTypes = facts.rtpmap;
  // bandwidthEstimateKbps per subscriber, each change once: [atMs, kbps].
  summary.estimates = {};
  for (const who of ['C', 'U']) {
    const out = summary.estimates[who] = [];
    for (const a of summary.analyticsOverTime) {
      const v = a[who] && a[who].bwe;
      if (v !== undefined && (!out.length || out[out.length - 1][1] !== v)) out.push([a.atMs, v]);
    }
  }
  summary.candidates = { offered: facts.offerCandidates, applied: facts.appliedCandidates, trickledIn: (await C.evaluate(() => H.cands)).trickledIn };
  try {
    const ps = (await pub.evaluate(() => H.pubSamples)).filter((_, i) => i % 4 === 0);
    summary.publisherOverTime = ps.map((s) => [rel(s.t), ...['q', 'h', 'f'].map((r) => (s.layers[r] ? `${s.layers[r].frameWidth}/${Math.round(s.layers[r].bytesSent / 1000)}kB${s.layers[r].qualityLimitationReason && s.layers[r].qualityLimitationReason !== 'none' ? '/' + s.layers[r].qualityLimitationReason : ''}` : null)), s.audio ? s.audio.packetsSent : null]);
  } catch (e) { summary.errors.push(`publisher samples: ${e.message}`); }
  for (const [who, p] of [['U', U], ['C', C]]) {
    const all = await p.evaluate(() => H.samples);
    const ss = all.filter((s) => s.video);
    const rep = await p.evaluate(() => H.report());
    const last = ss[ss.length - 1] || {};
    const paths = [...new Set(all.filter((s) => s.path).map((s) => `${s.path.remoteAddress}:${s.path.remotePort}/${s.path.remoteType}`))];
    summary.subs[who] = {
      userId: rep.userId, peerId: rep.peerId,
      firstDecodeMs: rel(ss.find((s) => s.video.framesDecoded > 0)?.t),
      widthsSeen: [...new Set(ss.map((s) => s.video.frameWidth))], ssrcs: [...new Set(ss.map((s) => s.video.ssrc))],
      last: last.video || null, lastAudio: last.audio || null, lastPath: last.path || null, remotePathsSeen: paths,
      subscriptionUpdates: rep.subUpdates.map((u) => ({ atMs: rel(u.t), trackId: u.trackId, layer: u.layer, reason: u.reason })),
      counts: rep.counts, wsErrors: rep.wsErrors, errors: rep.errors, pcStates: rep.pcStates.map((s) => ({ atMs: rel(s.t), pc: s.pc, state: s.state })), offers: rep.offers, closed: rep.closed,
    };
    // Once a second: width, fps, received video kbit/s, losses, audio packets.
    const tl = [];
    let prev = null;
    for (const s of all) {
      if (prev && s.t - prev.t < 1000) continue;
      const v = s.video, kbps = prev && prev.video && v ? Math.round((v.bytesReceived - prev.video.bytesReceived) * 8 / (s.t - prev.t)) : null;
      tl.push([rel(s.t), v ? v.frameWidth : null, v ? Math.round(v.framesPerSecond || 0) : null, kbps, v ? v.packetsLost : null, s.audio ? s.audio.packetsReceived : null]);
      prev = s;
    }
    summary.timeline[who] = { columns: ['atMs', 'width', 'fps', 'videoKbps', 'videoPacketsLost', 'audioPacketsReceived'], rows: tl };
    for (const [label, t0k, t1k] of [['warmup', 'warm0', 'warm1'], ['capped', 'cap0', 'cap1'], ['lifted', 'lift0', 'lift1']]) {
      const ph = summary[label];
      if (!ph || !phaseT[t0k] || !phaseT[t1k]) continue;
      const t0 = phaseT[t0k], t1 = phaseT[t1k];
      const inP = ss.filter((s) => s.t >= t0 && s.t <= t1);
      const a0 = firstAfter(ss, t0), a1 = at(ss, t1);
      const o = ph[who] = {
        widths: hist(inP), samples: inP.length,
        framesDecodedDelta: a0 && a1 ? a1.video.framesDecoded - a0.video.framesDecoded : 0, maxStallMs: maxStall(ss, t0, t1),
        // Frames decoded in the phase's last 5 s: still getting video (a layer, not a pause).
        framesLast5s: (() => { const b0 = at(ss, t1 - 5000), b1 = at(ss, t1); return b0 && b1 && b0 !== b1 ? b1.video.framesDecoded - b0.video.framesDecoded : 0; })(),
        updates: rep.subUpdates.filter((u) => u.t >= t0 && u.t <= t1).map((u) => ({ sincePhaseMs: u.t - t0, trackId: u.trackId, layer: u.layer, reason: u.reason })),
      };
      if (a0 && a1) {
        const dl = a1.video.packetsLost - a0.video.packetsLost, dr = a1.video.packetsReceived - a0.video.packetsReceived;
        o.video = { packetsLost: dl, packetsReceived: dr, lossFraction: dl + dr > 0 ? +(Math.max(0, dl) / (Math.max(0, dl) + dr)).toFixed(4) : null, nacks: a1.video.nackCount - a0.video.nackCount, plis: a1.video.pliCount - a0.video.pliCount, freezes: a1.video.freezeCount - a0.video.freezeCount, retransmitted: a1.video.retransmittedPacketsReceived - a0.video.retransmittedPacketsReceived, kbps: Math.round((a1.video.bytesReceived - a0.video.bytesReceived) * 8 / Math.max(1, a1.t - a0.t)) };
      }
      if (label === 'capped') {
        // Audio packetsReceived growth per 5 s window of the capped phase.
        const aud = all.filter((s) => s.audio);
        const windows = [];
        for (let w0 = t0; w0 + WINDOW_MS <= t1 + 250; w0 += WINDOW_MS) {
          const s0 = at(aud, w0) || firstAfter(aud, w0), s1 = at(aud, w0 + WINDOW_MS);
          windows.push(s0 && s1 ? s1.audio.packetsReceived - s0.audio.packetsReceived : null);
        }
        const b0 = firstAfter(aud, t0), b1 = at(aud, t1);
        o.audio = { windowMs: WINDOW_MS, windows, minWindow: windows.length ? Math.min(...windows.map((x) => (x == null ? -1 : x))) : null, packetsReceived: b0 && b1 ? b1.audio.packetsReceived - b0.audio.packetsReceived : null, packetsLost: b0 && b1 ? b1.audio.packetsLost - b0.audio.packetsLost : null };
        const wF = summary.widths && summary.widths.f;
        const below = summary.capped.firstBelowFMs;
        if (below != null) o.widthsAfterFirstBelowF = hist(inP.filter((s) => s.t >= t0 + below));
        o.allAtF = inP.length > 0 && inP.every((s) => s.video.frameWidth === wF);
      }
    }
  }
  collected = true;
  verdict();
}

// This script's own reading (tests/bandwidth.rs asserts the same itself).
function verdict() {
  const f = summary.failures, w = summary.widths || {}, cap = summary.capped, lift = summary.lifted, warm = summary.warmup;
  if (!warm || warm.reachedMs === null) f.push('warmup: C and U not both at f');
  const ports = (summary.proxy && summary.proxy.ports) || [];
  const cp = summary.path.capEnd && summary.path.capEnd.C;
  if (!cp || !ports.includes(cp.remotePort)) f.push(`C's selected pair does not go through the proxy: ${JSON.stringify(cp)} (proxy ports ${ports})`);
  if (!(summary.proxy && summary.proxy.totals.byKind.rtp && summary.proxy.totals.byKind.rtp.offered > 500)) f.push('the proxy carried (almost) no RTP to C');
  if (cap) {
    if (cap.firstBelowFMs === null || cap.firstBelowFMs > 15000) f.push(`capped: C not below f within 15 s (${cap.firstBelowFMs})`);
    const loss = cap.C && cap.C.video && cap.C.video.lossFraction;
    if (!(loss !== null && loss !== undefined && loss < 0.05)) f.push(`capped: C video loss ${loss}`);
    if (!(cap.C && cap.C.audio && cap.C.audio.windows.length >= 4 && cap.C.audio.windows.every((x) => x > 0))) f.push(`capped: C audio windows ${JSON.stringify(cap.C && cap.C.audio)}`);
    if (!(cap.C && cap.C.framesLast5s > 0)) f.push(`capped: C decoded no video in the last 5 s of the cap (paused?)`);
    if (!(cap.U && cap.U.allAtF)) f.push(`capped: U left f: ${JSON.stringify(cap.U && cap.U.widths)}`);
    const ups = (summary.subs.C && summary.subs.C.subscriptionUpdates) || [];
    if (!ups.some((u) => u.trackId === summary.trackId && u.reason === 'bandwidth')) f.push('C got no subscription-update with reason bandwidth');
  } else f.push('capped phase not run');
  if (!lift || lift.reachedHMs === null || lift.reachedHMs > 25000) f.push(`lifted: C not back at >= h (${w.h}) within 25 s (${lift && lift.reachedHMs})`);
  else if (lift.reachedHStableMs === null || lift.reachedHStableMs > 25000) f.push(`lifted: C reached h at ${lift.reachedHMs} ms but did not stay there ${H_STABLE} ms (stable from ${lift.reachedHStableMs})`);
  if (summary.errors.length) f.push(`page errors: ${summary.errors.length}`);
  if (summary.timeouts.length) f.push(...summary.timeouts.map((t) => `timeout: ${t}`));
}

process.on('unhandledRejection', (e) => finish(e));
main().then(() => finish(null), (e) => finish(e));
