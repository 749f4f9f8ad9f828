"""Exercises about reading mail: POP3 deletion, IMAP envelopes and folders,
and the Received chain."""

from __future__ import annotations

import re

from ..lab import Lab
from ..relay.hops import parse_hops
from . import CheckResult, exercise
from .evidence import Conversation, conversations, envelope_senders, mailbox_name, messages

#: The user whose mailbox the reading tasks (POP3, IMAP) work on: "as bob".
READER = "bob@alpha.test"
#: Who sends the message whose Received chain is read, and to whom.
CHAIN_SENDER, CHAIN_RECIPIENT = "alice@alpha.test", "carol@beta.test"


def _as_reader(lab: Lab, protocol: str, result: CheckResult) -> list[Conversation]:
    """The sessions of ``protocol`` logged in as :data:`READER`; a hint if the only
    ones logged in as someone else."""
    convs = conversations(lab, protocol)
    mine = [c for c in convs if c.login == READER]
    others = sorted({c.login for c in convs if c.login and c.login != READER})
    if not mine and others:
        result.hints.append(f"your {protocol.upper()} sessions logged in as {', '.join(others)}: the task "
                            f"works on {READER}'s mailbox, so log in as {READER} (password bob-pw)")
    return mine


def _maildrop(conv: Conversation) -> dict[int, str]:
    """Message number -> unique id (UIDL) of the maildrop as the session opened it."""
    for e in conv.kinds("note"):
        if e.data.get("pop3") == "maildrop":
            return {int(n): str(uid) for n, uid, *_size in e.data.get("messages", [])}
    return {}


def _pop3_outcome(conv: Conversation) -> tuple[list[int], list[int], bool, bool]:
    """(marked when last seen, removed in UPDATE, ended without QUIT?, had messages?)"""
    marked: list[int] = []
    removed: list[int] = []
    aborted = had = False
    for e in conv.kinds("note"):
        kind = e.data.get("pop3")
        if kind == "maildrop":
            marked = list(e.data.get("marked", []))
            had = had or bool(e.data.get("messages"))
        elif kind == "marked":
            marked.append(e.data["number"])
        elif kind == "update":
            removed = list(e.data.get("removed", []))
        elif kind == "aborted":
            aborted = True
    return marked, removed, aborted, had


@exercise(3, "pop3_delete", "Delete a message by POP3 for good, and see one survive a dropped connection")
def check_pop3_delete(lab: Lab, answer: str | None = None) -> CheckResult:
    result = CheckResult("pop3_delete", False)
    convs = _as_reader(lab, "pop3", result)
    if result.hints:
        return result
    if not convs:
        result.hints.append("no POP3 session yet: put two messages in bob's mailbox, then `%pop3 bob --list` "
                            "(or poplib, or `%mail step pop3 bob`)")
        return result
    outcomes = [(c, *_pop3_outcome(c)) for c in convs]
    gone = [(c, removed) for c, _m, removed, _a, _h in outcomes if removed]
    kept = [(c, marked) for c, marked, _r, aborted, _h in outcomes if aborted and marked]
    if gone:
        c, removed = gone[0]
        result.found.append(f"{c.session}: DELE then QUIT, UPDATE removed message(s) "
                            f"{', '.join(map(str, removed))}")
    elif not any(had for *_x, had in outcomes):
        result.hints.append("the maildrop was empty in every POP3 session: send a few messages first")
    elif any(aborted and marked for _c, marked, _r, aborted, _h in outcomes):
        result.hints.append("no message is really gone yet: a DELE only marks; end that session with "
                            "`QUIT` so the server enters UPDATE and removes it")
    else:
        result.hints.append("no message is really gone yet: mark one with `DELE n`, then `QUIT` (the server "
                            "removes marked messages in the UPDATE state, after QUIT)")
    # "and see that it is still there": a later session's maildrop holds what was marked
    seen = []
    for c, marked in kept:
        ids = {_maildrop(c).get(n) for n in marked} - {None}
        later = [d for d in convs if d.events[0].time > c.events[-1].time
                 and ids & set(_maildrop(d).values())]
        if later:
            seen.append((c, marked, later[0]))
    if seen:
        c, marked, later = seen[0]
        result.found.append(f"{c.session}: DELE {', '.join(map(str, marked))} then the connection dropped "
                            f"without QUIT: nothing deleted, as {later.session} saw")
    elif kept:
        c, marked = kept[0]
        result.hints.append(f"{c.session} marked message {marked[0]} and dropped without QUIT; now see that "
                            "it is still there: log in again (a new POP3 session: `LIST`, `UIDL`)")
    elif any(aborted for _c, _m, _r, aborted, _h in outcomes):
        result.hints.append("a session ended without QUIT, but nothing was marked in it: DELE a message "
                            "first, then drop the connection")
    else:
        result.hints.append("no session has dropped the connection after a DELE: mark a message, then "
                            "close the connection without QUIT (`%pop3 bob --dele 1 --drop`, or poplib's "
                            "`client.close()`, which sends no QUIT) and see that it is still there")
    result.passed = not result.hints
    return result


