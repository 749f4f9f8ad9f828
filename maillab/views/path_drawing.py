"""Drawing a :class:`~maillab.views.relay.RelayPath`: as HTML that lays itself out
in the width it gets (notebooks, the live relay view) and as a matplotlib figure
(slides, ``%mail relay --figure path.svg``).

The HTML drawing is a wrapping row: host boxes joined by arrows (CSS borders, so
they stretch with the text), each arrow labelled above with how the hop went
(protocol, TLS) and below with its time, result, the lab DNS question and answer
that chose it, and the attempts that failed on the way. A long path wraps onto
a second row instead of being cut off; labels wrap instead of ending in "...";
failed attempts are words under their arrow, so no line crosses a label. Hosts
are numbered so the order reads across rows. Text follows the presenter scale
(:mod:`maillab.views.theme`).
"""

from __future__ import annotations

import html
import textwrap
from typing import TYPE_CHECKING

from .live import Block, blocks_html
from .theme import PALETTE, breakable, page, words

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .relay import PathHop, RelayPath

_CSS = (
    "<style>"
    ".ml-view .ml-path{display:flex;flex-wrap:wrap;align-items:flex-start;row-gap:1.2em;margin:.4em 0}"
    ".ml-view .ml-path .node{flex:0 1 auto;max-width:17em;border:2px solid var(--ml-fg);"
    "border-radius:.45em;padding:.3em .6em;background:var(--ml-bg2)}"
    ".ml-view .ml-path .node .num{display:inline-block;min-width:1.4em;font-weight:700;color:var(--ml-muted)}"
    ".ml-view .ml-path .hop{flex:1 1 9em;min-width:8.5em;max-width:24em;padding:0 .4em;text-align:center}"
    ".ml-view .ml-path .arrow{position:relative;height:0;border-top:3px solid currentColor;"
    "margin:.45em .7em .45em 0}"
    ".ml-view .ml-path .arrow.dashed{border-top-style:dashed}"
    ".ml-view .ml-path .arrow::after{content:'';position:absolute;right:-.75em;top:calc(-.4em - 1.5px);"
    "border:.4em solid transparent;border-left:.75em solid currentColor;border-right:0}"
    ".ml-view .ml-path .lbl{font-weight:600}"
    ".ml-view .ml-path .sub{font-size:.9em}"
    ".ml-view .ml-path .dns{display:inline-block;text-align:left;margin:.35em 0;padding:.2em .5em;"
    "border:2px dotted var(--ml-event);border-radius:.45em;max-width:100%}"
    # a DNS line too long for the arrow's column goes on indented (never back at the
    # box's left edge, where "test" read as a line of its own), breaking at a space
    # before it breaks a name at its dots (theme: .ml-word)
    ".ml-view .ml-path .dns>.mono{padding-left:1.2em;text-indent:-1.2em}"
    ".ml-view .ml-path .fail{text-align:left;font-size:.9em;margin-top:.3em}"
    "</style>"
)


def _tls_words(hop: PathHop) -> str:
    """TLS version, how the next hop was authenticated, a downgrade, the sender's policy."""
    if hop.encrypted is None:
        return ""
    words = [(hop.tls or "TLS") if hop.encrypted else "no TLS"]
    if hop.encrypted and hop.policy:
        words.append(f"verified: {hop.verified}" if hop.verified else "unverified")
    if hop.downgraded:
        words.append("DOWNGRADED: STARTTLS stripped")
    elif hop.stripped:
        words.append("STARTTLS stripped, so the policy sent nothing")
    if hop.policy:
        words.append(f"policy {hop.policy}")
    return ", ".join(words)


def _delay(seconds: float | None) -> str:
    from .hop_table import _delay as fmt

    return fmt(seconds).lstrip("+") if seconds is not None else ""


def _kind(hop: PathHop) -> tuple[str, str]:
    """(palette kind, glyph) of an arrow: never colour alone."""
    if hop.ok is False:
        return "err", "✗"
    if hop.ok is None:
        return "temp", "↻"
    if hop.downgraded:
        return "err", "⚠"
    if hop.encrypted is False:
        return "muted", "⚠"
    return ("ok", "✓") if hop.encrypted else ("muted", "→")


