// `confer serve --dev --lan` from a phone's point of view: two headless
// Chromium contexts open the https:// address confer printed (a veth address
// in the test's network namespace, the self-signed certificate accepted as a
// person would, here with --ignore-certificate-errors), join one room, and
// each decodes the other's video (framesDecoded from getStats). No loopback
// flag: the media must go over the advertised interface addresses.
// Exits 0 on success and prints a JSON summary; any console error fails it.
// usage: node lan.js https://HOST:PORT/
const { chromium } = require('playwright-core');
(async () => {
  const base = process.argv[2].replace(/\/$/, '');
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream', '--ignore-certificate-errors'] });
  const errors = [];
  const join = async (name) => {
    const ctx = await browser.newContext({ ignoreHTTPSErrors: true });
    const page = await ctx.newPage();
    page.on('console', (m) => { if (m.type() === 'error') errors.push(`${name}: ${m.text()}`); });
    page.on('pageerror', (e) => errors.push(`${name}: ${e.message}`));
    await page.goto(`${base}/?name=${name}`);
    await page.waitForSelector('#lobby:not([hidden])', { timeout: 15000 });
    await page.fill('#room', 'lan');
    await page.click('#room-form button[type=submit]');
    await page.waitForSelector('#stage:not([hidden])', { timeout: 15000 });
    return page;
  };
  const decoded = async (p) => {
    for (let i = 0; i < 80; i++) {
      const f = await p.evaluate(() => window.confer.framesDecoded());
      if (Object.values(f).some((n) => n > 10)) return f;
      await p.waitForTimeout(250);
    }
    return await p.evaluate(() => window.confer.framesDecoded());
  };
  const alice = await join('Alice');
  const bob = await join('Bob');
  const aliceFrames = await decoded(alice);
  const bobFrames = await decoded(bob);
  const secure = await alice.evaluate(() => [window.isSecureContext, location.protocol, location.hostname]);
  const summary = { aliceFrames, bobFrames, secure, errors };
  console.log(JSON.stringify(summary));
  await browser.close();
  const good = (f) => Object.values(f).some((n) => n > 10);
  process.exit(good(aliceFrames) && good(bobFrames) && errors.length === 0 ? 0 : 1);
})().catch((e) => { console.error(e); process.exit(2); });
