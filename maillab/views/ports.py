"""The port/TLS map: which port is which, on every lab host, and what TLS each does.

One row per service (smtp, submission, smtps, pop3, pop3s, imap, imaps), one column
per lab host. A row says the standard port and the lab port that stands in for it,
the TLS mode drawn as a colour *and* a glyph (so it reads in black and white and for
colour-blind eyes), whether AUTH is offered before TLS, whether a plaintext login is
refused, and the lowest TLS version. Each host's cell shows its address and port and
the sessions seen so far with what each negotiated (TLS version and cipher, or
"plaintext"). Selecting a service shows its host's certificate field by field.

:func:`port_map` builds the rows from the lab's services, policies and events;
:class:`PortMap` renders them as text and HTML, :func:`figure` as a matplotlib
figure, :class:`LivePortMap` as a widget that follows the event stream.
"""

from __future__ import annotations

import functools
import html
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..events import CLOSED, OPENED, TLS
from ..tls import CERT_FIELD_TITLES, MINIMUM_VERSION_TEXT, cert_fields
from .live import Block, LiveBlocks, LiveHTML, blocks_html, widget_bundle
from .publish import Throttle
from .theme import breakable, card_row, page

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..lab import Lab

#: TLS mode -> (glyph, figure colour, label). Glyphs differ in shape, colours in lightness
#: too (Okabe-Ito hues, as :mod:`.theme`); HTML uses the theme's classes (:data:`KINDS`).
MODES = {
    "implicit": ("●", "#007a5a", "implicit TLS"),
    "starttls": ("◐", "#8a5a00", "STARTTLS"),
    "none": ("○", "#c2410c", "plaintext"),
}
KINDS = {"implicit": "ok", "starttls": "temp", "none": "err"}
MODE_TEXT = {
    "implicit": "TLS from the first byte (RFC 8314: prefer it for clients)",
    "starttls": "plaintext first, upgraded by STARTTLS / STLS (RFC 3207, RFC 2595)",
    "none": "no TLS at all",
}
#: Sessions listed per host and service (the newest); the count covers all.
SESSIONS_SHOWN = 4
#: What each service is for, in a few words.
ROLES = {
    "smtp": "MX: mail between servers",
    "submission": "clients send mail",
    "smtps": "submission, implicit TLS",
    "pop3": "download mail",
    "pop3s": "POP3, implicit TLS",
    "imap": "mail stays on the server",
    "imaps": "IMAP, implicit TLS",
}


@dataclass
class SessionSeen:
    session: str
    peer: str
    negotiated: str  # "TLSv1.3 TLS_AES_256_GCM_SHA384" or "plaintext"
    open: bool


@dataclass
class HostCell:
    host: str
    address: str
    port: int
    state: str
    sessions: list[SessionSeen] = field(default_factory=list)
    total: int = 0
    middlebox: str | None = None  # "STARTTLS-stripping middlebox" / "passive tap" in front of it


@dataclass
class ServiceRow:
    service: str
    role: str
    standard_port: int
    lab_port: str  # one port, or "2525 / 2526" when hosts differ
    tls: str
    auth_before_tls: str
    plaintext_login_refused: str
    min_tls: str
    cells: dict[str, HostCell] = field(default_factory=dict)  # host -> cell


def auth_policy(lab: Lab, service: str) -> tuple[str, str]:
    """(AUTH offered before TLS?, plaintext login refused?) for ``service``, as the
    servers decide it now."""
    from ..topology import tls_mode

    if tls_mode(service) == "implicit":
        return "— (TLS first)", "— (TLS first)"
    if service == "smtp":
        return "no AUTH (MX port)", "— (no AUTH)"
    from ..plaintext import plaintext_auth_allowed

    if service == "submission":
        if plaintext_auth_allowed(lab, service):
            return "YES: teacher switch on", "no"
        code = "530 5.7.0" if lab.policy.require_tls else "538 5.7.11"
        return "no", f"yes ({code})"
    if plaintext_auth_allowed(lab, service):
        return "yes (lab: loopback only)", "no"
    answer = "-ERR [AUTH], no USER in CAPA" if service == "pop3" else "LOGINDISABLED, NO [PRIVACYREQUIRED]"
    return "no", f"yes ({answer})"


