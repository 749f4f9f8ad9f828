"""The live view base: an anywidget that shows HTML the kernel keeps replacing.

One small ES module and the shared stylesheet (:data:`maillab.views.theme.CSS`)
on ipywidgets' comm protocol. The kernel side only sets ``value`` (the view's
HTML, from a publisher thread, see :mod:`maillab.views.publish`) and ``scale``
(the presenter setting); everything a student does while a cell is busy happens
in the browser, because the kernel does not answer clicks then:

- **follow / pause**: with ``follow`` on, the view scrolls to its newest line
  after each update; the pause button (or scrolling up) stops that, and the
  view stays where the reader is. While a view streams (a transcript showing
  only its newest lines, :meth:`LiveBlocks.show` ``stream=``) its note stands in
  the bar, and a paused view holds those patches, so the lines being read stay.
- **collapse**: every ``<details data-key=...>`` in the HTML (one per session in
  a transcript) folds to its one-line ``<summary>``; the view remembers which
  ones the reader folded or opened across updates.

Other views reuse it: build the HTML (wrap nothing: the widget adds the
``.ml-view`` root), set ``value``. ``controls=False`` hides the bar for views
that neither grow nor fold. A view that changes from the lab thread (the
transcript, the port map, the POP3 state, the relay path, the class map) uses
:class:`LiveBlocks`, which sends only the blocks, and the rows of a block, that
changed.
"""

from __future__ import annotations

import re
import threading
import time
import weakref
from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from typing import Any, NamedTuple

import anywidget
import traitlets

from .theme import CSS, settings

_ESM = r"""
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
"""

class LiveHTML(anywidget.AnyWidget):
    """A live, presenter-aware HTML view (see the module docstring)."""

    _esm = _ESM
    _css = CSS
    value = traitlets.Unicode("").tag(sync=True)
    kind = traitlets.Unicode("view").tag(sync=True)
    scale = traitlets.Float(1.0).tag(sync=True)
    follow = traitlets.Bool(True).tag(sync=True)
    controls = traitlets.Bool(True).tag(sync=True)
    max_height = traitlets.Unicode("70vh").tag(sync=True)
    #: Sent as keyed blocks (:class:`LiveBlocks`) rather than as ``value``.
    keyed = traitlets.Bool(False).tag(sync=True)

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("scale", settings.scale)
        super().__init__(**kwargs)
        settings.follow(self)

    def set_scale(self, scale: float) -> None:
        self.scale = scale


#: A block's one-line summary: the part of its top the page can swap in place.
_SUMMARY = re.compile(r"<summary>.*?</summary>", re.S)


class Block(NamedTuple):
    """One keyed block of a :class:`LiveBlocks` view: ``top`` (its opening tags and
    summary), ``rows`` (its lines, each ONE element: the children of the block's
    ``[data-rows]`` element, or else of its first ``<tbody>``), ``bottom``, and
    ``ids`` naming each row (a transcript's event seqs; a table's row keys, or
    positions for a table whose rows stay in place). A block whose rows were kept
    in part (a session that goes on, a table row that changed, a log that gained
    a line at its top) is sent as the rows dropped, replaced and added, not whole."""

    top: str
    rows: Sequence[str] = ()
    bottom: str = ""
    ids: Sequence[Hashable] = ()

    @property
    def html(self) -> str:
        return self.top + "".join(self.rows) + self.bottom

    def wire(self) -> list[Any]:
        return [self.top, list(self.rows), self.bottom]

    def edit(self, new: Block) -> dict[str, Any] | None:
        """How this block becomes ``new``, or None when sending it whole costs no more.

        The rows kept are one run of this block's rows (found by id): ``drop`` rows
        go at the front and ``cut`` at the end, ``put`` replaces kept rows whose
        HTML changed (``[index in the run, html]``), ``front`` and ``add`` are the
        new rows before and after the run; ``top`` is the new top when it changed
        (the page swaps a ``<summary>`` in place, or redraws the block)."""
        if new.bottom != self.bottom or not self.ids or not new.ids or len(self.ids) != len(self.rows):
            return None
        if new.top != self.top and _SUMMARY.sub("", new.top) != _SUMMARY.sub("", self.top):
            return None  # more than its summary changed: the page draws it anew
        where = {i: n for n, i in enumerate(self.ids)}
        start = next((j for j, i in enumerate(new.ids) if i in where), None)
        if start is None:
            return None
        drop = where[new.ids[start]]
        kept = 0
        while (start + kept < len(new.ids) and drop + kept < len(self.ids)
               and new.ids[start + kept] == self.ids[drop + kept]):
            kept += 1
        put = [[n, new.rows[start + n]] for n in range(kept) if new.rows[start + n] != self.rows[drop + n]]
        front, add = list(new.rows[:start]), list(new.rows[start + kept:])
        sent = sum(len(r) for r in front) + sum(len(r) for r in add) + sum(len(r) for _n, r in put)
        if sent >= sum(len(r) for r in new.rows):
            return None
        change: dict[str, Any] = {"drop": drop, "add": add}
        if cut := len(self.ids) - drop - kept:
            change["cut"] = cut
        if front:
            change["front"] = front
        if put:
            change["put"] = put
        if new.top != self.top:
            change["top"] = new.top
        return change


