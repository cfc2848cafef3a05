// The stage's layouts: a grid of equal tiles, or the speaker view, one tile
// large and the others in a strip below it. The large one is the pinned
// tile, else a screen share, else the active speaker (SPEC 4's
// active-speakers), else the first other person. A screen share switches a
// grid to the speaker view by itself (and back when it ends). Every tile has
// a pin and a fullscreen button; other people's tiles a volume slider. The
// tile sizes feed adaptive stream (app.js), so the large tile gets the high
// layer and the strip the low one.

const $ = (id) => document.getElementById(id);

const L = {
  mode: 'grid', // 'grid' | 'speaker'
  auto: false, // the speaker view was turned on by a screen share, not by the user
  pinned: null, // tile id
  speaker: null, // tile id of the active speaker
  tiles: null, // app.js's Map of tile id -> tile
};

export function init(tiles) {
  L.tiles = tiles;
  $('layout-toggle').onclick = () => { L.auto = false; setMode(L.mode === 'grid' ? 'speaker' : 'grid'); };
  refresh();
}

// Controls for a new tile `t` (id `id`, shown as `name`).
export function decorate(t, id, name) {
  const tools = document.createElement('span'); tools.className = 'tools';
  const pin = document.createElement('button');
  pin.type = 'button'; pin.className = 'pin'; pin.textContent = 'Pin';
  pin.setAttribute('aria-pressed', 'false'); pin.setAttribute('aria-label', `Pin ${name}`);
  pin.onclick = () => { L.pinned = L.pinned === id ? null : id; if (L.pinned) { L.auto = false; L.mode = 'speaker'; } refresh(); };
  const full = document.createElement('button');
  full.type = 'button'; full.className = 'fullscreen'; full.textContent = 'Full screen';
  full.setAttribute('aria-label', `Show ${name} full screen`);
  full.onclick = () => (document.fullscreenElement === t.el ? document.exitFullscreen() : t.el.requestFullscreen?.())?.catch?.(() => {});
  tools.append(pin, full);
  if (id !== 'me') {
    const volume = document.createElement('input');
    volume.type = 'range'; volume.min = '0'; volume.max = '1'; volume.step = '0.05'; volume.value = '1';
    volume.className = 'volume'; volume.setAttribute('aria-label', `Volume of ${name}`);
    volume.oninput = () => { t.video.volume = Number(volume.value); };
    tools.append(volume);
  }
  t.el.append(tools);
  t.pin = pin;
  if (isScreen(id) && L.mode === 'grid') { L.auto = true; L.mode = 'speaker'; }
  refresh();
}

export function removed(id) {
  if (L.pinned === id) L.pinned = null;
  if (L.speaker === id) L.speaker = null;
  if (L.auto && ![...L.tiles.keys()].some(isScreen)) { L.auto = false; L.mode = 'grid'; }
  refresh();
}

// active-speakers: loudest first. The current speaker keeps the large tile
// while it is still speaking, so two people talking do not make it flap.
export function speakers(ids) {
  const others = ids.filter((id) => id !== 'me' && L.tiles.has(id));
  if (!others.length || others.includes(L.speaker)) return;
  L.speaker = others[0];
  refresh();
}

export function reset() {
  L.pinned = null; L.speaker = null; L.auto = false; L.mode = 'grid';
  refresh();
}

function isScreen(id) { return id.endsWith(':screen'); }

function setMode(mode) { L.mode = mode; refresh(); }

// Which tile is large in the speaker view.
function featured() {
  const ids = [...L.tiles.keys()];
  if (L.pinned && L.tiles.has(L.pinned)) return L.pinned;
  const screen = ids.find(isScreen);
  if (screen) return screen;
  if (L.speaker && L.tiles.has(L.speaker)) return L.speaker;
  return ids.find((id) => id !== 'me') || ids[0] || null;
}

function refresh() {
  if (!L.tiles) return;
  const speakerView = L.mode === 'speaker';
  const big = speakerView ? featured() : null;
  $('tiles').classList.toggle('speaker', speakerView);
  for (const [id, t] of L.tiles) {
    t.el.classList.toggle('featured', id === big);
    if (t.pin) {
      const on = L.pinned === id;
      t.pin.setAttribute('aria-pressed', String(on)); t.pin.textContent = on ? 'Unpin' : 'Pin';
    }
  }
  const toggle = $('layout-toggle');
  toggle.setAttribute('aria-pressed', String(speakerView));
  toggle.textContent = speakerView ? 'Grid view' : 'Speaker view';
}

// For tests and debugging.
export function state() {
  return { mode: L.mode, pinned: L.pinned, speaker: L.speaker, featured: L.mode === 'speaker' ? featured() : null };
}