class SessionsSeen:
    """The sessions each server has seen, (host, service) -> the newest few and a count.
    :meth:`update` reads only the events since the last call, so a live map under load
    does not scan the whole event log on every refresh."""

    def __init__(self) -> None:
        self.last = 0  # the last event seq read
        self.by_key: dict[tuple[str, str], deque[SessionSeen]] = {}
        self.total: dict[tuple[str, str], int] = {}
        self._open: dict[str, SessionSeen] = {}

    def update(self, lab: Lab) -> SessionsSeen:
        events = lab.events.events(kinds=(OPENED, TLS, CLOSED), since=self.last)
        for e in events:
            if e.side != "server" or e.protocol == "wire":  # a middlebox's own notes are no sessions
                continue
            if e.kind == OPENED:
                service = e.data.get("service")
                if service:
                    key = (e.host, service)
                    s = self._open[e.session] = SessionSeen(e.session, str(e.data.get("peer", "")), "plaintext", True)
                    self.by_key.setdefault(key, deque(maxlen=SESSIONS_SHOWN)).append(s)
                    self.total[key] = self.total.get(key, 0) + 1
            elif e.session in self._open:
                if e.kind == TLS:
                    self._open[e.session].negotiated = f"{e.data.get('version')} {e.data.get('cipher')}"
                else:
                    self._open.pop(e.session).open = False
        if events:
            self.last = events[-1].seq
        return self


@functools.lru_cache(maxsize=256)
def _fields(pem: bytes) -> dict[str, Any]:
    """A certificate's fields, read once per certificate (by its PEM): a live map
    refreshes a few times a second under load, and the fields never change."""
    return cert_fields(pem)


def port_map(lab: Lab, seen: SessionsSeen | None = None) -> PortMap:
    """The map of ``lab`` as it is now (``seen``: a live map's sessions so far)."""
    sessions = (seen or SessionsSeen()).update(lab)
    rows: dict[str, ServiceRow] = {}
    hosts: list[str] = []
    for svc in lab.services:
        if svc.host is None:  # the lab DNS: not a mail port
            continue
        if svc.hostname not in hosts:
            hosts.append(svc.hostname)
        row = rows.get(svc.name)
        if row is None:
            before, refused = auth_policy(lab, svc.name)
            row = rows[svc.name] = ServiceRow(svc.name, ROLES.get(svc.name, ""), svc.standard_port, "",
                                              svc.tls, before, refused, MINIMUM_VERSION_TEXT)
        key = (svc.hostname, svc.name)
        box = lab.middleboxes.get(f"{svc.hostname}/{svc.name}")
        row.cells[svc.hostname] = HostCell(svc.hostname, svc.address, svc.port, svc.state,
                                           list(sessions.by_key.get(key, ())), sessions.total.get(key, 0),
                                           None if box is None else
                                           "STARTTLS-stripping middlebox" if box.strip else "passive tap (Eve)")
    for row in rows.values():
        row.lab_port = " / ".join(dict.fromkeys(str(c.port) for c in row.cells.values()))
    certs = {}
    if lab.ca is not None:
        for host in hosts:
            try:
                certs[host] = _fields(lab.ca.issue(host).cert_path.read_bytes())
            except Exception:  # noqa: BLE001 - a view must not fail for one certificate
                pass
    return PortMap(list(rows.values()), hosts, certs, str(lab.ca.ca_path) if lab.ca else None,
                   require_tls=bool(lab.policy.require_tls))


def _negotiated_short(s: SessionSeen) -> str:
    return s.negotiated.replace("TLSv", "TLS ")


def cert_text(fields: dict[str, Any]) -> str:
    width = max(len(t) for _, t in CERT_FIELD_TITLES)
    out = []
    for key, title in CERT_FIELD_TITLES:
        value = fields.get(key, "")
        out.append(f"  {title:<{width}}  {', '.join(value) if isinstance(value, list) else value}")
    return "\n".join(out)


