"""A MOVE that a crash interrupted is finished when the folder is next opened.

IMAP MOVE (RFC 6851) is a COPY, then the expunge of the originals: a ``kill -9``
between the two would leave each copied message in both folders, which RFC 6851 3.3
says a server SHOULD NOT do (never in neither: that one is a MUST, and the order of
the two steps keeps it). So a MOVE first writes down what it is about to do, in a
small file beside the source folder's index (``maillab-moving-<n>.json``: the target,
the target's UIDNEXT before the copy, the originals' UIDs), and removes it once
the originals are gone.

A power cut asks more than a ``kill -9``: the kernel may write the copies' names to
the disk before the plan's, or the plan's removal before the originals' unlinks.
So with ``sync`` the plan's data and its name (the source folder's directory) are
fsync'ed, in one group-commit round (:mod:`maillab.store.groupsync`), before the first
copy is written, and the plan is removed only after the expunge of the originals is
on the disk (the caller's :meth:`~maillab.store.mailbox.Mailbox.remove` with ``sync``
returns after its round). The removal itself needs no fsync: a plan that comes back
finds no original left, and finishes nothing. A plan cut short while it was written
(nothing of it, or half of it, on the disk) was written before anything was copied:
it is dropped. When a process opens the folder and finds such a file, the
move was cut short: each original that has a copy in the target (a message at or
above that UIDNEXT with the same bytes and internal date) gets the original's flags
added to its own (a flag set on the original after the copy, by a RETR or a STORE
already acknowledged, is not lost) and the original is expunged, as the MOVE would
have done; one without a copy stays where it was. Either way each message ends in
exactly one of the two folders.

A MOVE that fails partway in a running process (a copy or the expunge raised, the
session answers NO) is rolled back at once (:func:`undo_move`): its copies whose
originals are still there are expunged, then the plan goes; only when that fails
too does the plan wait for the next open.

A running process also remembers where each recently moved message went
(:func:`moved_to`): a POP3 RETR that read a message just before a MOVE took it away
marks its \\Seen afterwards, on the copy.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path

from .groupsync import GROUP
from .mailbox import Mailbox

__all__ = ["begin_move", "end_move", "finish_moves", "forward", "moved_to", "undo_move"]

log = logging.getLogger(__name__)

#: Moved messages remembered per source folder (a reader needs one only for the moment
#: between reading a message and marking it read).
FORWARDS_KEPT = 4096

_PREFIX = "maillab-moving-"
_counter = itertools.count(1)
_forwards: weakref.WeakKeyDictionary[Mailbox, dict[int, tuple[Mailbox, int]]] = weakref.WeakKeyDictionary()
_forwards_lock = threading.Lock()


def forward(source: Mailbox, target: Mailbox, copies: dict[int, int]) -> None:
    """Remember that ``source``'s messages ``copies`` (UID -> copy's UID) moved to ``target``
    (before they are expunged, so a reader never finds one gone and not yet forwarded)."""
    with _forwards_lock:
        table = _forwards.setdefault(source, {})
        table.update((uid, (target, copy)) for uid, copy in copies.items())
        for uid in list(itertools.islice(table, max(0, len(table) - FORWARDS_KEPT))):
            del table[uid]


def moved_to(source: Mailbox, uid: int) -> tuple[Mailbox, int] | None:
    """Where ``source``'s message ``uid`` was moved lately (the folder, its UID there)."""
    with _forwards_lock:
        table = _forwards.get(source)
        return table.get(uid) if table is not None else None


def begin_move(source: Mailbox, target: Mailbox, uids: Iterable[int], *, sync: bool) -> Path:
    """Write down a MOVE about to copy ``uids`` from ``source`` to ``target``; with
    ``sync`` the plan is on the disk (its data, then its name) when this returns,
    before any copy can be."""
    uids = list(uids)
    # the keys too: a power cut inside the expunge's fsync round can keep an original's
    # index row deleted (the index log is fsync'ed first) and lose its file's rename out,
    # so the next open finds the file again under a new UID (tests/test_power_cut.py)
    keys = [info.key if (info := source.get(uid)) is not None else None for uid in uids]
    plan = {"target": target.name, "from_uid": target.uidnext, "uids": uids, "keys": keys}
    path = f"{os.fspath(source.path)}/{_PREFIX}{os.getpid()}-{next(_counter)}.json"
    # No temporary file and rename: a plan that is not whole is one that was cut
    # short before anything was copied, and finish_moves drops it.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        with memoryview(json.dumps(plan).encode()) as view:
            written = 0
            while written < len(view):
                written += os.write(fd, view[written:])
    finally:
        os.close(fd)
    if sync:
        # the file (its data) and the folder's directory (its name), in one round: the
        # round fsyncs files before directories
        GROUP.sync([path, os.fspath(source.path)])
    return Path(path)


