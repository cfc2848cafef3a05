// Two cluster nodes, A and B, and confer's page in two headless Chromium
// contexts (SPEC 13: "the built-in page retries its server list"). Alice's
// page is served by A and given B in `?servers=`; Bob's by B, given A. Both
// join "failover" (placed on A, where Alice joined first; Bob's room messages
// are relayed to it) and each decodes the other's video. Then A is killed
// (SIGKILL, by its PID): Alice's socket drops and her page reconnects to B;
// Bob's socket stays up but his media to A stops and his page joins again.
// Once the cluster counts A dead (6 s) the room is placed on B, and both
// decode each other again on new PeerConnections.
// Exits 0 on success and prints a JSON summary; any console error fails it.
// usage: node failover.js http://A http://B PID_OF_A
const { chromium } = require('playwright-core');
(async () => {
  const [baseA, baseB, pidA] = process.argv.slice(2);
  const host = (u) => new URL(u).host;
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream', '--allow-loopback-in-peer-connection'] });
  const errors = [];
  // A page that loses its server logs the failed reconnects: expected here.
  const expected = (t) => /WebSocket connection to .* failed|ERR_CONNECTION_REFUSED|Failed to load resource/.test(t);
  const join = async (name, base, other) => {
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    page.on('console', (m) => { if (m.type() === 'error' && !expected(m.text())) errors.push(`${name}: ${m.text()}`); });
    page.on('pageerror', (e) => errors.push(`${name}: ${e.message}`));
    await page.goto(`${base}/?name=${name}&servers=${host(other)}`);
    await page.waitForSelector('#lobby:not([hidden])', { timeout: 15000 });
    await page.fill('#room', 'failover');
    await page.click('#room-form button[type=submit]');
    await page.waitForFunction(() => window.confer.peerId, null, { timeout: 30000 });
    return page;
  };
  // Wait until a video track of the current subscriber PC decoded > 10 frames.
  const decoding = async (p, limitMs) => {
    const until = Date.now() + limitMs;
    while (Date.now() < until) {
      const f = await p.evaluate(() => window.confer.framesDecoded()).catch(() => ({}));
      if (Object.values(f).some((n) => n > 10)) return true;
      await p.waitForTimeout(250);
    }
    return false;
  };
  const alice = await join('Alice', baseA, baseB);
  const bob = await join('Bob', baseB, baseA);
  const before = { alice: await decoding(alice, 30000), bob: await decoding(bob, 30000) };
  const server = async (p) => p.evaluate(() => new URL(window.confer.ws.url).host);
  const serversBefore = { alice: await server(alice), bob: await server(bob) };
  const peersBefore = { alice: await alice.evaluate(() => window.confer.peerId), bob: await bob.evaluate(() => window.confer.peerId) };
  const subsBefore = await Promise.all([alice, bob].map((p) => p.evaluate(() => { window.__oldSub = window.confer.sub; return true; })));

  const killedAt = Date.now();
  process.kill(Number(pidA), 'SIGKILL');
  // Both are in again on new PeerConnections, and decode.
  const back = async (p) => {
    await p.waitForFunction(() => window.confer.sub && window.confer.sub !== window.__oldSub && window.confer.peerId && window.confer.ws?.readyState === 1, null, { timeout: 45000 });
    const ok = await decoding(p, 30000);
    return { ok, seconds: (Date.now() - killedAt) / 1000 };
  };
  const [aliceBack, bobBack] = await Promise.all([back(alice), back(bob)]);
  const serversAfter = { alice: await server(alice), bob: await server(bob) };
  const status = await alice.evaluate(() => document.getElementById('status').hidden ? '' : document.getElementById('status').textContent);
  console.log(JSON.stringify({ before, serversBefore, peersBefore, subsBefore, aliceBack, bobBack, serversAfter, statusAfter: status, errors }));
  await browser.close();
})().catch((e) => { console.error(e); process.exit(2); });
