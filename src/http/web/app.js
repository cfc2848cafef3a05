// confer's built-in web client: rooms through the SFU and 1:1 P2P calls,
// speaking the /rtc protocol of SPEC.md section 4. No framework, no build
// step: ES modules the browser loads as they are (panel.js: participants,
// chat, raised hands; prejoin.js: the lobby's preview and device choice;
// layout.js: grid and speaker views, pin, fullscreen, volume; calls.js:
// 1:1 calls).
import * as calls from './calls.js';
import * as layout from './layout.js';
import * as panel from './panel.js';
import * as prejoin from './prejoin.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

// The nodes this page may use (SPEC 13): this one first, then those of
// `?servers=host:port,...`. A lost connection is retried on the next one.
const SERVERS = [location.host, ...(params.get('servers') || '').split(',')
  .map((s) => s.trim().replace(/^[a-z]+:\/\//, '').replace(/\/.*$/, '')).filter(Boolean)]
  .filter((h, i, all) => all.indexOf(h) === i);

const S = {
  token: null, userId: null, name: null, guestName: null,
  ws: null, wsWanted: false, backoff: 500, seq: 0,
  server: 0, // index in SERVERS of the node the socket goes to
  rejoinReq: null, // reqId of the last room-join sent to get back in
  iceServers: [],
  // room
  roomId: null, roomName: null, peerId: null, pub: null, sub: null,
  local: null, screen: null, myTracks: new Map(), // mid -> {source, trackId?}
  tracks: new Map(), // server trackId -> {peerId, kind, source, muted, simulcast}
  tiles: new Map(), // peerId -> {el, video, stream, name}
  midToTrack: new Map(), // subscriber mid -> server trackId (from the offer's msid)
  answered: new Set(), // server trackIds in a subscribe-answer we sent: the server has our copy of them
  layers: new Map(), // server trackId -> {layer, reason}: the last subscription-update for it
  layersWanted: new Map(), // our trackId -> rids someone receives (publish-layers)
  layerChain: Promise.resolve(), // setParameters calls, one at a time
  quiet: new Set(), // reqIds whose errors the user need not read (adaptive stream)
  // call
  call: null, // {id, peer, pc, type}
  early: new Map(), // callId -> ICE candidates that arrived before the call's PC was ready
  incoming: null,
  errors: [],
};
window.confer = S; // for tests and debugging

// ---------- status and views ----------
function status(text, isError) {
  const el = $('status');
  if (!text) { el.hidden = true; return; }
  el.textContent = text; el.hidden = false;
  el.className = isError ? 'error' : '';
}
function show(view) {
  for (const id of ['signin', 'lobby', 'stage']) $(id).hidden = id !== view;
  // The lobby previews the camera and microphone; nothing else holds them twice.
  if (view === 'lobby') prejoin.start(); else prejoin.stop();
}

// ---------- auth ----------
function claims(token) {
  try {
    const b = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(b + '='.repeat((4 - b.length % 4) % 4)));
  } catch { return null; }
}
async function api(method, path, body) {
  const r = await fetch(path, {
    method, headers: { 'Authorization': `Bearer ${S.token}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let j = null; try { j = await r.json(); } catch { /* empty body */ }
  if (!r.ok) {
    const e = new Error(j?.error?.message || `HTTP ${r.status}`);
    e.status = r.status; e.code = j?.error?.code; throw e;
  }
  return j;
}
async function guestToken(name) {
  const r = await fetch('/auth/guest', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ name }) });
  const j = await r.json().catch(() => null);
  if (r.status === 403) throw new Error('Guest access is off on this server: paste an access token instead.');
  if (!r.ok) throw new Error(j?.error?.message || `HTTP ${r.status}`);
  return j.token;
}
async function signIn(name, token) {
  if (!token && name) { token = await guestToken(name); S.guestName = name; localStorage.setItem('confer.name', name); }
  if (!token) throw new Error('Enter a name (dev servers) or paste an access token.');
  const c = claims(token);
  if (!c?.sub) throw new Error('That is not an access token.');
  S.token = token; S.userId = c.sub; S.name = c.name || c.sub;
  try {
    const ice = await api('GET', '/ice-config');
    S.iceServers = ice.iceServers;
  } catch (e) {
    S.token = null;
    if (e.code === 'token-expired') throw new Error('Your access token has expired: get a new one.');
    throw new Error(`The server refused the token: ${e.message}`);
  }
  sessionStorage.setItem('confer.token', token);
  $('who').textContent = `${S.name} (${S.userId})`;
  connect();
  show('lobby');
}

// ---------- WebSocket ----------
function send(msg) {
  if (S.ws?.readyState === WebSocket.OPEN) S.ws.send(JSON.stringify(msg));
}
// Resolves once the socket is open. Joining right after signing in must wait
// for it: send() drops what it cannot send, and a room-join dropped that way
// left the page waiting forever. (A socket that fails instead reconnects, and
// the reconnect joins the room: S.roomId is set by then.)
function opened() {
  if (S.ws?.readyState === WebSocket.OPEN) return Promise.resolve();
  return new Promise((resolve) => S.ws.addEventListener('open', resolve, { once: true }));
}
function connect() {
  S.wsWanted = true;
  const proto = location.protocol === 'https:' ? 'wss' : 'ws';
  const ws = new WebSocket(`${proto}://${SERVERS[S.server]}/rtc?token=${encodeURIComponent(S.token)}`);
  S.ws = ws;
  ws.onopen = () => {
    S.backoff = 500;
    if (S.lost) { status(''); S.lost = false; if (S.roomId) rejoin(); }
  };
  ws.onmessage = (ev) => { let m; try { m = JSON.parse(ev.data); } catch { return; } onMessage(m); };
  ws.onclose = (ev) => {
    if (S.ws !== ws) return;
    if (ev.code === 4001) { status('Your access token expired. Sign in again.', true); return signOut(); }
    if (!S.wsWanted) return;
    S.lost = true;
    // Another node, if the page has some: this one may be gone for good.
    S.server = (S.server + 1) % SERVERS.length;
    status(SERVERS.length > 1 ? 'Connection lost — reconnecting to another server…' : 'Connection lost — reconnecting…', true);
    setTimeout(connect, S.backoff);
    S.backoff = Math.min(S.backoff * 2, 8000);
  };
}
function signOut() {
  S.wsWanted = false; S.ws?.close(); S.token = null;
  sessionStorage.removeItem('confer.token');
  show('signin');
}

async function onMessage(m) {
  switch (m.type) {
    case 'pong': return;
    case 'error': return onError(m);
    case 'server-shutdown': return status('The server is restarting — reconnecting…', true);
    // rooms
    case 'room-joined': return onRoomJoined(m);
    case 'publish-answer': return S.pub?.setRemoteDescription({ type: 'answer', sdp: m.sdp });
    case 'subscribe-offer': return onSubscribeOffer(m);
    case 'room-ice-candidate': return onRoomCandidate(m);
    case 'participant-joined': panel.joined(m.participant); return addTile(m.participant.peerId, m.participant.name || m.participant.userId);
    case 'participant-left': panel.left(m.peerId); return removeTile(m.peerId || m.participant?.peerId);
    case 'room-message': return panel.message(m);
    case 'participant-updated': return onParticipantUpdated(m.participant);
    case 'track-published': return onTrackPublished(m.peerId, m.track);
    case 'track-unpublished': return onTrackUnpublished(m.peerId, m.trackId || m.track?.id);
    case 'active-speakers': return onSpeakers(m.speakers || []);
    case 'subscription-update': return onSubscriptionUpdate(m);
    case 'publish-layers': return onPublishLayers(m);
    case 'connection-quality': panel.quality(m.updates || []); return onQuality(m.updates || []);
    case 'room-deleted': status('This room was deleted.', true); return leaveRoom(false);
    default: return calls.onMessage(m); // call-*, ice-candidate
  }
}

async function onError(m) {
  // A size change can ask for a track that was unpublished a moment ago:
  // nothing the user has to know about.
  if (S.quiet.delete(m.reqId)) return;
  if (rejoinRefused(m)) return;
  if (panel.refused(m)) return;
  if (m.code === 'token-expired') {
    if (S.guestName) {
      try { const t = await guestToken(S.guestName); if (claims(t)) { S.token = t; send({ type: 'refresh', token: t }); } return; } catch { /* fall through */ }
    }
    return status('Your access token is about to expire: sign in again to keep the call.', true);
  }
  const texts = {
    'room-full': 'This room is full.',
    'forbidden': 'You are not allowed in this room.',
    'not-found': 'That room or call no longer exists.',
    'rate-limited': 'Too many actions at once; slow down.',
  };
  status(texts[m.code] || `Error: ${m.message}`, true);
  if (['room-full', 'forbidden'].includes(m.code) && S.roomId && !S.peerId) leaveRoom(false);
}

// ---------- media devices ----------
async function getMedia(kind) {
  // Until the call's own pickers are filled, the lobby's choice holds.
  const cam = $('camera-select').value || prejoin.choice().camera, mic = $('mic-select').value || prejoin.choice().mic;
  const want = {
    audio: mic ? { deviceId: { exact: mic } } : true,
    video: kind === 'audio' ? false : S.call ? (cam ? { deviceId: { exact: cam } } : { width: 640, height: 360 })
      // Rooms send the camera as simulcast: 720p gives three distinct layers (320, 640, 1280 wide).
      : { width: 1280, height: 720, ...(cam ? { deviceId: { exact: cam } } : {}) },
  };
  try {
    return await navigator.mediaDevices.getUserMedia(want);
  } catch (e) {
    const why = e.name === 'NotAllowedError' ? 'Camera and microphone access was denied: allow it in the browser to send media.'
      : e.name === 'NotFoundError' ? 'No camera or microphone found.'
        : `Cannot open camera or microphone: ${e.message}`;
    status(why + ' You can still see and hear the others.', true);
    return null;
  } finally { fillDevices(); }
}
async function fillDevices() {
  if (!navigator.mediaDevices?.enumerateDevices) return;
  const devs = await navigator.mediaDevices.enumerateDevices();
  for (const [sel, kind] of [[$('camera-select'), 'videoinput'], [$('mic-select'), 'audioinput']]) {
    const cur = sel.value;
    sel.replaceChildren(...devs.filter((d) => d.kind === kind).map((d, i) => new Option(d.label || `${kind} ${i + 1}`, d.deviceId)));
    if (cur) sel.value = cur;
  }
  // The speaker the lobby chose, changeable in the call (setSinkId).
  const out = $('speaker-select');
  out.replaceChildren(new Option('System default', ''), ...devs.filter((d) => d.kind === 'audiooutput' && d.deviceId !== 'default').map((d, i) => new Option(d.label || `speaker ${i + 1}`, d.deviceId)));
  out.value = prejoin.choice().speaker;
  if (out.selectedIndex < 0) out.value = '';
}
async function switchDevice(kind) {
  if (!S.local) return;
  const fresh = await getMedia(S.call?.type === 'audio' ? 'audio' : 'video');
  if (!fresh) return;
  const track = fresh.getTracks().find((t) => t.kind === kind);
  fresh.getTracks().filter((t) => t !== track).forEach((t) => t.stop());
  const old = S.local.getTracks().find((t) => t.kind === kind);
  const pc = S.call ? S.call.pc : S.pub;
  const sender = pc?.getSenders().find((s) => s.track === old);
  if (sender) await sender.replaceTrack(track);
  if (old) { S.local.removeTrack(old); old.stop(); }
  S.local.addTrack(track);
  if (S.call?.id && kind === 'video') api('PUT', `/calls/${S.call.id}/switch-camera`, { deviceId: track.getSettings().deviceId }).catch(() => {});
  const me = S.tiles.get('me'); if (me) me.video.srcObject = S.local;
}

// ---------- tiles ----------
function addTile(peerId, name) {
  if (!peerId) return null;
  let t = S.tiles.get(peerId);
  if (t) { if (name) t.label.textContent = name; return t; }
  const el = document.createElement('div');
  el.className = 'tile'; el.dataset.peer = peerId;
  const video = document.createElement('video');
  video.autoplay = true; video.playsInline = true; video.muted = peerId === 'me';
  if (peerId !== 'me') prejoin.route(video);
  video.setAttribute('aria-label', `Video of ${name || peerId}`);
  const label = document.createElement('span'); label.className = 'label'; label.textContent = name || peerId;
  // The connection-quality badge of a person in a room says "unknown" until
  // the server sends their first score (SPEC 4, 8); a screen-share tile has
  // none (its person's tile has it), nor has a 1:1 call (nothing scores it).
  const badge = document.createElement('span'); badge.className = 'badge unknown';
  badge.textContent = 'unknown'; badge.title = 'connection quality not measured yet';
  badge.hidden = !S.roomId || peerId.includes(':') || peerId === 'unknown';
  const muted = document.createElement('span'); muted.className = 'muted'; muted.hidden = true;
  const layer = document.createElement('span'); layer.className = 'layer'; layer.hidden = true;
  const paused = document.createElement('span'); paused.className = 'paused'; paused.hidden = true;
  paused.textContent = 'Paused: low bandwidth';
  el.append(video, label, badge, muted, layer, paused);
  $('tiles').append(el);
  t = { el, video, label, badge, muted, layer, paused, want: null, stream: new MediaStream() };
  tileOfVideo.set(video, t);
  video.srcObject = peerId === 'me' ? S.local : t.stream;
  S.tiles.set(peerId, t);
  layout.decorate(t, peerId, name || peerId);
  return t;
}
function removeTile(peerId) {
  const t = S.tiles.get(peerId); if (!t) return;
  sizes?.unobserve(t.video);
  t.el.remove(); S.tiles.delete(peerId);
  layout.removed(peerId);
  for (const [id, tr] of S.tracks) if (tr.peerId === peerId) S.tracks.delete(id);
}
function setMutedBadge(t, audio, video) {
  const parts = [];
  if (audio) parts.push('mic off');
  if (video) parts.push('camera off');
  t.muted.textContent = parts.join(', ');
  t.muted.hidden = parts.length === 0;
}

// ---------- rooms ----------
async function joinRoom(name) {
  status('Joining…');
  let room;
  try {
    const list = await api('GET', '/rooms?limit=100');
    room = list.rooms.find((r) => r.name === name || r.id === name);
    if (!room) room = (await api('POST', '/rooms', { name })).room;
  } catch (e) { return status(`Cannot open the room: ${e.message}`, true); }
  S.roomId = room.id; S.roomName = room.name; S.peerId = null;
  history.replaceState(null, '', `?room=${encodeURIComponent(room.name)}${params.get('servers') ? `&servers=${encodeURIComponent(params.get('servers'))}` : ''}`);
  show('stage');
  S.local = await getMedia('video');
  addTile('me', `${S.name} (you)`);
  const c = prejoin.choice();
  if (c.cameraOff) toggleMute('video');
  if (c.micOff) toggleMute('audio');
  await opened();
  if (S.roomId !== room.id || S.peerId) return; // left meanwhile, or a reconnect already joined
  send({ type: 'room-join', roomId: room.id, reqId: ++S.seq });
}
function rejoin() {
  closePcs();
  for (const id of [...S.tiles.keys()]) if (id !== 'me') removeTile(id);
  S.rejoinReq = ++S.seq;
  send({ type: 'room-join', roomId: S.roomId, peerId: S.peerId || undefined, reqId: S.rejoinReq });
}
// A rejoin the server could not take: the seat was on a node that is gone
// (take a new one), or the room's node does not answer yet (it is placed
// again once the cluster counts that node dead): try again.
function rejoinRefused(m) {
  if (!S.roomId || m.reqId == null || m.reqId !== S.rejoinReq) return false;
  if (m.code === 'not-found' && S.peerId && /peerId/.test(m.message)) { S.peerId = null; rejoin(); return true; }
  if (m.code === 'unavailable') {
    status('The room\'s server is gone — moving the room…', true);
    setTimeout(() => { if (S.roomId && S.ws?.readyState === WebSocket.OPEN) rejoin(); }, 1000);
    return true;
  }
  return false;
}
// The room's media stopped (its node went away while our socket stayed up):
// join again, which places the room on a node that is there.
function watchRoomPc(pc) {
  let timer = null;
  pc.onconnectionstatechange = () => {
    clearTimeout(timer);
    if (pc.connectionState === 'failed' || pc.connectionState === 'disconnected') {
      timer = setTimeout(() => {
        if ((S.sub === pc || S.pub === pc) && ['failed', 'disconnected'].includes(pc.connectionState)) {
          status('The room\'s media connection was lost — joining again…', true);
          rejoin();
        }
      }, pc.connectionState === 'failed' ? 0 : 3000);
    }
  };
}
function newPc() {
  return new RTCPeerConnection({ iceServers: S.iceServers, iceTransportPolicy: params.get('relay') ? 'relay' : 'all' });
}
async function onRoomJoined(m) {
  status('');
  S.peerId = m.peerId;
  if (m.iceServers) S.iceServers = m.iceServers;
  panel.reset(m.room);
  panel.selfMuted($('mute-audio').getAttribute('aria-pressed') === 'true', $('mute-video').getAttribute('aria-pressed') === 'true');
  panel.syncHand();
  panel.loadHistory();
  for (const p of m.room.participants || []) {
    if (p.peerId === S.peerId) continue;
    addTile(p.peerId, p.name || p.userId);
    for (const tr of p.tracks || []) onTrackPublished(p.peerId, tr);
  }
  S.sub = newPc();
  S.sub.onicecandidate = (e) => e.candidate && send({ type: 'room-ice-candidate', roomId: S.roomId, pc: 'subscriber', candidate: e.candidate.toJSON() });
  S.sub.ontrack = (e) => onRemoteTrack(e);
  watchRoomPc(S.sub);
  S.pub = newPc();
  S.pub.onicecandidate = (e) => e.candidate && send({ type: 'room-ice-candidate', roomId: S.roomId, pc: 'publisher', candidate: e.candidate.toJSON() });
  S.myTracks.clear(); S.layersWanted.clear();
  if (S.local) for (const t of S.local.getTracks()) S.pub.addTransceiver(t, sendInit(t, S.local));
  await publish();
}
// The camera goes out as three simulcast layers (SPEC 5.1) so the SFU can give
// each subscriber the one that fits its tile and its link; the microphone and a
// screen share (which must stay sharp) go out as one. Each layer has a bitrate
// cap (LiveKit's client uses about the same): without one Chromium lets h reach
// 700 kbit/s and f 2.5 Mbit/s, so a 600 kbit/s link fits only q and a 1 Mbit/s
// link gains nothing from h. With them q, h and f step about 3x apart.
const SIMULCAST = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 450_000 },
  { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
];
function sendInit(track, stream) {
  const init = { direction: 'sendonly', streams: [stream] };
  if (track.kind === 'video' && stream === S.local) init.sendEncodings = SIMULCAST.map((e) => ({ ...e }));
  return init;
}
const isSimulcast = (transceiver) => transceiver.sender.getParameters().encodings?.length > 1;
async function publish() {
  if (!S.pub || S.pub.getTransceivers().length === 0) return;
  const offer = await S.pub.createOffer();
  await S.pub.setLocalDescription(offer);
  const tracks = S.pub.getTransceivers().filter((t) => t.sender.track && !t.stopped).map((t) => ({
    mid: t.mid,
    source: sourceOf(t.sender.track),
    simulcast: isSimulcast(t),
  }));
  for (const t of tracks) S.myTracks.set(t.mid, { ...S.myTracks.get(t.mid), source: t.source });
  send({ type: 'publish-offer', roomId: S.roomId, sdp: S.pub.localDescription.sdp, tracks, reqId: ++S.seq });
}
function sourceOf(track) {
  if (S.screen?.getTracks().includes(track)) return track.kind === 'video' ? 'screen' : 'screen-audio';
  return track.kind === 'video' ? 'camera' : 'microphone';
}
async function onSubscribeOffer(m) {
  if (!S.sub) return;
  // Map each mid to the server's track id from "a=msid:<stream> <track>".
  let mid = null;
  for (const line of m.sdp.split(/\r?\n/)) {
    if (line.startsWith('a=mid:')) mid = line.slice(6).trim();
    else if (line.startsWith('a=msid:') && mid !== null) {
      const [stream, track] = line.slice(7).trim().split(' ');
      S.midToTrack.set(mid, { stream, track });
    }
  }
  await S.sub.setRemoteDescription({ type: 'offer', sdp: m.sdp });
  const answer = await S.sub.createAnswer();
  await S.sub.setLocalDescription(answer);
  send({ type: 'subscribe-answer', roomId: S.roomId, sdp: S.sub.localDescription.sdp });
  // The server makes our copy of each track when it reads the answer, and a
  // track-subscribe before that is lost: the tiles ask for their quality now.
  for (const { track } of S.midToTrack.values()) S.answered.add(track);
  for (const t of S.tiles.values()) fitTile(t);
}
function peerOfRemote(e) {
  const ids = S.midToTrack.get(e.transceiver?.mid) || {};
  for (const id of [ids.track, e.track.id]) if (id && S.tracks.has(id)) return S.tracks.get(id).peerId;
  for (const id of [ids.stream, e.streams[0]?.id]) if (id && S.tiles.has(id)) return id;
  return ids.stream || e.streams[0]?.id || 'unknown';
}
function onRemoteTrack(e) {
  const peerId = peerOfRemote(e);
  const t = addTile(peerId) || addTile('unknown');
  const isScreen = [...S.tracks.values()].some((x) => x.peerId === peerId && x.source === 'screen' && x.id === (S.midToTrack.get(e.transceiver?.mid)?.track));
  let tile = t;
  if (isScreen) tile = addTile(`${peerId}:screen`, `${t.label.textContent} (screen)`);
  tile.stream.addTrack(e.track);
  e.track.onended = () => tile.stream.removeTrack(e.track);
  tile.video.play?.().catch(() => {});
  const trackId = S.midToTrack.get(e.transceiver?.mid)?.track;
  if (e.track.kind === 'video' && trackId) watchTile(tile, trackId, isScreen);
}
function onRoomCandidate(m) {
  const pc = m.pc === 'publisher' ? S.pub : S.sub;
  pc?.addIceCandidate(m.candidate).catch(() => {});
}
function onTrackPublished(peerId, track) {
  if (!track) return;
  if (peerId === S.peerId) return learnTrackId(track);
  S.tracks.set(track.id, { id: track.id, peerId, kind: track.kind, source: track.source, muted: track.muted, simulcast: track.simulcast });
  if (track.source === 'screen') addTile(`${peerId}:screen`, `${S.tiles.get(peerId)?.label.textContent || peerId} (screen)`);
}
// Our own track: learn its server id, which track-mute and publish-layers use.
function learnTrackId(track) {
  for (const v of S.myTracks.values()) {
    if (!v.trackId && v.source === track.source) {
      v.trackId = track.id; applyLayers(track.id);
      // Joined with this one off (the lobby's choice): the others are told now.
      const off = { camera: 'mute-video', microphone: 'mute-audio' }[track.source];
      if (off && $(off).getAttribute('aria-pressed') === 'true') send({ type: 'track-mute', roomId: S.roomId, trackId: track.id, muted: true });
      return;
    }
  }
}
function onTrackUnpublished(peerId, trackId) {
  const tr = S.tracks.get(trackId); S.tracks.delete(trackId); S.layers.delete(trackId);
  // Its tile stops asking for it (the camera tile stays for the person).
  for (const t of S.tiles.values()) if (t.want?.trackId === trackId) { t.want = null; showLayer(t); }
  if (tr?.source === 'screen') removeTile(`${peerId}:screen`);
}
function onParticipantUpdated(p) {
  if (!p) return;
  panel.updated(p);
  if (p.peerId === S.peerId) {
    for (const tr of p.tracks || []) learnTrackId(tr);
    return;
  }
  const t = addTile(p.peerId, p.name || p.userId);
  const muted = (kind) => (p.tracks || []).some((x) => x.kind === kind && x.source !== 'screen' && x.source !== 'screen-audio' && x.muted);
  setMutedBadge(t, muted('audio'), muted('video'));
  for (const tr of p.tracks || []) S.tracks.set(tr.id, { id: tr.id, peerId: p.peerId, kind: tr.kind, source: tr.source, muted: tr.muted, simulcast: tr.simulcast });
}
function onSpeakers(speakers) {
  const now = new Set(speakers.map((s) => s.peerId));
  layout.speakers(speakers.map((s) => (s.peerId === S.peerId ? 'me' : s.peerId)));
  for (const [id, t] of S.tiles) t.el.classList.toggle('speaking', now.has(id) || (id === 'me' && now.has(S.peerId)));
}
function onQuality(updates) {
  for (const u of updates) {
    const t = S.tiles.get(u.peerId === S.peerId ? 'me' : u.peerId);
    if (!t) continue;
    t.badge.hidden = false; t.badge.textContent = u.rating; t.badge.className = `badge ${u.rating}`;
    const weak = u.rating === 'poor' || u.rating === 'bad';
    const who = u.peerId === S.peerId ? 'Your' : `${t.label.textContent}'s`;
    t.badge.title = weak ? `${who} connection is ${u.rating} (quality ${u.score})` : `quality ${u.score}`;
    t.el.classList.toggle('weak', weak);
    // One's own weak connection is said in words, with what helps.
    if (u.peerId === S.peerId) {
      const note = $('own-quality');
      note.hidden = !weak;
      note.textContent = weak ? `Your connection is ${u.rating}: others may see you frozen or hear you break up. Stopping your camera, closing other downloads or moving closer to the Wi-Fi helps.` : '';
    }
  }
}
function closePcs() {
  $('own-quality').hidden = true;
  S.pub?.close(); S.sub?.close(); S.pub = S.sub = null;
  S.midToTrack.clear(); S.layers.clear(); S.answered.clear();
}

// ---------- adaptive stream and dynacast (SPEC 5.1) ----------
// Each remote video tile asks the SFU for the layer that fits its size on
// screen (device pixels): a thumbnail needs no 720p, and what nobody asks for
// the publisher can stop encoding. Screen shares always ask for full
// resolution, because text must stay readable.
const tileOfVideo = new WeakMap();
const sizes = typeof ResizeObserver === 'function'
  ? new ResizeObserver((entries) => { for (const e of entries) fitTile(tileOfVideo.get(e.target)); })
  : null;
function qualityFor(px) { return px < 360 ? 'low' : px < 800 ? 'medium' : 'high'; }
function watchTile(t, trackId, screen) {
  if (t.want?.trackId === trackId) return;
  t.want = { trackId, screen, sent: null };
  sizes?.observe(t.video);
  fitTile(t);
  showLayer(t);
}
// Sends track-subscribe only when the wanted quality changes.
function fitTile(t) {
  const w = t?.want; if (!w || !S.roomId || !S.answered.has(w.trackId)) return;
  const px = t.video.clientWidth * (window.devicePixelRatio || 1);
  if (!w.screen && px === 0) return; // not laid out: keep what it has
  const quality = w.screen ? 'high' : qualityFor(px);
  if (quality === w.sent) return;
  w.sent = quality;
  const reqId = ++S.seq; S.quiet.add(reqId);
  if (S.quiet.size > 100) S.quiet.delete(S.quiet.values().next().value); // errors that never came
  send({ type: 'track-subscribe', roomId: S.roomId, trackId: w.trackId, subscribe: true, quality, reqId });
}
// Zoom and a move to another screen change devicePixelRatio; they fire resize.
window.addEventListener('resize', () => { for (const t of S.tiles.values()) fitTile(t); });

// The layer the server forwards to us for a track: kept per track, because it
// can arrive before the track's tile has it.
function onSubscriptionUpdate(m) {
  S.layers.set(m.trackId, { layer: m.layer ?? null, reason: m.reason });
  for (const t of S.tiles.values()) if (t.want?.trackId === m.trackId) showLayer(t);
}
const LAYER_NAMES = { q: 'low', h: 'medium', f: 'high' };
function showLayer(t) {
  const trackId = t.want?.trackId;
  const now = trackId ? S.layers.get(trackId) : null;
  // Paused for bandwidth: say so rather than leave a frozen picture unexplained.
  t.paused.hidden = !(now && now.layer === null && now.reason === 'bandwidth');
  // A single-layer track is reported as "q" whatever its size: no badge for it.
  const layered = S.tracks.get(trackId)?.simulcast;
  t.layer.hidden = !(layered && now?.layer);
  if (!t.layer.hidden) {
    t.layer.textContent = LAYER_NAMES[now.layer] || now.layer;
    t.layer.title = `Receiving the ${t.layer.textContent} quality layer`;
  }
}

// Dynacast: the server names the layers of our camera that some viewer receives
// or may be moved to (every layer up to a viewer's ceiling);
// the others need not be encoded, which saves CPU and uplink. One stays on
// ("q" when none is wanted) so that a new viewer gets video at once.
function onPublishLayers(m) {
  S.layersWanted.set(m.trackId, m.layers || []);
  applyLayers(m.trackId);
}
function senderOf(trackId) {
  for (const [mid, v] of S.myTracks) {
    if (v.trackId === trackId) return S.pub?.getTransceivers().find((t) => t.mid === mid)?.sender || null;
  }
  return null;
}
function applyLayers(trackId) {
  const layers = S.layersWanted.get(trackId);
  const sender = layers && senderOf(trackId);
  if (!sender) return; // our track id is not known yet: learnTrackId comes back
  // getParameters/setParameters pairs must not interleave.
  S.layerChain = S.layerChain.then(async () => {
    const p = sender.getParameters();
    const rids = p.encodings.map((e) => e.rid).filter(Boolean);
    if (rids.length < 2) return; // single layer: nothing to choose
    let on = layers.filter((r) => rids.includes(r));
    if (on.length === 0) on = [rids.includes('q') ? 'q' : rids[0]];
    let changed = false;
    for (const e of p.encodings) if (e.active !== on.includes(e.rid)) { e.active = on.includes(e.rid); changed = true; }
    if (changed) await sender.setParameters(p);
  }).catch((e) => console.warn('publish-layers:', e.message)); // a closed PeerConnection: the next one starts afresh
}
function leaveRoom(tell = true) {
  if (tell && S.roomId) send({ type: 'room-leave', roomId: S.roomId });
  closePcs();
  stopLocal();
  S.roomId = S.peerId = null; S.tracks.clear();
  panel.clear();
  for (const id of [...S.tiles.keys()]) removeTile(id);
  history.replaceState(null, '', location.pathname);
  show('lobby');
}
function stopLocal() {
  S.local?.getTracks().forEach((t) => t.stop()); S.local = null;
  S.screen?.getTracks().forEach((t) => t.stop()); S.screen = null;
  $('share').setAttribute('aria-pressed', 'false'); $('share').textContent = 'Share screen';
  for (const b of ['mute-audio', 'mute-video']) $(b).setAttribute('aria-pressed', 'false');
}

// ---------- controls ----------
async function toggleMute(kind) {
  const btn = $(kind === 'audio' ? 'mute-audio' : 'mute-video');
  const muted = btn.getAttribute('aria-pressed') !== 'true';
  btn.setAttribute('aria-pressed', String(muted));
  btn.textContent = kind === 'audio' ? (muted ? 'Unmute mic' : 'Mute mic') : (muted ? 'Start camera' : 'Stop camera');
  for (const t of S.local?.getTracks() || []) if (t.kind === kind) t.enabled = !muted;
  const me = S.tiles.get('me');
  const audioOff = $('mute-audio').getAttribute('aria-pressed') === 'true', videoOff = $('mute-video').getAttribute('aria-pressed') === 'true';
  if (me) setMutedBadge(me, audioOff, videoOff);
  if (S.roomId) panel.selfMuted(audioOff, videoOff);
  if (S.call?.id) return api('PUT', `/calls/${S.call.id}/mute-${kind}`, { mute: muted }).catch((e) => status(e.message, true));
  if (S.roomId) {
    const source = kind === 'audio' ? 'microphone' : 'camera';
    for (const v of S.myTracks.values()) if (v.source === source && v.trackId) send({ type: 'track-mute', roomId: S.roomId, trackId: v.trackId, muted });
  }
}
async function toggleShare() {
  if (S.screen) return stopShare();
  let stream;
  try { stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: true }); } catch (e) {
    return status(e.name === 'NotAllowedError' ? 'Screen sharing was cancelled or denied.' : `Cannot share the screen: ${e.message}`, true);
  }
  S.screen = stream;
  $('share').setAttribute('aria-pressed', 'true'); $('share').textContent = 'Stop sharing';
  stream.getVideoTracks()[0].onended = () => stopShare();
  if (S.pub) {
    for (const t of stream.getTracks()) S.pub.addTransceiver(t, { direction: 'sendonly', streams: [stream] });
    await publish();
  }
}
async function stopShare() {
  if (!S.screen) return;
  const tracks = S.screen.getTracks(); S.screen = null;
  for (const tr of S.pub?.getTransceivers() || []) if (tracks.includes(tr.sender.track)) { tr.sender.replaceTrack(null); tr.stop(); }
  tracks.forEach((t) => t.stop());
  $('share').setAttribute('aria-pressed', 'false'); $('share').textContent = 'Share screen';
  await publish();
}

// ---------- stats for tests ----------
S.framesDecoded = async () => {
  const out = {};
  for (const pc of [S.sub, S.call?.pc].filter(Boolean)) {
    const rep = await pc.getStats();
    rep.forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') out[s.trackIdentifier || s.id] = s.framesDecoded || 0; });
  }
  return out;
};

// ---------- wiring ----------
$('signin-form').onsubmit = async (e) => {
  e.preventDefault();
  try { status(''); await signIn($('name').value.trim(), $('token').value.trim()); if (params.get('room')) joinRoom(params.get('room')); }
  catch (err) { status(err.message, true); }
};
$('room-form').onsubmit = (e) => { e.preventDefault(); joinRoom($('room').value.trim()); };
prejoin.init();
if (!$('name').value) $('name').value = localStorage.getItem('confer.name') || '';
panel.init({ send, api, self: () => ({ roomId: S.roomId, peerId: S.peerId }) });
calls.init({ S, send, status, show, getMedia, addTile, removeTile, setMutedBadge, newPc, stopLocal });
$('mute-audio').onclick = () => toggleMute('audio');
$('mute-video').onclick = () => toggleMute('video');
$('share').onclick = toggleShare;
$('camera-select').onchange = () => switchDevice('video');
$('mic-select').onchange = () => switchDevice('audio');
$('speaker-select').onchange = () => {
  prejoin.setSpeaker($('speaker-select').value);
  for (const t of S.tiles.values()) if (t.video !== S.tiles.get('me')?.video) prejoin.route(t.video, true);
};
$('speaker-field').hidden = !('setSinkId' in HTMLMediaElement.prototype);
layout.init(S.tiles);
S.layout = layout.state;
$('copy-link').onclick = () => {
  const url = `${location.origin}/?room=${encodeURIComponent(S.roomName || '')}`;
  navigator.clipboard?.writeText(url).then(() => status(`Link copied: ${url}`), () => status(url));
};
$('leave').onclick = () => (S.call ? calls.endCall(true) : leaveRoom(true));
window.addEventListener('error', (e) => S.errors.push(String(e.message)));
window.addEventListener('unhandledrejection', (e) => S.errors.push(String(e.reason)));

(async () => {
  const token = params.get('token') || sessionStorage.getItem('confer.token');
  const guest = params.get('name');
  if (params.get('room')) $('room').value = params.get('room');
  if (token || guest) {
    try { await signIn(guest && !params.get('token') ? guest : '', guest && !params.get('token') ? '' : token); if (params.get('room')) joinRoom(params.get('room')); return; }
    catch (e) { status(e.message, true); }
  }
  show('signin');
})();
