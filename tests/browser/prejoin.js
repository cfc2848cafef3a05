// The lobby's pre-join in headless Chromium with fake devices: Pat signs in
// and the lobby previews the camera (frames with a size) and the microphone
// (the meter moves with the fake tone); Pat picks the second camera and ticks
// "Join with camera off" and "Join with mic off" (keyboard), and joins: the
// room is sent that camera, both buttons say off, and Quinn, already in the
// room, sees Pat with mic and camera off. After a reload the lobby shows the
// same choices again. axe-core finds no serious violation in the lobby.
// Exits 0 on success and prints a JSON summary; any console error fails it.
// usage: node prejoin.js http://HOST:PORT
const { chromium } = require('playwright-core');
const axe = require('./axe');
(async () => {
  const base = process.argv[2];
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--use-fake-device-for-media-stream=device-count=2', '--use-fake-ui-for-media-stream', '--allow-loopback-in-peer-connection', '--autoplay-policy=no-user-gesture-required'] });
  const errors = [];
  const room = `pre-${Date.now()}`;
  const open = async (name, query) => {
    const page = await (await browser.newContext()).newPage();
    page.on('console', (m) => { if (m.type() === 'error') errors.push(`${name}: ${m.text()}`); });
    page.on('pageerror', (e) => errors.push(`${name}: ${e.message}`));
    await page.goto(`${base}/?${query}`);
    return page;
  };
  const quinn = await open('Quinn', `name=Quinn&room=${room}`);
  await quinn.waitForFunction(() => window.confer?.peerId, null, { timeout: 15000 });

  const pat = await open('Pat', 'name=Pat');
  await pat.waitForSelector('#lobby:not([hidden])', { timeout: 10000 });
  await pat.waitForFunction(() => document.getElementById('preview').videoWidth > 0, null, { timeout: 10000 });
  const preview = await pat.evaluate(() => ({ width: document.getElementById('preview').videoWidth, height: document.getElementById('preview').videoHeight }));
  // The fake microphone beeps: the meter must move off zero at some point.
  const levels = [];
  for (let i = 0; i < 30 && !levels.some((l) => l > 0.01); i++) {
    levels.push(await pat.evaluate(() => document.getElementById('mic-meter').value));
    await pat.waitForTimeout(100);
  }
  const cameras = await pat.evaluate(() => [...document.getElementById('pre-camera').options].map((o) => o.value));
  const mics = await pat.evaluate(() => document.getElementById('pre-mic').options.length);
  const chosen = cameras[cameras.length - 1];
  await pat.selectOption('#pre-camera', chosen);
  // The preview follows the choice.
  await pat.waitForFunction((id) => document.getElementById('preview').srcObject?.getVideoTracks()[0]?.getSettings().deviceId === id, chosen, { timeout: 10000 });
  await pat.focus('#pre-camera-off'); await pat.keyboard.press('Space');
  await pat.focus('#pre-mic-off'); await pat.keyboard.press('Space');
  await pat.fill('#room', room);
  await pat.click('#room-form button[type=submit]');
  await pat.waitForFunction(() => window.confer?.peerId, null, { timeout: 15000 });
  const joined = await pat.evaluate(() => ({
    camera: window.confer.local?.getVideoTracks()[0]?.getSettings().deviceId,
    videoEnabled: window.confer.local?.getVideoTracks()[0]?.enabled,
    audioEnabled: window.confer.local?.getAudioTracks()[0]?.enabled,
    videoButton: document.getElementById('mute-video').getAttribute('aria-pressed'),
    audioButton: document.getElementById('mute-audio').getAttribute('aria-pressed'),
    previewStopped: document.getElementById('preview').srcObject === null,
  }));
  // Quinn's participant list says so once Pat's tracks are known.
  await quinn.waitForFunction(() => [...document.querySelectorAll('#people li')].some((li) => li.textContent.includes('Pat') && li.querySelector('.mic') && li.querySelector('.cam')), null, { timeout: 15000 });
  const quinnSees = await quinn.evaluate(() => [...document.querySelectorAll('#people li')].find((li) => li.textContent.includes('Pat')).textContent);

  // Remembered on the device: leave, reload, the lobby shows the same choices.
  await pat.click('#leave');
  await pat.goto(`${base}/?name=Pat`);
  await pat.waitForSelector('#lobby:not([hidden])', { timeout: 10000 });
  await pat.waitForFunction(() => document.getElementById('pre-camera').options.length > 0, null, { timeout: 10000 });
  const remembered = await pat.evaluate(() => ({
    camera: document.getElementById('pre-camera').value,
    cameraOff: document.getElementById('pre-camera-off').checked,
    micOff: document.getElementById('pre-mic-off').checked,
  }));
  const labelled = await pat.evaluate(() => [...document.querySelectorAll('#prejoin select, #prejoin input, #prejoin meter')].every((el) => el.labels?.length > 0));

  const axeLobby = await axe(pat);
  const summary = { axeLobby, preview, levels, cameras: cameras.length, mics, chosen, joined, quinnSees, remembered, labelled, errors };
  console.log(JSON.stringify(summary));
  await browser.close();
  const ok = preview.width > 0 && levels.some((l) => l > 0.01) && cameras.length >= 2 && joined.camera === chosen
    && joined.videoButton === 'true' && joined.audioButton === 'true' && !joined.videoEnabled && !joined.audioEnabled && joined.previewStopped
    && remembered.camera === chosen && remembered.cameraOff && remembered.micOff && labelled && axeLobby.length === 0 && errors.length === 0;
  process.exit(ok ? 0 : 1);
})().catch((e) => { console.error(e); process.exit(2); });
