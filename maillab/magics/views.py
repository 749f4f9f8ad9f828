"""``%mail`` verbs about how the lab is shown: presenter mode, text size, and a
session's sequence diagram.

``%mail present on|off`` and ``%mail textsize S`` set the text scale of every
view (:mod:`maillab.views.theme`); ``%mail sequence [SESSION] [--figure PATH]``
draws one session as a sequence diagram (:mod:`maillab.views.sequence`).
"""

from __future__ import annotations

import argparse
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments

from ..views import theme
from ..views.conversations import conversations
from ..views.sequence import SequenceDiagram
from .mail import HelpText, MailMagics, subcommand


@subcommand("present")
@magic_arguments("mail present")
@argument("mode", nargs="?", default="on", choices=["on", "off"])
def _present(magics: MailMagics, args: argparse.Namespace) -> Any:
    """Presenter mode: large text in every view, live ones at once (on|off)."""
    magics.presenter = args.mode == "on"
    theme.settings.set_presenter(magics.presenter)  # also when the trait did not change
    return HelpText(f"presenter mode {args.mode}: views use text scale {theme.settings.scale:g}")


@subcommand("textsize")
@magic_arguments("mail textsize")
@argument("scale", type=float, help="1 = normal, 1.6 = presenter, 2 = very large")
def _textsize(magics: MailMagics, args: argparse.Namespace) -> Any:
    """Text size of every view (a scale: 1 normal, 1.6 presenter)."""
    try:
        theme.settings.set_scale(args.scale)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return HelpText(f"views use text scale {theme.settings.scale:g}")


@subcommand("sequence")
@magic_arguments("mail sequence")
@argument("session", nargs="?", default="last",
          help="a session id (smtp-3, pop3-7, ...) or 'last' (default: the newest SMTP/POP3/IMAP session)")
@argument("--protocol", help="with 'last': the newest session of this protocol")
@argument("--copy", default="server", choices=["server", "client"],
          help="whose copy of the connection to draw (the same lines; the server's also has TLS/state marks)")
@argument("--figure", metavar="PATH", help="also save the diagram as a standalone SVG file")
def _sequence(magics: MailMagics, args: argparse.Namespace) -> Any:
    """A session as a sequence diagram: lifelines, commands and replies as arrows, TLS start marked."""
    lab = magics.lab()
    convs = [c for c in conversations(lab.events.events())
             if c.protocol in ("smtp", "pop3", "imap") and (not args.protocol or c.protocol == args.protocol)]
    if args.session == "last":
        conv = convs[-1] if convs else None
    else:
        conv = next((c for c in convs if args.session in c.sessions), None)
    if conv is None:
        known = ", ".join(s for c in convs[-8:] for s in c.sessions)
        raise UsageError(f"no session {args.session!r}" + (f"; recent ones: {known}" if known else
                                                            ": send or fetch some mail first"))
    events = conv.events(args.copy)
    title = f"{conv.protocol.upper()} session " + " = ".join(conv.sessions)
    diagram = SequenceDiagram(events, title=title)
    if args.figure:
        try:
            diagram.save(args.figure)
        except OSError as exc:
            raise UsageError(f"cannot write {args.figure}: {exc}") from None
    return diagram