def _dns_block(hops: list[PathHop]) -> str:
    """The lab DNS as a node on the arrow: the MX question, and each answer used."""
    answers = list(dict.fromkeys(h.dns for h in hops if h.dns))
    if not answers:
        return ""
    question = answers[0].split()[0]

    def preference(answer: str) -> int:
        words = answer.split()
        return int(words[2]) if len(words) > 2 and words[1] == "MX" and words[2].isdigit() else 0

    # names wrap after a dot only when the arrow's column is narrower than the name (theme.words)
    lines = [f"<div><b>◆ lab DNS</b></div><div class='mono'>? {words(question)} MX</div>"]
    for a in sorted(answers, key=preference):
        rest = a[len(question):].strip() if a.startswith(question + " ") else a
        name, _, address = rest.partition(" -> ")
        lines.append(f"<div class='mono'>→ {words(name)}"
                     + (f"<br>&nbsp;&nbsp;A {html.escape(address)}" if address else "") + "</div>")
    return f"<div class='dns ml-event'>{''.join(lines)}</div>"


def _side_item(path: RelayPath, hop: PathHop) -> str:
    kind, glyph = _kind(hop)
    node = path.nodes[hop.target]
    where = node.name + (f" ({node.address})" if node.address else "")
    how = ", ".join(p for p in (hop.protocol or "", _tls_words(hop), _delay(hop.seconds)) if p)
    what = " — ".join(p for p in (how, hop.result or ("failed" if hop.ok is False else "pending")) if p)
    verb = "tried" if hop.ok is False else "next"
    return (f"<div class='fail'><span class='ml-badge ml-{kind}'>{glyph} {verb}</span> "
            f"<b>{breakable(where)}</b>: {breakable(what)}</div>")


def _connector(path: RelayPath, forward: PathHop | None, side: list[PathHop]) -> str:
    parts = []
    if forward is not None:
        kind, glyph = _kind(forward)
        label = ", ".join(p for p in (forward.protocol or "", _tls_words(forward)) if p)
        dashed = " dashed" if forward.ok is not True or forward.encrypted is False else ""
        parts.append(f"<div class='lbl ml-{kind}'>{glyph} {html.escape(label)}</div>"
                     f"<div class='arrow ml-{kind}{dashed}'></div>")
        below = [b for b in (_delay(forward.seconds), forward.result) if b]
        parts += [f"<div class='sub'>{html.escape(b)}</div>" for b in below]
    else:  # every attempt failed so far: a broken arrow, the attempts under it
        parts.append("<div class='lbl ml-err'>✗ no exchanger took it</div><div class='arrow ml-err dashed'></div>")
    parts.append(_dns_block(([forward] if forward else []) + side))
    parts += [_side_item(path, h) for h in side]
    return f"<div class='hop'>{''.join(parts)}</div>"


def path_diagram(path: RelayPath) -> str:
    """The path as wrapping HTML (see the module docstring)."""
    return _CSS + blocks_html(_diagram_blocks(path))


def _diagram_blocks(path: RelayPath) -> list[tuple[str, Block]]:
    order: list[int] = []
    for hop in path.hops:
        for i in (hop.source, hop.target):
            if i not in order and not path.nodes[i].side:
                order.append(i)
    used: set[int] = set()
    out = []
    for k, idx in enumerate(order):
        node = path.nodes[idx]
        addr = (f"<br><span class='mono ml-muted'>{html.escape(node.address)}</span>"
                if node.address and node.address != node.name.strip("[]") else "")
        # a long host name wraps after a dot inside its box (max 17em), never mid-word
        out.append(f"<div class='node'><span class='num'>{k + 1}</span><b>{breakable(node.name)}</b>{addr}</div>")
        nxt = order[k + 1] if k + 1 < len(order) else None
        forward = next((h for h in path.hops if h.source == idx and h.target == nxt and nxt is not None), None)
        side = [h for h in path.hops if h.source == idx and path.nodes[h.target].side]
        if forward is None and not side:
            continue
        used.update(id(h) for h in ([forward] if forward else []) + side)
        out.append(_connector(path, forward, side))
    others = [h for h in path.hops if id(h) not in used and h.source != h.target]
    extra = "".join(
        f"<div class='ml-note'>also: {html.escape(path.nodes[h.source].name)} → "
        f"{html.escape(path.nodes[h.target].name)} {html.escape(h.label())}</div>" for h in others)
    state = f" <span class='ml-muted'>[{html.escape(path.state)}]</span>" if path.state else ""
    # Hosts and arrows are rows by position: a hop that went on or a new host sends
    # those boxes, not the path.
    return [("title", Block(f"<div><b>{html.escape(path.title)}</b>{state}</div>")),
            ("path", Block("<div class='ml-path' data-rows>", out or ["<i>no hops yet</i>"], "</div>",
                           tuple(range(len(out or [None]))))),
            ("also", Block(f"<div>{extra}</div>"))]


def path_table(path: RelayPath) -> str:
    return blocks_html(_table_blocks(path))