def cert_html(fields: dict[str, Any], title: str = "") -> str:
    rows = []
    for key, name in CERT_FIELD_TITLES:
        value = fields.get(key, "")
        text = ", ".join(value) if isinstance(value, list) else str(value)
        if key == "sha256":  # a fingerprint wraps between its bytes, never inside one
            shown = html.escape(text).replace(":", ":<wbr>")
        else:  # a name ("CN=mail.alpha.test,OU=Testing cert #...") wraps after its commas and dots
            shown = breakable(text).replace(",", ",<wbr>")
        rows.append(f"<tr><th>{html.escape(name)}</th><td class='mono'>{shown}</td></tr>")
    head = f"<div><b>{html.escape(title)}</b></div>" if title else ""
    return f"{head}<table class='ml-cert'>{''.join(rows)}</table>"


def badge(mode: str) -> str:
    glyph, _colour, label = MODES.get(mode, MODES["none"])
    return (f"<span class='ml-badge ml-{KINDS.get(mode, 'err')}' title='{html.escape(MODE_TEXT.get(mode, ''))}'>"
            f"{glyph} {html.escape(label)}</span>")


class PortMap:
    """What ``%mail ports --static`` returns (and what the live widget shows)."""

    def __init__(self, rows: list[ServiceRow], hosts: list[str], certs: dict[str, dict[str, Any]],
                 ca_path: str | None, *, require_tls: bool = False) -> None:
        self.rows = rows
        self.hosts = hosts
        self.certs = certs
        self.ca_path = ca_path
        self.require_tls = require_tls

    def row(self, service: str) -> ServiceRow:
        return next(r for r in self.rows if r.service == service)

    # -- text ------------------------------------------------------------------------
    def __repr__(self) -> str:
        if not self.rows:
            return "the lab is not running (%mail start)"
        from .status import text_table

        table = []
        for r in self.rows:
            glyph, _c, label = MODES[r.tls]
            table.append({"service": r.service, "std": r.standard_port, "lab": r.lab_port,
                          "tls": f"{glyph} {label}", "before": r.auth_before_tls,
                          "refused": r.plaintext_login_refused, "min": r.min_tls})
        out = [text_table(table, [("service", "service"), ("standard", "std"), ("lab port", "lab"),
                                  ("TLS", "tls"), ("AUTH before TLS?", "before"),
                                  ("plaintext login refused?", "refused"), ("min TLS", "min")])]
        out.append("")
        out.append("sessions seen (server side):")
        for r in self.rows:
            for host in self.hosts:
                cell = r.cells.get(host)
                if cell is None or not cell.total:
                    continue
                seen = ", ".join(f"{s.session} {_negotiated_short(s)}{' (open)' if s.open else ''}"
                                 for s in cell.sessions)
                more = f" (+{cell.total - len(cell.sessions)} earlier)" if cell.total > len(cell.sessions) else ""
                box = f" [{cell.middlebox}]" if cell.middlebox else ""
                out.append(f"  {r.service:<10} {host} {cell.address}:{cell.port}{box}: {seen}{more}")
        if not any(c.total for r in self.rows for c in r.cells.values()):
            out.append("  (none yet)")
        out.append("legend: " + "; ".join(f"{g} {label}" for g, _c, label in MODES.values()))
        if self.require_tls:
            out.append("require_tls: no login anywhere before TLS")
        if self.ca_path:
            out.append(f"CA certificate: {self.ca_path}")
        return "\n".join(out)

    def certificate_text(self, host: str) -> str:
        fields = self.certs.get(host)
        return f"certificate of {host}:\n{cert_text(fields)}" if fields else f"no certificate for {host}"

    # -- HTML -----------------------------------------------------------------------
    def grid_html(self) -> str:
        """The map as HTML for the shared stylesheet (wrap it in ``.ml-view``)."""
        return blocks_html(self.grid_blocks())

    def grid_blocks(self) -> list[tuple[str, Block]]:
        """The grid as keyed blocks (what the live map sends when they change): the
        table, one row per service (a session opening sends that service's row), and
        the legend under it."""
        titles = ("service", "standard → lab port", "TLS", "AUTH before TLS?", "plaintext login refused?",
                  "min TLS", *self.hosts)
        head = "".join(f"<th>{html.escape(t)}</th>" for t in titles)
        body = []
        for r in self.rows:
            cells = [f"<b>{html.escape(r.service)}</b><br><span class='ml-muted'>{html.escape(r.role)}</span>",
                     f"<b style='font-size:1.2em'>{r.standard_port}</b> → {html.escape(r.lab_port)}",
                     badge(r.tls), html.escape(r.auth_before_tls), html.escape(r.plaintext_login_refused),
                     html.escape(r.min_tls)]
            for host in self.hosts:
                cell = r.cells.get(host)
                if cell is None:
                    cells.append("")
                    continue
                # address and port may wrap at the colon: eleven columns must fit 800 px
                lines = [f"<code>{html.escape(cell.address)}:<wbr>{cell.port}</code>"]
                if cell.state != "running":
                    lines.append(f"<span class='ml-err'>✗ {html.escape(cell.state)}</span>")
                if cell.middlebox:
                    lines.append(f"<span class='ml-err ml-badge'>⚠ {html.escape(cell.middlebox)}</span>")
                for s in cell.sessions:
                    kind, glyph = ("err", "○") if s.negotiated == "plaintext" else ("ok", "●")
                    lines.append(f"<span class='ml-{kind} ml-small' title='{html.escape(s.peer)}'>{glyph} "
                                 f"{html.escape(s.session)}: {breakable(_negotiated_short(s))}"
                                 f"{' (open)' if s.open else ''}</span>")
                if cell.total > len(cell.sessions):
                    lines.append(f"<span class='ml-muted ml-small'>+{cell.total - len(cell.sessions)} earlier</span>")
                cells.append("<br>".join(lines))
            # In a narrow output each row is a card (theme: .ml-cards-wide): the service
            # is its heading, every other cell carries its column head as a label.
            body.append(card_row(cells[0], list(zip(titles[1:], cells[1:], strict=True))))
        legend = " &nbsp; ".join(f"{badge(m)}: {html.escape(t)}" for m, t in MODE_TEXT.items() if m in MODES)
        foot = [f"legend: {legend}"]
        if self.require_tls:
            foot.append("<b>require_tls</b>: no login anywhere before TLS")
        if self.ca_path:
            foot.append(f"CA certificate: <code>{html.escape(self.ca_path)}</code>")
        table = Block(f"<table class='ml-ports ml-cards-wide'><thead><tr>{head}</tr></thead><tbody>", body,
                      "</tbody></table>", tuple(r.service for r in self.rows))
        return [("grid", table), ("legend", Block(f"<div class='ml-small'>{'<br>'.join(foot)}</div>"))]

    def certs_html(self) -> str:
        """Every host's certificate, one fold each (they open in the browser, also while
        a cell is busy)."""
        return blocks_html(self.cert_blocks())

    def cert_blocks(self) -> list[tuple[str, Block]]:
        return [(f"cert-{h}", Block(
            f"<details data-key='cert-{html.escape(h)}'><summary>certificate of {html.escape(h)}"
            f" <span class='ml-sum'>{html.escape(f['key'])}, SHA-256 {html.escape(f['sha256'][:23])}…"
            f"</span></summary>{cert_html(f)}</details>")) for h, f in self.certs.items()]

    def _repr_html_(self) -> str:
        if not self.rows:
            return "<i>the lab is not running (<code>%mail start</code>)</i>"
        return page(self.grid_html() + self.certs_html(), kind="ports")

    def figure(self, **kwargs: Any) -> Figure:
        return figure(self, **kwargs)


