// The room's side panels: the participant list (mute state, raised hand,
// connection quality) and the chat (SPEC 4 room-message, history from
// GET /rooms/:roomId/messages, direct messages, unread count), plus the
// raise-hand button (participant-state). app.js feeds it the room events.
//
// User text (names, messages) only ever reaches the page as textContent:
// a message holding markup is shown as the characters it is.

const $ = (id) => document.getElementById(id);
const MAX_TEXT = 4096; // bytes of UTF-8, as the server counts them

let ctx = null; // {send, api, self: () => ({roomId, peerId})}
const people = new Map(); // peerId -> {peerId, userId, name, audioMuted, videoMuted, handRaised, rating}
const seen = new Set(); // message ids shown (a live message can also be in the history)
let unread = 0;
let sent = 0; // reqIds "chat-N": an error that echoes one is about a message
let chatRoom = null; // the room the chat log is of: a rejoin of it keeps the log

export function init(c) {
  ctx = c;
  $('toggle-chat').onclick = () => togglePanel('chat');
  $('toggle-people').onclick = () => togglePanel('people');
  $('raise-hand').onclick = toggleHand;
  $('chat-form').onsubmit = (e) => { e.preventDefault(); sendChat(); };
  // Enter sends, Shift+Enter is a new line.
  $('chat-text').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); sendChat(); }
  });
}

// ---------- panels ----------
function togglePanel(which, open) {
  const panel = $(`${which}-panel`), btn = $(`toggle-${which}`);
  const show = open ?? panel.hidden;
  panel.hidden = !show;
  btn.setAttribute('aria-expanded', String(show));
  $('side').hidden = $('chat-panel').hidden && $('people-panel').hidden;
  if (which === 'chat' && show) {
    unread = 0; showUnread();
    scrollLog();
    $('chat-text').focus();
  }
}
// The count is part of the button's text, so its name says it: "Chat 3 unread".
function showUnread() {
  const el = $('unread');
  el.hidden = unread === 0;
  const sr = document.createElement('span'); sr.className = 'sr'; sr.textContent = ' unread';
  el.replaceChildren(String(unread), sr);
}

// ---------- participants ----------
const mutedOf = (p, kind) => (p.tracks || []).some((t) => t.kind === kind && t.muted && t.source !== 'screen' && t.source !== 'screen-audio');

// The room as room-joined gave it: everyone already there, ourselves included.
export function reset(room) {
  people.clear();
  if (chatRoom !== room.id) { chatRoom = room.id; seen.clear(); unread = 0; showUnread(); $('chat-log').replaceChildren(); }
  for (const p of room.participants || []) upsert(p);
  render();
}
export function clear() {
  people.clear(); seen.clear(); unread = 0; showUnread(); chatRoom = null;
  $('chat-log').replaceChildren(); $('people').replaceChildren();
  togglePanel('chat', false); togglePanel('people', false);
}
function upsert(p) {
  const old = people.get(p.peerId) || { rating: null };
  const mine = p.peerId === ctx.self().peerId;
  people.set(p.peerId, {
    ...old, peerId: p.peerId, userId: p.userId, name: p.name || p.userId,
    // Our own mute state is what our buttons say (the server's copy lags).
    audioMuted: mine && old.audioMuted !== undefined ? old.audioMuted : mutedOf(p, 'audio'),
    videoMuted: mine && old.videoMuted !== undefined ? old.videoMuted : mutedOf(p, 'video'),
    handRaised: !!p.handRaised,
  });
}
export function joined(p) { upsert(p); render(); }
export function updated(p) { upsert(p); render(); }
export function left(peerId) { people.delete(peerId); render(); }
export function quality(updates) {
  let changed = false;
  for (const u of updates) {
    const p = people.get(u.peerId);
    if (p && p.rating !== u.rating) { p.rating = u.rating; changed = true; }
  }
  if (changed) render();
}
export function selfMuted(audio, video) {
  const me = people.get(ctx.self().peerId);
  if (me) { me.audioMuted = audio; me.videoMuted = video; render(); }
}

