"""``%mail handler HOST NAME``: an aiosmtpd handler object as a lab host's SMTP hooks.

NAME is a variable of the notebook holding the object (``handle_EHLO``, ``handle_MAIL``,
``handle_RCPT``, ``handle_DATA``, as aiosmtpd documents them); ``--off`` removes
it; with HOST alone, or nothing, it lists what is set. The hooks run in the
host's MX, submission and SMTPS sessions after the lab's own rules (see
:mod:`maillab.smtp.hooks`); what they answer shows in the transcript.
"""

from __future__ import annotations

import argparse
import html
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments

from ..smtp import hooks
from .mail import MailMagics, subcommand


class HandlerTable:
    """Which lab hosts have a handler, and which of its hooks the lab calls."""

    def __init__(self, handlers: dict[str, Any]) -> None:
        self.rows = [(host, type(h).__name__, ", ".join(f"handle_{n}" for n in hooks.HOOKS
                                                         if n in hooks.names(h)) or "none")
                     for host, h in sorted(handlers.items())]

    def __repr__(self) -> str:
        if not self.rows:
            return "no SMTP handlers set (%mail handler HOST NAME sets one)"
        return "\n".join(f"{host}: {name} ({used})" for host, name, used in self.rows)

    def _repr_html_(self) -> str:
        if not self.rows:
            return f"<div>{html.escape(repr(self))}</div>"
        body = "".join(f"<tr><td>{html.escape(h)}</td><td><code>{html.escape(n)}</code></td>"
                       f"<td>{html.escape(u)}</td></tr>" for h, n, u in self.rows)
        return ("<table><thead><tr><th>host</th><th>handler</th><th>hooks called</th></tr></thead>"
                f"<tbody>{body}</tbody></table>")


@subcommand("handler")
@magic_arguments("mail handler")
@argument("host", nargs="?", help="a lab mail host, e.g. mail.alpha.test")
@argument("name", nargs="?", help="the notebook variable holding the aiosmtpd handler object")
@argument("--off", action="store_true", help="remove HOST's handler")
def handler(magics: MailMagics, args: argparse.Namespace) -> Any:
    """Hook an aiosmtpd handler object (handle_EHLO/MAIL/RCPT/DATA) into a lab host's SMTP servers."""
    lab = magics.lab()
    if args.host and (args.off or args.name):
        if args.off:
            obj = None
        else:
            namespace = magics.shell.user_ns if magics.shell is not None else {}
            if args.name not in namespace:
                raise UsageError(f"no variable {args.name!r} in this notebook: assign the handler"
                                 " object first, e.g. spam = NoSpam()")
            obj = namespace[args.name]
            if not hooks.names(obj):
                raise UsageError(f"{args.name} has none of " + ", ".join(f"handle_{n}" for n in hooks.HOOKS))
        try:
            lab.set_handler(args.host, obj)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    elif args.host:
        raise UsageError("%mail handler HOST NAME sets a handler, --off removes it")
    return HandlerTable(lab.smtp_handlers)


MAGICS = None  # verbs only
