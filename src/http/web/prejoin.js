// The pre-join part of the lobby: a camera preview, a microphone level
// meter, camera / microphone / speaker pickers and "join with camera off" /
// "mic off". The choices are remembered on this device (localStorage), so a
// shared link (?room=...&name=...) that joins at once uses them too.

const $ = (id) => document.getElementById(id);
const KEY = 'confer.prejoin';

let stream = null; // the preview's capture
let meter = null; // {ctx, timer}

export function choice() {
  try { return { camera: '', mic: '', speaker: '', cameraOff: false, micOff: false, ...JSON.parse(localStorage.getItem(KEY) || '{}') }; } catch { return { camera: '', mic: '', speaker: '', cameraOff: false, micOff: false }; }
}
function remember() {
  localStorage.setItem(KEY, JSON.stringify({
    camera: $('pre-camera').value, mic: $('pre-mic').value, speaker: $('pre-speaker').value,
    cameraOff: $('pre-camera-off').checked, micOff: $('pre-mic-off').checked,
  }));
}

export function init() {
  const c = choice();
  $('pre-camera-off').checked = c.cameraOff;
  $('pre-mic-off').checked = c.micOff;
  for (const id of ['pre-camera-off', 'pre-mic-off']) $(id).onchange = remember;
  $('pre-camera').onchange = () => { remember(); start(); };
  $('pre-mic').onchange = () => { remember(); start(); };
  $('pre-speaker').onchange = remember;
  // Speaker choice needs HTMLMediaElement.setSinkId (not every browser has it).
  $('pre-speaker-field').hidden = !('setSinkId' in HTMLMediaElement.prototype);
}

// The lobby is shown: preview what joining would send.
export async function start() {
  stop();
  if (!navigator.mediaDevices?.getUserMedia) return note('This browser cannot open a camera here (it needs HTTPS or localhost).');
  const c = choice();
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      // The size a room asks for (app.js getMedia): Chromium shares an open
      // camera between its streams at the first opener's size, so a 640x480
      // preview still closing when the room asks for 720p left the room
      // 640x360, which libwebrtc encodes as two simulcast layers, not three.
      video: { width: 1280, height: 720, ...(c.camera ? { deviceId: { exact: c.camera } } : {}) },
      audio: c.mic ? { deviceId: { exact: c.mic } } : true,
    });
  } catch (e) {
    // A remembered device that is gone: try the defaults once.
    if (e.name === 'OverconstrainedError' && (c.camera || c.mic)) { localStorage.removeItem(KEY); return start(); }
    return note(e.name === 'NotAllowedError'
      ? 'Camera and microphone access was denied: allow it in the browser (the icon in the address bar) to be seen and heard. You can still join to watch.'
      : e.name === 'NotFoundError' ? 'No camera or microphone found. You can still join to watch.' : `Cannot open camera or microphone: ${e.message}`);
  }
  if ($('lobby').hidden) return stop(); // left the lobby while the browser asked
  note('');
  $('preview').srcObject = stream;
  level(stream);
  await devices();
}
export function stop() {
  stream?.getTracks().forEach((t) => t.stop()); stream = null;
  $('preview').srcObject = null;
  if (meter) { clearInterval(meter.timer); meter.ctx.close().catch(() => {}); meter = null; }
  $('mic-meter').value = 0;
}
function note(text) { $('preview-note').textContent = text; }

// The microphone's level, 0..1 (RMS of the waveform), ten times a second.
function level(s) {
  if (!s.getAudioTracks().length || typeof AudioContext !== 'function') return;
  const ctx = new AudioContext();
  const analyser = ctx.createAnalyser(); analyser.fftSize = 1024;
  ctx.createMediaStreamSource(s).connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  const timer = setInterval(() => {
    analyser.getFloatTimeDomainData(buf);
    let sum = 0; for (const x of buf) sum += x * x;
    $('mic-meter').value = Math.min(1, Math.sqrt(sum / buf.length) * 4);
  }, 100);
  meter = { ctx, timer };
  ctx.resume?.().catch(() => {});
}

async function devices() {
  const devs = await navigator.mediaDevices.enumerateDevices();
  const c = choice();
  const used = (kind) => stream?.getTracks().find((t) => t.kind === kind)?.getSettings().deviceId;
  for (const [id, kind, want] of [['pre-camera', 'videoinput', used('video') || c.camera], ['pre-mic', 'audioinput', used('audio') || c.mic], ['pre-speaker', 'audiooutput', c.speaker]]) {
    const sel = $(id);
    const opts = devs.filter((d) => d.kind === kind).map((d, i) => new Option(d.label || `${kind} ${i + 1}`, d.deviceId));
    if (kind === 'audiooutput') opts.unshift(new Option('System default', ''));
    sel.replaceChildren(...opts);
    if (want && opts.some((o) => o.value === want)) sel.value = want;
  }
}

// Plays a tile's audio on the chosen speaker, where the browser allows it
// (`always`: also the system default, when the choice changed back to it).
export function route(video, always) {
  const id = choice().speaker;
  if ((id || always) && video.setSinkId) video.setSinkId(id).catch(() => {});
}

// The speaker chosen in the call: remembered as the lobby's choice.
export function setSpeaker(id) {
  localStorage.setItem(KEY, JSON.stringify({ ...choice(), speaker: id }));
}
