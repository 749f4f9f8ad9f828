"""The look every maillab view shares: one stylesheet, one palette, one text size.

Why a stylesheet of our own: JupyterLab's rendered-HTML CSS right-aligns table
cells, centres tables and sets 12-13 px text; protocol lines must read
left-aligned, in monospace, from the back of a room. Every rule here is scoped
under ``.ml-view`` and wins over JupyterLab's (``!important`` where JupyterLab's
selector is as specific as ours), so a view looks the same in JupyterLab,
Notebook 7, VS Code and a saved HTML file.

- **Theme.** Colours come from JupyterLab's theme variables
  (``--jp-content-font-color1``, ``--jp-layout-color1``, ...), with fallbacks
  outside JupyterLab, so light and dark themes both read.
- **Palette.** Okabe-Ito colours (safe for the common colour-vision
  deficiencies), darker shades on light backgrounds, lighter on dark. A colour
  is never the only signal: :func:`badge` pairs it with a glyph and a word.
- **Size.** Text is ``calc(var(--ml-base) * var(--ml-scale))``; :data:`settings`
  holds the scale (``%mail present on`` / ``%config MailMagics.presenter =
  True`` / ``%mail textsize 1.4``). Static HTML takes the scale in force when it
  is rendered; live views (:mod:`maillab.views.live`) follow changes at once.

A view plugs in by wrapping its HTML with :func:`page` (static outputs) or by
being a :class:`maillab.views.live.LiveHTML` (live outputs); see
``docs/architecture.md`` ("Views: the shared base").
"""

from __future__ import annotations

import html
import math
import re
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

#: Text size of a view at scale 1, and the scale the presenter setting uses.
BASE_PX = 14
PRESENTER_SCALE = 1.6

#: Semantic colours: (light theme, dark theme). Okabe-Ito hues.
PALETTE = {
    "ok": ("#007a5a", "#3fd0a4"),      # bluish green: +OK, 2xx/3xx, delivered
    "err": ("#c2410c", "#ff8a50"),     # vermillion: -ERR, 5xx, refused, bounced
    "temp": ("#8a5a00", "#f0b429"),    # orange: 4xx, retrying, deferred
    "client": ("#005a9c", "#7cc4f5"),  # blue: what the client sent
    "event": ("#8e3a75", "#e39bd0"),   # reddish purple: TLS, auth, state, stored
    "muted": ("#57606a", "#a0a8b0"),   # times, notes
}

#: Glyph and word shown with each semantic colour (colour is never the only signal).
GLYPHS = {"ok": "✓", "err": "✗", "temp": "↻", "client": "▶", "event": "◆", "muted": ""}


@dataclass
class Settings:
    """The text scale of every maillab view in this kernel (1.0 = normal)."""

    scale: float = 1.0
    _listeners: weakref.WeakSet = field(default_factory=weakref.WeakSet, repr=False)

    @property
    def presenter(self) -> bool:
        return self.scale >= PRESENTER_SCALE

    def set_scale(self, scale: float) -> None:
        if not 0.5 <= scale <= 4.0:
            raise ValueError(f"text scale {scale} is outside 0.5 .. 4")
        self.scale = float(scale)
        for view in list(self._listeners):
            try:
                view.set_scale(self.scale)
            except Exception:  # a closed view must not stop the others
                pass

    def set_presenter(self, on: bool) -> None:
        self.set_scale(PRESENTER_SCALE if on else 1.0)

    def follow(self, view: object) -> None:
        """Call ``view.set_scale(scale)`` whenever the scale changes (held weakly)."""
        self._listeners.add(view)


settings = Settings()


def _colour_vars(which: int) -> str:
    return ";".join(f"--ml-{name}:{pair[which]}" for name, pair in PALETTE.items())


