"""The class map: the class internet as the teacher's class DNS sees it.

A graph (every student domain on a circle around the class DNS, an arrow from each lab
to each lab it looked up, thicker for more lookups, labelled with the count) above two
tables (the domains with MX host, address, key, joined and last seen; the latest
lookups and UPDATEs). :class:`ClassMapView` renders a snapshot as text and HTML,
:func:`figure` as a matplotlib figure for slides, :class:`LiveClassMap` as a live
widget (the shared :class:`~maillab.views.live.LiveBlocks`) that sends what changed when
the class DNS answers or takes an UPDATE.
"""

from __future__ import annotations

import html
import math
import time
from typing import TYPE_CHECKING, Any

from ..classnet.map import ClassMap, DomainRow, class_map
from .publish import Throttle
from .relay import FigureView
from .theme import badge, breakable, clock_since, diagram, diagram_style, page, since

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..classnet.server import ClassDNS
    from .live import Block


def _ago(t: float | None, now: float) -> str:
    return "-" if t is None else since(now - t)


def _state(d: DomainRow, now: float) -> str:
    """A lab's state as the map says it: a lab that left says when ("left 6 s ago")."""
    return f"left {_ago(d.left, now)}" if d.state == "left" else d.state


def _where(d: DomainRow, now: float) -> str:
    """Under a lab's circle: its address, else what became of it ("left 05:12:03": a
    clock time stays true while the map is on screen, "6 s ago" would not)."""
    if d.addresses:
        return d.addresses[0]
    return f"left {time.strftime('%H:%M:%S', time.localtime(d.left))}" if d.state == "left" and d.left else d.state


def _short(domain: str, zone: str) -> str:
    return domain[: -len(zone) - 1] if domain.endswith("." + zone) else domain


def layout(m: ClassMap) -> dict[str, tuple[float, float]]:
    """Domain -> (x, y) on the unit circle (the class DNS at the centre), in name order."""
    names = [d.domain for d in m.domains]
    n = max(1, len(names))
    return {name: (math.cos(math.pi / 2 - 2 * math.pi * i / n), math.sin(math.pi / 2 - 2 * math.pi * i / n))
            for i, name in enumerate(names)}


def text(m: ClassMap) -> str:
    now = time.time()
    lines = [f"class {m.zone}: class DNS at {m.join}, every MX on port {m.mx_port};"
             f" {sum(d.registered for d in m.domains)} lab(s) registered, {m.queries} DNS message(s)"]
    lines.append(f"{'domain':<24} {'state':<14} {'MX':<30} {'address':<15} {'key':<8} {'joined':<12}"
                 f" {'last seen':<12} looked up")
    for d in m.domains:
        lines.append(f"{d.domain:<24} {_state(d, now):<14} {', '.join(d.mx) or '-':<30} {', '.join(d.addresses) or '-':<15}"
                     f" {d.key:<8} {_ago(d.joined, now):<12} {_ago(d.last_seen, now):<12} {d.looked_up}")
    if m.edges:
        lines.append("who looked up whom (MX queries):")
        lines += [f"  {e.asker} -> {e.target}  x{e.count}  ({_ago(e.last, now)})" for e in m.edges]
    if m.updates:
        lines.append("latest UPDATEs:")
        lines += [f"  {time.strftime('%H:%M:%S', time.localtime(t))} {who}: {rcode} {what}"
                  for t, who, rcode, what in m.updates[-6:]]
    return "\n".join(lines)


RADIUS = 0.34  # the labs' circle, of the picture's width (room outside it for addresses)
NARROW = 370  # units: the narrow layout, which fits 800 px at 150% zoom
NARROWEST = 224  # units: the presenter's scale at 800 px and 150% zoom (a smaller class DNS)


def widths(m: ClassMap) -> list[int]:
    """The graph's layouts, widest first (user units, 14 = the view's text): 560, 370
    for a narrow output (800 px at 150% zoom) and 224 for the presenter's scale
    there, each wide enough that neighbouring labs' circles do not touch."""
    n = len(m.domains)
    need = 45 / math.sin(math.pi / n) / RADIUS if n > 1 else 0
    return sorted({math.ceil(max(w, need)) for w in (560, NARROW, NARROWEST)}, reverse=True)


def _label_x(x: float, text: str, size: int) -> float:
    """Where a label centred under (or over) a lab at ``x`` goes: moved in from the
    picture's edge so that it is whole (13 units, about 7.8 a character)."""
    half = len(text) * 3.9 + 2
    return min(max(x, half), size - half)


