"""Summaries first, drawn: a mailbox's envelopes and what each IMAP step cost.

:class:`MailboxView` draws what an :class:`~maillab.clients.envelopes.EnvelopeClient`
holds (it never opens a connection itself): the summaries the server sent, the
octets each step took on the wire, and what POP3 would have had to download
(every message in full). It renders as text (terminals, tests), as HTML, and as
an ipywidgets panel where the user picks messages to download, through the client
it was given.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

from ..clients.envelopes import EnvelopeClient, EnvelopeRow, Step
from .inbox import MESSAGE_COLUMNS, message_table
from .status import text_table
from .theme import BASE_PX, page, settings

#: What POP3 adds around each RETR'd message: "RETR n", "+OK ..." and the final ".".
POP3_PER_MESSAGE = len(b"RETR 1\r\n") + len(b"+OK message follows\r\n") + len(b".\r\n")

ROW_COLUMNS = MESSAGE_COLUMNS


@dataclass
class MailboxView:
    """The envelopes an :class:`EnvelopeClient` fetched, its steps' octets, POP3's cost beside."""

    source: EnvelopeClient
    _widget: Any = None

    @property
    def mailbox(self) -> str:
        return self.source.mailbox

    @property
    def rows(self) -> list[EnvelopeRow]:
        return self.source.rows

    @property
    def steps(self) -> list[Step]:
        return self.source.steps

    def download(self, uids: list[int] | int) -> dict[int, bytes]:
        """Have the client download these messages, then redraw."""
        got = self.source.download(uids)
        self._refresh()
        return got

    # -- the comparison ------------------------------------------------------------------
    @property
    def imap_total(self) -> int:
        return sum(s.total for s in self.steps)

    @property
    def imap_after_login(self) -> int:
        """What IMAP moved after connecting and logging in (the first step): the part to
        weigh against POP3's downloads, since a POP3 client pays for a connection and a
        login too (comparing IMAP's login with POP3's RETRs alone favoured POP3)."""
        return sum(s.total for s in self.steps[1:])

    def comparison(self) -> str:
        ratio = self.pop3_total / self.imap_after_login if self.imap_after_login else 0
        return (f"Leaving out connecting and logging in (POP3 pays for those too): IMAP moved "
                f"{self.imap_after_login} octets; POP3 would have moved at least {self.pop3_total}, "
                f"{ratio:.1f}x as many.")

    @property
    def pop3_total(self) -> int:
        """At least what POP3 must download to show the same list: every message in full."""
        return sum(r.size + POP3_PER_MESSAGE for r in self.rows)

    def cost_rows(self) -> list[dict[str, Any]]:
        rows = [{"step": s.name, "sent": s.sent, "received": s.received, "total": s.total}
                for s in self.steps]
        rows.append({"step": "IMAP, all steps", "sent": sum(s.sent for s in self.steps),
                     "received": sum(s.received for s in self.steps), "total": self.imap_total})
        rows.append({"step": f"POP3 would download (RETR x {len(self.rows)})", "sent": "",
                     "received": "", "total": self.pop3_total})
        return rows

    # -- renderings ----------------------------------------------------------------------
    def text(self) -> str:
        head = f"{self.mailbox}: {len(self.rows)} messages, {sum(r.size for r in self.rows)} octets on the server"
        costs = text_table(self.cost_rows(), (("step", "step"), ("sent", "sent"),
                                               ("received", "received"), ("total octets", "total")))
        return "\n".join([head, text_table([r.as_dict() for r in self.rows], ROW_COLUMNS), "",
                          "What each step cost on the wire:", costs, self.comparison()])

    def __repr__(self) -> str:
        return self.text()

    def _html_tables(self) -> str:
        def table(rows: list[dict[str, Any]], cols: tuple[tuple[str, str], ...]) -> str:
            head = "".join(f"<th>{html.escape(t)}</th>" for t, _ in cols)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(k, '')))}</td>" for _, k in cols)
                           + "</tr>" for r in rows)
            return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

        return (f"<b>{html.escape(self.mailbox)}</b>: {len(self.rows)} messages"
                + message_table(r.as_dict() for r in self.rows)
                + "<p><b>What each step cost on the wire</b> (octets, from this client's transcript)</p>"
                + table(self.cost_rows(), (("step", "step"), ("sent", "sent"), ("received", "received"),
                                           ("total", "total")))
                + f"<p>{html.escape(self.comparison())}</p>")

    def _repr_html_(self) -> str:
        return page(self._html_body(), kind="mailbox")

    def _html_body(self) -> str:
        return self._html_tables()

    def widget(self) -> Any:
        """An ipywidgets panel: pick messages, press Download, watch the costs grow."""
        import ipywidgets as w

        # UID, subject and size only: the table below has date and sender, and a list
        # box scrolls sideways (at 150% zoom past the subject) rather than wrap a line
        options = [(f"UID {r.uid}: {r.subject[:60]} ({r.size} octets)", r.uid) for r in self.rows]
        picker = w.SelectMultiple(options=options, rows=min(12, max(3, len(options))),
                                  layout=w.Layout(width="auto", height="auto"))
        # as wide as its words: ipywidgets' fixed 148 px cut "Download selected" short
        button = w.Button(description="Download selected", icon="download",
                          layout=w.Layout(width="auto", height="auto"))
        picker.add_class("ml-picker")
        button.add_class("ml-picker")
        out = w.HTML(self._panel_html())

        def on_click(_b: Any) -> None:
            if picker.value:
                self.download(list(picker.value))

        button.on_click(on_click)
        self._widget = out
        return w.VBox([picker, button, out])

    def _refresh(self) -> None:
        if self._widget is not None:
            self._widget.value = self._panel_html()

    def _panel_html(self) -> str:
        # The list box and the button are ipywidgets, outside any .ml-view: at the
        # presenter's scale they stayed at 13 px under 22 px tables (notebook 03).
        # They take the view's text size from this rule (the kernel's one scale), at
        # most 3.2% of the window: a list box cannot wrap its lines, and at 22 px in
        # 800 px at 150% zoom it scrolled sideways (3.2vw there is 17 px). At scale 1
        # JupyterLab's own size stays.
        if settings.scale <= 1:
            return page(self._html_tables(), kind="mailbox")
        px = BASE_PX * settings.scale
        return (f"<style>.ml-picker,.ml-picker select{{font-size:min({px:g}px,3.2vw)!important;"
                f"line-height:1.35!important}}</style>" + page(self._html_tables(), kind="mailbox"))

    def close(self) -> None:
        self.source.close()