def _cards_rules(cls: str, turn: float) -> str:
    """The stylesheet rules that make ``table.CLS`` a column of cards where the view
    is at most ``turn`` em wide (see :data:`CSS`, "A wide table of short facts")."""
    t = f".ml-view table.{cls}"
    return (
        f"@container mlview (max-width:{turn:g}em){{"
        f"{t},{t} tbody{{display:block;width:100%}}"
        f"{t} thead{{display:none}}"
        f"{t} tr{{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(11em,100%),1fr));"
        "gap:.1em .6em;border:1px solid var(--ml-line);border-radius:6px;padding:.3em .4em;margin:0 0 .5em 0}"
        f"{t} td{{padding:.1em .2em!important;overflow-wrap:break-word}}"
        f"{t} td:empty{{display:none}}"
        f"{t} td.ml-card-head{{grid-column:1/-1;font-size:1.1em;font-weight:600}}"
        # a long fact (an error text) takes the card's whole width, not one 11em column
        # (11em: two columns of facts side by side at 150% zoom, where 13em left one)
        f"{t} td.ml-card-wide{{grid-column:1/-1}}"
        # a name kept whole in the table (.ml-nw) may wrap at its dots in a card's column
        f"{t} .ml-nw{{white-space:normal}}{t} .ml-nw wbr{{display:inline}}"
        f"{t} td[data-label]::before{{content:attr(data-label);display:block;"
        "font-family:var(--jp-ui-font-family,sans-serif);font-size:.85em;font-weight:600;"
        "color:var(--ml-muted)}}")