def blocks_html(blocks: Iterable[tuple[str, Block]]) -> str:
    """Keyed blocks as one static HTML (the page a view shows once all are sent)."""
    return "".join(block.html for _key, block in blocks)


class LiveBlocks(LiveHTML):
    """A live view made of keyed blocks (a transcript: one ``<details>`` per
    conversation; a port map: its table and legend; a POP3 view: its diagram,
    maildrop table and outcome) that sends the browser only what changed.

    :meth:`show` compares the blocks (:class:`Block`) with the ones shown and
    sends a ``patch`` message with the new or rewritten blocks (``set``), for a
    block that kept some of its rows the rows dropped, replaced and added
    (``edit``, see :meth:`Block.edit`), and the order of keys and the head when
    they changed; a transcript of 1,500 lines under load then sends the lines
    added, not the ~400 KB of the whole view, and a port map the row of the
    service that saw a session. ``value`` holds the whole HTML on the kernel side
    only (tests, ``observe``); the browser gets the whole view in the ``blocks``
    state, filled in when it asks for it (a new output, a page reload), and as a
    ``full`` message when it noticed a patch missing (``resync``). :meth:`sync`
    sends that state once the view has not changed for ``SETTLE`` seconds, and
    when a cell ends if :meth:`due` (the post-cell hook, :func:`sync_open_views`),
    so that what a notebook saves with its widget state (nbclient) is the view as
    it is.
    """

    #: Quiet seconds after the last change before the whole view is sent as state.
    SETTLE = 1.0
    #: A view changing three times within ``STREAM`` seconds is streaming (a stream
    #: of sessions, queries, lines): then a cell's end sends its whole state only as
    #: a budget allows: ``BURST`` bytes' worth of states back to back (at least one),
    #: then one per ``STATE_EVERY`` seconds or per its size at ``STATE_RATE`` bytes/s
    #: (a class map of 3 KB: 10, then one per 5 s; a POP3 view of 500 messages, 75 KB:
    #: one, then one per 19 s; a transcript of 400 KB: one per 100 s). What nbclient
    #: saves stays recent, and the patches stay the traffic.
    STREAM = 3.0
    #: Blocks that left the view kept (here and in the page) to send their return as an
    #: edit: a POP3 view's maildrop table, gone in each new session's AUTHORIZATION.
    PARKED = 4
    BURST = 32_000
    STATE_RATE = 4000.0
    STATE_EVERY = 5.0

    value = traitlets.Unicode("")  # not synced: the browser gets blocks
    keyed = traitlets.Bool(True).tag(sync=True)
    #: The whole view, {gen, head, items: [[key, [top, rows, bottom]], ...]}: see get_state.
    blocks = traitlets.Dict().tag(sync=True)

    def __init__(self, blocks: Sequence[tuple[str, Block]] = (), head: str = "", **kwargs: Any) -> None:
        # Before the widget opens its comm: the opening state is get_state()'s.
        self._lock = threading.RLock()  # send_state -> get_state inside show/sync
        self._blocks: dict[str, Block] = dict(blocks)
        self._parked: dict[str, Block] = {}  # key -> the block as it left, oldest first
        self._head = head
        self._stream = ""
        self._gen = self._synced = 0
        self._tokens, self._tokens_at = float(self.BURST), time.monotonic()  # states the budget allows (capped)
        self._changed_at = 0.0
        self._changes: deque[float] = deque([0.0] * 3, maxlen=3)  # when the last three patches went
        self._settle: threading.Timer | None = None
        self.patches = 0  # patch messages sent
        super().__init__(value=head + "".join(b.html for b in self._blocks.values()), **kwargs)
        self.on_msg(self._on_msg)
        _OPEN.add(self)

    def show(self, blocks: Sequence[tuple[str, Block]], head: str = "", stream: str = "") -> bool:
        """Show ``blocks`` (in order, keys unique) after ``head``; sends what changed
        (and says whether anything did). ``stream`` says what the view leaves out while
        traffic streams (a transcript showing its newest lines): the page shows it in
        the bar, always in sight, and a paused reader's page holds such patches."""
        with self._lock:
            new = dict(blocks)
            old = self._blocks
            rewritten: dict[str, Any] = {}
            edits: dict[str, Any] = {}
            for key, block in new.items():
                was = old.get(key)
                parked = was is None and key in self._parked
                if parked:
                    was = self._parked[key]
                if was is None:
                    rewritten[key] = block.wire()
                elif was != block or parked:
                    change = was.edit(block)
                    if change is None:
                        rewritten[key] = block.wire()
                    else:
                        edits[key] = {**change, "parked": True} if parked else change
            if (not rewritten and not edits and head == self._head and list(new) == list(old)
                    and stream == self._stream):
                return False
            base, self._gen = self._gen, self._gen + 1
            message: dict[str, Any] = {"kind": "patch", "base": base, "gen": self._gen, "set": rewritten,
                                       "edit": edits}
            if head != self._head:
                message["head"] = head
            if stream:
                message["stream"] = stream
            if list(new) != list(old):
                message["order"] = list(new)
            for key in old:  # the page parks the same blocks, in the same order
                if key not in new:
                    self._parked.pop(key, None)
                    self._parked[key] = old[key]
            for key in new:
                self._parked.pop(key, None)
            while len(self._parked) > self.PARKED:
                del self._parked[next(iter(self._parked))]
            self._blocks, self._head, self._stream = new, head, stream
            self.send(message)
            self.patches += 1
            self._changed_at = time.monotonic()
            self._changes.append(self._changed_at)
            if self._settle is None:
                self._arm(self.SETTLE)
        self.value = head + "".join(b.html for b in new.values())
        return True

    def due(self) -> bool:
        """Should a cell's end send the whole view? When it changed, and it is not
        streaming or its budget allows a whole state (see ``STREAM``)."""
        if self._synced == self._gen:
            return False
        return not self.streaming() or self._budget() >= 1.0

    def streaming(self) -> bool:
        """Is the view changing back to back (three patches within ``STREAM`` s: a
        publisher under a stream of events)? Then its whole state waits for the budget."""
        return time.monotonic() - self._changes[0] < self.STREAM

    def _budget(self) -> float:
        """Whole states the budget allows now (refilled since the last look)."""
        size = max(1, len(self.value))
        now = time.monotonic()
        every = max(self.STATE_EVERY, size / self.STATE_RATE)
        self._tokens = min(max(1.0, self.BURST // size), self._tokens + (now - self._tokens_at) / every)
        self._tokens_at = now
        return self._tokens

    def _arm(self, delay: float) -> None:
        self._settle = threading.Timer(delay, self._settled)
        self._settle.daemon = True
        self._settle.start()

    def _settled(self) -> None:
        with self._lock:
            self._settle = None
            wait = self._changed_at + self.SETTLE - time.monotonic()
            if wait > 0:  # changed meanwhile: wait for quiet
                self._arm(wait)
                return
        try:
            self.sync()
        except Exception:  # a closed widget: nothing to send
            pass

    def sync(self) -> None:
        """Send the whole view as the widget's state if it changed since the last
        time (once it settled, not per update: it is the size of the view)."""
        with self._lock:
            if self._synced != self._gen:
                self._synced = self._gen
                self._tokens = max(0.0, self._budget() - 1.0)
                self.send_state("blocks")

    def _snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"gen": self._gen, "head": self._head, "stream": self._stream,
                    "items": [[k, b.wire()] for k, b in self._blocks.items()]}

    def get_state(self, key: Any = None, drop_defaults: bool = False) -> dict[str, Any]:
        """The synced state, with ``blocks`` as the view is now (ipywidgets calls this
        when it opens the comm and when the browser requests the state)."""
        state = super().get_state(key=key, drop_defaults=drop_defaults)
        if "blocks" in state and hasattr(self, "_lock"):
            state["blocks"] = self._snapshot()
        return state

    def _on_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if isinstance(content, dict) and content.get("kind") == "resync":
            # Under the lock: a patch sent meanwhile goes after this view, never before.
            with self._lock:
                snapshot = self._snapshot()
                if content.get("gen") != snapshot["gen"] or "missing" in content:
                    self._parked.clear()  # the page starts again from the whole view
                    self.send({"kind": "full", **snapshot})


#: Every keyed view of this kernel, so that a cell's end can save each one's state.
_OPEN: weakref.WeakSet[LiveBlocks] = weakref.WeakSet()


def sync_open_views() -> None:
    """Send every keyed view's whole state when it is due (:meth:`LiveBlocks.due`; the
    ``post_run_cell`` hook calls this: what nbclient saves with a notebook is then
    the view as it is; a streaming view's settle timer sends it once it settles)."""
    for view in list(_OPEN):
        try:
            if view.comm is None:
                _OPEN.discard(view)
            elif view.due():
                view.sync()
        except Exception:  # a closed view: nothing to send
            pass


def widget_bundle(widget: Any, text: str, **kwargs: Any) -> Any:
    """``widget``'s display bundle with ``text`` as its text/plain (what a terminal,
    a test or a saved notebook without widget state shows). ipywidgets returns a
    dict, anywidget a (data, metadata) pair (its metadata is empty): a dict either way."""
    bundle = widget._repr_mimebundle_(**kwargs) or {}
    if isinstance(bundle, tuple):
        bundle = bundle[0]
    return {**bundle, "text/plain": text}
