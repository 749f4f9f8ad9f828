"""Commands of the authenticated state (RFC 3501 6.3), also valid when a mailbox is selected.

SELECT, EXAMINE, CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST, LSUB,
STATUS, APPEND; and from extensions IDLE (RFC 2177), NAMESPACE (RFC 2342),
ENABLE (RFC 5161, authenticated state only).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ...store import SPECIAL_USE, MailboxExists
from ...store.mailbox import count_above
from ...store.names import DELIMITER, is_inbox
from ...store.subscriptions import save_subscriptions, subscriptions
from ..flags import PERMANENT_FLAGS, SYSTEM_FLAGS, check_flags
from ..mailbox_names import compile_pattern, list_pattern, wire_name
from ..responses import No, Notice, Output, line
from ..selected_mailbox import RECENT_META, SelectedMailbox
from ..states import AUTHED, State
from ..verbs import (
    Append,
    Create,
    Delete,
    Enable,
    Examine,
    Idle,
    List,
    Lsub,
    Namespace,
    Rename,
    Select,
    Status,
    Subscribe,
    Unsubscribe,
)

if TYPE_CHECKING:
    from ..session import IMAPSession


def select(s: IMAPSession, cmd: Select) -> Iterator[Output]:
    """RFC 3501 6.3.1 SELECT and 6.3.2 EXAMINE (the same, read-only)."""
    readonly = cmd.readonly
    if s.selected is not None:
        # RFC 3501 6.3.1: the old mailbox is closed first (no expunge), even if this fails
        s.selected = None
        s.set_state(State.AUTHENTICATED)
        yield line("* OK [CLOSED] previous mailbox closed")
    name = s.mailbox_name(cmd.mailbox)
    if not s.store.exists(s.user or "", name):
        raise No(f"[NONEXISTENT] no mailbox {name}")
    mb = s.mailbox(name)
    view = SelectedMailbox(mb, mb.name, readonly)
    snap = mb.snapshot()
    view.start(snap)
    s.selected = view
    s.set_state(State.SELECTED)
    used = set(snap.flag_ids)
    keywords = sorted({f for fid in used for f in snap.flagsets[fid] if not f.startswith("\\")})
    yield line(f"* FLAGS ({' '.join((*SYSTEM_FLAGS, *keywords))})")
    if readonly:
        yield line("* OK [PERMANENTFLAGS ()] read-only mailbox")
    else:
        yield line(f"* OK [PERMANENTFLAGS ({' '.join(PERMANENT_FLAGS)})] flags permitted")
    yield line(f"* {len(view.uids)} EXISTS")
    yield line(f"* {len(view.recent)} RECENT")
    unseen = [snap.flag_ids.index(fid) for fid in used if "\\Seen" not in snap.flagsets[fid]]
    if unseen:
        yield line(f"* OK [UNSEEN {min(unseen) + 1}] first unseen message")
    yield line(f"* OK [UIDVALIDITY {mb.uidvalidity}] UIDs valid")
    yield line(f"* OK [UIDNEXT {snap.uidnext}] predicted next UID")
    yield Notice("state", (s.state.value,), {"mailbox": mb.name})
    return f"[{'READ-ONLY' if readonly else 'READ-WRITE'}] {cmd.name} completed"


examine = select


def create(s: IMAPSession, cmd: Create) -> Iterator[Output]:
    """RFC 3501 6.3.3, with RFC 6154's USE for the lab's fixed special-use folders."""
    name = s.mailbox_name(cmd.mailbox)
    if is_inbox(name):
        raise No("[ALREADYEXISTS] INBOX always exists")
    uses = cmd.uses
    if uses and not all(SPECIAL_USE.get(name) == u for u in uses):
        raise No("[USEATTR] special-use attributes belong to the lab's fixed folders")
    try:
        s.store.create_mailbox(s.user or "", name, sync=s.limits.smtp_fsync)  # on disk before OK
    except MailboxExists:
        raise No(f"[ALREADYEXISTS] mailbox {name} already exists") from None
    return None
    yield


def delete(s: IMAPSession, cmd: Delete) -> Iterator[Output]:
    """RFC 3501 6.3.4."""
    name = s.mailbox_name(cmd.mailbox)
    if is_inbox(name):
        raise No("[CANNOT] INBOX cannot be deleted")
    if s.selected is not None and s.selected.name == name:
        s.selected = None
        s.set_state(State.AUTHENTICATED)
    s.store.delete_mailbox(s.user or "", name, sync=s.limits.smtp_fsync)  # on disk before OK
    s.on_change(s.user or "", name)
    return None
    yield


def rename(s: IMAPSession, cmd: Rename) -> Iterator[Output]:
    """RFC 3501 6.3.5: children move along; renaming INBOX moves its messages into a
    new mailbox and leaves INBOX empty (its children stay)."""
    old, new = s.mailbox_name(cmd.old), s.mailbox_name(cmd.new)
    if is_inbox(new):
        raise No("[ALREADYEXISTS] INBOX exists")
    try:
        s.store.rename_mailbox(s.user or "", old, new, sync=s.limits.smtp_fsync)  # on disk before OK
    except MailboxExists:
        raise No(f"[ALREADYEXISTS] mailbox {new} already exists") from None
    if s.selected is not None and not is_inbox(old) and (
            s.selected.name == old or s.selected.name.startswith(old + DELIMITER)):
        s.selected = None
        s.set_state(State.AUTHENTICATED)
    s.on_change(s.user or "", old)
    return None
    yield


def subscribe(s: IMAPSession, cmd: Subscribe) -> Iterator[Output]:
    """RFC 3501 6.3.6."""
    name = s.mailbox_name(cmd.mailbox)
    if not s.store.exists(s.user or "", name):
        raise No(f"[NONEXISTENT] no mailbox {name}")
    save_subscriptions(s.store, s.user or "", [*subscriptions(s.store, s.user or ""), name],
                       sync=s.limits.smtp_fsync)  # on disk before OK
    return None
    yield


def unsubscribe(s: IMAPSession, cmd: Unsubscribe) -> Iterator[Output]:
    """RFC 3501 6.3.7."""
    name = s.mailbox_name(cmd.mailbox)
    subs = subscriptions(s.store, s.user or "")
    if name not in subs:
        raise No(f"[NONEXISTENT] {name} is not subscribed")
    save_subscriptions(s.store, s.user or "", (n for n in subs if n != name),
                       sync=s.limits.smtp_fsync)  # on disk before OK
    return None
    yield


def list_(s: IMAPSession, cmd: List) -> Iterator[Output]:
    """RFC 3501 6.3.8, with RFC 5258's selection (SUBSCRIBED, SPECIAL-USE) and RETURN."""
    ref, pattern, selection, returns = cmd.reference, cmd.pattern, cmd.selection, cmd.returns
    if pattern == b"":
        # RFC 3501 6.3.8: the hierarchy delimiter and the root of the reference
        yield line(f'* LIST (\\Noselect) "{DELIMITER}" ""')
        return None
    text = list_pattern(ref, pattern)
    if text is None:
        return None
    subscribed_only = "SUBSCRIBED" in selection
    show_subscribed = subscribed_only or "SUBSCRIBED" in returns
    special_only = "SPECIAL-USE" in selection
    yield from _list_lines(s, "LIST", text, subscribed_only, show_subscribed, special_only)
    return None