#: A FETCH response item that carries message text (RFC 3501 7.4.2): BODY[...],
#: BINARY[...] (RFC 3516), RFC822, RFC822.TEXT and RFC822.HEADER (BODY[HEADER] by its
#: old name: the same octets); not RFC822.SIZE, not BODY without a section (that is
#: the structure).
_TEXT_ITEM = re.compile(r"(?i)(?:\bBODY\[|\bBINARY\[|\bRFC822(?:\.TEXT|\.HEADER)? )")
_FETCH_RESPONSE = re.compile(r"(?i)^\* \d+ FETCH \(")


def _inbox_fetches(conv: Conversation) -> list[tuple[str, list[str]]]:
    """(the FETCH command's items, the server's FETCH responses) of each FETCH sent
    while INBOX was selected in ``conv``."""
    out = []
    inbox = False
    for verb, args, ok, replies in conv.imap_exchanges():
        if verb in ("SELECT", "EXAMINE"):
            inbox = ok and bool(args) and mailbox_name(args[0]) == "INBOX"
        elif verb in ("CLOSE", "UNSELECT") and ok:
            inbox = False
        elif inbox and verb in ("FETCH", "UID FETCH"):
            out.append((" ".join(args), [r for r in replies if _FETCH_RESPONSE.match(r)]))
    return out


@exercise(4, "imap_envelopes", "Fetch only the envelopes of INBOX")
def check_imap_envelopes(lab: Lab, answer: str | None = None) -> CheckResult:
    result = CheckResult("imap_envelopes", False)
    convs = _as_reader(lab, "imap", result)
    if result.hints:
        return result
    if not convs:
        result.hints.append("no IMAP session yet: log in (`%imap bob --envelopes`, imaplib, or "
                            "`%mail step imap bob`)")
        return result
    # Judged from the server's responses, not the command's words: FETCH 1:* ALL
    # (a macro holding ENVELOPE) counts, a FETCH that matched no message does not.
    sessions = [(c, _inbox_fetches(c)) for c in convs]
    selected = [(c, f) for c, f in sessions
                if any(v in ("SELECT", "EXAMINE") and ok and args and mailbox_name(args[0]) == "INBOX"
                       for v, args, ok in c.imap_commands())]
    if not selected:
        result.hints.append("no session selected INBOX: `SELECT INBOX` (or `EXAMINE INBOX`, read-only) "
                            "before FETCH")
        return result
    for c, fetches in selected:
        envelopes = [items for items, resp in fetches if any("ENVELOPE (" in r.upper() for r in resp)]
        # any text at all in the session counts: a literal's item stands on its own line
        texts = [v for v, args, ok, replies in c.imap_exchanges() if v in ("FETCH", "UID FETCH")
                 and any(_TEXT_ITEM.search(r) for r in replies)]
        if envelopes and not texts:
            result.found.append(f"{c.session}: FETCH {envelopes[0]} in INBOX answered with envelopes, "
                                "no message text sent")
            result.passed = True
            return result
    fetches = [(c, items, resp) for c, f in selected for items, resp in f]
    if not fetches:
        result.hints.append("INBOX was selected, but nothing was fetched: `FETCH 1:* (ENVELOPE)`")
    elif any(any("ENVELOPE (" in r.upper() for r in resp) for _c, _i, resp in fetches):
        body = next((items for _c, items, resp in fetches if any(_TEXT_ITEM.search(r) for r in resp)),
                    "a body")
        result.hints.append(f"your session with ENVELOPE also fetched {body!r}: the server sent message "
                            "text; do it in a session that asks for ENVELOPE (and FLAGS, UID) only")
    elif any("ENVELOPE" in items.upper() for _c, items, _r in fetches):
        result.hints.append("you asked for ENVELOPE, but the server sent none: was INBOX empty? Put a "
                            "message in bob's INBOX first, then `FETCH 1:* (ENVELOPE)`")
    else:
        result.hints.append(f"you fetched {fetches[-1][1]!r} but no ENVELOPE: the summary (date, from, "
                            "subject) without a byte of body is `FETCH 1:* (ENVELOPE)`")
    return result