#: The one stylesheet. Live views load it as their anywidget CSS; static views
#: carry it in a <style> element (repeating it is harmless: same rules).
CSS = (
    ".ml-view{" + _colour_vars(0) + f";--ml-base:{BASE_PX}px;--ml-scale:1;"
    "--ml-fg:var(--jp-content-font-color1,#1f2328);--ml-bg:var(--jp-layout-color0,#fff);"
    "--ml-bg2:var(--jp-layout-color2,#eef1f4);--ml-line:var(--jp-border-color2,#d0d7de);"
    "--ml-mono:var(--jp-code-font-family,ui-monospace,SFMono-Regular,Menlo,Consolas,monospace);"
    "font-size:calc(var(--ml-base)*var(--ml-scale));line-height:1.35;color:var(--ml-fg);"
    "text-align:left;max-width:100%;box-sizing:border-box;overflow-wrap:break-word;"
    "container-type:inline-size;container-name:mlview}"
    "body[data-jp-theme-light='false'] .ml-view{" + _colour_vars(1) + "}"
    "@media (prefers-color-scheme:dark){body:not([data-jp-theme-light]) .ml-view{"
    + _colour_vars(1) + ";--ml-fg:#e6edf3;--ml-bg:#0d1117;--ml-bg2:#21262d;--ml-line:#30363d}}"
    ".ml-view *{box-sizing:border-box}"
    # JupyterLab: .jp-RenderedHTMLCommon td{text-align:right}, table{margin:auto;
    # table-layout:fixed;font-size:12px}, tr:nth-child(odd){background}.
    # A table is its own sideways-scrolling box (display:block around the table's
    # rows, as GitHub renders Markdown tables): a table wider than the output keeps
    # whole words and scrolls inside itself instead of breaking them letter by letter.
    ".ml-view table{margin:0 0 .4em 0!important;border-collapse:collapse;table-layout:auto!important;"
    "font-size:1em!important;color:var(--ml-fg)!important;max-width:100%;width:auto;"
    "display:block;overflow-x:auto}"
    ".ml-view :is(td,th,tr){text-align:left!important;vertical-align:top!important;"
    "padding:.12em .5em!important;line-height:1.35!important;max-width:none;white-space:normal}"
    # Cells wrap at spaces and at the break points a view marks (theme.breakable:
    # after the dots of a host name), never inside a word: overflow-wrap:anywhere
    # let the table squeeze a column to a letter a line ("h/o/p"). Cells marked .nw
    # (short labels: part numbers, header names) never wrap.
    ".ml-view th{font-weight:600;border-bottom:1px solid var(--ml-line)!important}"
    ".ml-view :is(td,th){overflow-wrap:normal;word-break:normal}"
    ".ml-view td.nw{white-space:nowrap}"
    # a host name or address kept whole in a table row (theme.card_turn: the table turns
    # into cards before it would need to wrap one)
    # (Chromium breaks at a <wbr> even in white-space:nowrap: the <wbr>s go too)
    ".ml-view .ml-nw{white-space:nowrap}.ml-view .ml-nw wbr{display:none}"
    # a name that goes to the next line whole, and breaks at its dots only where it is
    # longer than a line (theme.words)
    ".ml-view .ml-word{display:inline-block;max-width:100%;text-indent:0}"
    # a cell of opaque protocol values (a MIME boundary, an encoded word, base64):
    # at least 14em wide, and a token longer than that breaks where it must
    ".ml-view td.ml-token{overflow-wrap:anywhere;min-width:min(14em,45cqw)}"
    ".ml-view tbody tr:nth-child(odd){background:transparent!important}"
    ".ml-view tbody tr:hover{background:var(--ml-bg2)!important}"
    ".ml-view .mono,.ml-view code,.ml-view pre,.ml-view .ml-wire td{font-family:var(--ml-mono)!important;"
    "font-size:1em!important}"
    # JupyterLab gives an output's <pre> word-break:break-all ("connecti/ons"): wrap
    # at spaces, and break only a token longer than the whole line.
    ".ml-view pre{white-space:pre-wrap;text-align:left;margin:0;background:transparent;padding:0;"
    "word-break:normal!important;overflow-wrap:anywhere}"
    ".ml-view .ml-wire .line{white-space:pre-wrap;word-break:normal;overflow-wrap:anywhere}"
    # a protocol line too long for its cell goes on indented (a wrapped CAPABILITY's
    # rest read as a line of its own at the cell's edge); a message's text (.pl) does not
    ".ml-view .ml-wire td.line:not(.pl){padding-left:1.7em!important;text-indent:-1.2em}"
    # the same for a wire line of its own (the eavesdropper's columns, a probe's
    # transcript): its rest went on at the left edge, where "bob@alpha.test" after
    # "S: +OK send PASS for" read as a line of its own (notebook 05 at the presenter's
    # scale); it goes on under the text after "S: "
    ".ml-view .ml-wire div.line{padding-left:3ch;text-indent:-3ch}"
    # protocol text line by line (theme.text_lines): a line too long for the output
    # goes on indented, never back at the left edge where it reads as a line of its own
    ".ml-view .ml-lines{margin:0;font-family:var(--ml-mono)!important}"
    ".ml-view .ml-lines>div{white-space:pre-wrap;word-break:normal;overflow-wrap:anywhere;"
    "padding-left:2em;text-indent:-2em;min-height:1.35em}"
    # a token of protocol text (theme.protocol_line) never breaks at its hyphens
    # ("SASL-" / "IR"): each such break point is held to its next character (.ml-nb),
    # so the token goes to the next line whole; one wider than the whole line breaks
    # where it must (the line's overflow-wrap). Tokens stay inline: a wrapped rest goes
    # on at the line's hanging indent, which marks it as continued
    ".ml-view .ml-nb{white-space:nowrap}"
    ".ml-view .ml-long{overflow-wrap:anywhere}"
    ".ml-view .ml-wire :is(td.t,td.tag){white-space:nowrap!important;overflow-wrap:normal;width:1%}"
    ".ml-view .ml-wire td.n{min-width:12em}"
    # the protocol line gets at least half the view (the notes the rest), so a reply
    # reads on one line instead of wrapping beside a wide note
    ".ml-view .ml-wire td.line{min-width:min(40em,45cqw)}"
    # transcript rows carry one class (views/transcript.py: their markup is most of
    # what a live transcript sends): it colours the tag and the line
    ".ml-view .ml-wire td.t{color:var(--ml-muted)}"
    ".ml-view .ml-wire td.n{color:var(--ml-muted);font-style:italic}"
    + "".join(f".ml-view .ml-wire tr.{k}>:is(td.tag,td.line){{color:var(--ml-{k})}}"
              for k in ("ok", "err", "temp", "client", "event")) +
    # A narrow output (800 px window, sidebar open, zoom): the note goes under its
    # line instead of squeezing the protocol text into a ribbon; times are dropped.
    # Also below 46em of the view's text, where the time, the line's 45% and the
    # note's 12em do not fit side by side: the presenter's scale at 1400 px with the
    # sidebar open (921 px) scrolled sideways by 24 px.
    "@container mlview (max-width:760px) or (max-width:46em){.ml-view .ml-wire,.ml-view .ml-wire tbody{display:block}"
    ".ml-view .ml-wire tr{display:grid;grid-template-columns:auto minmax(0,1fr)}"
    ".ml-view .ml-wire td.line{min-width:0}"
    ".ml-view .ml-wire td.t{display:none}.ml-view .ml-wire td.n{grid-column:2;min-width:0;"
    "padding-top:0!important}.ml-view .ml-wire td.n:empty{display:none}}"
    # A wide table of short facts (the port map, the class map): in a narrow output
    # each row becomes a card, its cells labelled from their column heads
    # (data-label), side by side as far as they fit, instead of a table that scrolls
    # sideways past its last columns. The turns are in em of the view's text (a
    # presenter's scale turns them sooner, as it needs): .ml-cards at 54em (760 px
    # at scale 1), .ml-cards-wide (many columns) at 107em (1500 px),
    # .ml-cards-narrow (a few short columns) at 30em (420 px: 800 px at 150% zoom).
    + "".join(_cards_rules(c, w) for c, w in (("ml-cards", 54), ("ml-cards-wide", 107), ("ml-cards-narrow", 30)))
    # a narrow table's facts are short (a port, a state): each on one line beside its
    # label, so a card of the 29 services of %mail status is four lines, not eight
    # (the space after the label: where a value too long for the line goes under it)
    + "@container mlview (max-width:30em){.ml-view table.ml-cards-narrow td[data-label]::before{"
    "display:inline;content:attr(data-label) ' '}}"
    # A view under 24em of its text (the presenter's scale at 150% zoom: ~17em) has no
    # room for a plain table's columns side by side (a user / password / also-logs-in-as
    # table, a probe's facts, the cost of each step): each row's cells flow and wrap,
    # a value going under its label, instead of the table scrolling sideways. At scale 1
    # this is under 336 px, narrower than any output of an 800 px window at 150% zoom.
    + "@container mlview (max-width:24em){.ml-view table:not([class*=ml-cards]):not(.ml-wire),"
    ".ml-view table:not([class*=ml-cards]):not(.ml-wire) :is(thead,tbody){display:block}"
    ".ml-view table:not([class*=ml-cards]):not(.ml-wire) tr{display:flex;flex-wrap:wrap;column-gap:.4em}"
    ".ml-view table:not([class*=ml-cards]):not(.ml-wire) :is(td,th){flex:0 1 auto;min-width:0}}"
    # a row's label (a certificate field, a probe fact) reads whole: "certificate",
    # never "certificat" / "e"
    + ".ml-view tbody th:first-child{white-space:nowrap;overflow-wrap:normal}"
    ".ml-view .ml-ok{color:var(--ml-ok)}.ml-view .ml-err{color:var(--ml-err)}"
    ".ml-view .ml-temp{color:var(--ml-temp)}.ml-view .ml-client{color:var(--ml-client)}"
    ".ml-view .ml-event{color:var(--ml-event)}.ml-view .ml-muted{color:var(--ml-muted)}"
    ".ml-view .ml-note{color:var(--ml-muted);font-style:italic;font-family:var(--jp-ui-font-family,sans-serif)}"
    ".ml-view .ml-badge{font-weight:600}"
    ".ml-view .ml-small{font-size:.9em}"
    ".ml-view details{margin:.2em 0;border-left:3px solid var(--ml-line);padding-left:.4em}"
    ".ml-view summary{cursor:pointer;font-weight:600;list-style-position:inside}"
    ".ml-view summary .ml-sum{font-weight:400;color:var(--ml-muted)}"
    ".ml-view svg{max-width:100%;height:auto;display:block}"
    # A diagram drawn at the text's size (theme.diagram): its own sideways-scrolling
    # box, never scaled down.
    ".ml-view .ml-diagram{overflow-x:auto;max-width:100%}"
    ".ml-view svg text{fill:var(--ml-fg)}"
    ".ml-view .ml-bar{display:flex;flex-wrap:wrap;gap:.4em;align-items:center;margin-bottom:.3em}"
    ".ml-view .ml-bar button{font-size:.9em;padding:.1em .6em;cursor:pointer;"
    "background:var(--jp-layout-color2,#eef1f4);color:var(--ml-fg);border:1px solid var(--ml-line);"
    "border-radius:4px}"
    ".ml-view .ml-body{overflow:auto;max-height:70vh}"
)


