"""The lab internet from a notebook: ``%mail relay``, ``queue``, ``dig``, ``hops``,
and the cell magics ``%%zone`` and ``%%mail_hops`` (``fail`` and ``heal`` are in
:mod:`maillab.magics.faults`).

::

    %mail dig beta.test MX                # the lab DNS, answered like dig
    %mail relay                           # the last relayed message's path, live
    %mail relay --figure path.svg         # the same path as a figure for slides
    %mail fail mx1.beta.test down         # then watch the fallback to mx2
    %mail queue                           # what is waiting, and why
    %mail heal mx1.beta.test
    %mail hops message.eml                # any message's Received chain, bottom-up

    %%zone beta.test                      # replace a zone from the cell
    $TTL 60
    @  IN SOA ns.beta.test. hostmaster.beta.test. 2 60 60 600 60
    ...

The verbs register in the ``%mail`` router of :mod:`maillab.magics.mail`; the
cell magics are in :data:`MAGICS`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from ..auth.headers import read as read_auth_headers
from ..lab import Lab
from ..relay.hops import parse_hops
from ..views.dns import ZoneView, dig_lab, dig_real
from ..views.queue import QueueView
from ..views.relay import (
    FigureView,
    HopsView,
    LiveRelayView,
    RelayView,
    delivered_copy,
    figure,
    find_message,
    path_from_relay,
)
from . import state
from .comments import strip_comment
from .mail import MailMagics, ensure_started, subcommand

#: Reading a message file for its header: a header larger than this is not mail.
MAX_HEADER_READ = 1024 * 1024


def _figure_result(fig: Any, target: Any) -> FigureView:
    view = FigureView(fig)
    if isinstance(target, str) and target:
        try:
            view.savefig(target)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot save the figure to {target}: {exc}") from None
    return view


def _relay(lab: Lab) -> Any:
    if getattr(lab, "relay", None) is None:
        raise UsageError("this lab has no relay queue (maillab.relay is not installed?)")
    return lab.relay


@subcommand("relay")
@magic_arguments("mail relay")
@argument("message", nargs="?", default=None,
          help="queue id (see %%mail queue) or Message-ID; default: the last message relayed")
@argument("--figure", nargs="?", const=True, default=None, metavar="PATH",
          help="a matplotlib figure instead of the live widget; with PATH also saved (.png, .svg, .pdf)")
@argument("--static", action="store_true", help="a snapshot (no widget; updates nothing)")
def relay_path(magics: MailMagics, args: argparse.Namespace) -> Any:
    """Show the path a relayed message took: hosts, hops, TLS, DNS answers, state."""
    lab = magics.lab()
    _relay(lab)
    try:
        msg = find_message(lab, args.message)
    except LookupError as exc:
        raise UsageError(str(exc)) from None
    if args.figure is not None:
        return _figure_result(figure(path_from_relay(lab, msg.id)), args.figure)
    if args.static:
        return RelayView(path_from_relay(lab, msg.id))
    try:
        return LiveRelayView(lab, lambda: path_from_relay(lab, msg.id))
    except ImportError:  # no ipywidgets: a snapshot still answers the question
        return RelayView(path_from_relay(lab, msg.id))


@subcommand("queue")
@magic_arguments("mail queue")
@argument("--host", help="one host's queue (default: every host)")
@argument("--all", action="store_true", help="also the messages already delivered or bounced")
def relay_queue(magics: MailMagics, args: argparse.Namespace) -> Any:
    """Show each host's relay queue: messages waiting, next attempt, last error."""
    relay = _relay(magics.lab())
    if args.host and args.host not in magics.lab().topology.hosts:
        raise UsageError(f"no lab host {args.host!r}; hosts: {', '.join(magics.lab().topology.hosts)}")
    if args.all:
        msgs = [m for m in relay.messages() if args.host is None or m.origin == args.host]
    else:
        msgs = relay.queue(args.host)
    title = f"relay queue of {args.host}" if args.host else "relay queue (all hosts)"
    rules = [r.describe() for r in magics.lab().faults.rules() if r.protocol == "smtp" and not r.label]
    return QueueView(msgs, faults=relay.faults(), rules=rules, title=title)