def _identities(lab: Lab, user: str, folder: str) -> set[bytes]:
    """What tells a folder's messages apart: each one's Message-ID, else its bytes."""
    try:
        box = lab.store.mailbox(user, folder)
        out = set()
        for info in box.messages():
            data = box.read(info.uid)
            found = re.search(rb"(?im)^Message-ID:[ \t]*(<[^>\r\n]*>)", data.split(b"\r\n\r\n", 1)[0])
            out.add(found.group(1) if found else data)
        return out
    except (LookupError, ValueError, OSError):
        return set()


def _move_attempts(conv: Conversation) -> list[tuple[str, str, str, str]]:
    """(how, from folder, to folder, what is missing: "" if the server did it all) of
    each MOVE, or COPY and what followed it, in ``conv``."""
    out: list[tuple[str, str, str, str]] = []
    selected = ""
    copy: list[str] | None = None  # [from, to, deleted?] of the last COPY in this folder
    for verb, args, ok, _replies in conv.imap_exchanges():
        target = mailbox_name(args[-1]) if args else ""
        if verb in ("SELECT", "EXAMINE"):
            selected, copy = (mailbox_name(args[0]) if ok and args else ""), None
        elif verb in ("MOVE", "UID MOVE"):
            out.append((verb, selected, target, "" if ok else "failed"))
        elif verb in ("COPY", "UID COPY"):
            if not ok:
                out.append((verb, selected, target, "failed"))
            else:
                copy = [selected, target, ""]
                out.append(("COPY", selected, target, "deleted"))
        elif verb in ("STORE", "UID STORE") and ok and copy is not None and \
                "\\DELETED" in " ".join(args).upper() and not args[1].upper().startswith("-"):
            copy[2] = "deleted"
            out[-1] = ("COPY + \\Deleted", copy[0], copy[1], "expunge")
        elif verb in ("EXPUNGE", "UID EXPUNGE", "CLOSE") and ok and copy is not None:
            how = f"COPY + \\Deleted + {verb}" if copy[2] else f"COPY + {verb}"
            out[-1] = (how, copy[0], copy[1], "" if copy[2] else "flag")
            copy = None
    return out


