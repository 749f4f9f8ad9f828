"""The hop table of a Received chain: one row per hop, first hop first (the header
is read bottom-up), as aligned text and as HTML in the shared view style.

The rows come from :mod:`maillab.relay.hops` (which parses Postfix, Exim,
Sendmail, qmail, Exchange, Gmail and our own Received fields).
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from ..relay.hops import Hop, HopTable
from .theme import badge, breakable, card_row, page

HOP_COLUMNS = ("hop", "from", "by", "with", "TLS", "id", "for", "time (UTC)", "delay")


def _hop_cells(hop: Hop) -> list[str]:
    if not hop.parsed:
        return [str(hop.number), "unparsed:", hop.raw or "(empty Received field)", "", "", "", "", "", ""]
    return [
        str(hop.number),
        " ".join(_from_parts(hop)),
        hop.by or "",
        hop.with_ or "",
        hop.tls_summary,
        hop.id or "",
        hop.for_ or "",
        _utc(hop.time),
        _delay(hop.delay),
    ]


def _from_parts(hop: Hop) -> list[str]:
    """The ``from`` cell: the host, its address, the name it gave in HELO (each one
    line in the HTML table, so a wide table keeps host names whole)."""
    parts = [hop.from_host] if hop.from_host else []
    if hop.from_ip and hop.from_ip != (hop.from_host or "").strip("[]"):
        parts.append(f"[{hop.from_ip}]")
    if hop.helo and hop.helo != hop.from_host:
        parts.append(f"helo={hop.helo}")
    return parts


def _tls_html(hop: Hop) -> str:
    """The TLS cell: the version as a badge, the cipher on the next line (the
    table's widest word otherwise, which squeezed host names onto two lines)."""
    kind = "ok" if hop.encrypted else ("err" if hop.encrypted is False else "muted")
    version, _, cipher = hop.tls_summary.partition(" ")
    if hop.encrypted is None:
        return html.escape(hop.tls_summary)
    return badge(kind, version) + (f"<br><span class='ml-{kind}'>{breakable(cipher)}</span>" if cipher else "")


def _utc(t: datetime | None) -> str:
    if t is None:
        return ""
    return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _delay(seconds: float | None) -> str:
    if seconds is None:
        return ""
    sign = "-" if seconds < 0 else "+"
    s = abs(seconds)
    if 0 < s < 1:
        text = f"{s * 1000:.0f} ms"
    elif s < 60:
        text = f"{s:.3g} s" if s < 10 else f"{s:.0f} s"
    elif s < 3600:
        text = f"{s // 60:.0f} min {s % 60:.0f} s"
    else:
        text = f"{s / 3600:.1f} h"
    return sign + text


def _aligned(rows: list[list[str]], titles: Iterable[str]) -> str:
    cells = [list(titles), *rows]
    widths = [min(48, max(len(r[i]) for r in cells)) for i in range(len(cells[0]))]
    out = []
    for n, r in enumerate(cells):
        out.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def hop_table_text(table: HopTable) -> str:
    """The hop table as aligned text, first hop first (read the header bottom-up)."""
    if not table.hops:
        return "no Received header fields: this message has not crossed any server yet"
    lines = [_aligned([_hop_cells(h) for h in table], HOP_COLUMNS)]
    if table.total_delay is not None:
        lines.append(f"total: {_delay(table.total_delay)} from the first to the last dated hop")
    for h in table:
        for p in h.problems if h.parsed else []:
            lines.append(f"hop {h.number}: {p}")
    negative = [h.number for h in table if h.delay is not None and h.delay < 0]
    if negative:
        lines.append("negative delay at hop " + ", ".join(map(str, negative))
                     + ": that server's clock is behind the previous one's")
    return "\n".join(lines)


def hop_table_body(table: HopTable) -> str:
    """The hop table's HTML without the stylesheet (see :func:`hop_table_html`)."""
    if not table.hops:
        return "<i>no Received header fields: this message has not crossed any server yet</i>"
    head = "".join(f"<th>{html.escape(t)}</th>" for t in HOP_COLUMNS)
    body = []
    # In a narrow output (800 px, a projector's zoom) each hop becomes a card of
    # labelled facts (theme: .ml-cards); host names and addresses wrap after a dot.
    number = "<td class='ml-card-head' data-label='hop'>{}</td>"
    for h in table:
        cells = _hop_cells(h)
        if not h.parsed:
            body.append(
                f"<tr>{number.format(h.number)}<td colspan='8'>{badge('temp', 'unparsed:')} "
                f"<code>{html.escape(h.raw) or '(empty Received field)'}</code></td></tr>")
            continue
        cells_html = [breakable(c) if i in (2, 6) else html.escape(c) for i, c in enumerate(cells)]  # hosts
        cells_html[1] = "<br>".join(breakable(p) for p in _from_parts(h))
        cells_html[4] = _tls_html(h)
        body.append(card_row(cells_html[0], list(zip(HOP_COLUMNS[1:], cells_html[1:], strict=True)),
                             head_label="hop"))
    notes = []
    if table.total_delay is not None:
        notes.append(f"total {html.escape(_delay(table.total_delay))} from the first to the last dated hop")
    notes.append("read bottom-up: hop 1 is the lowest Received line")
    return (f"<table class='mono ml-small ml-cards'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table><div class='ml-note'>{'; '.join(notes)}</div>")


def hop_table_html(table: HopTable) -> str:
    return page(hop_table_body(table), kind="hops")


def register_display(ipython: Any) -> None:
    """Show a :class:`~maillab.relay.hops.HopTable` a cell returns as this table
    (the model does not know its views; the notebook extension links them here)."""
    formatters = ipython.display_formatter.formatters
    formatters["text/html"].for_type(HopTable, hop_table_html)
    formatters["text/plain"].for_type(HopTable, lambda table, p, cycle: p.text(hop_table_text(table)))