@subcommand("dig")
@magic_arguments("mail dig")
@argument("name", help="the name to look up, e.g. beta.test")
@argument("type", nargs="?", default="A", help="record type: A, AAAA, MX, TXT, NS, SOA, PTR, CNAME (default A)")
@argument("--tcp", action="store_true", help="ask over TCP instead of UDP")
@argument("--real", action="store_true", help="ask the machine's own resolver instead of the lab DNS")
def relay_dig(magics: MailMagics, args: argparse.Namespace) -> Any:
    """Look a name up like dig: question, answer, authority, additional, TTLs, time."""
    try:
        if args.real:
            return dig_real(args.name, args.type, tcp=args.tcp)
        return dig_lab(magics.lab(), args.name, args.type, tcp=args.tcp)
    except (ValueError, RuntimeError) as exc:  # an unknown type, a bad name, no DNS service
        raise UsageError(f"dig {args.name} {args.type}: {exc}") from None


def _read_message(lab: Lab | None, source: str) -> tuple[bytes, str]:
    path = Path(source).expanduser()
    if path.is_file():
        with path.open("rb") as f:
            return f.read(MAX_HEADER_READ), str(path)
    if lab is not None and getattr(lab, "relay", None) is not None:
        try:
            data = delivered_copy(lab, source)
        except LookupError:
            data = None
        if data is not None:
            what = "the last relayed message" if source == "last" else f"relayed message {source}"
            return data, f"the delivered copy of {what}"
    raise UsageError(f"{source}: no such file (nor a relayed message id, or 'last', that has been delivered)")


@subcommand("hops")
@magic_arguments("mail hops")
@argument("file", help="a message file (.eml, a Maildir file, a saved header), or 'last' / a queue id:"
                       " the delivered copy of a relayed lab message")
@argument("--figure", nargs="?", const=True, default=None, metavar="PATH",
          help="the path as a matplotlib figure; with PATH also saved")
def relay_hops(magics: MailMagics, args: argparse.Namespace) -> Any:
    """Read a message's Received header chain bottom-up: a hop table and the path."""
    lab = state.existing_lab()
    data, source = _read_message(lab if lab is not None and lab.started else None, args.file)
    view = HopsView(parse_hops(data), source, auth=read_auth_headers(data))
    if args.figure is not None:
        return _figure_result(view.figure(), args.figure)
    return view


@magics_class
class RelayMagics(Magics):
    """The cell magics of the lab internet: ``%%zone`` and ``%%mail_hops``."""

    @magic_arguments()
    @argument("name", help="the zone to replace, e.g. beta.test")
    @cell_magic
    def zone(self, line: str, cell: str) -> Any:
        """Replace a lab DNS zone with the zone-file text of the cell (RFC 1035 5).

        Names without a trailing dot are relative to the zone; the old zone stays
        when the new text does not parse.
        """
        line = strip_comment(line)
        args = parse_argstring(self.zone, line)
        lab, _note = ensure_started(state.current_lab(start=False))
        if lab.dns is None:
            raise UsageError("the lab has no DNS service")
        try:
            records = lab.dns.replace_zone(args.name, cell)
        except ValueError as exc:  # ZoneError: the old zone stays
            raise UsageError(f"zone {args.name} not replaced: {exc}") from None
        return ZoneView(args.name, records)

    @magic_arguments()
    @argument("--figure", nargs="?", const=True, default=None, metavar="PATH",
              help="the path as a matplotlib figure; with PATH also saved")
    @cell_magic
    def mail_hops(self, line: str, cell: str) -> Any:
        """Paste a message (or just its header) into the cell: its Received chain,
        read bottom-up, as a hop table and a path."""
        line = strip_comment(line)
        args = parse_argstring(self.mail_hops, line)
        view = HopsView(parse_hops(cell), "the pasted message")
        if args.figure is not None:
            return _figure_result(view.figure(), args.figure)
        return view


MAGICS = RelayMagics
