"""A sequence diagram of one session: client and server lifelines, every command
and reply as an arrow, TLS start, login and state changes marked across both.

The RFCs draw conversations as ``C:``/``S:`` lines; a sequence diagram is the
same conversation with time running down the page, which shows at a glance who
waits for whom (a multi-line reply is one arrow with all its lines), where the
connection became encrypted and where the session changed state.

The notebook shows the widest of four layouts of the same SVG that fits the
output (``theme.diagram`` picks by the output's width; a narrower one has its
lifelines closer and wraps its lines sooner): either is drawn at the size of the text around it, never scaled down,
so "USER/PASS" reads from the back of a room; the wide one is the export
(``%mail sequence --figure seq.svg``). Colours come from the lab's theme
variables with fallbacks (so the exported file reads on its own); long lines
wrap to what fits between the lifelines, and boxes are sized to their text.
"""

from __future__ import annotations

import html
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..events import AUTH, CLIENT_LINE, CLOSED, FAULT, OPENED, SERVER_LINE, STATE, TLS, Event
from .theme import BASE_PX, PALETTE, diagram, diagram_style, page, reply_kind

FONT = BASE_PX  # text size in user units; the diagram's width is set in em (theme.diagram_style)
CW = 8.6  # a monospace character's advance at FONT (0.6 em, and some slack for a fallback font)
#: The layouts' widths, widest first, in user units (px at scale 1): 350 fits 800 px
#: at 150% zoom, and the presenter's scale at 800 px; 224 the presenter's at 150% zoom.
LAYOUTS = (760, 560, 350, 224)
LINE_H, GAP = 18, 12

_FALLBACK = {name: pair[0] for name, pair in PALETTE.items()}


def _colour(kind: str) -> str:
    return f"var(--ml-{kind},{_FALLBACK.get(kind, '#1f2328')})"


_FG = "var(--ml-fg,#1f2328)"


@dataclass
class Step:
    """One row of the diagram: an arrow (``C``/``S``) or a mark across both lifelines."""

    kind: str  # "C", "S" or "mark"
    lines: list[str]
    colour: str = "client"
    glyph: str = ""


def steps(events: Sequence[Event]) -> list[Step]:
    """The rows: consecutive server lines form one reply (one arrow); a message body
    sent after DATA is one arrow saying how long it was."""
    out: list[Step] = []
    for e in events:
        if e.kind == CLIENT_LINE:
            if e.data.get("payload"):
                n = len(e.text.split("\n"))
                out.append(Step("C", [f"(message text, {n} lines shown in the transcript)"]))
            else:
                out.append(Step("C", [f"C: {e.text}"]))
        elif e.kind == SERVER_LINE:
            kind = "ok" if e.data.get("payload") else reply_kind(e.protocol, e.text)
            text = (f"S: (message text, {len(e.text.splitlines())} lines shown in the transcript)"
                    if e.data.get("payload") else f"S: {e.text}")
            prev = out[-1] if out else None
            if prev is not None and prev.kind == "S" and not _reply_ended(e.protocol, prev.lines[-1]):
                prev.lines.append(text)
                if kind == "err":
                    prev.colour, prev.glyph = "err", "✗"
            else:
                glyph = {"err": "✗", "temp": "↻"}.get(kind, "")
                out.append(Step("S", [text], kind, glyph))
        elif e.kind == TLS:
            version = e.data.get("version") or "TLS"
            cipher = e.data.get("cipher") or ""
            out.append(Step("mark", [f"◆ TLS started: {version} {cipher}".rstrip(),
                                     "from here on every line is encrypted on the wire"], "event"))
        elif e.kind == AUTH:
            ok = e.data.get("ok")
            out.append(Step("mark", [f"{'✓' if ok else '✗'} AUTH {e.data.get('mechanism', '')}: "
                                     f"{'logged in as' if ok else 'refused for'} {e.data.get('user', '?')}"],
                            "ok" if ok else "err"))
        elif e.kind == STATE:
            out.append(Step("mark", [f"◆ state: {e.text}"], "event"))
        elif e.kind == FAULT:  # the next reply (or the silence) is injected, not the server's own
            out.append(Step("mark", [f"↯ injected by %mail fail: {e.data.get('command', '')} -> "
                                     + ("connection closed" if e.data.get("drop") else
                                        repr(e.data.get("reply") or f"{e.data.get('delay', 0):g} s late"))],
                            "temp"))
        elif e.kind == CLOSED:
            out.append(Step("mark", ["connection closed" + (f" ({e.text})" if e.text else "")], "muted"))
    return out