def end_move(path: Path) -> None:
    """The MOVE is done: its originals' expunge is on the disk (with ``sync``), so
    there is nothing left to finish."""
    path.unlink(missing_ok=True)


def undo_move(source: Mailbox, target: Mailbox, plan: Path, *, sync: bool) -> bool:
    """A MOVE that failed partway in this process (a copy or the expunge raised: the
    disk full, a bug): rolled back now rather than finished at the next start. Each
    copy in ``target`` whose original is still in ``source`` is expunged (the copies
    are found as :func:`finish_moves` finds them: by their bytes and date, so one
    whose ``add`` failed after its rename counts too), and the plan removed once that
    is on the disk (``sync``). An original already gone (this MOVE's expunge got that
    far, or another session's) keeps its copy: each message ends in exactly one
    folder. Returns False when the roll-back failed as well (the disk is still
    refusing): the plan stays, and the next open finishes the MOVE instead."""
    try:
        recorded = json.loads(plan.read_bytes())
        first, uids = int(recorded["from_uid"]), [int(u) for u in recorded["uids"]]
        copies = _copied(source, target, first, uids)
        target.remove([copy for uid, copy in copies.items() if source.flags(uid) is not None], sync=sync)
        end_move(plan)
    except Exception:  # noqa: BLE001 - whatever it is, the plan finishes the move later
        log.exception("rolling back a MOVE out of %s failed: the next open finishes it", source.path)
        return False
    return True


def finish_moves(source: Mailbox, open_target: Callable[[str], Mailbox | None], *, sync: bool) -> list[int]:
    """Finish the MOVEs out of ``source`` that a crash cut short (see the module's
    docstring); ``open_target(name)`` is the target folder, or None when it no longer
    exists. Returns the UIDs expunged from ``source``."""
    removed: list[int] = []
    for half in source.path.glob(f"{_PREFIX}*.json.tmp"):
        half.unlink(missing_ok=True)  # (plans were once written through a .tmp: it had copied nothing)
    for path in sorted(source.path.glob(f"{_PREFIX}*.json")):
        try:
            plan = json.loads(path.read_bytes())
            target = open_target(plan["target"])
            first, uids = int(plan["from_uid"]), [int(u) for u in plan["uids"]]
            keys = [str(k) if k else None for k in plan.get("keys", ())]
        except (OSError, ValueError, KeyError, TypeError):
            target = None  # not whole: cut short while it was written, before any copy
        if target is not None:
            copies = _copied(source, target, first, _found_again(source, uids, keys))
            now = {copy: flags for uid, copy in copies.items() if (flags := source.flags(uid))}
            if now:
                target.change_flags(now, lambda old, flags: old | flags, sync=sync)
            removed += source.remove(list(copies), sync=sync)
        path.unlink(missing_ok=True)
    return removed


def _found_again(source: Mailbox, uids: list[int], keys: list[str | None]) -> dict[int, bool]:
    """The plan's originals as ``source`` names them now: UID -> whether it is one found
    again by its key under another UID (its index row lost, its file not: see
    :func:`begin_move`), whose internal date the rescan took from the file."""
    missing = {key: uid for uid, key in zip(uids, keys, strict=False) if key and source.get(uid) is None}
    found = {uid: False for uid in uids if source.get(uid) is not None}
    if missing:
        for info in source.messages():
            if info.key in missing:
                found[info.uid] = True
    return found


def _copied(source: Mailbox, target: Mailbox, first: int, uids: Iterable[int] | dict[int, bool]) -> dict[int, int]:
    """Those of ``uids`` that have a copy in ``target`` at or above UID ``first``, and
    the copy's UID: the same size and internal date, and the same bytes (the same size
    and bytes for one found again by its key, ``uids[uid]`` true)."""
    again = uids if isinstance(uids, dict) else {}
    candidates: dict[tuple[int, float], list[int]] = {}
    by_size: dict[int, list[int]] = {}
    for info in target.messages():
        if info.uid >= first:
            candidates.setdefault((info.size, info.internaldate), []).append(info.uid)
            by_size.setdefault(info.size, []).append(info.uid)
    done = {}
    for uid in uids:
        info = source.get(uid)
        if info is None:
            same = []
        elif again.get(uid):
            same = [c for c in by_size.get(info.size, []) if c not in done.values()]
        else:
            same = candidates.get((info.size, info.internaldate), [])
        for candidate in same:
            try:
                if target.read(candidate) == source.read(uid):
                    done[uid] = candidate
                    same.remove(candidate)  # one copy answers for one original
                    break
            except (KeyError, FileNotFoundError):
                continue
    return done
