"""The relay queue as a table: what ``%mail queue`` returns, one row per message
(its host, sender and recipients, state, attempts, next attempt and last error),
read at the clock time its title gives; the next attempt is a clock time too.

Host names and addresses read whole in the table; the table turns into cards of
labelled facts wherever the view is too narrow for that (``theme.card_turn``),
so it never scrolls sideways.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from .hop_table import _aligned
from .theme import badge, breakable, card_row, card_turn, page, text_em

QUEUE_COLUMNS = ("id", "host", "from", "to", "state", "attempts", "next attempt", "last error")


class QueueView:
    """What ``%mail queue`` returns: each host's queue, one row per message."""

    def __init__(self, messages: Iterable[Any], *, faults: dict[str, Any] | None = None,
                 rules: Iterable[str] = (), title: str = "relay queue") -> None:
        # A snapshot: the next attempt is a clock time ("05:05:05", true however long
        # the output is on screen; "in 5 s" went stale), and the title says when the
        # queue was read, so how long until the attempt reads off the two.
        self.taken = time.time()
        self.rows = [self._row(m) for m in messages]
        self.faults = dict(faults or {})
        self.rules = list(rules)  # other SMTP failure rules (lab.faults), described
        self.title = f"{title} at {_clock(self.taken)}"

    @staticmethod
    def _row(m: Any) -> list[str]:
        nxt = _clock(m.next_attempt) if m.next_attempt else ""
        return [m.id, m.origin, m.mail_from or "<>", ", ".join(m.rcpts), m.state, str(len(m.attempts)), nxt,
                m.last_error or ""]

    def _footer(self) -> list[str]:
        return [f"failure injected: {h} {k}" + (f" {v:g} s" if isinstance(v, (int, float)) else "")
                for h, (k, v) in self.faults.items()] + [f"failure injected: {r}" for r in self.rules]

    def __repr__(self) -> str:
        if not self.rows:
            return "\n".join([f"{self.title}: empty (every message delivered or bounced)", *self._footer()])
        return "\n".join([self.title, _aligned(self.rows, QUEUE_COLUMNS), *self._footer()])

    def _repr_html_(self) -> str:
        style = ""
        if not self.rows:
            body = f"<i>{html.escape(self.title)}: empty (every message delivered or bounced)</i>"
        else:
            head = "".join(f"<th>{t}</th>" for t in QUEUE_COLUMNS)
            # Host and addresses read whole ("mail.alpha.test", never "mail.alpha." /
            # "test"): each is kept on one line (.ml-nw), the last error wraps at its
            # spaces (a long word of it also at its dots), and at a letter only where
            # a piece of it is longer than its 14em (ml-token). The table turns into cards of labelled
            # facts (a card's names may wrap at their dots) where the view is narrower
            # than the columns need with the names whole (theme.card_turn), so it never
            # scrolls sideways: notebook 06's queue at 1400 px with the sidebar open.
            rows = "".join(card_row(html.escape(r[0]), [
                (t, _names(c) if t in _NAMES else _error(c) if t == "last error" else html.escape(c))
                for t, c in zip(QUEUE_COLUMNS[1:], r[1:], strict=True)], head_label="id", wide=("last error",),
                classes={"last error": "mono ml-token"})  # the error: a server's reply, as it came
                for r in self.rows)
            cls, style = card_turn(self._widths(), font=0.9)  # ml-small: 0.9em
            body = (f"<b>{html.escape(self.title)}</b><table class='ml-small {cls}'><thead><tr>{head}</tr>"
                    f"</thead><tbody>{rows}</tbody></table>")
        return page(style + body + "".join(f"<div>{badge('err', f)}</div>" for f in self._footer()), kind="queue")

    def _widths(self) -> list[float]:
        """Each column's narrowest width in em (theme.card_turn): a name whole, other
        text at its longest word, the last error its 14em (ml-token)."""
        out = []
        for i, title in enumerate(QUEUE_COLUMNS):
            pieces = [p for r in self.rows for p in (r[i].split(", ") if title in _NAMES else r[i].split())]
            least = 14.0 if title == "last error" else max((text_em(p) for p in pieces), default=0.0)
            out.append(max(least, max(text_em(w, bold=True) for w in title.split())))
        return out


def _clock(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%H:%M:%S")


#: The queue's columns of host names and addresses, kept whole in its table.
_NAMES = ("host", "from", "to")


def _error(text: str) -> str:
    """A server's reply: wrapping at its spaces; a word too long for the column's
    14em (``mail.carol.class.test[127.0.61.3]:2525:``) also after its dots."""
    return " ".join(breakable(w) if len(w) > 20 else html.escape(w) for w in text.split(" "))


def _names(text: str) -> str:
    """Names separated by ", ", each kept on one line (in a card, wrapping at its dots)."""
    return ", ".join(f"<span class='ml-nw'>{breakable(n)}</span>" for n in text.split(", "))