def _reply_ended(protocol: str, last: str) -> bool:
    """Whether the reply holding ``last`` (with its "S: " prefix) is complete: SMTP's
    last line has a space after the code (RFC 5321 4.2.1); POP3's multi-line
    IMAP's with a tagged line. POP3 cannot tell from a reply's first line whether
    more follow (RFC 1939 3), and it answers in lock step, so server lines with no
    client line between them are one reply."""
    text = last[3:]
    if protocol == "smtp":
        return not (text[:3].isdigit() and text[3:4] == "-")
    if protocol == "imap":
        return not text.startswith("* ") and not text.startswith("+ ")
    return False


_BREAK_AFTER = ".-_@/:,="
#: A line holding a token longer than the line is drawn narrower, its letters at
#: full height (SVG textLength), down to this share of its width: "ENHANCEDSTATUSCODES"
#: stays one word at the presenter's scale. A token longer still is cut, and the
#: cut marked (CONTINUED), never "ENHANCEDSTATU" / "SCODES" as if two words.
SQUEEZE = 0.78
CONTINUED = "↩"


def _wrap(line: str, columns: int) -> list[str]:
    """``line`` in lines of about ``columns`` characters, wrapped at spaces, each
    continuation indented three spaces (its <text> keeps them: ``white-space:pre``;
    SVG collapsed them, so a wrapped reply's rest read as a line of its own). A word
    longer than a line (a host name, an ESMTP keyword in the narrowest layout) breaks
    after a dot, hyphen or the like (``mail.alpha.`` / ``test``, ``250-`` /
    ``ENHANCEDSTATUSCODES``); a piece with no such point that is still too long
    stays whole on a line drawn narrower (:func:`_squeeze`) if it fits at
    :data:`SQUEEZE`, and is cut with a :data:`CONTINUED` mark only past that."""
    pieces = textwrap.wrap(line, columns, break_long_words=False, break_on_hyphens=False,
                           subsequent_indent="   ") or [line]
    if len(pieces) > 1 and len(pieces[0]) <= 3:  # "S:" alone: its long word follows it
        pieces[:2] = [f"{pieces[0]} {pieces[1].lstrip()}"]
    out = []
    squeezed = int(columns / SQUEEZE)
    for piece in pieces:
        while len(piece) > columns:
            cut = max(piece.rfind(c, 4, columns) for c in _BREAK_AFTER) + 1
            if cut <= 4 and len(piece) <= squeezed:  # no break point on the line: whole, squeezed
                break
            if cut <= 4:  # or up to the next break point, if it fits squeezed up to there
                later = [i for i in (piece.find(c, columns) for c in _BREAK_AFTER) if i >= 0]
                cut = min(later, default=len(piece) - 1) + 1
                if cut > squeezed:
                    out.append(piece[:columns - 1] + CONTINUED)
                    piece = "   " + piece[columns - 1:]
                    continue
            if cut >= len(piece):
                break
            out.append(piece[:cut])
            piece = "   " + piece[cut:]
        out.append(piece)
    return out


def _squeeze(line: str, columns: int) -> str:
    """The attributes that draw ``line`` in the width of ``columns`` characters when it
    is longer (:func:`_wrap` let it be: one token): narrower glyphs, full height."""
    if len(line) <= columns:
        return ""
    return f" textLength='{columns * CW:.1f}' lengthAdjust='spacingAndGlyphs'"


def _fit(name: str, columns: int) -> str:
    return name if len(name) <= columns else name[:columns - 1] + "…"