def style_element() -> str:
    return f"<style>{CSS}</style>"


def page(body: str, *, kind: str = "", scale: float | None = None) -> str:
    """A static view: ``body`` inside the shared stylesheet at the current text scale."""
    s = settings.scale if scale is None else scale
    cls = f"ml-view ml-{kind}" if kind else "ml-view"
    return f'{style_element()}<div class="{cls}" style="--ml-scale:{s:g}">{body}</div>'


def badge(kind: str, word: str, *, wrap: bool = False) -> str:
    """A coloured word with its glyph: ``✓ +OK``, ``✗ -ERR`` (never colour alone).
    ``wrap``: a long word (a cipher name) may wrap at :func:`breakable`'s points."""
    glyph = GLYPHS.get(kind, "")
    text = f"{glyph}\u00a0{word}" if glyph else word  # the glyph never wraps away from its word
    return f'<span class="ml-badge ml-{kind}">{breakable(text) if wrap else html.escape(text)}</span>'


def reply_kind(protocol: str, text: str) -> str:
    """The semantic colour of a server reply line: ok, temp or err.

    SMTP: 2xx/3xx ok, 4xx temp, 5xx err (RFC 5321 4.2.1). POP3: ``+OK`` ok,
    ``-ERR`` err (RFC 1939 3). IMAP: tagged or untagged OK/PREAUTH/BYE, NO, BAD
    (RFC 3501 7.1); anything else (data, continuation) ok. DNS (the lab DNS's
    "RCODE flags: N answer(s)" lines): NOERROR ok, SERVFAIL temp (a resolver tries
    again), any other RCODE (NXDOMAIN, REFUSED, FORMERR, ...) err (RFC 1035 4.1.1).
    """
    t = text.lstrip()
    if protocol == "dns":
        rcode = t.split(None, 1)[0].rstrip(":").upper() if t else ""
        if rcode.isalpha() and rcode.isupper():
            return {"NOERROR": "ok", "SERVFAIL": "temp"}.get(rcode, "err")
    if t[:1] in "2345" and t[:3].isdigit():
        return {"4": "temp", "5": "err"}.get(t[0], "ok")
    upper = t.upper()
    if upper.startswith("-ERR"):
        return "err"
    if upper.startswith("+OK"):
        return "ok"
    words = upper.split(None, 2)
    if len(words) >= 2 and words[1] in ("NO", "BAD"):
        return "err"
    if protocol == "imap" and words[:1] in (["NO"], ["BAD"]):
        return "err"
    return "ok"