def _table_blocks(path: RelayPath) -> list[tuple[str, Block]]:
    rows = []
    for n, hop in enumerate(path.hops, start=1):
        src, dst = path.nodes[hop.source], path.nodes[hop.target]
        kind, glyph = _kind(hop)
        status = {True: "ok", False: "failed", None: "in progress"}[hop.ok]
        cells = [str(n), src.name, dst.name, hop.protocol or "", _tls_words(hop) or "?",
                 _delay(hop.seconds), hop.dns or "", hop.result or status]
        tds = "".join(f"<td>{html.escape(c)}</td>" for c in cells[:-1])
        rows.append(f"<tr>{tds}<td class='ml-{kind}'>{glyph} {html.escape(cells[-1])}</td></tr>")
    head = "".join(f"<th>{t}</th>" for t in ("#", "from", "to", "with", "TLS", "time", "DNS answer used",
                                               "result"))
    notes = "".join(f"<div class='ml-note'>note: {html.escape(n)}</div>" for n in path.notes)
    # data-key: a reader who opened the table keeps it open while the path grows
    return [("hops", Block(f"<details data-key='hops'><summary>every hop as a table</summary><table class='ml-small'>"
                           f"<thead><tr>{head}</tr></thead><tbody>", rows, "</tbody></table></details>",
                           tuple(range(len(rows))))),
            ("notes", Block(f"<div>{notes}</div>"))]


def path_blocks(path: RelayPath) -> tuple[str, list[tuple[str, Block]]]:
    """:func:`path_body` as the live view sends it: the stylesheet (its head) and
    keyed blocks (title, the hosts and arrows, the hop table, the notes)."""
    return _CSS, _diagram_blocks(path) + _table_blocks(path)


def path_body(path: RelayPath) -> str:
    """Diagram and table, without the stylesheet (what the live view shows)."""
    return path_diagram(path) + path_table(path)


def path_html(path: RelayPath) -> str:
    return page(path_body(path), kind="relay")


# -- matplotlib (slides) ---------------------------------------------------------------

def _layout(path: RelayPath) -> dict[int, tuple[int, int]]:
    """Main-path nodes left to right in order of first appearance; side nodes (failed
    attempts) in rows under the host that tried them."""
    pos: dict[int, tuple[int, int]] = {}
    col = 0
    side_rows: dict[int, int] = {}
    for hop in path.hops:
        for idx in (hop.source, hop.target):
            if idx in pos:
                continue
            if path.nodes[idx].side:  # straight under its source: its line crosses no label
                c = pos.get(hop.source, (col, 0))[0]
                side_rows[c] = side_rows.get(c, 0) + 1
                pos[idx] = (c, side_rows[c])
            else:
                pos[idx] = (col, 0)
                col += 1
    for idx in range(len(path.nodes)):
        if idx not in pos:
            pos[idx] = (col, 0)
            col += 1
    return pos


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width, break_long_words=True)) or text