@exercise(7, "imap_move", "Move a message between IMAP folders with a real client")
def check_imap_move(lab: Lab, answer: str | None = None) -> CheckResult:
    result = CheckResult("imap_move", False)
    convs = _as_reader(lab, "imap", result)
    if result.hints:
        return result
    if not convs:
        result.hints.append("no IMAP session yet: use a real client (imaplib, IMAPClient, neomutt, "
                            "Thunderbird) or a `%%imap imap` cell as bob (`%imap` cannot move messages)")
        return result
    attempts = [(c, *a) for c in convs for a in _move_attempts(c)]
    if not attempts:
        result.hints.append("no MOVE or COPY yet: SELECT INBOX, make a folder (`CREATE Archive`), then "
                            "MOVE a message there (imaplib: `client.uid('MOVE', uid, 'Archive')`)")
        return result
    # The store decides: a message now in the folder that INBOX no longer holds.
    hints = []
    for c, how, source, target, missing in reversed(attempts):  # the latest attempt first
        user = c.login or ""
        if missing:
            hints.append({
                "failed": f"{how} into {target!r} failed: does the folder exist (CREATE it first; "
                          "`LIST \"\" \"*\"` shows the folders)? Is there a message by that number?",
                "deleted": f"you copied a message into {target!r}, but the original stayed: mark it "
                           "\\Deleted (`STORE n +FLAGS (\\Deleted)`) and `EXPUNGE` (what MOVE does in one "
                           "step, RFC 6851)",
                "expunge": f"you copied a message into {target!r} and flagged the original \\Deleted, "
                           "but it stays in INBOX until EXPUNGE (or CLOSE) removes it",
                "flag": f"you copied a message into {target!r} and sent EXPUNGE, but EXPUNGE removes "
                        "only messages flagged \\Deleted: `STORE n +FLAGS (\\Deleted)` first",
            }[missing])
        elif source != "INBOX" or not user:
            hints.append(f"your {how} moved a message out of {source or 'no folder'!r}: the task moves "
                         "one from INBOX (`SELECT INBOX` first)")
        elif moved := _identities(lab, user, target) - _identities(lab, user, "INBOX"):
            result.found.append(f"{c.session}: {how} from INBOX into {target!r}, which holds "
                                f"{len(moved)} message(s) that INBOX no longer has")
            result.passed = True
            return result
        elif "COPY" in how:
            hints.append(f"after your {how}, every message in {target!r} is still in INBOX too: the "
                         "message you flagged \\Deleted was not the one you copied")
        else:
            hints.append(f"{target!r} holds no message that left INBOX now: move one there and leave it")
    result.hints.append(hints[0])
    return result


def _chains(lab: Lab) -> list[tuple[str, str, list[str], str]]:
    """(user, subject, by-hosts first hop first, envelope sender) of messages that
    crossed two or more hosts."""
    out = []
    senders = envelope_senders(lab)
    for user, folder, uid, data in messages(lab):
        table = parse_hops(data)
        hosts = [(h.by or "").rstrip(".").lower() for h in table]
        if len(table) >= 2:
            out.append((user, str(table.subject or ""), hosts, senders.get((f"{user}/{folder}", uid), "")))
    return out


@exercise(8, "received_chain", "Read a Received chain: which host took the message first?")
def check_received_chain(lab: Lab, answer: str | None = None) -> CheckResult:
    result = CheckResult("received_chain", False)
    every = _chains(lab)
    chains = [c for c in every if c[0] == CHAIN_RECIPIENT and c[3] == CHAIN_SENDER]
    if not chains:
        result.hints.append((f"the message that crossed hosts went from {every[-1][3] or 'an unknown sender'}"
                             f" to {every[-1][0]}; the task's goes " if every else
                             "no message in the lab has crossed two hosts yet: send one ") +
                            f"from {CHAIN_SENDER} to {CHAIN_RECIPIENT} and wait for the relay (`%mail relay`)")
        return result
    user, subject, hosts, _sender = chains[-1]
    result.found.append(f"{user} holds {subject!r} with {len(hosts)} Received lines")
    if not answer:
        result.hints.append("read the chain (`%mail hops`, or the raw header) and give the host that took "
                            "the message first: `%mail check received_chain --answer HOST`")
        return result
    given = answer.strip().rstrip(".").lower()
    if any(h[0] == given for _u, _s, h, _f in chains):
        result.found.append(f"{answer}: the 'by' host of the bottom Received line, the first hop")
        result.passed = True
        return result
    if any(h[-1] == given for _u, _s, h, _f in chains):
        result.hints.append(f"{answer} wrote the top Received line: the last hop. Each server adds its "
                            "line at the top, so the chain is read bottom-up")
    elif any(given in h for _u, _s, h, _f in chains):
        result.hints.append(f"{answer} is a hop in the middle of the chain; the first one is at the bottom")
    else:
        result.hints.append(f"{answer} is not the 'by' host of any Received line of a message that "
                            "crossed hosts: read the lines after 'by' (`%mail hops`)")
    return result
