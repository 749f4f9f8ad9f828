"""The live view base: an anywidget that shows HTML the kernel keeps replacing.

One small ES module and the shared stylesheet (:data:`maillab.views.theme.CSS`)
on ipywidgets' comm protocol. The kernel side only sets ``value`` (the view's
HTML, from a publisher thread, see :mod:`maillab.views.publish`) and ``scale``
(the presenter setting); everything a student does while a cell is busy happens
in the browser, because the kernel does not answer clicks then:

- **follow / pause**: with ``follow`` on, the view scrolls to its newest line
  after each update; the pause button (or scrolling up) stops that, and the
  view stays where the reader is.
- **collapse**: every ``<details data-key=...>`` in the HTML (one per session in
  a transcript) folds to its one-line ``<summary>``; the view remembers which
  ones the reader folded or opened across updates.

Other views reuse it: build the HTML (wrap nothing: the widget adds the
``.ml-view`` root), set ``value``. ``controls=False`` hides the bar for views
that neither grow nor fold (a state diagram).
"""

from __future__ import annotations

from typing import Any

import anywidget
import traitlets

from .theme import CSS, settings

_ESM = r"""
function button(label, title) {
  const b = document.createElement('button');
  b.type = 'button'; b.textContent = label; b.title = title;
  return b;
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
  let folded = null;              // null: as the HTML says; true/false: all folded/open
  const choice = new Map();       // data-key -> open, for sessions the reader toggled

  const followB = button('', 'follow new lines as they arrive, or stay where you are');
  const foldB = button('', 'one line per session, or every line');
  bar.append(followB, foldB);

  function label() {
    followB.textContent = following ? '■ pause' : '▶ follow new lines';
    foldB.textContent = folded ? '▤ show every line' : '▬ one line per session';
  }

  function draw() {
    root.className = 'ml-view ml-live ml-' + (model.get('kind') || 'view');
    root.style.setProperty('--ml-scale', String(model.get('scale')));
    bar.style.display = model.get('controls') ? '' : 'none';
    const mh = model.get('max_height');
    body.style.maxHeight = mh || 'none';
    body.innerHTML = model.get('value');
    for (const d of body.querySelectorAll('details[data-key]')) {
      const key = d.dataset.key;
      if (choice.has(key)) d.open = choice.get(key);
      else if (folded !== null) d.open = !folded;
      d.addEventListener('toggle', () => choice.set(key, d.open));
    }
    if (following) body.scrollTop = body.scrollHeight;
    label();
  }

  followB.addEventListener('click', () => {
    following = !following;
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

  model.on('change:value', draw);
  model.on('change:scale', draw);
  model.on('change:controls', draw);
  draw();
}
export default { render };
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

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("scale", settings.scale)
        super().__init__(**kwargs)
        settings.follow(self)

    def set_scale(self, scale: float) -> None:
        self.scale = scale


def widget_bundle(widget: Any, text: str, **kwargs: Any) -> Any:
    """``widget``'s display bundle with ``text`` as its text/plain (what a terminal,
    a test or a saved notebook without widget state shows). ipywidgets returns a
    dict, anywidget a (data, metadata) pair (its metadata is empty): a dict either way."""
    bundle = widget._repr_mimebundle_(**kwargs) or {}
    if isinstance(bundle, tuple):
        bundle = bundle[0]
    return {**bundle, "text/plain": text}
