// Two headless Chromium contexts use confer's web page for a 1:1 call:
// sign in as guests (--dev), alice calls bob, bob accepts, each decodes the
// other's video (framesDecoded from getStats), alice switches camera (the
// sender's track and the call record follow), both pages' call-stats give
// the call analytics (source "client"), alice hangs up. Exits 0 on
// success and prints a JSON summary; any console error fails the run.
// usage: node call.js http://HOST:PORT
const { chromium } = require('playwright-core');
(async () => {
  const base = process.argv[2];
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--use-fake-device-for-media-stream=device-count=2', '--use-fake-ui-for-media-stream', '--allow-loopback-in-peer-connection'] });
  const errors = [];
  const mk = async (name) => {
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    page.on('console', (m) => { if (m.type() === 'error') errors.push(`${name}: ${m.text()}`); });
    page.on('pageerror', (e) => errors.push(`${name}: ${e.message}`));
    await page.goto(`${base}/?name=${name}`);
    await page.waitForSelector('#lobby:not([hidden])', { timeout: 10000 });
    return page;
  };
  const alice = await mk('Alice');
  const bob = await mk('Bob');
  const bobId = await bob.evaluate(() => window.confer.userId);
  await alice.fill('#callee', bobId);
  await alice.click('#call-form button[type=submit]');
  await bob.waitForSelector('#incoming:not([hidden])', { timeout: 10000 });
  await bob.click('#accept');
  const decoded = async (p) => {
    for (let i = 0; i < 40; i++) {
      const f = await p.evaluate(() => window.confer.framesDecoded());
      const n = Object.values(f).reduce((a, b) => a + b, 0);
      if (n > 10) return n;
      await p.waitForTimeout(250);
    }
    return 0;
  };
  const a = await decoded(alice), b = await decoded(bob);
  // Alice switches to her second camera: the track is replaced in the call,
  // the switch-camera route records it, and Bob keeps decoding.
  // Alice switches to her second camera: the page replaces the track in the
  // call and records the switch with PUT /calls/:id/switch-camera. (Chromium's
  // second fake camera delivers no frames to an encoder, so what Bob decodes
  // afterwards is not checked; the sender's new track is.)
  const cams = await alice.evaluate(() => [...document.querySelectorAll('#camera-select option')].map((o) => o.value));
  await alice.selectOption('#camera-select', cams[cams.length - 1]);
  let recorded = null;
  for (let i = 0; i < 40 && !recorded; i++) {
    await alice.waitForTimeout(250);
    recorded = await alice.evaluate(async () => {
      const r = await fetch(`/calls/${window.confer.call.id}`, { headers: { Authorization: `Bearer ${window.confer.token}` } });
      const s = (await r.json()).callSession;
      return s.participants.find((p) => p.userId === window.confer.userId)?.camera?.deviceId || null;
    });
  }
  const sending = await alice.evaluate(() => {
    const t = window.confer.call.pc.getSenders().map((s) => s.track).find((t) => t && t.kind === 'video');
    return t && t.readyState === 'live' ? t.getSettings().deviceId : null;
  });
  const switched = { cameras: cams.length, chosen: cams[cams.length - 1], recorded, sending };
  // Both pages send call-stats every 5 s: the call's analytics come from
  // them (source "client"), with what each side sends and receives.
  // (Until the first call-stats the route answers 404, a console error.)
  const statsSent = (p) => p.waitForFunction(() => (window.confer.callStatsSent || 0) > 0, null, { timeout: 10000 });
  await statsSent(alice); await statsSent(bob);
  let analytics = null;
  for (let i = 0; i < 60; i++) {
    analytics = await alice.evaluate(async () => {
      const r = await fetch(`/calls/${window.confer.call.id}/analytics`, { headers: { Authorization: `Bearer ${window.confer.token}` } });
      const a = (await r.json()).analytics;
      if (!a) return null;
      const streams = (a.participants || []).map((p) => ({
        userId: p.userId,
        sent: ['audio', 'video'].filter((k) => p.publish?.[k]?.packets > 0),
        received: ['audio', 'video'].filter((k) => p.subscribe?.[k]?.packets > 0),
        score: p.quality?.score ?? null,
      }));
      return { source: a.source, status: a.status, streams, statsSent: window.confer.callStatsSent || 0 };
    });
    if (analytics?.source === 'client' && analytics.streams.length === 2 && analytics.streams.every((p) => p.sent.length === 2 && p.received.length === 2)) break;
    await alice.waitForTimeout(250);
  }
  if (process.env.SCREENSHOT) await alice.screenshot({ path: process.env.SCREENSHOT });
  await alice.click('#leave');
  await bob.waitForSelector('#lobby:not([hidden])', { timeout: 10000 });
  console.log(JSON.stringify({ aliceFrames: a, bobFrames: b, switched, analytics, errors }));
  await browser.close();
  const switchOk = switched.cameras >= 2 && switched.recorded === switched.chosen && switched.sending === switched.chosen;
  process.exit(a > 10 && b > 10 && switchOk && errors.length === 0 ? 0 : 1);
})().catch((e) => { console.error(e); process.exit(2); });