def lsub(s: IMAPSession, cmd: Lsub) -> Iterator[Output]:
    """RFC 3501 6.3.9: LIST of the subscribed names."""
    text = list_pattern(cmd.reference, cmd.pattern)
    if text is None:
        return None
    yield from _list_lines(s, "LSUB", text, True, False, False)
    return None


def _list_lines(s: IMAPSession, verb: str, pattern: str, subscribed_only: bool,
                show_subscribed: bool, special_only: bool) -> Iterator[Output]:
    existing = s.store.list_mailboxes(s.user or "")
    exists = set(existing)
    subs = set(subscriptions(s.store, s.user or "")) if (subscribed_only or show_subscribed) \
        else set()
    # Parents that are not folders themselves (Maildir++ allows .a.b without .a)
    parents: set[str] = set()
    for n in existing:
        parts = n.split(DELIMITER)
        for i in range(1, len(parts)):
            parents.add(DELIMITER.join(parts[:i]))
    names = sorted(exists | (parents if pattern.endswith("%") else set()) |
                   (subs if subscribed_only else set()), key=lambda n: (n != "INBOX", n))
    matcher = compile_pattern(pattern)
    inbox_matcher = compile_pattern("INBOX" + pattern[5:]) if pattern[:5].upper() == "INBOX" \
        else matcher
    for name in names:
        ok = (inbox_matcher if name == "INBOX" or name.startswith("INBOX/") else matcher)(name)
        if not ok or (subscribed_only and name not in subs):
            continue
        attrs: list[str] = []
        if name not in exists:
            attrs.append("\\NonExistent" if name not in parents else "\\Noselect")
        attrs.append("\\HasChildren" if name in parents else "\\HasNoChildren")
        if name in SPECIAL_USE:
            attrs.append(SPECIAL_USE[name])
        elif special_only:
            continue
        if show_subscribed and name in subs and verb == "LIST":
            attrs.append("\\Subscribed")
        yield line(f'* {verb} ({" ".join(attrs)}) "{DELIMITER}" {wire_name(name)}')


