// Three headless Chromium contexts use confer's web page for a group room
// through the SFU: Alice and Bob join "standup" and each decodes the other's
// video (framesDecoded from getStats); Carol joins late and decodes both.
// Exits 0 on success and prints a JSON summary; any console error fails it.
// usage: node room.js http://HOST:PORT
const { chromium } = require('playwright-core');
(async () => {
  const base = process.argv[2];
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream', '--allow-loopback-in-peer-connection'] });
  const errors = [];
  const join = async (name) => {
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    page.on('console', (m) => { if (m.type() === 'error') errors.push(`${name}: ${m.text()}`); });
    page.on('pageerror', (e) => errors.push(`${name}: ${e.message}`));
    await page.goto(`${base}/?name=${name}`);
    await page.waitForSelector('#lobby:not([hidden])', { timeout: 10000 });
    await page.fill('#room', 'standup');
    await page.click('#room-form button[type=submit]');
    await page.waitForSelector('#stage:not([hidden])', { timeout: 10000 });
    return page;
  };
  // framesDecoded per inbound video track; wait until `want` tracks each passed 10.
  const decoded = async (p, want) => {
    for (let i = 0; i < 60; i++) {
      const f = await p.evaluate(() => window.confer.framesDecoded());
      const good = Object.values(f).filter((n) => n > 10).length;
      if (good >= want) return f;
      await p.waitForTimeout(250);
    }
    return await p.evaluate(() => window.confer.framesDecoded());
  };
  const ok = (f, want) => Object.values(f).filter((n) => n > 10).length >= want;
  const alice = await join('Alice');
  const bob = await join('Bob');
  const a = await decoded(alice, 1), b = await decoded(bob, 1);
  const t0 = Date.now();
  const carol = await join('Carol');
  const c = await decoded(carol, 2);
  const carolSeconds = (Date.now() - t0) / 1000;
  const tiles = await carol.evaluate(() => document.querySelectorAll('#tiles > *').length);
  if (process.env.SCREENSHOT) {
    await alice.waitForTimeout(500);
    await alice.screenshot({ path: process.env.SCREENSHOT });
  }
  console.log(JSON.stringify({ alice: a, bob: b, carol: c, carolSeconds, carolTiles: tiles, errors }));
  await browser.close();
  process.exit(ok(a, 1) && ok(b, 1) && ok(c, 2) && errors.length === 0 ? 0 : 1);
})().catch((e) => { console.error(e); process.exit(2); });
