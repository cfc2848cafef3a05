// The built-in page's 1:1 calls (SPEC 4): P2P, the server only signals.
// Ringing, call waiting, accept and reject, ICE candidates that arrive
// before the PeerConnection can take them, renegotiation, and each side's
// getStats() sent as call-stats every 5 s so the call has analytics.
// app.js hands over what it shares (its state and helpers) with init() and
// every call message with onMessage().

const $ = (id) => document.getElementById(id);

let S = null; // app.js's state: S.call = {id, peer, pc, type}, S.early, S.incoming
let ctx = null; // {send, status, show, getMedia, addTile, removeTile, setMutedBadge, newPc, stopLocal}
const send = (m) => ctx.send(m);
const status = (text, isError) => ctx.status(text, isError);

export function init(c) {
  ctx = c;
  S = c.S;
  $('call-form').onsubmit = (e) => {
    e.preventDefault();
    startCall($('callee').value.trim(), new FormData(e.target).get('calltype'));
  };
  $('accept').onclick = acceptIncoming;
  $('reject').onclick = rejectIncoming;
}

// The /rtc messages about calls.
export async function onMessage(m) {
  switch (m.type) {
    case 'call-created': if (S.call) S.call.id = m.callSession.id; return flushCallCandidates();
    case 'call-initiate': return onIncomingCall(m);
    case 'call-accept': return status('');
    case 'call-answer':
      if (S.call?.pc) { await S.call.pc.setRemoteDescription({ type: 'answer', sdp: m.sdp }); drainCandidates(); }
      return;
    case 'ice-candidate': return onCallCandidate(m);
    case 'call-sdp-update': return onCallSdpUpdate(m);
    case 'call-reject': status(`${m.from} declined the call.`); return endCall(false);
    case 'call-hangup': status(`${m.from} hung up.`); return endCall(false);
    case 'call-ended': return onCallEnded(m);
    case 'call-answered-elsewhere': if (S.incoming?.callId === m.callId) { S.incoming = null; $('incoming').hidden = true; } return;
    case 'call-participant-updated': return onCallParticipant(m.participant);
  }
}