function render() {
  const me = ctx.self().peerId;
  const list = [...people.values()].sort((a, b) => (a.peerId === me ? -1 : b.peerId === me ? 1 : a.name.localeCompare(b.name)));
  $('people-count').textContent = String(list.length);
  // Rebuilt on every change: a keyboard user's focus stays on the same button.
  const focused = document.activeElement?.closest?.('#people li')?.dataset.peer;
  $('people').replaceChildren(...list.map((p) => row(p, p.peerId === me)));
  if (focused) document.querySelector(`#people li[data-peer="${CSS.escape(focused)}"] button`)?.focus();
  // The direct-message choice follows who is in the room.
  const to = $('chat-to'), cur = to.value;
  to.replaceChildren(new Option('Everyone', ''), ...list.filter((p) => p.peerId !== me).map((p) => new Option(p.name, p.peerId)));
  to.value = [...to.options].some((o) => o.value === cur) ? cur : '';
}
function row(p, mine) {
  const li = document.createElement('li');
  li.dataset.peer = p.peerId;
  const name = document.createElement('span'); name.className = 'name';
  name.textContent = mine ? `${p.name} (you)` : p.name;
  const state = [];
  if (p.handRaised) state.push(['hand', '✋ hand raised']);
  if (p.audioMuted) state.push(['mic', 'mic off']);
  if (p.videoMuted) state.push(['cam', 'camera off']);
  const rating = p.rating || 'unknown';
  state.push([`quality badge ${rating}`, rating === 'unknown' ? 'quality unknown' : rating]);
  const bits = state.map(([cls, text]) => { const s = document.createElement('span'); s.className = cls; s.textContent = text; return s; });
  li.append(name, ...bits);
  if (!mine) {
    const dm = document.createElement('button');
    dm.type = 'button'; dm.className = 'dm'; dm.textContent = 'Message';
    dm.setAttribute('aria-label', `Send ${p.name} a direct message`);
    dm.onclick = () => { $('chat-to').value = p.peerId; togglePanel('chat', true); };
    li.append(dm);
  }
  return li;
}

// ---------- raise hand ----------
function toggleHand() {
  const { roomId, peerId } = ctx.self(); if (!roomId) return;
  const btn = $('raise-hand');
  const up = btn.getAttribute('aria-pressed') !== 'true';
  btn.setAttribute('aria-pressed', String(up));
  btn.textContent = up ? 'Lower hand' : 'Raise hand';
  ctx.send({ type: 'participant-state', roomId, handRaised: up });
  const me = people.get(peerId); if (me) { me.handRaised = up; render(); }
}
// The button says what the server holds for our seat (a reconnect keeps it).
export function syncHand() {
  const up = !!people.get(ctx.self().peerId)?.handRaised;
  $('raise-hand').setAttribute('aria-pressed', String(up));
  $('raise-hand').textContent = up ? 'Lower hand' : 'Raise hand';
}

// ---------- chat ----------
export async function loadHistory() {
  const { roomId } = ctx.self(); if (!roomId) return;
  try {
    const { messages } = await ctx.api('GET', `/rooms/${encodeURIComponent(roomId)}/messages`);
    if (ctx.self().roomId !== roomId) return;
    // Older than anything live: put them first, in order, unread or not.
    const log = $('chat-log'), first = log.firstChild;
    for (const m of messages) if (!seen.has(m.id)) { seen.add(m.id); log.insertBefore(entry(m), first); }
    scrollLog();
  } catch (e) { console.warn('chat history:', e.message); }
}
export function message(m) {
  if (m.roomId !== ctx.self().roomId || seen.has(m.id)) return;
  seen.add(m.id);
  $('chat-log').append(entry(m));
  scrollLog();
  if ($('chat-panel').hidden && m.from?.peerId !== ctx.self().peerId) { unread += 1; showUnread(); }
}
function entry(m) {
  const me = ctx.self().peerId;
  const li = document.createElement('li');
  li.dataset.id = m.id;
  if (m.to) li.className = 'direct';
  const head = document.createElement('div'); head.className = 'head';
  const from = document.createElement('span'); from.className = 'from';
  from.textContent = m.from?.peerId === me ? 'You' : (m.from?.name || m.from?.userId || 'someone');
  head.append(from);
  if (m.to) {
    const dm = document.createElement('span'); dm.className = 'to';
    const whom = m.to === me ? 'you' : (people.get(m.to)?.name || 'someone');
    dm.textContent = `to ${whom} (private)`;
    head.append(' ', dm);
  }
  const at = document.createElement('time');
  const d = new Date(m.at);
  at.dateTime = m.at; at.textContent = isNaN(d) ? '' : d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  head.append(' ', at);
  const text = document.createElement('p'); text.className = 'text';
  text.textContent = m.text;
  li.append(head, text);
  return li;
}
function scrollLog() { const log = $('chat-log'); log.scrollTop = log.scrollHeight; }
function sendChat() {
  const { roomId } = ctx.self(); if (!roomId) return;
  const input = $('chat-text');
  const text = input.value;
  if (!text.trim()) return;
  const hint = $('chat-hint');
  if (new TextEncoder().encode(text).length > MAX_TEXT) { hint.textContent = `A message can be at most ${MAX_TEXT} bytes.`; return; }
  hint.textContent = '';
  const to = $('chat-to').value;
  ctx.send({ type: 'room-message', roomId, text, ...(to ? { to } : {}), reqId: `chat-${++sent}` });
  input.value = '';
}
// An error the server sent back for one of our messages (rate limit, size):
// said beside the input, not as the page's status. True when it was one.
export function refused(m) {
  if (typeof m.reqId !== 'string' || !m.reqId.startsWith('chat-')) return false;
  $('chat-hint').textContent = m.code === 'rate-limited' ? 'Too many messages at once: wait a moment.' : `Not sent: ${m.message}`;
  return true;
}
