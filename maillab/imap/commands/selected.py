"""Commands of the selected state (RFC 3501 6.4), besides FETCH and SEARCH.

CHECK, CLOSE, EXPUNGE, STORE, COPY (each also as UID EXPUNGE/STORE/COPY, RFC
3501 6.4.8 and RFC 4315), and from extensions UNSELECT (RFC 3691) and MOVE (RFC
6851). FETCH is in :mod:`.fetch`, SEARCH in :mod:`.search`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from ...store import Mailbox
from ...store.moving import begin_move, end_move, forward, undo_move
from ..flags import check_flags
from ..responses import No, Notice, Output, line, lines
from ..selected_mailbox import LINES_PER_RESPONSE, SelectedMailbox
from ..states import SELECTED_ONLY, State
from ..verbs import Check, Close, Copy, Expunge, Move, Store, Unselect

if TYPE_CHECKING:
    from ..session import IMAPSession

READ_ONLY = "[READ-ONLY] the mailbox is read-only (EXAMINE)"
EXPUNGED = "[EXPUNGEISSUED] some of the messages were expunged by another session"


def check(s: IMAPSession, cmd: Check) -> Iterator[Output]:
    """RFC 3501 6.4.1: every change is on disk already; only the updates follow."""
    return None
    yield


def _expunge_deleted(s: IMAPSession, only: set[int] | None = None) -> list[int]:
    """Remove the messages flagged \\Deleted (of ``only``, for UID EXPUNGE)."""
    view = s.view()
    if view.readonly:
        raise No(READ_ONLY)
    mb = view.mailbox
    mb.sync()
    doomed = [u for u in mb.uids_with_flag("\\Deleted") if only is None or u in only]
    # Only what is still \Deleted when its batch is removed (another session may
    # have taken the flag off meanwhile).
    removed = mb.remove(doomed, unless=lambda flags: "\\Deleted" not in flags, sync=s.limits.smtp_fsync)
    if removed:
        s.on_change(s.user or "", view.name)
    return removed


def close(s: IMAPSession, cmd: Close) -> Iterator[Output]:
    """RFC 3501 6.4.2: expunge silently (no EXPUNGE responses), back to AUTHENTICATED."""
    view = s.view()
    if not view.readonly:
        _expunge_deleted(s)
    s.selected = None
    s.set_state(State.AUTHENTICATED)
    yield Notice("state", (s.state.value,))
    return None


def unselect(s: IMAPSession, cmd: Unselect) -> Iterator[Output]:
    """RFC 3691: CLOSE without the expunge."""
    s.selected = None
    s.set_state(State.AUTHENTICATED)
    yield Notice("state", (s.state.value,))
    return None


def expunge(s: IMAPSession, cmd: Expunge) -> Iterator[Output]:
    """RFC 3501 6.4.3, and UID EXPUNGE (RFC 4315 2.1) limited to a UID set."""
    only = None
    if cmd.sequence_set is not None:
        view = s.view()
        only = {view.uids[i] for i in view.resolve(cmd.sequence_set, True)}
    _expunge_deleted(s, only)
    return None  # the EXPUNGE responses come from the session's updates right after
    yield


def store(s: IMAPSession, cmd: Store) -> Iterator[Output]:
    """RFC 3501 6.4.6: FLAGS, +FLAGS, -FLAGS (.SILENT), answered with the new flags.

    A message another session expunged (still shown here) keeps no flags: it is left
    out. UID STORE ignores it like a UID that does not exist (RFC 3501 6.4.8; its
    EXPUNGE follows in this very response); STORE.SILENT answers OK for the others
    (RFC 2180 4.2.1); a STORE that would report its flags ends NO [EXPUNGEISSUED]
    after storing and reporting the others (RFC 2180 4.2.2, 4.2.3; RFC 5530)."""
    mode, silent = cmd.mode, cmd.silent
    view = s.view()
    if view.readonly:
        raise No(READ_ONLY)
    flags = check_flags(cmd.flags)
    mb = view.mailbox
    missing = False
    indexes = view.resolve(cmd.sequence_set, cmd.uid)
    how = _add_flags if mode == "+" else _remove_flags if mode == "-" else _replace_flags
    # on the disk before the responses and the OK (one fsync round for the whole set)
    now, changed = mb.change_flags([view.uids[i] for i in indexes], how, flags,
                                   sync=s.limits.smtp_fsync)
    out: list[str] = []
    uid_part = "UID {} " if cmd.uid else ""
    for idx in indexes:
        uid = view.uids[idx]
        new = now.get(uid)
        if new is None:
            missing = True
            continue
        view.report(idx, new)
        if not silent:
            out.append(f"* {idx + 1} FETCH ({uid_part.format(uid)}FLAGS ({view.flags_text(uid, new)}))")
        if len(out) >= LINES_PER_RESPONSE:
            yield lines(out)
            out = []
    if out:
        yield lines(out)
    if changed:
        s.on_change(s.user or "", view.name)
    if missing and not (cmd.uid or silent):
        raise No(EXPUNGED)
    return None


def _add_flags(old: frozenset[str], flags: frozenset[str]) -> frozenset[str]:
    return old | flags


def _remove_flags(old: frozenset[str], flags: frozenset[str]) -> frozenset[str]:
    return old - flags


def _replace_flags(old: frozenset[str], flags: frozenset[str]) -> frozenset[str]:
    return flags


def _target(s: IMAPSession, raw: bytes) -> Mailbox:
    name = s.mailbox_name(raw)
    if not s.store.exists(s.user or "", name):
        raise No(f"[TRYCREATE] no mailbox {name}")
    return s.mailbox(name)


def _copy(s: IMAPSession, cmd: Copy, copied: dict[int, tuple[int, frozenset[str]]] | None = None,
          ) -> Iterator[Output]:
    """COPY, and the first half of MOVE. Returns the COPYUID data and the target;
    ``copied`` gets each original's UID -> (its copy's UID, the flags copied)."""
    view = s.view()
    target = _target(s, cmd.mailbox)
    indexes = view.resolve(cmd.sequence_set, cmd.uid)
    _refuse_ghosts(view, indexes)
    src_uids: list[int] = []
    dst_uids: list[int] = []
    for idx in indexes:
        uid = view.uids[idx]
        info = view.mailbox.get(uid)
        data = None
        if info is not None:
            try:
                data = view.mailbox.read(uid)
            except (KeyError, FileNotFoundError):
                pass
        if data is None:  # expunged elsewhere while we copied
            if copied is not None:
                continue  # MOVE: the message is gone from the source either way
            target.remove(dst_uids, sync=s.limits.smtp_fsync)  # all or nothing (6.4.7)
            raise No(EXPUNGED)
        # each file fsync'ed; the directory and index once for the whole COPY, below
        new = target.add(data, info.flags, info.internaldate, sync=s.limits.smtp_fsync, flush=False)
        src_uids.append(uid)
        dst_uids.append(new.uid)
        if copied is not None:
            copied[uid] = (new.uid, info.flags)
        s.store.notify(s.user or "", target.name, new)
        yield Notice("stored", (target.name, new.uid, new.size))
    if not src_uids:
        return "", target
    if s.limits.smtp_fsync:
        target.flush()  # before the OK (and before MOVE removes the originals)
    return f"COPYUID {target.uidvalidity} {uid_set(src_uids)} {uid_set(dst_uids)}", target


def _refuse_ghosts(view: SelectedMailbox, indexes: Sequence[int]) -> None:
    """A COPY copies every message named or none (RFC 3501 6.4.7). One that another
    session expunged (still shown here) cannot be copied: NO [EXPUNGEISSUED] before
    anything is, as Dovecot answers (RFC 2180 4.4.1)."""
    mb = view.mailbox
    uids = view.uids
    with mb.lock:
        if any(mb.table.slot(uids[i]) is None for i in indexes):
            raise No(EXPUNGED)


def copy(s: IMAPSession, cmd: Copy) -> Iterator[Output]:
    """RFC 3501 6.4.7, answering COPYUID (RFC 4315)."""
    copyuid, _ = yield from _copy(s, cmd)
    return f"[{copyuid}] COPY completed" if copyuid else None


def move(s: IMAPSession, cmd: Move) -> Iterator[Output]:
    """RFC 6851: COPY, then expunge the originals (no \\Deleted needed)."""
    view = s.view()
    if view.readonly:
        raise No(READ_ONLY)
    # written down first (on the disk, with fsync, before any copy is): a crash or a
    # power cut before the originals are gone is finished at the next open
    # (store/moving.py), so no message is left in both folders
    sync = s.limits.smtp_fsync
    indexes = view.resolve(cmd.sequence_set, cmd.uid)
    _refuse_ghosts(view, indexes)  # before the plan: nothing to finish after a NO
    uids = [view.uids[i] for i in indexes]
    target = _target(s, cmd.mailbox)
    plan = begin_move(view.mailbox, target, uids, sync=sync) if uids else None
    copied: dict[int, tuple[int, frozenset[str]]] = {}
    try:
        copyuid, target = yield from _copy(s, cmd, copied)
        if copyuid:
            yield line(f"* OK [{copyuid}] moved")  # RFC 6851 4.3: COPYUID untagged, first
        removed = _expunge_moved(view.mailbox, target, copied, sync)
    except Exception:
        # failed partway (NO follows): rolled back now, not left in both folders until
        # the next start finishes it from the plan (store/moving.py)
        if plan is not None and undo_move(view.mailbox, target, plan, sync=sync):
            s.on_change(s.user or "", target.name)
        raise
    if removed:
        s.on_change(s.user or "", view.name)
    if sync and len(removed) < len(copied):
        # another session expunged some originals first, its flush maybe not done yet:
        # the plan must not go before their removal is on the disk either
        view.mailbox.flush()
    if plan is not None:
        end_move(plan)  # after the expunge's round (remove(sync=...) waited for it)
    return None  # the EXPUNGE responses follow from the updates (MOVE allows them)


def _expunge_moved(source: Mailbox, target: Mailbox, copied: dict[int, tuple[int, frozenset[str]]],
                   sync: bool) -> list[int]:
    """MOVE's second half: the originals go, each once its copy has the flags the
    original has at that moment. A flag changed on an original after it was copied
    (a POP3 RETR's \\Seen, another session's STORE or FETCH BODY[]) was acknowledged
    to that client: it is carried to the copy, or it would be lost with the original.
    An original whose flags change again meanwhile stays for another round."""
    removed: list[int] = []
    left = dict(copied)
    while left:
        now = {uid: source.flags(uid) for uid in left}
        changes: dict[int, tuple[frozenset[str], frozenset[str]]] = {}
        for uid, flags in now.items():
            dst, had = left.pop(uid)
            if flags is None:
                continue  # expunged meanwhile by someone else
            if flags != had:
                changes[dst] = (flags - had, had - flags)  # what was added, what removed
            left[uid] = (dst, flags)
        if changes:
            target.change_flags(changes, _carry, sync=sync)
        forward(source, target, {uid: dst for uid, (dst, _) in left.items()})  # for a POP3 RETR
        gone = source.remove(list(left), sync=sync, expected={uid: f for uid, (_, f) in left.items()})
        removed += gone
        for uid in gone:
            del left[uid]
    return removed


def _carry(old: frozenset[str], change: tuple[frozenset[str], frozenset[str]]) -> frozenset[str]:
    added, dropped = change
    return (old | added) - dropped


def uid_set(uids: list[int]) -> str:
    """Compact a UID list for COPYUID: 4,5,6,9 -> 4:6,9 (order kept, as RFC 4315 requires)."""
    out: list[str] = []
    start = prev = uids[0]
    for u in uids[1:]:
        if u == prev + 1:
            prev = u
            continue
        out.append(f"{start}:{prev}" if start != prev else str(start))
        start = prev = u
    out.append(f"{start}:{prev}" if start != prev else str(start))
    return ",".join(out)


#: command -> (handler, the states that accept it)
COMMANDS = {
    Check: (check, SELECTED_ONLY),
    Close: (close, SELECTED_ONLY),
    Unselect: (unselect, SELECTED_ONLY),
    Expunge: (expunge, SELECTED_ONLY),
    Store: (store, SELECTED_ONLY),
    Copy: (copy, SELECTED_ONLY),
    Move: (move, SELECTED_ONLY),
}
