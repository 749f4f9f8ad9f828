"""``%mail save`` and ``%mail replay``: recorded runs (``maillab/recording.py``).

``%mail save run.json`` writes every event of the lab so far (masked as they
were recorded); ``%mail replay run.json`` shows them in the transcript and state
views with no server running; ``%mail save run.txt`` (or ``--format rfc``)
writes the conversations as RFC-style ``C:``/``S:`` text.
"""

from __future__ import annotations

import argparse
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments

from .. import recording
from ..views.replay import Replay, relay_paths
from ..views.transcript import select
from . import state
from .mail import HelpText, MailMagics, subcommand


@subcommand("save")
@magic_arguments("mail save")
@argument("path", help="run.json (replayable) or run.txt (RFC-style C:/S: text)")
@argument("--format", choices=["json", "rfc"], help="default: json for .json, rfc otherwise")
@argument("--session", help="only this session")
@argument("--protocol", help="only smtp, pop3, imap, dns ...")
@argument("--side", default="server", choices=["server", "client", "both"],
          help="rfc text: the servers' copy of each conversation (default), the clients', or both")
def save(magics: MailMagics, args: argparse.Namespace) -> Any:
    """Save this lab's events: JSON to replay later, or RFC-style C:/S: text."""
    lab = state.existing_lab()
    if lab is None:
        raise UsageError("no lab in this kernel: nothing to save (save before %mail stop)")
    events = select(lab.events.events(), session=args.session, protocol=args.protocol)
    views = {"relay": relay_paths(lab)} if args.session is None and args.protocol is None else {}
    try:
        path = recording.save(events, args.path, args.format, side=args.side, views=views)
    except (OSError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    sessions = len({e.session for e in events})
    return HelpText(f"saved {len(events)} events of {sessions} sessions to {path}"
                    f" ({args.format or ('json' if path.suffix.lower() == '.json' else 'rfc')})")


@subcommand("replay")
@magic_arguments("mail replay")
@argument("path", help="a run saved with %%mail save run.json")
@argument("--session", help="only this session")
@argument("--protocol", help="only smtp, pop3, imap, dns ...")
@argument("--sequence", nargs="?", const="last", metavar="SESSION",
          help="the sequence diagram of one recorded session (default: the last)")
def replay(magics: MailMagics, args: argparse.Namespace) -> Any:
    """Show a saved run in the transcript and state views, no server needed."""
    try:
        doc = recording.load_document(args.path)
        run = Replay(recording.from_json(doc), args.path, session=args.session, protocol=args.protocol,
                     views=doc.get("views"))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise UsageError(f"cannot replay {args.path}: {exc}") from None
    if args.sequence:
        try:
            return run.sequence(None if args.sequence == "last" else args.sequence)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return run


MAGICS = None  # verbs only
