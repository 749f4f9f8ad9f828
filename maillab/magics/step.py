"""``%mail step pop3 bob``: the step-through client (replaces the telnet lab).

A real connection to the lab; the next command is suggested from the protocol
state and can be edited; a button sends it and the reply appears with its
explanation beside the state it leads to. Wrong orders get the server's real
error. See ``maillab/step/`` and ``views/step.py``.
"""

from __future__ import annotations

import argparse
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments

from ..step import StepClient
from ..views.step import StepView
from .mail import MailMagics, subcommand


@subcommand("step")
@magic_arguments("mail step")
@argument("protocol", choices=["smtp", "pop3", "imap"], help="which protocol to step through")
@argument("user", help="whose session: bob, or bob@alpha.test (SMTP: the sender)")
@argument("--service", help="another lab service: smtp (port 25), smtps, pop3s, imaps, ...")
@argument("--to", dest="recipient", help="SMTP: the recipient the suggestions use")
def step(magics: MailMagics, args: argparse.Namespace) -> Any:
    """A real SMTP/POP3/IMAP session one command at a time: suggested next command, state beside it."""
    lab = magics.lab()
    try:
        client = StepClient(lab, args.protocol, args.user, service=args.service,
                            recipient=args.recipient, timeout=magics.timeout)
    except (ValueError, KeyError) as exc:
        raise UsageError(str(exc).strip("'\"")) from None
    except OSError as exc:
        raise UsageError(f"cannot connect: {exc}") from None
    return StepView(client)


MAGICS = None  # verbs only