def sequence_svg(events: Sequence[Event], *, title: str = "", client: str = "client",
                 server: str = "server", width: int = LAYOUTS[0]) -> str:
    """The diagram as one standalone SVG document (see the module docstring), laid out
    for ``width`` user units: every label is wrapped to the characters that fit
    between the lifelines, and every box is sized to its text (monospace, so its
    width is known from its length)."""
    esc = html.escape
    # lifeline to edge: room for the "encrypted" mark; the narrowest layout keeps
    # every unit it can for the lines between the lifelines
    margin = 90 if width >= 700 else 24 if width >= 300 else 8
    inset = 14 if width >= 300 else 8  # a label's distance from the lifelines
    client_x, server_x = margin, width - margin
    columns = int((server_x - client_x - 2 * inset) / CW) - 2  # an arrow's label, glyph included
    pad = min(40, client_x - 6)  # a mark's box reaches this far past the lifelines
    mark_columns = int((server_x - client_x + 2 * pad - 20) / CW) - 1
    out_columns = int((width - 32) / CW)  # a head box's name, the title
    y = 6
    body: list[str] = []
    if title:
        for line in _wrap(title, out_columns):
            body.append(f"<text x='8' y='{y + 14}'{_squeeze(line, out_columns)} "
                        f"style='fill:{_FG};font-weight:700;white-space:pre'>{esc(line)}</text>")
            y += LINE_H
        y += 6
    # The heads: a box sized to its name over each lifeline, inside the diagram; the
    # server's goes on a second row when both do not fit side by side.
    names = [_fit(client, out_columns), _fit(server, out_columns)]
    widths = [len(n) * CW + 20 for n in names]
    left = max(6.0, client_x - widths[0] / 2)
    right = min(width - 6.0, server_x + widths[1] / 2)
    rows = [y, y if left + widths[0] + 10 <= right - widths[1] else y + 38]
    heads: list[str] = []
    for x0, w, hy, name in ((left, widths[0], rows[0], names[0]), (right - widths[1], widths[1], rows[1], names[1])):
        heads.append(f"<rect x='{x0:.1f}' y='{hy}' width='{w:.1f}' height='30' rx='6' style='fill:var(--ml-bg2,#eef1f4);"
                     f"stroke:{_FG}'/><text x='{x0 + w / 2:.1f}' y='{hy + 20}' text-anchor='middle' "
                     f"style='fill:{_FG};font-weight:700;font-family:var(--ml-mono,monospace)'>{esc(name)}</text>")
    tops = [rows[0] + 30, rows[1] + 30]
    y = rows[1] + 44
    tls_from: int | None = None  # where the lifelines become encrypted (drawn heavy from there)
    for step in steps(events):
        colour = _colour(step.colour)
        if step.kind == "mark":
            lines = [w for line in step.lines for w in _wrap(line, mark_columns)]
            if step.lines[0].startswith("◆ TLS started") and tls_from is None:
                tls_from = y
            h = LINE_H * len(lines) + 8
            body.append(f"<rect x='{client_x - pad}' y='{y}' width='{server_x - client_x + 2 * pad}' height='{h}' "
                        f"rx='6' style='fill:var(--ml-bg2,#eef1f4);stroke:{colour};stroke-width:1.5'/>")
            for k, line in enumerate(lines):
                body.append(f"<text x='{client_x - pad + 10}' y='{y + 17 + LINE_H * k}'{_squeeze(line, mark_columns)} "
                            f"style='fill:{colour};font-weight:600;font-family:var(--ml-mono,monospace);white-space:pre'>"
                            f"{esc(line)}</text>")
            y += h + GAP
            continue
        lines = [w for line in step.lines for w in _wrap(line, columns)]
        glyph = f"{step.glyph} " if step.glyph else ""
        for k, line in enumerate(lines):
            body.append(f"<text x='{client_x + inset}' y='{y + 14 + LINE_H * k}' class='mono'"
                        f"{_squeeze((glyph if k == 0 else '') + line, columns + len(glyph))} "
                        f"style='fill:{colour};font-family:var(--ml-mono,monospace);white-space:pre'>"
                        f"{esc((glyph if k == 0 else '') + line)}</text>")
        ay = y + LINE_H * len(lines) + 6
        x1, x2 = (client_x, server_x - 2) if step.kind == "C" else (server_x, client_x + 2)
        dash = ";stroke-dasharray:6 4" if step.kind == "S" else ""
        marker = ("seqC" if step.kind == "C" else f"seq{step.colour}") + str(width)
        body.append(f"<line x1='{x1}' y1='{ay}' x2='{x2}' y2='{ay}' style='stroke:{colour};stroke-width:2{dash}'"
                    f" marker-end='url(#{marker})'/>")
        y = ay + GAP
    height = y + (LINE_H + 10 if tls_from is not None else 10)
    markers = "".join(
        f"<marker id='seq{n}{width}' markerWidth='10' markerHeight='8' refX='9' refY='4' orient='auto'>"
        f"<path d='M0,0 L10,4 L0,8 z' style='fill:{_colour(k)}'/></marker>"
        for n, k in (("C", "client"), ("ok", "ok"), ("err", "err"), ("temp", "temp")))
    lifelines = "".join(
        f"<line x1='{x}' y1='{top}' x2='{x}' y2='{height - 6}' style='stroke:{_FG};stroke-width:1.5;"
        f"stroke-dasharray:2 3'/>" for x, top in ((client_x, tops[0]), (server_x, tops[1])))
    if tls_from is not None:
        lifelines += "".join(f"<line x1='{x}' y1='{tls_from}' x2='{x}' y2='{height - 6}' "
                             f"style='stroke:{_colour('event')};stroke-width:5;opacity:.55'/>"
                             for x in (client_x, server_x))
        lifelines += (f"<text x='{server_x - 10}' y='{height - 10}' text-anchor='end' "
                      f"style='fill:{_colour('event')}'>encrypted</text>")
    return (f"<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {width} {height}' role='img' "
            f"aria-label='sequence diagram {esc(title)}' style='{diagram_style(width)}'>"
            f"<defs>{markers}</defs><g style='font-family:var(--jp-ui-font-family,sans-serif);"
            f"font-size:{FONT}px'>{lifelines}{''.join(heads)}{''.join(body)}</g></svg>")


