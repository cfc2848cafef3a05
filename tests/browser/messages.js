// The page's messages for things that go wrong, in headless Chromium:
// a third person entering a two-seat room reads "This room is full.", a
// browser that denies the camera reads why and still joins, and an expired
// token pasted into the link reads that it expired.
// usage: node messages.js http://HOST:PORT EXPIRED_TOKEN
const { chromium } = require('playwright-core');
const flags = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--use-fake-device-for-media-stream', '--allow-loopback-in-peer-connection'];
(async () => {
  const [base, expired] = process.argv.slice(2);
  const allowing = await chromium.launch({ executablePath: '/usr/bin/chromium', args: [...flags, '--use-fake-ui-for-media-stream'] });
  const denying = await chromium.launch({ executablePath: '/usr/bin/chromium', args: flags });
  const open = async (browser, query) => {
    const page = await (await browser.newContext()).newPage();
    await page.goto(`${base}/?${query}`);
    return page;
  };
  const statusText = (p) => p.evaluate(() => document.getElementById('status').textContent);
  const waitStatus = (p, needle) => p.waitForFunction((n) => document.getElementById('status').textContent.includes(n), needle, { timeout: 10000 });
  const joinRoom = async (p, name) => {
    await p.waitForSelector('#lobby:not([hidden])', { timeout: 10000 });
    await p.fill('#room', name);
    await p.click('#room-form button[type=submit]');
  };

  // A room with two seats, and a third person.
  const ann = await open(allowing, 'name=Ann');
  await ann.waitForSelector('#lobby:not([hidden])', { timeout: 10000 });
  await ann.evaluate(() => fetch('/rooms', { method: 'POST', headers: { Authorization: `Bearer ${window.confer.token}`, 'Content-Type': 'application/json' }, body: JSON.stringify({ name: 'pair', maxParticipants: 2 }) }));
  const ben = await open(allowing, 'name=Ben');
  await joinRoom(ann, 'pair');
  await ann.waitForFunction(() => !!window.confer.peerId, null, { timeout: 10000 });
  await joinRoom(ben, 'pair');
  await ben.waitForFunction(() => !!window.confer.peerId, null, { timeout: 10000 });
  const cal = await open(allowing, 'name=Cal');
  await joinRoom(cal, 'pair');
  await waitStatus(cal, 'This room is full.');
  const full = await statusText(cal);
  const calBackInLobby = await cal.evaluate(() => !document.getElementById('lobby').hidden);

  // The camera is denied: the page says so and still joins to watch.
  const dora = await open(denying, 'name=Dora');
  await joinRoom(dora, 'watchers');
  await waitStatus(dora, 'access was denied');
  const denied = await statusText(dora);
  await dora.waitForFunction(() => !!window.confer.peerId, null, { timeout: 10000 });

  // An expired token in the link.
  const eve = await open(allowing, `token=${encodeURIComponent(expired)}`);
  await waitStatus(eve, 'expired');
  const expiredText = await statusText(eve);
  const eveAtSignIn = await eve.evaluate(() => !document.getElementById('signin').hidden);

  console.log(JSON.stringify({ full, calBackInLobby, denied, expiredText, eveAtSignIn }));
  await allowing.close();
  await denying.close();
  process.exit(calBackInLobby && eveAtSignIn ? 0 : 1);
})().catch((e) => { console.error(e); process.exit(2); });
