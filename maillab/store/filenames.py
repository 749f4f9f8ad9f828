"""Maildir file names (https://cr.yp.to/proto/maildir.html, and Dovecot's additions).

``1700000001.M123456P42Q7.host,S=2345,W=2391:2,FS`` is a message's *key* (unique,
never changes: ``1700000001.M123456P42Q7.host,S=2345,W=2391``) and its *info*
(``:2,`` then one letter per flag, ASCII order). Dovecot and the lab put the size
on disk (``S=``) and the size with CRLF line ends (``W=``) into the key, so an
index can be built from directory entries alone, without opening a file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: IMAP system flags <-> Maildir info letters.
FLAG_LETTERS = {
    "\\Draft": "D",
    "\\Flagged": "F",
    "$Forwarded": "P",
    "\\Answered": "R",
    "\\Seen": "S",
    "\\Deleted": "T",
}
LETTER_FLAGS = {v: k for k, v in FLAG_LETTERS.items()}

_SIZES = re.compile(r",S=(\d{1,15})(?:,W=(\d{1,15}))?(?=[,:]|$)")
_SIZE = re.compile(r",S=(\d{1,15})(?=[,:]|$)")
_CRLF = re.compile(r",W=(\d{1,15})(?=[,:]|$)")
_ARRIVAL = re.compile(r"(\d{1,15})(?:\.M(\d{1,9}))?")


def key_of(filename: str) -> str:
    """The unique part of a file name (everything before the info)."""
    return filename.split(":", 1)[0]


def sizes_from_key(key: str) -> tuple[int | None, int | None]:
    """The ``,S=<size>`` and ``,W=<CRLF size>`` a key may carry."""
    both = _SIZES.search(key)  # the usual spelling: ",S=2345,W=2391"
    if both is not None and both[2] is not None:
        return int(both[1]), int(both[2])
    size = both or _SIZE.search(key)
    crlf = _CRLF.search(key) if ",W=" in key else None
    return (int(size[1]) if size else None, int(crlf[1]) if crlf else None)


def info_letters(flags: Iterable[str]) -> str:
    """The info letters of a flag set, in ASCII order as the spec asks."""
    return "".join(sorted(FLAG_LETTERS[f] for f in flags if f in FLAG_LETTERS))


def flags_from_filename(filename: str) -> set[str]:
    """The system flags a file name's info carries (unknown letters are ignored)."""
    if ":2," not in filename:
        return set()
    letters = filename.rsplit(":2,", 1)[1]
    return {LETTER_FLAGS[c] for c in letters if c in LETTER_FLAGS}


def arrival_order(key: str) -> tuple[int, int, str]:
    """Sort key for files found on disk: delivery second, then microsecond, then name.
    Dovecot gives UIDs to new files in this order (its maildir_filename_sort_cmp)
    without a stat per file; names that do not start with a time go last."""
    m = _ARRIVAL.match(key)
    if m is None:
        return (1 << 62, 0, key)
    return (int(m[1]), int(m[2] or 0), key)