def _names(events: Sequence[Event]) -> tuple[str, str]:
    opened = next((e for e in events if e.kind == OPENED), None)
    if opened is None:
        return "client", "server"
    peer = str(opened.data.get("peer") or "")
    if opened.side == "server":
        return f"client {peer}" if peer else "client", opened.host
    return "client (lab)", peer or opened.host


class SequenceDiagram:
    """What ``%mail sequence`` returns: the SVG in a notebook, arrows as text elsewhere."""

    def __init__(self, events: Sequence[Event], *, title: str = "") -> None:
        self.events = list(events)
        self.title = title
        self.client, self.server = _names(self.events)
        self.saved: str | None = None

    def svg(self) -> str:
        return sequence_svg(self.events, title=self.title, client=self.client, server=self.server)

    def save(self, path: str | Path) -> str:
        """Write the standalone SVG (``.svg``); returns the path."""
        p = Path(path)
        p.write_text('<?xml version="1.0" encoding="UTF-8"?>\n' + self.svg(), encoding="utf-8")
        self.saved = str(p)
        return self.saved

    def text(self) -> str:
        out = [self.title, f"{self.client}  <->  {self.server}"]
        for step in steps(self.events):
            if step.kind == "mark":
                out.append("  == " + " / ".join(step.lines))
            else:
                arrow = "  --> " if step.kind == "C" else "  <-- "
                out += [(arrow if k == 0 else " " * len(arrow)) + line for k, line in enumerate(step.lines)]
        if self.saved:
            out.append(f"(saved to {self.saved})")
        return "\n".join(out)

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        saved = f"<div class='ml-note'>saved to <code>{html.escape(self.saved)}</code></div>" if self.saved else ""
        args = {"title": self.title, "client": self.client, "server": self.server}
        drawn = diagram(*((sequence_svg(self.events, width=w, **args), w) for w in LAYOUTS))
        return page(drawn + saved, kind="sequence")
