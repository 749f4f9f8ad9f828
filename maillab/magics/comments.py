"""Trailing ``# comments`` on magic lines, as IPython users write them.

IPython hands a line magic everything after its name, comment included, so
``%mail status   # the port table`` would reach argparse as four more words
(and ``# bob's mail`` as an unclosed quote). A shell ends a line's words at a
``#`` that starts a word outside quotes; so do the lab's magics.
"""

from __future__ import annotations


def strip_comment(line: str) -> str:
    """``line`` without a trailing comment: a ``#`` at the start of a word, outside quotes."""
    quote = ""
    escaped = False
    for i, ch in enumerate(line):
        if escaped:
            escaped = False
        elif ch == "\\" and quote != "'":
            escaped = True
        elif quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line
