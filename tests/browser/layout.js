// The stage's layouts in headless Chromium. Alice's browser has Chromium's
// audible fake microphone (a beep); Bob's and Carol's browser captures a
// silent WAV file. Bob and Carol join first, Alice last, so "the first other
// person" is never Alice at Bob's. Bob turns on the speaker view: the large
// tile follows the active speaker, Alice. Bob pins Carol: Carol is large;
// he unpins: Alice again. Bob sets Alice's volume; shows her tile full
// screen. Alice shares her screen: Carol's grid turns into the speaker view
// with the share large, and back when it stops. The speaker picker is there
// (setSinkId). A poor connection of his own is said in words, another's
// marked on the tile; a track paused for bandwidth is shown as such. Exits 0 on success and prints a JSON summary; any console
// error fails it. With SCREENSHOTS=dir, saves page-desktop.png (Bob, speaker
// view) and page-phone.png (Carol at phone width) there.
// usage: node layout.js http://HOST:PORT
const { chromium } = require('playwright-core');
const fs = require('fs');
const os = require('os');
const path = require('path');

// One second of 16-bit mono silence at 48 kHz, as a WAV file.
function silentWav() {
  const rate = 48000, bytes = rate * 2;
  const b = Buffer.alloc(44 + bytes);
  b.write('RIFF', 0); b.writeUInt32LE(36 + bytes, 4); b.write('WAVE', 8);
  b.write('fmt ', 12); b.writeUInt32LE(16, 16); b.writeUInt16LE(1, 20); b.writeUInt16LE(1, 22);
  b.writeUInt32LE(rate, 24); b.writeUInt32LE(rate * 2, 28); b.writeUInt16LE(2, 32); b.writeUInt16LE(16, 34);
  b.write('data', 36); b.writeUInt32LE(bytes, 40);
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'confer-layout-')), 'silence.wav');
  fs.writeFileSync(file, b);
  return file;
}