def svg(m: ClassMap, size: int = 560) -> str:
    """The graph as SVG ``size`` units wide, drawn at the view's text size (never
    scaled down: its labels, 13-15 units, read as the text around them and grow with
    the presenter scale). :func:`body_blocks` shows the widest of :func:`widths` that fits."""
    pos = layout(m)
    c, r = size / 2, size * RADIUS
    def xy(name: str) -> tuple[float, float]:
        x, y = pos.get(name, (0.0, 0.0))
        return c + r * x, c - r * y

    # the picture is as tall as its nodes and their labels (a triangle of three labs
    # leaves no empty band under it)
    ys = [c] + [xy(d.domain)[1] for d in m.domains]
    top, bottom = min(ys) - 64, max(ys) + 64  # room for the addresses over and under the labs
    hub = 44 if size > NARROWEST else 30  # the class DNS's circle (narrowest: "class" over "DNS")
    arrow = f"ml-arrow-{size}"  # ids per layout: a hidden layout's markers do not draw
    parts = [f'<svg viewBox="0 {top:.0f} {size} {bottom - top:.0f}" xmlns="http://www.w3.org/2000/svg" role="img" '
             f'aria-label="class map of {html.escape(m.zone)}" style="{diagram_style(size)}">',
             # heads of one size in the picture's units: sized by the stroke (the
             # default), the busiest arrow's head was 28 units, over its lab's circle
             # and the class DNS in the presenter's narrowest layout (notebook 06)
             f'<defs><marker id="{arrow}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="10" '
             'markerHeight="10" markerUnits="userSpaceOnUse" orient="auto-start-reverse">'
             '<path d="M0,0 L10,5 L0,10 z" fill="currentColor"/></marker></defs>']
    for d in m.domains:  # spokes: each lab registered with the class DNS
        if d.registered:
            x, y = xy(d.domain)
            parts.append(f'<line x1="{c:.1f}" y1="{c:.1f}" x2="{x:.1f}" y2="{y:.1f}" stroke="currentColor" '
                         'stroke-opacity="0.15" stroke-dasharray="3 4"/>')
    top = max((e.count for e in m.edges), default=1)
    for e in m.edges:
        if e.asker not in pos or e.target not in pos:
            continue
        (x1, y1), (x2, y2) = xy(e.asker), xy(e.target)
        dx, dy = x2 - x1, y2 - y1
        dist = math.hypot(dx, dy) or 1
        ox, oy = -dy / dist * 7, dx / dist * 7  # both directions side by side
        sx, sy = x1 + dx / dist * 42 + ox, y1 + dy / dist * 42 + oy
        tx, ty = x2 - dx / dist * 42 + ox, y2 - dy / dist * 42 + oy
        width = 1 + 3 * math.log1p(e.count) / math.log1p(top)
        # The label beside its own arrow, on the far side from the arrow going back (the
        # two directions' labels never overlap, and no line runs through a label).
        # A quarter of the way from its asker, not half: away from the class DNS in the
        # middle (an arrow between neighbours passes close to it).
        lx, ly = sx + (tx - sx) / 4 + ox * 0.6, sy + (ty - sy) / 4 + oy * 1.6 + 4
        anchor = "start" if ox > 1.5 else "end" if ox < -1.5 else "middle"
        parts.append(f'<g class="ml-client" style="color:var(--ml-client)"><line x1="{sx:.1f}" y1="{sy:.1f}" '
                     f'x2="{tx:.1f}" y2="{ty:.1f}" stroke="currentColor" stroke-width="{width:.1f}" '
                     f'marker-end="url(#{arrow})"/>'
                     # a halo of the background: a line or circle under the count never hides it
                     f'<text x="{lx:.1f}" y="{ly:.1f}" font-size="13" style="paint-order:stroke;'
                     'stroke:var(--ml-bg,#fff);stroke-width:4px;stroke-linejoin:round" '
                     f'text-anchor="{anchor}">MX ×{e.count}</text></g>')
    # names inside the circles, addresses outside them (on the side away from the
    # centre, where no arrow runs): both at a size the back row reads
    hub_name = (f'<text x="{c}" y="{c + 5}" text-anchor="middle" font-size="14" font-weight="600">class DNS</text>'
                if hub == 44 else
                f'<text x="{c}" y="{c - 2}" text-anchor="middle" font-size="14" font-weight="600">class</text>'
                f'<text x="{c}" y="{c + 13}" text-anchor="middle" font-size="14" font-weight="600">DNS</text>')
    parts.append(f'<circle cx="{c}" cy="{c}" r="{hub}" fill="none" stroke="currentColor"/>' + hub_name
                 # (the narrow layout's arrows run where the address would: the heading says it)
                 + (f'<text x="{c}" y="{c + 61}" text-anchor="middle" font-size="13">{html.escape(m.join)}</text>'
                    if size > NARROW else ""))
    for d in m.domains:
        x, y = xy(d.domain)
        where = _where(d, m.taken)
        kind = ("err" if d.key == "revoked" else "ok" if d.state == "registered" else "temp" if d.state == "quiet"
                else "muted")
        parts.append(f'<g style="color:var(--ml-{kind})"><circle cx="{x:.1f}" cy="{y:.1f}" r="34" '
                     'fill="none" stroke="currentColor" stroke-width="2"/></g>'
                     f'<text x="{x:.1f}" y="{y + 5:.1f}" text-anchor="middle" font-size="15" font-weight="600">'
                     f'{html.escape(_short(d.domain, m.zone))}</text>'
                     f'<text x="{_label_x(x, where, size):.1f}" y="{y + 50 if y >= c else y - 42:.1f}" '
                     f'text-anchor="middle" font-size="13">{html.escape(where)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def body_html(m: ClassMap, *, live: bool = True) -> str:
    from .live import blocks_html

    return blocks_html(body_blocks(m, live=live))


def _when(t: float | None, now: float, live: bool) -> str:
    return "-" if t is None else clock_since(t, now, live=live)


def body_blocks(m: ClassMap, *, live: bool = True) -> list[tuple[str, Block]]:
    """The map as keyed blocks (what the live map sends when they change): the
    heading, the graph, the domains (a row per lab), the latest lookups and UPDATEs
    (newest first: a lookup sends its row). Joined, last seen and left are clock
    times, with "6 s ago" beside them in a ``live`` map, which the browser keeps true
    each second (theme.clock_since): the map itself is redrawn only when the class
    DNS answers or takes an UPDATE."""
    from .live import Block

    now = time.time()
    registered = sum(d.registered for d in m.domains)
    head = (f"<div><b>class {html.escape(m.zone)}</b> — class DNS <code>{html.escape(m.join)}</code>, "
            f"every lab's MX on port {m.mx_port}; {registered} lab(s) registered, {m.queries} DNS message(s)</div>")
    rows = []
    for d in m.domains:
        kind = {"registered": "ok", "quiet": "temp"}.get(d.state, "muted")
        state = (f"{badge(kind, 'left')} {_when(d.left, now, live)}" if d.state == "left" and d.left
                 else badge(kind, d.state))
        key = badge("err", "revoked") if d.key == "revoked" else html.escape(d.key)
        # data-label: in a narrow output each lab is a card (theme: .ml-cards)
        rows.append(f"<tr><td class='mono ml-card-head'>{html.escape(d.domain)}</td>"
                    f"<td data-label='state'>{state}</td>"
                    f"<td class='mono' data-label='MX'>{breakable(', '.join(d.mx) or '-')}</td>"
                    f"<td class='mono' data-label='address'>{html.escape(', '.join(d.addresses) or '-')}</td>"
                    f"<td data-label='key'>{key}</td><td data-label='joined'>{_when(d.joined, now, live)}</td>"
                    f"<td data-label='last seen'>{_when(d.last_seen, now, live)}</td>"
                    f"<td data-label='looked up'>{d.looked_up}</td></tr>")
    ids = [d.domain for d in m.domains]
    table = Block("<table class='ml-cards'><thead><tr><th>domain</th><th>state</th><th>MX</th><th>address</th>"
                  "<th>key</th><th>joined</th><th>last seen</th><th>looked up</th></tr></thead><tbody>",
                  rows or ["<tr><td colspan=8><i>no student yet: %mail class key NAME</i></td></tr>"],
                  "</tbody></table>", ids or [""])
    recent = [f"<tr><td>{time.strftime('%H:%M:%S', time.localtime(t))}</td><td class='mono'>"
              f"{html.escape(_short(who, m.zone))}</td><td class='mono'>{breakable(q)} {qt}</td>"
              f"<td>{badge('ok' if rc == 'NOERROR' else 'err', rc)}</td></tr>"
              for t, who, q, qt, rc in reversed(m.lookups)]
    updates = [f"<tr><td>{time.strftime('%H:%M:%S', time.localtime(t))}</td><td class='mono'>"
               f"{html.escape(who)}</td><td>{badge('ok' if rc == 'NOERROR' else 'err', rc)}</td>"
               f"<td class='mono ml-small'>{html.escape(what)}</td></tr>" for t, who, rc, what in reversed(m.updates)]
    return [("head", Block(head)), ("graph", Block(diagram(*((svg(m, w), w) for w in widths(m))))), ("domains", table),
            ("lookups", Block("<details open data-key='lookups'><summary>latest lookups <span class='ml-sum'>"
                              "(who asked what)</span></summary><table><tbody>", recent, "</tbody></table></details>",
                              list(reversed(m.lookups))) if recent else Block("")),
            ("updates", Block("<details data-key='updates'><summary>latest UPDATEs <span class='ml-sum'>"
                              "(accepted and refused)</span></summary><table><tbody>", updates,
                              "</tbody></table></details>", list(reversed(m.updates))) if updates else Block(""))]


class ClassMapView:
    """A snapshot of the class map (``%mail class map --static``)."""

    def __init__(self, m: ClassMap) -> None:
        self.map = m

    def __repr__(self) -> str:
        return text(self.map)

    def _repr_html_(self) -> str:
        return page(body_html(self.map, live=False), kind="classmap")  # a snapshot: clock times only

    def figure(self, **kwargs: Any) -> Figure:
        return figure(self.map, **kwargs)


def figure(m: ClassMap, *, size: float = 7.0) -> Figure:
    """The graph as a matplotlib figure (draw it on the kernel's thread)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle, FancyArrowPatch

    pos = layout(m)
    fig = Figure(figsize=(size, size))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.set_aspect("equal")
    ax.set_xlim(-1.45, 1.45)
    ax.set_ylim(-1.45, 1.5)
    ax.text(0, 1.4, f"class {m.zone}: who looked up whom", ha="center", fontsize=12, weight="bold")
    ax.add_patch(Circle((0, 0), 0.17, fill=False, lw=1.5))
    ax.text(0, 0.02, "class DNS", ha="center", va="center", fontsize=9, weight="bold")
    ax.text(0, -0.06, m.join, ha="center", va="center", fontsize=7)
    top = max((e.count for e in m.edges), default=1)
    for e in m.edges:
        if e.asker in pos and e.target in pos:
            arrow = FancyArrowPatch(pos[e.asker], pos[e.target], arrowstyle="-|>", mutation_scale=14,
                                    connectionstyle="arc3,rad=0.12", shrinkA=24, shrinkB=24, color="#005a9c",
                                    lw=1 + 3 * math.log1p(e.count) / math.log1p(top))
            ax.add_patch(arrow)
            (x1, y1), (x2, y2) = pos[e.asker], pos[e.target]
            ax.text((x1 + x2) / 2 + (y2 - y1) * 0.08, (y1 + y2) / 2 - (x2 - x1) * 0.08, f"MX ×{e.count}",
                    fontsize=7, ha="center", color="#005a9c")
    for d in m.domains:
        x, y = pos[d.domain]
        colour = ("#c2410c" if d.key == "revoked" else "#007a5a" if d.state == "registered"
                  else "#8a5a00" if d.state == "quiet" else "#57606a")
        ax.add_patch(Circle((x, y), 0.16, fill=False, lw=2, color=colour))
        ax.text(x, y + 0.02, _short(d.domain, m.zone), ha="center", va="center", fontsize=9, weight="bold")
        ax.text(x, y - 0.07, _where(d, m.taken), ha="center", va="center", fontsize=7)
    return fig


class ClassMapFigure(FigureView):
    """The class map figure as a cell result (PNG in a notebook)."""

    def __repr__(self) -> str:
        w, h = self.figure.get_size_inches()
        return f"<class map figure {w:.0f}x{h:.0f} in{', saved to ' + self.saved if self.saved else ''}>"


class LiveClassMap:
    """``%mail class map``: the map as a live widget, redrawn (at most every ``interval``
    seconds) whenever the class DNS answers a query or takes an UPDATE."""

    def __init__(self, server: ClassDNS, *, interval: float = 0.25) -> None:
        from .live import LiveBlocks

        self.server = server
        self.updates = 0
        self.map = class_map(server)
        # no bar: "follow new lines" and "one line per session" are a transcript's
        # (the map does not scroll, and its lookups and UPDATEs fold by their headings)
        self.widget = LiveBlocks(body_blocks(self.map), kind="classmap", follow=False, controls=False,
                                 max_height="none")
        self._throttle = Throttle(interval, self.refresh)
        server.listeners.append(self._throttle.poke)
        server.on_stop.append(self.finish)

    def refresh(self) -> None:
        self.map = class_map(self.server)
        if self.widget.show(body_blocks(self.map)):  # sends the blocks and rows that changed
            self.updates += 1

    def finish(self) -> None:
        """Stop following and show the last state now, whole (the class DNS stopped): a
        publish waiting on the throttle's timer, or a patch not yet saved as the widget's
        state (``LiveBlocks.sync`` waits for quiet), would be lost with the kernel."""
        for hooks, hook in ((self.server.listeners, self._throttle.poke), (self.server.on_stop, self.finish)):
            if hook in hooks:
                hooks.remove(hook)
        self._throttle.close()
        self.refresh()
        self.widget.sync()

    def close(self) -> None:
        self.finish()
        self.widget.close()

    def __repr__(self) -> str:
        return text(self.map)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        from .live import widget_bundle

        return widget_bundle(self.widget, text(self.map), **kwargs)