def text_lines(text: str) -> str:
    """Protocol text (a dig answer, a zone, a message as it came) one ``<div>`` a
    line, in the code font: a line too long for the output wraps with its
    continuation indented (a ``<pre>`` started it again at the left edge, where a
    record's data read as a record and a header's rest as a header field of its own),
    at spaces only (:func:`protocol_line`)."""
    return ("<div class='ml-lines'>"
            + "".join(f"<div>{protocol_line(line)}</div>" for line in text.splitlines() or [""]) + "</div>")


#: A token longer than this many characters is data (base64, a DKIM key, a list of
#: message ids), not a word a student types: where it is wider than the line it breaks
#: anywhere, and its next part goes on at the line's hanging indent (a mark drawn in
#: the text, e.g. soft hyphens shown as ↩, would be copied with it: a DKIM key copied
#: from ``%mail dig`` must be the key).
LONG_TOKEN = 40


def protocol_line(text: str, *, mark_long: bool = True) -> str:
    """One line of protocol text, escaped, that wraps at its spaces only: a browser
    breaks after a hyphen ("SASL-" / "IR", "X-Mailer" as "X-" / "Mailer"), and in
    protocol text such a break reads as two tokens. A token with such a break point
    is an ``.ml-tok`` whose break points are held (:func:`_held`: it goes to the next
    line whole, and breaks inside only where it is wider than the whole line, its rest at
    the line's hanging indent); a token longer than
    :data:`LONG_TOKEN` is an ``.ml-long``, broken anywhere where it must, its next part
    at the line's hanging indent, unless ``mark_long`` is false (a message's text) or it
    holds an ``@`` (a Message-ID or address: it breaks at :func:`breakable`'s points).
    Copying the line gives it back unchanged."""
    out = []
    for piece in _SPACES.split(text):
        if not piece or piece[0] in " \t" or len(piece) <= LONG_TOKEN and not _BREAKS_INSIDE.search(piece):
            out.append(html.escape(piece))
        elif len(piece) > LONG_TOKEN and mark_long and "@" not in piece:
            out.append(f"<span class='ml-long'>{_held(piece)}</span>")  # ("utf-" / "8''...")
        elif len(piece) > LONG_TOKEN:  # a long address or Message-ID breaks at its dots
            out.append(f"<span class='ml-tok'>{breakable(piece)}</span>")
        else:
            out.append(f"<span class='ml-tok'>{_held(piece)}</span>")
    return "".join(out)


