"""``%mail check NAME``: judge a self-checking exercise from what the lab saw.

The exercises live in ``notebooks/exercises/NN_NAME.ipynb``; ``maillab
exercises`` (or ``%mail check --list``) names them. The check reads the lab's
events and store (``maillab/exercises/``), so it judges the student's own
attempt whichever client they used, and says what is still missing.
"""

from __future__ import annotations

import argparse
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments

from .. import exercises
from .mail import HelpText, MailMagics, subcommand


@subcommand("check")
@magic_arguments("mail check")
@argument("name", nargs="?", help="the exercise, e.g. submission (--list names them all)")
@argument("--answer", help="your answer, for exercises that ask a question (received_chain)")
@argument("--list", action="store_true", help="list the exercises")
def check(magics: MailMagics, args: argparse.Namespace) -> Any:
    """Check an exercise against what the lab saw: passed, or what is still missing."""
    if args.list or not args.name:
        exercises._load()
        rows = sorted(exercises.EXERCISES.values(), key=lambda e: e.number)
        return HelpText("\n".join(f"{e.name:<16} {e.notebook:<28} {e.title}" for e in rows))
    try:
        return exercises.check(magics.lab(), args.name, args.answer)
    except KeyError as exc:
        raise UsageError(str(exc).strip("'\"")) from None


MAGICS = None  # verbs only