def figure(pm: PortMap, *, width: float | None = None) -> Figure:
    """The map as a matplotlib figure: services down, hosts across, each cell coloured
    and marked with the glyph of its TLS mode. Call it on the kernel's thread."""
    from matplotlib.figure import Figure

    rows, hosts = pm.rows, pm.hosts
    left = 2.2
    col = 2.3
    fig = Figure(figsize=(width or left + col * max(1, len(hosts)) + 0.3, 1.2 + 0.62 * (len(rows) + 1)))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    total_w = left + col * len(hosts)
    ax.set_xlim(0, total_w + 0.2)
    ax.set_ylim(-(len(rows) + 1.6), 1.2)
    ax.text(0.1, 0.7, "ports and TLS of the lab", fontsize=12, weight="bold", ha="left", va="center")
    ax.text(0.1, 0, "service   standard port", fontsize=9, ha="left", va="center", family="monospace")
    for j, host in enumerate(hosts):
        ax.text(left + col * j + 0.1, 0, host, fontsize=9, ha="left", va="center", weight="bold")
    for i, r in enumerate(rows):
        y = -(i + 1)
        glyph, colour, label = MODES[r.tls]
        ax.text(0.1, y, f"{r.service:<10} {r.standard_port:>3}", fontsize=9, ha="left",
                va="center", family="monospace")
        for j, host in enumerate(hosts):
            cell = r.cells.get(host)
            if cell is None:
                continue
            x = left + col * j
            ax.add_patch(_box(x + 0.05, y - 0.4, col - 0.1, 0.8, colour))
            n = cell.total
            plain = sum(1 for s in cell.sessions if s.negotiated == "plaintext")
            extra = f"\n{n} session{'s' if n != 1 else ''}" + (f", {plain} plaintext" if plain else "") if n else ""
            ax.text(x + 0.15, y, f"{glyph} {label}  lab port {cell.port}{extra}", fontsize=8, ha="left", va="center",
                    color="black")
    legend = "   ".join(f"{g} {label}" for g, _c, label in MODES.values())
    ax.text(0.1, -(len(rows) + 1.1), f"legend: {legend}   (minimum {MINIMUM_VERSION_TEXT})", fontsize=8,
            ha="left", va="center")
    return fig


