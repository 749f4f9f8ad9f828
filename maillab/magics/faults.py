"""``%mail fail`` and ``%mail heal``: failure injection from a notebook.

::

    %mail fail mx1.beta.test down                      # presets for the relay lessons:
    %mail fail mx1.beta.test tempfail                  #   down | tempfail | reject | slow 2s
    %mail fail mail.alpha.test --pop3 RETR "-ERR [SYS/TEMP] disk busy"
    %mail fail mail.alpha.test --imap FETCH "NO [UNAVAILABLE] try later" --after 3
    %mail fail mx1.beta.test --smtp RCPT "452 4.2.2 mailbox full" --times 2
    %mail fail mail.alpha.test --imap "*" --delay 2s   # every reply two seconds late
    %mail fail mail.alpha.test --pop3 STAT --drop      # close the connection instead
    %mail fail                                         # list what is injected
    %mail heal [HOST]

The presets are the relay queue's (:meth:`maillab.relay.queue.RelayQueue.fail`);
the rules are ``lab.faults`` (:mod:`maillab.faults`).
"""

from __future__ import annotations

import argparse
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments

from ..views.faults import FaultsView
from .mail import HelpText, MailMagics, subcommand

PRESETS = ("down", "tempfail", "reject", "slow")
#: No cell magics of their own: the verbs register in the %mail router.
MAGICS = None


def _hosts_check(magics: MailMagics, host: str | None) -> None:
    hosts = magics.lab().topology.hosts
    if host and host not in hosts:
        raise UsageError(f"no lab host {host!r}; hosts: {', '.join(hosts)}")


def _listing(magics: MailMagics) -> FaultsView:
    lab = magics.lab()
    presets = lab.relay.faults() if getattr(lab, "relay", None) is not None else {}
    return FaultsView(lab.faults.rules(), [h for h, (kind, _v) in presets.items() if kind == "down"])


@subcommand("fail")
@magic_arguments("mail fail")
@argument("host", nargs="?", default=None, help="a lab host, e.g. mail.alpha.test (none: list the failures)")
@argument("preset", nargs="?", default=None, metavar="PRESET",
          help="down: SMTP refuses connections; tempfail: 451 at RCPT; reject: 550 at RCPT;"
               " slow: delay SMTP replies (the MX port only)")
@argument("value", nargs="?", default=None, help="for slow: the delay per reply, e.g. 2s or 500ms")
@argument("--pop3", nargs="+", metavar=("COMMAND", "REPLY"),
          help='answer a POP3 command, e.g. --pop3 RETR "-ERR [SYS/TEMP] disk busy"')
@argument("--imap", nargs="+", metavar=("COMMAND", "REPLY"),
          help='answer an IMAP command (FETCH also matches UID FETCH), e.g. --imap FETCH "NO [UNAVAILABLE] try later"')
@argument("--smtp", nargs="+", metavar=("COMMAND", "REPLY"),
          help='answer an SMTP command, e.g. --smtp RCPT "452 4.2.2 mailbox full"')
@argument("--after", type=int, default=0, metavar="N", help="let the first N matching commands through")
@argument("--times", type=int, default=None, metavar="N", help="fire N times, then pass (default: until healed)")
@argument("--delay", default=None, metavar="TIME", help="wait before answering, e.g. 2s or 500ms")
@argument("--drop", action="store_true", help="close the connection instead of answering")
@argument("--service", default=None, help="only this listener, e.g. pop3s or submission (default: all of the protocol)")
def fail(magics: MailMagics, args: argparse.Namespace) -> Any:
    """Make a lab host fail: a preset (down, tempfail, reject, slow 2s) or a rule that
    answers a POP3, IMAP or SMTP command with an error, late, or by closing."""
    lab = magics.lab()
    rules = [(p, getattr(args, p)) for p in ("pop3", "imap", "smtp") if getattr(args, p)]
    if args.host is None:
        return _listing(magics)
    _hosts_check(magics, args.host)
    if not rules:
        if args.preset not in PRESETS:
            raise UsageError(f"say what fails: a preset ({' | '.join(PRESETS)}) or --pop3/--imap/--smtp"
                             " COMMAND [REPLY] (%mail fail --help)")
        if getattr(lab, "relay", None) is None:
            raise UsageError("this lab has no relay queue: the presets need it; use --smtp")
        try:
            return HelpText(lab.relay.fail(args.host, args.preset, args.value))
        except (KeyError, ValueError) as exc:
            raise UsageError(str(exc).strip("'\"")) from None
    if args.preset is not None or len(rules) > 1:
        raise UsageError("one rule at a time: HOST --pop3|--imap|--smtp COMMAND [REPLY] [options]")
    protocol, words = rules[0]
    if len(words) > 2:
        raise UsageError(f"--{protocol} takes a command and one reply; quote the reply:"
                         f' --{protocol} {words[0]} "{" ".join(words[1:])}"')
    try:
        rule = lab.faults.add(args.host, protocol, words[0], words[1] if len(words) > 1 else None,
                              after=args.after, times=args.times, delay=args.delay or 0.0,
                              drop=args.drop, service=args.service)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return HelpText(f"failure injected: {rule.describe()}")


@subcommand("heal")
@magic_arguments("mail heal")
@argument("host", nargs="?", default=None, help="the host to heal (default: every host)")
def heal(magics: MailMagics, args: argparse.Namespace) -> Any:
    """Undo %mail fail for one host (or all): presets and rules."""
    lab = magics.lab()
    _hosts_check(magics, args.host)
    if getattr(lab, "relay", None) is not None:
        return HelpText(lab.relay.heal(args.host))  # the presets, then every rule
    gone = lab.faults.heal(args.host)
    return HelpText(f"healed: {', '.join(f'{r.host} ({r.protocol} {r.command})' for r in gone)}"
                    if gone else "nothing to heal")
