"""The step-through view: the conversation so far on the left (each line with its
explanation), the protocol state beside it, and below an editable next command
with a button that sends it over the real connection.

The button runs the exchange on the client's worker thread
(:meth:`~maillab.step.StepClient.send_async`): the kernel's loop stays free while
the server answers, and widget updates from that thread reach the browser
(ipykernel's IOPub is thread-safe). Clicks are only processed while no cell is
running: that is Jupyter's rule, and the reason cells can call ``view.send(...)``
directly as well.
"""

from __future__ import annotations

import html
from typing import Any

from ..step.client import Step, StepClient
from ..step.guides import Picture
from . import theme

#: What the step-through view adds to the shared stylesheet (theme.CSS): its layout.
_CSS = (
    "<style>.ml-step .row{display:flex;gap:.6em;align-items:baseline;flex-wrap:wrap}"
    ".ml-step .tag{flex:0 0 auto;font-weight:bold;font-family:var(--ml-mono)}"
    ".ml-step .txt{flex:1 1 18em;white-space:pre-wrap;overflow-wrap:anywhere;font-family:var(--ml-mono)}"
    ".ml-step .ml-note{flex:1 1 100%;padding-left:2.4em}"
    ".ml-step .sep{border-top:1px dashed var(--ml-line);margin:.3em 0}"
    ".ml-step .states{display:flex;flex-wrap:wrap;gap:.3em;margin:.3em 0 .5em 0}"
    ".ml-step .st{border:1px solid var(--ml-line);border-radius:4px;padding:.15em .45em}"
    ".ml-step .st.now{border:2px solid var(--ml-client);font-weight:bold}"
    ".ml-step .fact{margin-top:.25em;overflow-wrap:anywhere}"
    "</style>"
)


def _glyph(kind: str) -> str:
    # Colour is never the only signal: the theme's glyph says it too.
    glyph = theme.GLYPHS.get(kind, "")
    return f"{glyph} " if glyph else ""


def steps_html(client: StepClient, steps: list[Step] | None = None) -> str:
    rows = []
    for i, step in enumerate(steps if steps is not None else client.steps):
        if i:
            rows.append('<div class="sep"></div>')
        for ln in step.lines:
            kind = "client" if ln.direction == "C" else theme.reply_kind(client.protocol, ln.text)
            tag = "C:" if ln.direction == "C" else "S:"
            glyph = "" if ln.direction == "C" else _glyph(kind)
            note = f'<div class="ml-note">{html.escape(ln.note)}</div>' if ln.note else ""
            rows.append(f'<div class="row ml-{kind}"><span class="tag">{tag}</span>'
                        f'<span class="txt">{glyph}{theme.protocol_line(ln.text)}</span>{note}</div>')
        if step.problem:
            rows.append(f'<div class="ml-err"><b>!! {html.escape(step.problem)}</b></div>')
    return theme.page(_CSS + "".join(rows), kind="step")


def picture_html(protocol: str, pic: Picture) -> str:
    states = "".join(f'<span class="st{" now" if s == pic.current else ""}">'
                     f'{"▶ " if s == pic.current else ""}{html.escape(s)}</span>' for s in pic.states)
    valid = ", ".join(pic.valid) or "none: the session is over"
    # Label/value rows as divs: JupyterLab's own <dl> styles squeeze the labels.
    facts = "".join(f'<div class="fact"><b>{html.escape(k)}:</b> {html.escape(v)}</div>'
                    for k, v in [*pic.facts, ("valid now", valid)])
    return theme.page(f'{_CSS}<div><b>{protocol.upper()} state</b></div>'
                      f'<div class="states">{states}</div>{facts}', kind="step")


def picture_text(protocol: str, pic: Picture) -> str:
    states = " → ".join(f"[{s}]" if s == pic.current else s for s in pic.states)
    lines = [f"{protocol.upper()} state: {states}"]
    lines += [f"  {k}: {v}" for k, v in pic.facts]
    lines.append(f"  valid now: {', '.join(pic.valid) or 'none: the session is over'}")
    return "\n".join(lines)


