// The browser half of maillab's live views (views/live.py: LiveHTML, LiveBlocks):
// an anywidget ES module. It draws the HTML the kernel sends, applies LiveBlocks'
// patches, and does what a student does while a cell is busy (follow / pause, fold
// sessions, relative times counting) without the kernel.
function button(label, title) {
  const b = document.createElement('button');
  b.type = 'button'; b.textContent = label; b.title = title;
  return b;
}

// Keyed views (LiveBlocks): the model's blocks, shared by every output of it. The
// kernel sends only what changed ({kind: 'patch'}); 'blocks' (the state) holds the
// whole view as of when the browser asked for it (first display, page reload).
// anywidget hands initialize() and render() different model proxies, so the store
// is found through the state object both see.
const STORES = new WeakMap();

function storeFor(model) {
  const snap = model.get('blocks') || {};
  let store = STORES.get(snap);
  if (!store) {
    store = { gen: 0, head: '', stream: '', order: [], html: new Map(), parked: new Map(), views: new Set() };
    reset(store, snap);
    STORES.set(snap, store);
  }
  return store;
}

// A block as sent: [top, rows, bottom] (see the Python Block).
function unpack(b) { return { top: b[0], rows: b[1], bottom: b[2] }; }
function blockHTML(b) { return b.top + b.rows.join('') + b.bottom; }

// Blocks that left the view, the newest PARKED (as the kernel's LiveBlocks.PARKED): one
// that comes back (a POP3 maildrop at the next login) is sent as an edit of its old self;
// trimmed after a patch, as the kernel does (not before its returning blocks are taken).
const PARKED = 4;
function park(store, key) {
  const b = store.html.get(key);
  store.html.delete(key);
  store.parked.delete(key);
  store.parked.set(key, b);
}

function reset(store, snap) {
  store.parked = new Map();
  store.gen = snap.gen || 0;
  store.head = snap.head || '';
  store.stream = snap.stream || '';
  store.order = (snap.items || []).map((item) => item[0]);
  store.html = new Map((snap.items || []).map(([key, b]) => [key, unpack(b)]));
  for (const view of store.views) view(null, false);
}

function initialize({ model }) {
  if (!model.get('keyed')) return;
  let store = storeFor(model);
  model.on('change:blocks', () => {
    const snap = model.get('blocks') || {};
    STORES.set(snap, store);
    // Sent between cells after the patches that led to it: usually nothing new.
    if ((snap.gen || 0) !== store.gen) reset(store, snap);
  });
  model.on('msg:custom', (msg) => {
    if (msg.kind === 'full') { reset(store, msg); return; }
    if (msg.kind !== 'patch' || msg.gen <= store.gen) return;
    // A patch missed (sent before this module loaded): show what we have, and ask
    // for the whole view (answered when the kernel is between cells).
    if (msg.base !== store.gen) model.send({ kind: 'resync', gen: store.gen });
    store.gen = msg.gen;
    if (msg.head !== undefined) store.head = msg.head;    // sent when it changed
    store.stream = msg.stream || '';                       // sent while it streams
    if (msg.order !== undefined) {
      const keep = new Set(msg.order);
      for (const key of store.order) if (!keep.has(key) && store.html.has(key)) park(store, key);
      store.order = msg.order;
    }
    const keep = new Set(store.order);
    for (const key of store.html.keys()) if (!keep.has(key)) store.html.delete(key);
    // changed: key -> null (rewritten) or the rows dropped/added (the views apply
    // those to their own elements).
    const changed = new Map();
    for (const [key, b] of Object.entries(msg.set)) { store.html.set(key, unpack(b)); changed.set(key, null); }
    for (const [key, e] of Object.entries(msg.edit || {})) {
      let b = store.html.get(key);
      if (!b && e.parked && store.parked.has(key)) { b = store.parked.get(key); store.html.set(key, b); }
      // Missed (the store is at this patch's gen, so say which block): the resync brings it.
      if (!b) { model.send({ kind: 'resync', gen: store.gen, missing: key }); continue; }
      if (e.top !== undefined) b.top = e.top;
      const rows = b.rows.slice(e.drop, b.rows.length - (e.cut || 0));
      for (const [i, row] of e.put || []) rows[i] = row;
      changed.set(key, { ...e, before: b.rows.length });
      b.rows = (e.front || []).concat(rows, e.add);
    }
    for (const key of store.order) store.parked.delete(key);
    while (store.parked.size > PARKED) store.parked.delete(store.parked.keys().next().value);
    for (const view of store.views) view(changed, !!msg.stream);
  });
  // Patches sent between the state and this module's start were dropped: check.
  model.send({ kind: 'resync', gen: store.gen });
}