def _held(token: str) -> str:
    """``token`` escaped, each character after which a browser would break (a hyphen,
    ``/``, ...) held to the next one in a ``.ml-nb`` (no wrap): no break inside is left
    but the emergency one of a token wider than its line."""
    held = [False] * len(token)  # held[i]: no break between token[i] and token[i + 1]
    for m in _BREAKS_INSIDE.finditer(token):
        held[m.start()] = True
    out, i = [], 0
    while i < len(token):
        if not held[i]:
            out.append(html.escape(token[i]))
            i += 1
            continue
        j = i
        while j < len(token) - 1 and held[j]:
            j += 1
        out.append(f"<span class='ml-nb'>{html.escape(token[i:j + 1])}</span>")
        i = j + 1
    return "".join(out)


_SPACES = re.compile(r"([ \t]+)")  # (a zone's records are tab-separated: dig's answer)
#: Where a browser may break inside a token (Unicode line breaking: after a hyphen,
#: ``/``, ``?``, ``!``, ``}``, ``|``), but for the token's last character. Also its
#: first: UAX #14 LB20a keeps a word-initial hyphen, yet Chromium broke dig's "-p 1053"
#: as "-" / "p 1053" (notebook 08 at 150% zoom)
_BREAKS_INSIDE = re.compile(r"[-/?!}|](?=.)")


def escape(text: object) -> str:
    return html.escape(str(text))


def with_code(text: str) -> str:
    """``text`` escaped, each span between backticks (a command to type: ``%mail dig
    beta.test MX``, ``FETCH 1:* (ENVELOPE)``) a ``<code>`` in the code font, the
    backticks dropped. The plain text keeps them, as Markdown does. Text with an odd
    number of backticks is shown as it is."""
    parts = str(text).split("`")
    if len(parts) % 2 == 0:
        return html.escape(str(text))
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts))


_BREAK_AFTER = "._@/:"


