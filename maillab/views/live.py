"""The live view base: an anywidget that shows HTML the kernel keeps replacing.

One small ES module (``live.js`` beside this file) and the shared stylesheet (:data:`maillab.views.theme.CSS`)
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
from pathlib import Path
from typing import Any, NamedTuple

import anywidget
import traitlets

from .theme import CSS, settings

#: The widget's ES module (the browser half: drawing, patches, follow/pause, folding,
#: relative times), kept in a .js file of its own to be read and linted as JavaScript.
_ESM = (Path(__file__).with_name("live.js")).read_text(encoding="utf-8")


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