function render({ model, el }) {
  const root = document.createElement('div');
  const bar = document.createElement('div');
  const body = document.createElement('div');
  bar.className = 'ml-bar';
  body.className = 'ml-body';
  root.append(bar, body);
  el.append(root);

  let following = model.get('follow');
  // A paused reader keeps the lines being read: patches that show only the newest
  // lines of a stream are held (the store takes them) until it follows again or
  // the stream ends.
  let held = false;
  let folded = null;              // null: as the HTML says; true/false: all folded/open
  const choice = new Map();       // data-key -> open, for sessions the reader toggled

  const followB = button('', 'follow new lines as they arrive, or stay where you are');
  const foldB = button('', 'one line per session, or every line');
  // What a streaming view leaves out, said where a following reader sees it.
  const note = document.createElement('span');
  note.className = 'ml-note ml-stream';
  bar.append(followB, foldB, note);

  function label() {
    followB.textContent = following ? '■ pause' : held ? '▶ follow new lines (held while traffic streams)'
      : '▶ follow new lines';
    foldB.textContent = folded ? '▤ show every line' : '▬ one line per session';
  }

  // The reader's folding, kept across updates.
  function fold(within) {
    const all = [...within.querySelectorAll('details[data-key]')];
    if (within.matches && within.matches('details[data-key]')) all.unshift(within);
    for (const d of all) {
      const key = d.dataset.key;
      if (choice.has(key)) d.open = choice.get(key);
      else if (folded !== null) d.open = !folded;
      d.addEventListener('toggle', () => choice.set(key, d.open));
    }
  }

  function frame() {
    root.className = 'ml-view ml-live ml-' + (model.get('kind') || 'view');
    root.style.setProperty('--ml-scale', String(model.get('scale')));
    bar.style.display = model.get('controls') ? '' : 'none';
    const mh = model.get('max_height');
    body.style.maxHeight = mh || 'none';
    label();
    if (following) body.scrollTop = body.scrollHeight;  // a new scale moves the end
  }

  function draw() {
    frame();
    body.innerHTML = model.get('value');
    fold(body);
    if (following) body.scrollTop = body.scrollHeight;
  }

  // Keyed: one element per block; a patch replaces the blocks it names and
  // reorders the rest, so the browser parses only what changed.
  const head = document.createElement('div');
  const shown = new Map();        // key -> element
  function element(text) {
    const t = document.createElement('template');
    t.innerHTML = text;
    if (t.content.childNodes.length === 1 && t.content.firstElementChild) return t.content.firstElementChild;
    const wrap = document.createElement('div');
    wrap.append(t.content);
    return wrap;
  }
  function patch(store, changed) {
    note.textContent = store.stream;
    if (changed === null) { for (const node of shown.values()) node.remove(); shown.clear(); }
    if (head.innerHTML !== store.head) head.innerHTML = store.head;
    const keep = new Set(store.order);
    for (const [key, node] of shown) if (!keep.has(key)) { node.remove(); shown.delete(key); }
    let prev = head;
    for (const key of store.order) {
      let node = shown.get(key);
      const e = changed === null ? null : changed.get(key);
      // The rows' element: [data-rows], or the first tbody (a transcript's session).
      const list = !node || !e ? null
        : node.matches('[data-rows]') ? node : node.querySelector('[data-rows]') || node.querySelector('tbody');
      let edited = false;
      if (list && list.children.length === e.before) {
        // Part of the block was kept: drop, replace and add rows in place.
        let summaryOk = true;
        if (e.top !== undefined) {
          const t = document.createElement('template');
          t.innerHTML = e.top + store.html.get(key).bottom;
          const summary = t.content.querySelector('summary');
          const old = node.querySelector('summary');
          if (summary && old) old.replaceWith(summary); else summaryOk = false;
        }
        if (summaryOk) {
          for (let i = 0; i < e.drop && list.firstElementChild; i++) list.firstElementChild.remove();
          for (let i = 0; i < (e.cut || 0) && list.lastElementChild; i++) list.lastElementChild.remove();
          for (const [i, row] of e.put || []) { const child = list.children[i]; if (child) child.outerHTML = row; }
          if (e.front && e.front.length) list.insertAdjacentHTML('afterbegin', e.front.join(''));
          if (e.add.length) list.insertAdjacentHTML('beforeend', e.add.join(''));
          edited = true;
        }
      }
      if (!edited && (!node || e !== undefined)) {
        const b = store.html.get(key);
        if (b === undefined) continue;
        const fresh = element(blockHTML(b));
        fold(fresh);
        if (node) node.replaceWith(fresh);
        node = fresh;
        shown.set(key, node);
      }
      if (prev.nextSibling !== node) prev.after(node);
      prev = node;
    }
    if (following) body.scrollTop = body.scrollHeight;
  }

  followB.addEventListener('click', () => {
    following = !following;
    if (following && held && model.get('keyed')) { held = false; patch(storeFor(model), null); }
    if (following) body.scrollTop = body.scrollHeight;
    label();
  });
  foldB.addEventListener('click', () => {
    folded = !folded;
    choice.clear();
    for (const d of body.querySelectorAll('details[data-key]')) d.open = !folded;
    if (following) body.scrollTop = body.scrollHeight;
    label();
  });
  // Scrolling up to read means "stop following"; the button brings it back.
  body.addEventListener('wheel', (e) => { if (e.deltaY < 0 && following) { following = false; label(); } });
  // A reflow with no new line (the page zoomed for a projector, a narrower window)
  // moves the end too: a following view stays on its newest line.
  const pin = new ResizeObserver(() => { if (following) body.scrollTop = body.scrollHeight; });
  pin.observe(root);

  // Relative times ("6 s ago": theme.since, an .ml-ago with the epoch second in
  // data-t) kept true by the browser each second, with no round trip to the kernel;
  // the clock time beside each (theme.clock_since) is true anyway.
  const since = (s) => s < 120 ? `${Math.round(s)} s ago` : s < 7200 ? `${Math.round(s / 60)} min ago`
    : `${Math.round(s / 3600)} h ago`;
  const agos = root.getElementsByClassName('ml-ago');  // live: no search of a long transcript each second
  const tick = setInterval(() => {
    const now = Date.now() / 1000;
    for (const e of agos) {
      if (!e.dataset.t) continue;
      const text = since(Math.max(0, now - Number(e.dataset.t)));
      if (e.textContent !== text) e.textContent = text;
    }
  }, 1000);

  model.on('change:scale', frame);
  model.on('change:controls', frame);
  if (model.get('keyed')) {
    const store = storeFor(model);
    const view = (changed, stream) => {
      if (stream && !following && changed !== null) {
        held = true;
        note.textContent = store.stream;
        label();
        return;
      }
      if (held) { held = false; changed = null; label(); }  // the page is behind: draw it anew
      patch(store, changed);
    };
    body.append(head);
    frame();
    patch(store, null);
    store.views.add(view);
    return () => { store.views.delete(view); pin.disconnect(); clearInterval(tick); };
  }
  model.on('change:value', draw);
  draw();
  return () => { pin.disconnect(); clearInterval(tick); };
}
export default { initialize, render };