def breakable(text: object) -> str:
    """``text`` escaped, with a line-break opportunity (``<wbr>``) after each ``.``,
    ``_``, ``@``, ``/`` and ``:`` between letters or digits: a host name, address or
    cipher name in a narrow cell wraps as ``mail.alpha.`` / ``test`` or
    ``TLS_AES_256_`` / ``GCM_SHA384``, never letter by letter (table cells never
    break inside a word). Never between two digits: ``127.0.0.1`` or ``23:47:42``
    broken there misreads. Copying the text gives it back unchanged."""
    out = []
    s = str(text)
    for i, ch in enumerate(s):
        out.append(html.escape(ch))
        if (ch in _BREAK_AFTER and 0 < i < len(s) - 1 and s[i - 1].isalnum() and s[i + 1].isalnum()
                and not (s[i - 1].isdigit() and s[i + 1].isdigit())):
            out.append("<wbr>")
    return "".join(out)



def words(text: object) -> str:
    """``text`` escaped, wrapping at its spaces first: each word with a break point of
    :func:`breakable` (a host name, an address) is an ``.ml-word``, which moves to
    the next line whole and breaks at its dots only where it is longer than the line
    (``MX 10`` / ``mx1.beta.test``, not ``MX 10 mx1.beta.`` / ``test``)."""
    out = []
    for w in str(text).split(" "):
        b = breakable(w)
        out.append(f"<span class='ml-word'>{b}</span>" if "<wbr>" in b else b)
    return " ".join(out)


def diagram(*layouts: tuple[str, float]) -> str:
    """SVG diagrams drawn at the size of the view's text, never scaled down (a
    ``viewBox`` shrunk to an 800 px output made its labels 10 px): each SVG sets its
    width in em (:func:`diagram_style`), so its text follows the presenter scale.
    ``layouts`` are (svg, width in user units, 1 unit = 1 px at scale 1), widest
    first: the output shows the widest that fits (a container query on the view, in
    em of its text, so a presenter scale turns it sooner), and the narrowest
    scrolls sideways in its own box when even it does not fit."""
    turns = [(w + 4) / BASE_PX for _svg, w in layouts]  # em of the view's text
    names = [f"ml-dg{round(layouts[i - 1][1]) if i else 0}-{round(w)}" for i, (_svg, w) in enumerate(layouts)]
    rules = []
    for i, name in enumerate(names):
        if i < len(layouts) - 1:  # a narrower layout follows: this one goes where it does not fit
            rules.append(f"@container mlview (width < {turns[i]:.2f}em){{.ml-view .{name}{{display:none}}}}")
        if i:  # a wider layout fits there
            rules.append(f"@container mlview (width >= {turns[i - 1]:.2f}em){{.ml-view .{name}{{display:none}}}}")
    style = f"<style>{''.join(rules)}</style>" if rules else ""
    return (f"<div class='ml-diagram'>{style}"
            + "".join(f"<div class='{name}'>{svg}</div>" for name, (svg, _w) in zip(names, layouts, strict=True))
            + "</div>")


def diagram_style(width: float) -> str:
    """The ``style`` of a diagram's root ``<svg>`` of ``width`` user units: as wide as
    that many px at the view's text size (its text, ``BASE_PX`` units, reads at the
    size of the text around it), its own font size the view's."""
    return f"width:{width / BASE_PX:.3f}em;max-width:none;height:auto;font-size:1em"


def card_table(heads: Sequence[str], rows: Iterable[Sequence[str]], *, kind: str = "ml-cards",
               head_label: str | None = None, wide: Iterable[str] = (), cls: str = "") -> str:
    """A table whose rows become cards in a narrow output: ``heads`` are the column
    heads (text), each row its cells' HTML, the first cell naming the row (labelled
    ``head_label``, by default the first head); ``kind`` is ``ml-cards``,
    ``ml-cards-wide`` or ``ml-cards-narrow`` (where it turns, see the stylesheet);
    the columns in ``wide`` span a card's width. Made of :func:`card_row`."""
    label = heads[0] if head_label is None else head_label
    spans = tuple(wide)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in heads)
    body = "".join(card_row(r[0], list(zip(heads[1:], r[1:], strict=True)), head_label=label, wide=spans)
                   for r in rows)
    return (f"<table class='{kind}{' ' + cls if cls else ''}'><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>")