def steps_text(steps: list[Step]) -> str:
    out = []
    for step in steps:
        for ln in step.lines:
            text = f"{ln.direction}: {ln.text}"
            out.append(f"{text:<58}  # {ln.note}" if ln.note else text)
        if step.problem:
            out.append(f"!! {step.problem}")
    return "\n".join(out)


def render_text(client: StepClient) -> str:
    nxt = client.suggestion()
    return "\n".join([f"step-through {client.protocol.upper()} as {client.address} to {client.target}",
                      steps_text(client.steps), "", picture_text(client.protocol, client.guide.picture()),
                      f"next (suggested): {nxt!r}" if nxt else "the session is over"])


class StepView:
    """The live step-through widget over a :class:`StepClient`.

    ``send(text)`` does what the button does, blocking (for cells and tests);
    ``click()`` presses the button (the exchange then runs on the worker thread).
    """

    def __init__(self, client: StepClient) -> None:
        import ipywidgets as w

        self.client = client
        self.title = w.HTML()
        self.log = w.HTML(layout=w.Layout(flex="2 1 24em", max_height="32em", overflow="auto"))
        self.state = w.HTML(layout=w.Layout(flex="1 1 14em", margin="0 0 0 1em"))
        # width "auto": a stretched flex child; "100%" plus the widget margins overflowed.
        self.command = w.Textarea(layout=w.Layout(width="auto", height="auto"), rows=1,
                                  placeholder="type a command; the suggestion follows the protocol state")
        self.button = w.Button(description="send ▶", button_style="primary",
                               tooltip="send this over the real connection")
        self.reset = w.Button(description="suggest", tooltip="put the suggested next command back")
        self.status = w.HTML()
        self.button.on_click(lambda _b: self.click())
        self.reset.on_click(lambda _b: self._suggest())
        self.widget = w.VBox([
            self.title,
            w.HBox([self.log, self.state], layout=w.Layout(flex_flow="row wrap")),
            self.command, w.HBox([self.button, self.reset, self.status]),
        ])
        client.listeners.append(self._refresh)
        theme.settings.follow(self)  # %mail present on: this view grows at once
        self._refresh()

    def set_scale(self, _scale: float) -> None:
        self._refresh()

    def _suggest(self) -> None:
        nxt = self.client.suggestion()
        self.command.value = nxt
        self.command.rows = max(1, min(10, nxt.count("\n") + 1))

    def _refresh(self) -> None:
        # the title is a view too: outside the theme's page it stayed at JupyterLab's
        # 13 px under %mail present on, a line the back row could not read
        self.title.value = theme.page(f"<b>step-through {self.client.protocol.upper()}</b> as "
                                      f"<code>{html.escape(self.client.address)}</code> to "
                                      f"{theme.words(self.client.target)}", kind="step")
        self.log.value = steps_html(self.client)
        self.state.value = picture_html(self.client.protocol, self.client.guide.picture())
        self._suggest()
        over = self.client.closed
        self.button.disabled = over
        self.status.value = "<i>the session is over</i>" if over else ""

    def send(self, text: str | None = None) -> list[Step]:
        """Send ``text`` (default: what the command box holds) and wait for the reply."""
        return self.client.send(self.command.value if text is None else text)

    def click(self) -> Any:
        """What the button does: send the box's text on the worker thread."""
        text = self.command.value
        if not text.strip() or self.client.closed:
            return None
        self.button.disabled = True
        self.status.value = "<i>waiting for the server…</i>"
        future = self.client.send_async(text)
        future.add_done_callback(lambda f: self._done(f))
        return future

    def _done(self, future: Any) -> None:
        exc = future.exception()
        if exc is not None:
            self.status.value = f"<b>!! {html.escape(str(exc))}</b>"
        self.button.disabled = self.client.closed

    @property
    def steps(self) -> list[Step]:
        return self.client.steps

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = self.widget._repr_mimebundle_(**kwargs) or {}
        bundle["text/plain"] = render_text(self.client)
        return bundle

    def __repr__(self) -> str:
        return render_text(self.client)
