// Three headless Chromium contexts use confer's web page for a group room
// through the SFU: Alice and Bob join "standup" and each decodes the other's
// video (framesDecoded from getStats); Carol joins late and decodes both;
// Alice shares her screen and it appears as a new tile at Bob and decodes;
// Bob stops his camera and Alice's tile for him says so; Bob's connection
// drops and the page reconnects and receives again. Quality badges read
// "unknown" until the page's first connection-quality, then a rating.
// With "relay", every page uses iceTransportPolicy "relay" (?relay=1), so all
// media crosses confer's TURN server, and the selected pairs are checked.
// Exits 0 on success and prints a JSON summary; any console error fails it.
// usage: node room.js http://HOST:PORT [relay]
const { chromium } = require('playwright-core');
(async () => {
  const base = process.argv[2];
  const relay = process.argv[3] === 'relay';
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream', '--allow-loopback-in-peer-connection', '--auto-select-desktop-capture-source=Entire screen', '--enable-usermedia-screen-capturing'] });
  const errors = [];
  const started = Date.now();
  const join = async (name, viewport) => {
    const ctx = await browser.newContext(viewport ? { viewport } : {});
    // Every state each quality badge shows, and whether the page had been
    // sent a connection-quality by then: before any score exists, a badge
    // may only say "unknown" (SPEC 4, 8). The message listener is added
    // before the page's own onmessage, so it runs first.
    await ctx.addInitScript(() => {
      window.__badges = [];
      window.__scored = false;
      const Native = window.WebSocket;
      window.WebSocket = class extends Native {
        constructor(...args) {
          super(...args);
          this.addEventListener('message', (e) => { if (typeof e.data === 'string' && e.data.includes('"connection-quality"')) window.__scored = true; });
        }
      };
      const last = new WeakMap();
      new MutationObserver(() => {
        for (const b of document.querySelectorAll('#tiles .badge')) {
          const text = b.hidden ? null : b.textContent;
          if (last.has(b) && last.get(b) === text) continue;
          last.set(b, text);
          window.__badges.push({ peer: b.parentElement?.dataset.peer, text, scored: window.__scored });
        }
      }).observe(document, { subtree: true, childList: true, characterData: true, attributes: true });
    });
    const page = await ctx.newPage();
    page.on('console', (m) => { if (m.type() === 'error') errors.push(`${name}: ${m.text()}`); });
    page.on('pageerror', (e) => errors.push(`${name}: ${e.message}`));
    // Every subscription-update the page is sent, with the second it came: a
    // tile that stops decoding is explained by the layer it was given.
    page.updates = [];
    page.on('websocket', (ws) => ws.on('framereceived', ({ payload }) => {
      if (typeof payload !== 'string' || !payload.includes('subscription-update')) return;
      try { const m = JSON.parse(payload); page.updates.push([((Date.now() - started) / 1000).toFixed(1), m.trackId, m.layer ?? null, m.reason]); } catch (_) { /* not ours */ }
    }));
    await page.goto(`${base}/?name=${name}${relay ? '&relay=1' : ''}`);
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
  // Joined, nothing measured yet: her own tile's badge says so.
  await alice.waitForSelector('#tiles .tile[data-peer="me"] .badge', { state: 'attached', timeout: 10000 });
  const aliceBadgeAtJoin = await alice.evaluate(() => {
    const b = document.querySelector('#tiles .tile[data-peer="me"] .badge');
    return { text: b && !b.hidden ? b.textContent : null, scored: window.__scored };
  });
  const bob = await join('Bob');
  const a = await decoded(alice, 1), b = await decoded(bob, 1);
  const t0 = Date.now();
  const carol = await join('Carol', { width: 390, height: 844 }); // a phone
  const c = await decoded(carol, 2);
  const carolSeconds = (Date.now() - t0) / 1000;
  const tiles = await carol.evaluate(() => document.querySelectorAll('#tiles > *').length);
  // At phone width nothing scrolls sideways.
  const phoneOverflow = await carol.evaluate(() => document.scrollingElement.scrollWidth - window.innerWidth);
  // Controls work from the keyboard and say their state.
  await carol.focus('#mute-audio');
  await carol.keyboard.press('Enter');
  const keyboardMute = await carol.evaluate(() => document.getElementById('mute-audio').getAttribute('aria-pressed'));

  // Screen share: a new tile at Bob, decoding.
  await alice.click('#share');
  await bob.waitForFunction(() => [...document.querySelectorAll('#tiles > *')].some((t) => t.textContent.includes('(screen)')), null, { timeout: 15000 });
  const bobWithScreen = await decoded(bob, 3);

  // Bob stops his camera: Alice's tile for Bob shows it.
  await bob.click('#mute-video');
  await alice.waitForFunction(() => [...document.querySelectorAll('#tiles > *')].some((t) => t.textContent.includes('Bob') && t.textContent.includes('camera off')), null, { timeout: 10000 });
  const muteShown = true;

  // Bob's connection drops: the page says so, reconnects, rejoins, and
  // receives again on new PeerConnections.
  await bob.evaluate(() => window.confer.ws.close());
  await bob.waitForFunction(() => window.confer.lost === true, null, { timeout: 5000 });
  await bob.waitForFunction(() => window.confer.lost === false && window.confer.peerId, null, { timeout: 15000 });
  const bobAfterReconnect = await decoded(bob, 2);

  // connection-quality (every 5 s on change) puts a rating badge on the tiles.
  await alice.waitForFunction(() => [...document.querySelectorAll('#tiles .badge')].some((b) => !b.hidden && /excellent|good|fair|poor|bad/.test(b.textContent)), null, { timeout: 12000 });
  const badges = await alice.evaluate(() => [...document.querySelectorAll('#tiles .badge')].filter((b) => !b.hidden).map((b) => b.textContent));
  // What each page's badges showed before its first connection-quality:
  // "unknown" only (never "bad", nor any rating), and Alice's did show it.
  const badgesBeforeScore = {};
  for (const [who, p] of [['alice', alice], ['bob', bob], ['carol', carol]]) {
    badgesBeforeScore[who] = [...new Set((await p.evaluate(() => window.__badges)).filter((s) => !s.scored && s.text !== null).map((s) => s.text))];
  }
  const unknownFirst = aliceBadgeAtJoin.text === 'unknown' && !aliceBadgeAtJoin.scored
    && Object.values(badgesBeforeScore).every((texts) => texts.every((t) => t === 'unknown'));

  // Which candidate types carry the media.
  const pairTypes = async (p) => p.evaluate(async () => {
    const out = [];
    for (const pc of [window.confer.pub, window.confer.sub]) {
      if (!pc) continue;
      const rep = await pc.getStats();
      rep.forEach((s) => {
        if (s.type === 'candidate-pair' && s.state === 'succeeded' && s.nominated) out.push(rep.get(s.localCandidateId)?.candidateType);
      });
    }
    return out;
  });
  const types = await pairTypes(alice);
  if (process.env.SCREENSHOT) {
    await alice.waitForTimeout(500);
    await alice.screenshot({ path: process.env.SCREENSHOT });
  }
  console.log(JSON.stringify({ relay, alice: a, bob: b, carol: c, carolSeconds, carolTiles: tiles, phoneOverflow, keyboardMute, bobWithScreen, muteShown, bobAfterReconnect, badges, aliceBadgeAtJoin, badgesBeforeScore, unknownFirst, alicePairTypes: types, errors, bobUpdates: bob.updates }));
  await browser.close();
  const relayed = !relay || (types.length > 0 && types.every((t) => t === 'relay'));
  process.exit(ok(a, 1) && ok(b, 1) && ok(c, 2) && ok(bobWithScreen, 3) && ok(bobAfterReconnect, 2) && relayed && unknownFirst && phoneOverflow <= 0 && keyboardMute === 'true' && errors.length === 0 ? 0 : 1);
})().catch((e) => { console.error(e); process.exit(2); });
