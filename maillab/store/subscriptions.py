"""IMAP subscriptions (RFC 3501 6.3.6): a small per-user file, names one per line.

A user who never subscribed is subscribed to INBOX and the special-use folders,
so LSUB in a fresh client shows the folders the lab made.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from . import SPECIAL_USE, Store
from .groupsync import GROUP, replace_file

SUBSCRIPTIONS_FILE = "maillab-imap-subscriptions"


def _path(store: Store, user: str) -> Path:
    return store.user_root(user) / SUBSCRIPTIONS_FILE


def subscriptions(store: Store, user: str) -> list[str]:
    """The names ``user`` is subscribed to, in the order subscribed."""
    path = _path(store, user)
    if not path.exists():
        return ["INBOX", *SPECIAL_USE]
    return [n for n in path.read_text("utf-8").split("\n") if n]


def save_subscriptions(store: Store, user: str, names: Iterable[str], *, sync: bool = False) -> None:
    """Replace ``user``'s subscriptions (atomically: a crash leaves the old list). With
    ``sync`` the new list is on the disk, and the directory that names it, before this
    returns (SUBSCRIBE's OK)."""
    path = _path(store, user)
    replace_file(path, "".join(n + "\n" for n in dict.fromkeys(names)).encode("utf-8"), sync=sync)
    if sync:
        GROUP.sync([os.fspath(path.parent)])