def figure(path: RelayPath, *, width: float | None = None) -> Figure:
    """The path as a matplotlib Figure (``fig.savefig("path.png")`` / ``.svg``).

    Built with the object API (no pyplot state), so it neither shows itself twice
    in a notebook nor needs a GUI backend. Call it on the kernel's thread. Labels
    wrap (never "..."); the lab DNS is a node above the hop it chose, with the MX
    question and answer on its arrow.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    from .fonts import figure_font_family, missing_font_note

    ok, fail, pend, plain = (PALETTE[k][0] for k in ("ok", "err", "temp", "muted"))
    ink, event = "#1f2328", PALETTE["event"][0]
    pos = _layout(path)
    cols = max((c for c, _ in pos.values()), default=0) + 1
    rows = max((r for _, r in pos.values()), default=0) + 1
    dns_hops = [h for h in path.hops if h.dns and h.ok]
    bw, bh, step = 2.1, 0.6, 3.6
    span = (cols - 1) * step + bw + 0.4
    top = 2.2 if dns_hops else 1.0
    fig = Figure(figsize=(width or max(7.0, span * 0.95), 1.6 + 1.6 * rows + (1.2 if dns_hops else 0)))
    fig.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.02)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_xlim(-0.2, span - 0.2)
    ax.set_ylim(-(rows - 1) * 1.7 - 1.3, top)
    family = figure_font_family()
    title = path.title + (f"  [{path.state}]" if path.state else "")
    ax.set_title(_wrap(title, int(span * 14)), loc="left", fontsize=11, family=family)

    def xy(i: int) -> tuple[float, float]:
        c, r = pos[i]
        return c * step, -r * 1.7

    def say(x: float, y: float, text: str, **kw: object) -> None:
        ax.text(x, y, text, family=family, **kw)

    for hop in path.hops:
        (xs, ys), (xt, yt) = xy(hop.source), xy(hop.target)
        colour = (fail if hop.ok is False or hop.downgraded else pend if hop.ok is None
                  else ok if hop.encrypted else plain)
        style = "-" if hop.ok is True and hop.encrypted is not False else "--"
        down = yt < ys
        back = xt <= xs and hop.source != hop.target and not down
        deep = down and pos[hop.target][1] > 1  # a second failed attempt: around the first's box
        if back:  # a hop back to an earlier host (e.g. through a content filter): arc below
            start, end, bend = (xs + bw / 2, ys), (xt + bw / 2, yt), "arc3,rad=-0.4"
        elif down:  # a failed attempt: straight down from the source box to its own box
            start, end = (xs + bw / 2, ys), (xt + bw / 2, yt + bh)
            bend = "arc3,rad=0.55" if deep else "arc3,rad=0"
        else:
            start, end, bend = (xs + bw, ys + bh / 2), (xt, yt + bh / 2), "arc3,rad=0"
        if hop.source != hop.target:
            ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, color=colour,
                                         linestyle=style, linewidth=1.6, connectionstyle=bend))
        glyph = {False: "✗ ", None: "↻ "}.get(hop.ok, "")
        label = glyph + "\n".join(_wrap(part, 20) for part in hop.label().split(", ", 1))
        below = "\n".join(_wrap(b, 30) for b in (hop.result,) if b)
        if down:  # label beside the arrow, its story under its own box: nothing crosses
            if deep:
                say(xt - 0.45, yt + bh + 0.55, label, ha="right", va="center", fontsize=8, color=colour)
            else:
                say(xt + bw / 2 + 0.1, (ys + yt + bh) / 2, label, ha="left", va="center", fontsize=8,
                    color=colour)
            if below:
                say(xt + bw / 2, yt - 0.08, below, ha="center", va="top", fontsize=7.5, color=plain)
        elif back:
            mx = (start[0] + end[0]) / 2
            say(mx, ys - 0.2 * abs(end[0] - start[0]) - 0.05, label, ha="center", va="top", fontsize=8,
                color=colour)
        else:
            mx = (start[0] + end[0]) / 2
            say(mx, start[1] + 0.08, label, ha="center", va="bottom", fontsize=8, color=colour)
            if below:
                say(mx, min(ys, yt) - 0.08, below, ha="center", va="top", fontsize=7.5, color=plain)
    for hop in dns_hops:  # the lab DNS as a node over the hop it chose
        (xs, ys), (xt, _yt) = xy(hop.source), xy(hop.target)
        dx = (xs + bw + xt) / 2 - bw / 2
        dy = ys + 1.45
        ax.add_patch(FancyBboxPatch((dx, dy), bw, bh * 0.8, boxstyle="round,pad=0.02,rounding_size=0.08",
                                    facecolor="white", edgecolor=event, linestyle=":"))
        say(dx + bw / 2, dy + bh * 0.4, "lab DNS", ha="center", va="center", fontsize=9, color=event)
        domain = hop.dns.split()[0]
        ax.add_patch(FancyArrowPatch((xs + bw / 2, ys + bh), (dx, dy + bh * 0.4), arrowstyle="<|-|>",
                                     mutation_scale=10, color=event, linestyle=":", linewidth=1.2))
        # the question and the answer on lines of their own, as the HTML view shows them
        # (textwrap on the whole text ran them together)
        label = "\n".join(_wrap(line, 40) for line in (f"? {domain} MX", f"→ {hop.dns[len(domain):].strip()}"))
        say(dx + bw + 0.1, dy + bh * 0.4, label, ha="left", va="center", fontsize=7.5, color=event)
    for i, node in enumerate(path.nodes):
        x0, y0 = xy(i)
        ax.add_patch(FancyBboxPatch((x0, y0), bw, bh, boxstyle="round,pad=0.02,rounding_size=0.08",
                                    facecolor="#f6f8fa", edgecolor=fail if node.side else ink))
        say(x0 + bw / 2, y0 + bh * 0.62, _wrap(("✗ " if node.side else "") + node.name, 26), ha="center",
            va="center", fontsize=8.5)
        if node.address:
            say(x0 + bw / 2, y0 + bh * 0.2, node.address, ha="center", va="center", fontsize=7, color=plain)
    missing = missing_font_note(path.title + " ".join(n.name for n in path.nodes))
    if missing:
        fig.text(0.01, 0.01, missing, fontsize=8, color=fail)
    return fig
