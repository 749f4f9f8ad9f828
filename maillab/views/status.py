"""The port/TLS table: which lab service listens where, next to the standard port
it stands in for, how it does TLS and how many sessions it has.

Rows come from :meth:`maillab.lab.Lab.status`; this module only renders them, as
HTML in a notebook and as an aligned text table in a terminal (``maillab serve``).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

#: column title -> row key
COLUMNS = (
    ("service", "service"),
    ("host", "host"),
    ("address", "address"),
    ("lab port", "lab_port"),
    ("standard port", "standard_port"),
    ("TLS", "tls"),
    ("cert", "cert"),
    ("state", "state"),
    ("sessions", "sessions"),
)

#: What each TLS mode means, for the table's footnote.
TLS_MODES = {
    "starttls": "plaintext first, upgraded by STARTTLS/STLS (RFC 3207, 2595)",
    "implicit": "TLS from the first byte (RFC 8314)",
    "none": "no TLS",
}


def text_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]] = COLUMNS) -> str:
    """An aligned plain-text table (for terminals and tests)."""
    cells = [[title for title, _ in columns]]
    for row in rows:
        cells.append([_cell(row, key) for _, key in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key, "")
    if key == "sessions":
        total = row.get("total")
        return f"{value} open / {total}" if total is not None else str(value)
    return "" if value is None else str(value)


class StatusTable:
    """What ``%mail status`` returns."""

    def __init__(self, rows: Sequence[dict[str, Any]], *, ca_path: str | None = None,
                 directory: str | None = None, note: str | None = None) -> None:
        self.rows = list(rows)
        self.note = note
        self.ca_path = ca_path
        self.directory = directory

    def __repr__(self) -> str:
        if not self.rows:
            return "the lab is not running (%mail start)"
        out = [self.note] if self.note else []
        out.append(text_table(self.rows))
        if self.ca_path:
            out.append(f"CA certificate: {self.ca_path}")
        if self.directory:
            out.append(f"lab directory: {self.directory}")
        return "\n".join(out)

    def _repr_html_(self) -> str:
        from .theme import page

        return page(self._html_body(), kind="status")

    def _html_body(self) -> str:
        from .theme import card_row

        if not self.rows:
            return "<i>the lab is not running (<code>%mail start</code>)</i>"
        # One group per host (its name, and whose certificate, in a row of its own):
        # seven short columns fit a narrow notebook where nine did not.
        columns = [(t, k) for t, k in COLUMNS if k not in ("host", "cert")]
        titles = [t for t, _ in columns]
        head = "".join(f"<th>{html.escape(t)}</th>" for t in titles)
        body = []
        host = None
        for row in self.rows:
            if row.get("host") != host:
                host = row.get("host")
                cert = f" · certificate: {row['cert']}" if row.get("cert") else ""
                body.append(f"<tr class='grp'><td class='ml-card-head' colspan='{len(columns)}'>"
                            f"<b>{html.escape(str(host))}</b>"
                            f"<span class='ml-muted'>{html.escape(cert)}</span></td></tr>")
            state = str(row.get("state", ""))
            kind = "ok" if state == "running" else "err"
            tds = []
            for _, key in columns:
                text = html.escape(_cell(row, key))
                if key == "state":
                    text = f"<span class='ml-{kind}'>{'✓' if kind == 'ok' else '✗'}\u00a0{text}</span>"
                elif key == "tls":
                    text = f"<span title='{html.escape(TLS_MODES.get(row.get('tls', ''), ''))}'>{text}</span>"
                tds.append(text)
            # an address broken mid-number misreads: no cell wraps; at 150% zoom each
            # service is a card instead (theme: ml-cards-narrow)
            body.append(card_row(tds[0], list(zip(titles[1:], tds[1:], strict=True)), head_label=titles[0],
                                 classes=dict.fromkeys(titles, "nw")))
        foot = []
        if self.note:
            foot.append(_note_html(self.note))
        if self.ca_path:
            foot.append(f"CA certificate: <code>{html.escape(self.ca_path)}</code>")
        if self.directory:
            foot.append(f"lab directory: <code>{html.escape(self.directory)}</code>")
        modes = "; ".join(f"<b>{m}</b>: {html.escape(d)}" for m, d in TLS_MODES.items())
        foot.append(f"TLS modes: {modes}")
        return (f"<table class='ml-cards-narrow'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
                f"<div class='ml-small'>{'<br>'.join(foot)}</div>")


class StartSummary:
    """What ``%mail start`` returns: a few lines, not the whole port table (that is
    ``%mail status``; showing it twice in a row buried the lesson)."""

    MAIN = ("smtp", "submission", "pop3", "imap", "dns")

    def __init__(self, rows: Sequence[dict[str, Any]], *, directory: str | None = None,
                 note: str | None = None) -> None:
        self.rows = list(rows)
        self.directory = directory
        self.note = note

    def _lines(self) -> tuple[str, str]:
        hosts = list(dict.fromkeys(r["host"] for r in self.rows if r.get("host") and r["service"] == "smtp"))
        head = (f"maillab is running in this kernel: {len(hosts)} mail hosts, {len(self.rows)} services"
                + (f"; {self.note}" if self.note else "") + ".")
        first = hosts[0] if hosts else ""
        ports = []
        for name in self.MAIN:
            row = next((r for r in self.rows if r["service"] == name and r["host"] in (first, "")), None)
            row = row or next((r for r in self.rows if r["service"] == name), None)
            if row:
                ports.append(f"{name} {row['lab_port']} (standard {row['standard_port']})")
        where = f"{first} {self.rows[0]['address']}: " if self.rows else ""
        return head, where + ", ".join(ports)

    def __repr__(self) -> str:
        if not self.rows:
            return "the lab is not running (%mail start)"
        head, ports = self._lines()
        tail = f"\nlab directory: {self.directory}" if self.directory else ""
        return f"{head}\n{ports}\n%mail status: every host and port, with TLS modes and sessions{tail}"

    def _repr_html_(self) -> str:
        from .theme import badge, page

        if not self.rows:
            return page("<i>the lab is not running (<code>%mail start</code>)</i>")
        head, ports = self._lines()
        return page(f"<div>{badge('ok', head)}</div><div class='mono'>{html.escape(ports)}</div>"
                    "<div class='ml-note'><code>%mail status</code>: every host and port, with TLS modes"
                    " and sessions</div>", kind="start")


def _note_html(note: str) -> str:
    """The note line by line: its indented lines (the DNS records a join registered) as
    protocol text, one record a line (run together in one bold paragraph, "…60 IN MX 10
    mail.alice.class.test. mail.alice.class.test. 60 IN A…" read as one record)."""
    from .theme import text_lines

    parts: list[str] = []
    records: list[str] = []
    for line in [*note.splitlines(), ""]:
        if line.startswith("  "):
            records.append(line.strip())
            continue
        if records:
            parts.append(text_lines("\n".join(records)))
            records.clear()
        if line:
            parts.append(f"<div><b>{html.escape(line)}</b></div>")
    return "".join(parts)
