"""Maildir file names (https://cr.yp.to/proto/maildir.html, and Dovecot's additions).

``1700000001.M123456P42Q7.host,S=2345,W=2391:2,FS`` is a message's *key* (unique,
never changes: ``1700000001.M123456P42Q7.host,S=2345,W=2391``) and its *info*
(``:2,`` then one letter per flag, ASCII order). Dovecot and the lab put the size
on disk (``S=``) and the size with CRLF line ends (``W=``) into the key, so an
index can be built from directory entries alone, without opening a file.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterable, Sequence
from itertools import repeat
from typing import Any

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
# The same, one match per line of many keys joined by newlines (no key holds one:
# they come from file names that are checked first). The size pattern walks the
# key comma by comma to the first valid ",S=" as _SIZES.search does.
_ARRIVALS = re.compile(r"^(\d{0,15})(?:\.M(\d{1,9}))?", re.M)
_SIZE_LINES = re.compile(r"^[^,\n]*(?:,(?!S=\d{1,15}(?:[,\n]|$))[^,\n]*)*(?:,S=(\d{1,15})(?=[,\n]|$))?",
                         re.M)
#: Where names that do not start with a delivery time go: after all that do.
_NO_TIME = 1 << 62


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


#: Keys parsed per regular-expression call: a call holds the interpreter (the lab loop
#: and other threads wait), so a few milliseconds at a time.
SLICE = 4_096


def _per_line(pattern: re.Pattern[str], keys: Sequence[str], unless: str = "\n") -> list[Any] | None:
    """``pattern.findall`` over ``keys`` joined by newlines, a slice at a time: one result
    per key. None when a key holds a newline (a file name may) or ``unless``: then the
    caller goes key by key."""
    out: list[Any] = []
    for start in range(0, len(keys), SLICE):
        part = keys[start:start + SLICE]
        text = "\n".join(part)
        if text.count("\n") != len(part) - 1 or unless != "\n" and unless in text:
            return None
        out += pattern.findall(text)
    return out


def arrival_sorted(keys: Sequence[str]) -> list[int]:
    """The positions of ``keys`` in the order :func:`arrival_order` sorts them, computed
    for all at once (100,000 names in a few tens of milliseconds: a regular expression
    over many names per call and a sort of plain integers, not a Python call and a
    tuple per name)."""
    n = len(keys)
    found = _per_line(_ARRIVALS, keys) if n > 1 else None
    if found is None:
        return sorted(range(n), key=lambda i: arrival_order(keys[i]))
    secs, micros = zip(*found, strict=True)
    if "" in secs:  # a name that does not start with a time: its microseconds do not count
        micros = tuple(m if s else "" for s, m in zip(secs, micros, strict=True))
        secs = tuple(s or str(_NO_TIME) for s in secs)
    if "" in micros:
        micros = tuple(m or "0" for m in micros)
    # delivery second and microsecond in one integer (microseconds: at most 9 digits)
    when = list(map(operator.or_, map(operator.lshift, map(int, secs), repeat(30)), map(int, micros)))
    if len(set(when)) == n:
        return sorted(range(n), key=when.__getitem__)
    order = sorted(range(n), key=keys.__getitem__)  # ties go by name: sort by it first
    order.sort(key=when.__getitem__)  # (the sort is stable)
    return order


def sizes_from_keys(keys: Sequence[str]) -> tuple[list[int], list[int]]:
    """:func:`sizes_from_key` of every key, as two lists (size, CRLF size), -1 where the
    key does not tell; computed many keys per call when no key carries ``W=`` (names
    written by other tools than Dovecot and the lab)."""
    found = _per_line(_SIZE_LINES, keys, unless=",W=")
    if found is not None:
        if "" not in found:
            return list(map(int, found)), [-1] * len(keys)
        return [int(s) if s else -1 for s in found], [-1] * len(keys)
    pairs = [sizes_from_key(k) for k in keys]
    return ([-1 if s is None else s for s, _ in pairs], [-1 if c is None else c for _, c in pairs])