function callPc(callId) {
  const pc = ctx.newPc();
  S.call.pending = [];
  pc.onicecandidate = (e) => {
    if (!e.candidate) return;
    const c = e.candidate.toJSON();
    if (S.call?.id) send({ type: 'ice-candidate', callId: S.call.id, candidate: c }); else S.call?.pending.push(c);
  };
  pc.ontrack = (e) => {
    const t = ctx.addTile(S.call.peer, S.call.peer);
    t.stream.addTrack(e.track);
  };
  pc.onconnectionstatechange = () => { if (pc.connectionState === 'failed') status('The call\'s media connection failed.', true); };
  const call = S.call;
  call.statsTimer = setInterval(() => sendCallStats(call), CALL_STATS_EVERY_MS);
  return pc;
}
// P2P calls have no SFU to measure them: each side sends its getStats()
// every 5 s as call-stats (SPEC 4, 8), trimmed to the types and fields the
// server reads, so the call gets analytics (source "client") as rooms do.
const CALL_STATS_EVERY_MS = 5000;
const STAT_FIELDS = {
  'inbound-rtp': ['kind', 'packetsReceived', 'packetsLost', 'jitter', 'bytesReceived', 'nackCount', 'pliCount', 'firCount', 'framesPerSecond', 'frameWidth', 'frameHeight'],
  'outbound-rtp': ['kind', 'packetsSent', 'bytesSent', 'nackCount', 'pliCount', 'firCount', 'framesPerSecond', 'frameWidth', 'frameHeight'],
  'remote-inbound-rtp': ['kind', 'packetsLost', 'fractionLost', 'jitter', 'roundTripTime'],
  'candidate-pair': ['nominated', 'state', 'currentRoundTripTime'],
};
async function sendCallStats(call) {
  if (!call.id || call.pc?.connectionState !== 'connected') return;
  const report = await call.pc.getStats().catch(() => null);
  if (!report || S.call !== call) return;
  const stats = [];
  for (const s of report.values()) {
    const fields = STAT_FIELDS[s.type];
    if (!fields || (s.type === 'candidate-pair' && !s.nominated)) continue;
    const kept = { type: s.type, id: s.id, timestamp: s.timestamp };
    for (const f of fields) if (s[f] !== undefined) kept[f] = s[f];
    stats.push(kept);
  }
  const msg = { type: 'call-stats', callId: call.id, stats };
  // The server takes at most 64 KiB a message; a call's few streams are ~2 KiB.
  if (JSON.stringify(msg).length < 60 * 1024) send(msg);
  S.callStatsSent = (S.callStatsSent || 0) + 1;
}
// Candidates can arrive while the call still rings, before this side has a
// PeerConnection with a remote description: keep them until it does.
function onCallCandidate(m) {
  const pc = S.call?.id === m.callId ? S.call.pc : null;
  if (pc?.remoteDescription) return pc.addIceCandidate(m.candidate).catch(() => {});
  if (!S.early.has(m.callId)) S.early.set(m.callId, []);
  S.early.get(m.callId).push(m.candidate);
}
function drainCandidates() {
  const pc = S.call?.pc; if (!pc?.remoteDescription) return;
  for (const c of S.early.get(S.call.id) || []) pc.addIceCandidate(c).catch(() => {});
  S.early.delete(S.call.id);
}
function flushCallCandidates() {
  for (const c of S.call?.pending || []) send({ type: 'ice-candidate', callId: S.call.id, candidate: c });
  if (S.call) S.call.pending = [];
}
async function startCall(callee, type) {
  if (callee === S.userId) return status('You cannot call yourself.', true);
  S.call = { id: null, peer: callee, type };
  ctx.show('stage');
  S.local = await ctx.getMedia(type);
  ctx.addTile('me', `${S.name} (you)`);
  S.call.pc = callPc();
  for (const t of S.local?.getTracks() || []) S.call.pc.addTrack(t, S.local);
  if (!S.local) { S.call.pc.addTransceiver('audio', { direction: 'recvonly' }); if (type === 'video') S.call.pc.addTransceiver('video', { direction: 'recvonly' }); }
  const offer = await S.call.pc.createOffer();
  await S.call.pc.setLocalDescription(offer);
  status(`Calling ${callee}…`);
  send({ type: 'call-initiate', calleeId: callee, callType: type, sdp: S.call.pc.localDescription.sdp, reqId: ++S.seq });
}
function onIncomingCall(m) {
  if (S.call) { // call waiting: offer it, the current call continues until answered
    status(`${m.from} is calling you as well.`);
  }
  S.incoming = m;
  $('incoming-from').textContent = `${m.from} is calling (${m.callType}).`;
  $('incoming').hidden = false;
  $('accept').focus();
}
async function acceptIncoming() {
  const m = S.incoming; if (!m) return;
  $('incoming').hidden = true; S.incoming = null;
  if (S.call) endCall(true);
  S.call = { id: m.callId, peer: m.from, type: m.callType };
  ctx.show('stage');
  S.local = await ctx.getMedia(m.callType);
  ctx.addTile('me', `${S.name} (you)`);
  S.call.pc = callPc();
  send({ type: 'call-accept', callId: m.callId });
  if (m.sdp) {
    await S.call.pc.setRemoteDescription({ type: 'offer', sdp: m.sdp });
    drainCandidates();
    for (const t of S.local?.getTracks() || []) S.call.pc.addTrack(t, S.local);
    const answer = await S.call.pc.createAnswer();
    await S.call.pc.setLocalDescription(answer);
    send({ type: 'call-answer', callId: m.callId, sdp: S.call.pc.localDescription.sdp });
  }
}
function rejectIncoming() {
  const m = S.incoming; if (!m) return;
  send({ type: 'call-reject', callId: m.callId, reason: 'declined' });
  S.incoming = null; $('incoming').hidden = true;
}
async function onCallSdpUpdate(m) {
  const pc = S.call?.pc; if (!pc) return;
  await pc.setRemoteDescription({ type: m.sdpType, sdp: m.sdp });
  if (m.sdpType === 'offer') {
    await pc.setLocalDescription(await pc.createAnswer());
    send({ type: 'call-sdp-update', callId: S.call.id, sdp: pc.localDescription.sdp, sdpType: 'answer' });
  }
}
function onCallEnded(m) {
  if (S.incoming?.callId === m.callId) { S.incoming = null; $('incoming').hidden = true; }
  if (S.call?.id !== m.callId) return;
  const why = { missed: 'No answer.', rejected: 'The call was declined.' }[m.status]
    || (m.endReason === 'disconnected' ? 'The other side lost its connection.' : m.endReason === 'server-shutdown' ? 'The server is shutting down.' : 'The call ended.');
  status(why);
  endCall(false);
}
function onCallParticipant(p) {
  if (!S.call || p.userId === S.userId) return;
  const t = S.tiles.get(S.call.peer); if (t) ctx.setMutedBadge(t, p.audioMuted, p.videoMuted);
}
export function endCall(tell) {
  if (!S.call) return;
  if (tell && S.call.id) send({ type: 'call-hangup', callId: S.call.id });
  S.early.delete(S.call.id);
  clearInterval(S.call.statsTimer);
  S.call.pc?.close(); S.call = null;
  ctx.stopLocal();
  for (const id of [...S.tiles.keys()]) ctx.removeTile(id);
  ctx.show('lobby');
}
