"""What ``%mail fail`` (without a rule) shows: every failure injected in the lab,
one line per rule with its counts, and the hosts whose SMTP port is down."""

from __future__ import annotations

import html
from collections.abc import Iterable

from ..faults import Rule
from .theme import page

EMPTY = ('no failures injected (add one: %mail fail mail.alpha.test --pop3 RETR'
         ' "-ERR [SYS/TEMP] disk busy")')


class FaultsView:
    def __init__(self, rules: Iterable[Rule], down: Iterable[str] = ()) -> None:
        self.lines = [f"{host} smtp: down (its SMTP port refuses connections)" for host in down]
        self.lines += [rule.describe() for rule in rules]

    def __repr__(self) -> str:
        if not self.lines:
            return EMPTY
        return "\n".join(["failures injected (%mail heal [HOST] removes them):",
                          *(f"  {line}" for line in self.lines)])

    def _repr_html_(self) -> str:
        return page(self._html_body(), kind="faults")

    def _html_body(self) -> str:
        if not self.lines:
            return f"<i>{html.escape(EMPTY)}</i>"
        items = "".join(f"<li><code>{html.escape(line)}</code></li>" for line in self.lines)
        return ("<b>failures injected</b> (<code>%mail heal [HOST]</code> removes them)"
                f"<ul style='margin:2px 0'>{items}</ul>")