(async () => {
  const base = process.argv[2];
  const shots = process.env.SCREENSHOTS;
  const args = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream', '--allow-loopback-in-peer-connection', '--auto-select-desktop-capture-source=Entire screen', '--enable-usermedia-screen-capturing', '--autoplay-policy=no-user-gesture-required'];
  const audible = await chromium.launch({ executablePath: '/usr/bin/chromium', args });
  const silent = await chromium.launch({ executablePath: '/usr/bin/chromium', args: [...args, `--use-file-for-fake-audio-capture=${silentWav()}`] });
  const errors = [];
  const join = async (browser, name, viewport) => {
    const ctx = await browser.newContext({ viewport: viewport || { width: 1280, height: 800 } });
    const page = await ctx.newPage();
    page.on('console', (m) => { if (m.type() === 'error') errors.push(`${name}: ${m.text()}`); });
    page.on('pageerror', (e) => errors.push(`${name}: ${e.message}`));
    await page.goto(`${base}/?room=layout&name=${name}`);
    await page.waitForFunction(() => window.confer.peerId, null, { timeout: 15000 });
    return page;
  };
  const summary = { errors };
  const fail = (what) => { summary.failed = what; throw new Error(what); };
  const until = async (page, what, fn, arg, timeout = 15000) => {
    try { await page.waitForFunction(fn, arg, { timeout, polling: 100 }); } catch { fail(`${what} (state: ${JSON.stringify(await page.evaluate(() => window.confer.layout()))})`); }
  };
  try {
    const bob = await join(silent, 'Bob');
    const carol = await join(silent, 'Carol', { width: 390, height: 844 });
    const alice = await join(audible, 'Alice');
    const [alicePeer, carolPeer] = [await alice.evaluate(() => window.confer.peerId), await carol.evaluate(() => window.confer.peerId)];
    for (const p of [bob, carol]) await until(p, 'three tiles', () => document.querySelectorAll('#tiles > .tile').length === 3);

    // Speaker view at Bob: Alice (the only one audible) is large.
    await bob.click('#layout-toggle');
    summary.togglePressed = await bob.getAttribute('#layout-toggle', 'aria-pressed');
    const started = Date.now();
    await until(bob, 'Alice large as the active speaker', (a) => window.confer.layout().featured === a
      && document.querySelector(`#tiles .tile[data-peer="${a}"]`).classList.contains('featured'), alicePeer);
    summary.speakerMs = Date.now() - started;
    summary.speakerAtBob = (await bob.evaluate(() => window.confer.layout())).speaker === alicePeer;
    // Large in pixels too: the featured tile is wider than the strip's.
    summary.widths = await bob.evaluate((a) => [...document.querySelectorAll('#tiles > .tile')].map((t) => ({ alice: t.dataset.peer === a, width: Math.round(t.getBoundingClientRect().width) })), alicePeer);

    // Pin Carol, then unpin: back to the speaker.
    await bob.click(`#tiles .tile[data-peer="${carolPeer}"] .pin`);
    await until(bob, 'Carol large when pinned', (c) => window.confer.layout().featured === c, carolPeer);
    summary.pinPressed = await bob.getAttribute(`#tiles .tile[data-peer="${carolPeer}"] .pin`, 'aria-pressed');
    // Alice keeps talking: a pin holds against the active speaker.
    await bob.waitForTimeout(1500);
    summary.pinHeld = (await bob.evaluate(() => window.confer.layout())).featured === carolPeer;
    await bob.click(`#tiles .tile[data-peer="${carolPeer}"] .pin`);
    await until(bob, 'Alice large again when unpinned', (a) => window.confer.layout().featured === a, alicePeer);

    // Alice's volume at Bob.
    await bob.evaluate((a) => {
      const v = document.querySelector(`#tiles .tile[data-peer="${a}"] .volume`);
      v.value = '0.3'; v.dispatchEvent(new Event('input'));
    }, alicePeer);
    summary.volume = await bob.evaluate((a) => document.querySelector(`#tiles .tile[data-peer="${a}"] video`).volume, alicePeer);
    summary.ownTileHasVolume = await bob.evaluate(() => !!document.querySelector('#tiles .tile[data-peer="me"] .volume'));

    // Full screen, and out of it.
    await bob.click(`#tiles .tile[data-peer="${alicePeer}"] .fullscreen`);
    await until(bob, 'Alice full screen', (a) => document.fullscreenElement?.dataset.peer === a, alicePeer, 5000);
    summary.fullscreen = true;
    await bob.evaluate(() => document.exitFullscreen());
    await until(bob, 'full screen left', () => !document.fullscreenElement, null, 5000);

    // The speaker picker (setSinkId), with the system default chosen.
    summary.speakerPicker = await bob.evaluate(() => !document.getElementById('speaker-field').hidden && document.getElementById('speaker-select').value === '');

    // connection-quality (SPEC 4) saying Bob's own link is poor and Carol's
    // bad: Bob's page says so in words, and marks Carol's tile.
    // (Dispatched and read in one evaluate: handlers run synchronously, so
    // no real connection-quality can land in between.)
    const bobPeer = await bob.evaluate(() => window.confer.peerId);
    summary.weak = await bob.evaluate(([me, c]) => {
      const say = (updates) => window.confer.ws.dispatchEvent(new MessageEvent('message', { data: JSON.stringify({ type: 'connection-quality', updates }) }));
      const own = () => (document.getElementById('own-quality').hidden ? null : document.getElementById('own-quality').textContent);
      say([{ peerId: me, score: 3.2, rating: 'poor' }, { peerId: c, score: 2.0, rating: 'bad' }]);
      const out = {
        own: own(),
        carolTile: document.querySelector(`#tiles .tile[data-peer="${c}"]`).classList.contains('weak'),
        carolBadge: document.querySelector(`#tiles .tile[data-peer="${c}"] .badge`).title,
      };
      say([{ peerId: me, score: 4.4, rating: 'excellent' }]);
      out.ownAfterRecovery = own() === null;
      return out;
    }, [bobPeer, carolPeer]);

    if (shots) {
      await bob.waitForTimeout(1000);
      await bob.screenshot({ path: path.join(shots, 'page-desktop.png') });
      await carol.screenshot({ path: path.join(shots, 'page-phone.png') });
    }

    // subscription-update (SPEC 5.1): Alice's camera paused for bandwidth at
    // Bob shows as such on her tile, and a layer again clears it (one
    // evaluate: no real update lands in between).
    summary.paused = await bob.evaluate((a) => {
      const t = window.confer.tiles.get(a);
      const trackId = t.want?.trackId;
      if (!trackId) return { trackId: null };
      const say = (layer) => window.confer.ws.dispatchEvent(new MessageEvent('message', { data: JSON.stringify({ type: 'subscription-update', roomId: window.confer.roomId, trackId, layer, reason: 'bandwidth' }) }));
      const shown = () => (t.paused.hidden ? null : t.paused.textContent);
      say(null); const paused = shown();
      say('f'); const resumed = shown();
      return { trackId, paused, resumed };
    }, alicePeer);

    // A screen share turns Carol's grid into the speaker view, the share large.
    summary.carolBefore = (await carol.evaluate(() => window.confer.layout())).mode;
    await alice.click('#share');
    await until(carol, 'the screen share large at Carol', (a) => {
      const s = window.confer.layout();
      return s.mode === 'speaker' && s.featured === `${a}:screen`;
    }, alicePeer);
    await alice.click('#share');
    await until(carol, 'Carol back in the grid', () => window.confer.layout().mode === 'grid' && !document.querySelector('#tiles .featured'));
    summary.carolAfter = 'grid';
  } catch (e) {
    if (!summary.failed) summary.failed = e.message;
  }
  console.log(JSON.stringify(summary));
  await audible.close(); await silent.close();
  process.exit(summary.failed || errors.length ? 1 : 0);
})().catch((e) => { console.error(e); process.exit(2); });
