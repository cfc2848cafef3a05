// A publisher for tests whose subscribers are not browsers: one headless
// Chromium context opens confer's built-in page as guest "pub", joins room
// ROOM and publishes what the page publishes in a room (its fake 1280x720
// camera as VP8 simulcast q/h/f, and its fake microphone), then stays for
// SECONDS or until SIGTERM. Every publish-layers the page is sent is
// recorded (the page honours them). Last on stdout, one JSON summary line:
// the page's errors, and per rid of the camera what its outbound-rtp sent
// (bytesSent, frameWidth) when the run ended. The caller judges it.
// usage: node publish.js http://HOST:PORT ROOM SECONDS
'use strict';
const { chromium } = require('playwright-core');

const [base, room, seconds] = process.argv.slice(2);
if (!base || !room) { console.error('usage: node publish.js http://HOST:PORT ROOM SECONDS'); process.exit(2); }
const T0 = Date.now();
const summary = { base, room, joinedMs: null, degradation: null, errors: [], publishLayers: [], layers: null, crash: null, elapsedMs: 0 };
let browser = null;
let page = null;
let finished = false;

async function layers() {
  return page.evaluate(async () => {
    const out = {};
    const pc = window.confer && window.confer.pub;
    if (!pc) return out;
    (await pc.getStats()).forEach((s) => {
      if (s.type === 'outbound-rtp' && s.kind === 'video' && s.rid) out[s.rid] = { bytesSent: s.bytesSent, frameWidth: s.frameWidth ?? null, limitedBy: s.qualityLimitationReason ?? null };
    });
    return out;
  });
}

async function finish(crash) {
  if (finished) return;
  finished = true;
  if (crash) summary.crash = String(crash && crash.stack || crash);
  if (page) { try { summary.layers = await Promise.race([layers(), new Promise((r) => setTimeout(r, 3000))]); } catch (e) { summary.errors.push(`stats: ${e.message}`); } }
  summary.elapsedMs = Date.now() - T0;
  try { if (browser) await Promise.race([browser.close(), new Promise((r) => setTimeout(r, 5000))]); } catch (_) { /* closing */ }
  console.log(JSON.stringify(summary));
  process.exit(summary.crash ? 2 : summary.errors.length ? 1 : 0);
}
process.on('SIGTERM', () => finish(null));

(async () => {
  // SIGTERM is ours (finish), not Playwright's: it would close the browser first.
  browser = await chromium.launch({ executablePath: '/usr/bin/chromium', handleSIGTERM: false, args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream', '--allow-loopback-in-peer-connection'] });
  const ctx = await browser.newContext();
  page = await ctx.newPage();
  page.on('console', (m) => { if (m.type() === 'error') summary.errors.push(`console: ${m.text()}`); });
  page.on('pageerror', (e) => summary.errors.push(`page: ${e.message}`));
  page.on('websocket', (ws) => ws.on('framereceived', ({ payload }) => {
    if (typeof payload !== 'string' || !payload.includes('publish-layers')) return;
    try { const m = JSON.parse(payload); summary.publishLayers.push({ ms: Date.now() - T0, layers: m.layers }); } catch (_) { /* not ours */ }
  }));
  await page.goto(`${base}/?name=pub`);
  await page.waitForSelector('#lobby:not([hidden])', { timeout: 15000 });
  await page.fill('#room', room);
  await page.click('#room-form button[type=submit]');
  await page.waitForSelector('#stage:not([hidden])', { timeout: 15000 });
  summary.joinedMs = Date.now() - T0;
  // Chromium answers a busy CPU by scaling its camera input down, and at
  // 640x360 libwebrtc encodes two simulcast layers, not three (f stops, q
  // comes out 160 wide). These tests are about the SFU's choice among three
  // layers, so on a busy test host the publisher keeps its resolution and
  // gives up frame rate instead. (The two layers seen in CI, stop 20, had
  // another cause: the lobby's preview held the camera at 640x480.)
  // (waitForFunction does not await an async predicate, so it waits for the
  // sender and one evaluate, which does await, sets it.)
  await page.waitForFunction(() => window.confer?.pub?.getSenders().some((x) => x.track?.kind === 'video'), null, { timeout: 15000 });
  summary.degradation = await page.evaluate(async () => {
    const s = window.confer.pub.getSenders().find((x) => x.track?.kind === 'video');
    const p = s.getParameters();
    p.degradationPreference = 'maintain-resolution';
    await s.setParameters(p);
    return s.getParameters().degradationPreference ?? 'unsupported';
  });
  console.log('joined');
  await new Promise((r) => setTimeout(r, Number(seconds || 60) * 1000));
  await finish(null);
})().catch(finish);