def _box(x: float, y: float, w: float, h: float, colour: str) -> Any:
    from matplotlib.patches import FancyBboxPatch

    return FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02", facecolor=colour + "33",
                          edgecolor=colour, linewidth=1.5)


class LivePortMap:
    """``%mail ports``: the map as a widget that follows the lab's sessions, and a
    service selector that shows the certificate of the chosen host field by field."""

    def __init__(self, lab: Lab, *, interval: float = 0.1) -> None:
        import ipywidgets as w

        self.lab = lab
        self.updates = 0
        self._lock = threading.Lock()
        self._seen = SessionsSeen()
        self.map = port_map(lab, self._seen)
        options = [(f"{row.service} on {host}", (host, row.service)) for row in self.map.rows
                   for host in self.map.hosts if host in row.cells]
        # The certificates are folds in the grid too: they open in the browser even while
        # a cell is busy (the kernel answers the selector only between cells).
        self.grid = LiveBlocks(self._grid_blocks(), kind="ports", controls=False, max_height="")
        self.select = w.Dropdown(options=options, description="certificate of",
                                 style={"description_width": "initial"}, layout=w.Layout(width="30em"))
        self.cert = LiveHTML(kind="cert", controls=False, max_height="")
        self.select.observe(lambda _c: self._show_cert(), names="value")
        self._show_cert()
        self.widget = w.VBox([self.grid, self.select, self.cert])
        self._throttle = Throttle(interval, self.refresh)
        self._unsubscribe = lab.events.subscribe(self._on_event)

    def _grid_blocks(self) -> list[tuple[str, Block]]:
        return self.map.grid_blocks() + self.map.cert_blocks()

    def _on_event(self, event: Any) -> None:
        # On the lab thread: only flag (never block, never raise).
        if event.kind in (OPENED, TLS, CLOSED) and event.side == "server" or event.protocol == "wire":
            self._throttle.poke()

    def _show_cert(self) -> None:
        value = self.select.value
        if not value:
            self.cert.value = ""
            return
        host, service = value
        fields = self.map.certs.get(host)
        cell = self.map.row(service).cells.get(host)
        title = f"{service} on {host} ({cell.address}:{cell.port}) presents:" if cell else host
        if self.map.row(service).tls == "none" or fields is None:
            self.cert.value = f"<i>{html.escape(service)}: no TLS, no certificate</i>"
        else:
            self.cert.value = cert_html(fields, title)

    def refresh(self) -> None:
        with self._lock:
            self.map = port_map(self.lab, self._seen)
            if self.grid.show(self._grid_blocks()):  # sends the rows that changed
                self.updates += 1

    def close(self) -> None:
        self._unsubscribe()
        self._throttle.close()
        self.widget.close()

    def __repr__(self) -> str:
        return repr(self.map)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        return widget_bundle(self.widget, repr(self.map), **kwargs)