def card_row(head: str, cells: list[tuple[str, str]], *, head_label: str = "",
             wide: Iterable[str] = (), classes: Mapping[str, str] | None = None) -> str:
    """One row of an ``ml-cards`` table (see the stylesheet): ``head`` (HTML) names
    the row, ``cells`` are (column head, cell HTML). In a narrow output the row is a
    card, each non-empty cell under its label; the cells of the columns in ``wide``
    (long text) span the whole card. ``classes``: a column's cell classes, by its
    head (``head_label`` for the row's name), e.g. ``ml-token``."""
    extra = classes or {}
    spans = set(wide)

    def cell(title: str, content: str, base: str = "") -> str:
        cls = " ".join(c for c in (base, "ml-card-wide" if title in spans else "", extra.get(title, "")) if c)
        attr = f" class='{cls}'" if cls else ""
        return f"<td{attr} data-label='{html.escape(title)}'>{content}</td>" if content else "<td></td>"

    head_cls = " ".join(c for c in ("ml-card-head", extra.get(head_label, "")) if c)
    label = f" data-label='{html.escape(head_label)}'" if head_label else ""
    return f"<tr><td class='{head_cls}'{label}>{head}</td>" + "".join(cell(t, c) for t, c in cells) + "</tr>"


def text_em(text: str, *, bold: bool = False) -> float:
    """A generous estimate of the width of ``text`` on one line, in em of its font
    (measured in Chromium's sans-serif, DejaVu Sans: lower case 0.47-0.5em, capitals
    and digits 0.64-0.7, ``@`` 1.0; bold 12% wider), for :func:`card_turn`: an
    estimate too wide turns a table into cards a little early, one too narrow would
    let it scroll sideways."""
    def one(ch: str) -> float:
        if ch == "@":
            return 1.0
        if ch.isupper() or ch.isdigit() or ch in "mwMW":
            return 0.74
        return 0.56
    return sum(one(ch) for ch in text) * (1.12 if bold else 1.0)


def card_turn(widths: Iterable[float], *, font: float = 1.0, least: float = 54) -> tuple[str, str]:
    """The table class and ``<style>`` that turn a table into cards (as ``ml-cards``
    does, :func:`_cards_rules`) wherever the view is too narrow for its columns at
    their narrowest: ``widths`` is each column's in em of the table's text (its
    longest piece that must stay whole, a ``.ml-nw`` name, or its head's longest word;
    :func:`text_em`), ``font`` the table's text size in em of the view's (``ml-small``:
    0.9). Never later than ``least`` em (``ml-cards``' own turn). For a table whose
    names must read whole beside a long text: the names are kept on one line in the
    table, and the table is a table only where that fits without scrolling sideways."""
    need = (sum(w + 1.0 for w in widths) + 1.0) * font  # 1em a cell: its padding
    turn = max(least, math.ceil(need))
    cls = f"ml-cards-at{turn}"
    return cls, f"<style>{_cards_rules(cls, turn)}</style>"


def since(seconds: float) -> str:
    """How long ago, in words: "6 s ago", "3 min ago", "2 h ago" (the words the
    browser writes each second into a live view's ``.ml-ago``: views/live.py)."""
    s = max(0.0, seconds)
    return f"{s:.0f} s ago" if s < 120 else f"{s / 60:.0f} min ago" if s < 7200 else f"{s / 3600:.0f} h ago"


def clock_since(t: float, now: float, *, live: bool = True) -> str:
    """A moment as HTML: its clock time ("05:12:03", true however long the view is on
    screen) and, in a live view, how long ago in an ``.ml-ago`` the browser updates
    each second from the kernel's epoch second (``data-t``): the words stay true
    with no round trip to the kernel (the browser's clock is taken as the kernel's)."""
    clock = f"<span class='ml-nw'>{time.strftime('%H:%M:%S', time.localtime(t))}</span>"
    if not live:
        return clock
    return f"{clock} <span class='ml-muted'>(<span class='ml-ago' data-t='{t:.0f}'>{since(now - t)}</span>)</span>"
