// Three headless Chromium contexts join one room through confer's page and
// use its chat, participant list and raise hand: Alice's message reaches all
// three (Carol, whose chat panel is closed, sees an unread count); Alice's
// direct message to Bob reaches Bob and not Carol; a message holding markup
// is shown as text (no <img> in the DOM, its onerror never runs); Bob raises
// his hand and Alice and Carol see it in their participant lists. Everything
// is done with the keyboard or clicks on labelled controls, and axe-core
// finds no serious violation in the room with both panels open.
// Exits 0 on success and prints a JSON summary; any console error fails it.
// usage: node chat.js http://HOST:PORT
const { chromium } = require('playwright-core');
const axe = require('./axe');
(async () => {
  const base = process.argv[2];
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream', '--allow-loopback-in-peer-connection'] });
  const errors = [];
  const room = `chat-${Date.now()}`;
  const join = async (name) => {
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    page.on('console', (m) => { if (m.type() === 'error') errors.push(`${name}: ${m.text()}`); });
    page.on('pageerror', (e) => errors.push(`${name}: ${e.message}`));
    await page.goto(`${base}/?name=${name}&room=${room}`);
    // Joining waits for the camera, the socket and room-joined: slow when other browser tests share the 2 cores.
    await page.waitForFunction(() => window.confer?.peerId, null, { timeout: 45000 });
    return page;
  };
  const rows = (p) => p.evaluate(() => [...document.querySelectorAll('#people li')].map((li) => li.textContent));
  const log = (p) => p.evaluate(() => [...document.querySelectorAll('#chat-log .text')].map((t) => t.textContent));
  const waitText = (p, text) => p.waitForFunction((t) => [...document.querySelectorAll('#chat-log .text')].some((e) => e.textContent === t), text, { timeout: 20000 });

  const alice = await join('Alice');
  const bob = await join('Bob');
  const carol = await join('Carol');
  for (const p of [alice, bob, carol]) await p.waitForFunction(() => document.querySelectorAll('#people li').length === 3, null, { timeout: 10000 });

  // Alice and Bob open the chat from the keyboard; Carol leaves hers closed.
  for (const p of [alice, bob]) { await p.focus('#toggle-chat'); await p.keyboard.press('Enter'); }
  const chatOpen = await alice.evaluate(() => !document.getElementById('chat-panel').hidden && document.activeElement?.id === 'chat-text');
  await alice.keyboard.type('hello everyone');
  await alice.keyboard.press('Enter');
  for (const p of [alice, bob, carol]) await waitText(p, 'hello everyone');
  const carolUnread = await carol.evaluate(() => ({ text: document.getElementById('unread').textContent, hidden: document.getElementById('unread').hidden, label: document.getElementById('toggle-chat').textContent.trim() }));

  // A direct message: chosen in the "Send to" picker by name.
  await alice.selectOption('#chat-to', { label: 'Bob' });
  await alice.fill('#chat-text', 'just for bob');
  await alice.click('#chat-form button[type=submit]');
  await waitText(bob, 'just for bob');
  await waitText(alice, 'just for bob');
  const bobSawPrivate = await bob.evaluate(() => [...document.querySelectorAll('#chat-log li.direct')].some((li) => li.textContent.includes('to you (private)')));

  // Markup is text. Sent to everyone; Carol would be the last to get it.
  await alice.selectOption('#chat-to', '');
  const evil = '<img src=x onerror="window.__pwned=1"><b>bold?</b>';
  await alice.fill('#chat-text', evil);
  await alice.keyboard.press('Enter');
  for (const p of [alice, bob, carol]) await waitText(p, evil);
  // By now Carol had the direct message too, if she were ever to get it.
  const carolLog = await log(carol);
  const markup = {};
  for (const [who, p] of [['alice', alice], ['bob', bob], ['carol', carol]]) {
    markup[who] = await p.evaluate(() => ({ imgs: document.querySelectorAll('#chat-log img, #chat-log b').length, pwned: window.__pwned === 1 }));
  }
  // Carol opens the chat: the count goes, the log was there all along.
  await carol.click('#toggle-chat');
  // Gone from the screen, not only marked hidden (a display rule once kept a red "0").
  const carolUnreadAfter = await carol.evaluate(() => { const u = document.getElementById('unread'); return u.hidden && getComputedStyle(u).display === 'none'; });

  // Bob raises his hand (keyboard); Alice and Carol see it in their lists.
  await bob.focus('#raise-hand');
  await bob.keyboard.press('Enter');
  const bobButton = await bob.evaluate(() => document.getElementById('raise-hand').getAttribute('aria-pressed'));
  await alice.click('#toggle-people');
  const handSeen = {};
  for (const [who, p] of [['alice', alice], ['carol', carol]]) {
    await p.waitForFunction(() => [...document.querySelectorAll('#people li')].some((li) => li.textContent.includes('Bob') && li.querySelector('.hand')), null, { timeout: 10000 });
    handSeen[who] = (await rows(p)).filter((r) => r.includes('hand raised'));
  }
  const visiblePeople = await alice.evaluate(() => !document.getElementById('people-panel').hidden);
  // Every button in the panels has a name a screen reader can say.
  const unlabelled = await alice.evaluate(() => [...document.querySelectorAll('#side button, #controls button, #side select, #side textarea')]
    .filter((el) => !(el.getAttribute('aria-label') || el.labels?.length || el.textContent.trim())).map((el) => el.id || el.outerHTML));

  const axeRoom = await axe(alice);
  const summary = { axeRoom, chatOpen, carolUnread, bobSawPrivate, carolLog, markup, carolUnreadAfter, bobButton, handSeen, visiblePeople, unlabelled, aliceLog: await log(alice), bobLog: await log(bob), errors };
  console.log(JSON.stringify(summary));
  await browser.close();
  const ok = chatOpen && carolUnread.text === '1 unread' && !carolUnread.hidden && bobSawPrivate && !carolLog.includes('just for bob')
    && Object.values(markup).every((m) => m.imgs === 0 && !m.pwned) && carolUnreadAfter && bobButton === 'true'
    && handSeen.alice.length === 1 && handSeen.carol.length === 1 && visiblePeople && unlabelled.length === 0 && axeRoom.length === 0 && errors.length === 0;
  process.exit(ok ? 0 : 1);
})().catch((e) => { console.error(e); process.exit(2); });