def namespace(s: IMAPSession, cmd: Namespace) -> Iterator[Output]:
    """RFC 2342: one personal namespace, no others."""
    yield line(f'* NAMESPACE (("" "{DELIMITER}")) NIL NIL')


def enable(s: IMAPSession, cmd: Enable) -> Iterator[Output]:
    """RFC 5161: only extensions we support and that need enabling; we have none of those."""
    yield line("* ENABLED")


def status(s: IMAPSession, cmd: Status) -> Iterator[Output]:
    """RFC 3501 6.3.10, with SIZE and DELETED (RFC 8438, RFC 9051)."""
    name = s.mailbox_name(cmd.mailbox)
    if not s.store.exists(s.user or "", name):
        raise No(f"[NONEXISTENT] no mailbox {name}")
    mb = s.mailbox(name)
    snap = mb.snapshot()
    mark = int(mb.get_meta(RECENT_META, "0") or 0)
    counts = Counter(snap.flag_ids)

    def having(flag: str, present: bool) -> int:
        return sum(n for fid, n in counts.items() if (flag in snap.flagsets[fid]) == present)

    values = {
        "MESSAGES": len(snap.uids),
        "RECENT": count_above(snap.uids, mark),
        "UIDNEXT": snap.uidnext,
        "UIDVALIDITY": mb.uidvalidity,
        "UNSEEN": having("\\Seen", False),
        "DELETED": having("\\Deleted", True),
    }
    if "SIZE" in cmd.items:  # the only item that may need the files (sizes not yet known)
        values["SIZE"] = mb.total_size()
    if s.selected is not None and s.selected.mailbox is mb:
        values["RECENT"] = len(s.selected.recent)
    items = " ".join(f"{k} {values[k]}" for k in cmd.items)
    yield line(f"* STATUS {wire_name(name)} ({items})")


def append(s: IMAPSession, cmd: Append) -> Iterator[Output]:
    """RFC 3501 6.3.11, answering APPENDUID (RFC 4315)."""
    name = s.mailbox_name(cmd.mailbox)
    if not s.store.exists(s.user or "", name):
        raise No(f"[TRYCREATE] no mailbox {name}")
    if not cmd.message:
        raise No("an empty message cannot be appended")
    stored_flags = check_flags(cmd.flags)
    mb = s.mailbox(name)
    info = mb.add(cmd.message, stored_flags, cmd.when, sync=s.limits.smtp_fsync)  # on disk before OK
    yield Notice("stored", (mb.name, info.uid, info.size))
    s.store.notify(s.user or "", mb.name, info)
    return f"[APPENDUID {mb.uidvalidity} {info.uid}] APPEND completed"


def idle(s: IMAPSession, cmd: Idle) -> Iterator[Output]:
    """RFC 2177: "+" now, then untagged updates as they happen, until DONE."""
    s.mode = "idle"
    s.pending_tag = cmd.tag
    yield line("+ idling")
    if s.selected is not None:
        yield from s.updates(True)
    return None


#: command -> (handler, the states that accept it)
COMMANDS = {
    Select: (select, AUTHED),
    Examine: (examine, AUTHED),
    Create: (create, AUTHED),
    Delete: (delete, AUTHED),
    Rename: (rename, AUTHED),
    Subscribe: (subscribe, AUTHED),
    Unsubscribe: (unsubscribe, AUTHED),
    List: (list_, AUTHED),
    Lsub: (lsub, AUTHED),
    Status: (status, AUTHED),
    Append: (append, AUTHED),
    Idle: (idle, AUTHED),
    Namespace: (namespace, AUTHED),
    Enable: (enable, (State.AUTHENTICATED,)),
}
