"""Exercises about reading mail: POP3 deletion, IMAP envelopes and folders,
and the Received chain."""

from __future__ import annotations

import re

from ..lab import Lab
from ..relay.hops import parse_hops
from . import CheckResult, exercise
from .evidence import Conversation, conversations, messages

_BODY = re.compile(r"(?i)(BODY(\.PEEK)?\[|BINARY(\.PEEK)?\[|\bRFC822\b(?![.])|\bRFC822\.TEXT\b)")


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
    convs = conversations(lab, "pop3")
    if not convs:
        result.hints.append("no POP3 session yet: put two messages in bob's mailbox, then %pop3 bob --list "
                            "(or poplib, or %mail step pop3 bob)")
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
                            "QUIT so the server enters UPDATE and removes it")
    else:
        result.hints.append("no message is really gone yet: mark one with DELE n, then QUIT (the server "
                            "removes marked messages in the UPDATE state, after QUIT)")
    if kept:
        c, marked = kept[0]
        result.found.append(f"{c.session}: DELE {', '.join(map(str, marked))} then the connection dropped "
                            "without QUIT: nothing deleted")
    elif any(aborted for _c, _m, _r, aborted, _h in outcomes):
        result.hints.append("a session ended without QUIT, but nothing was marked in it: DELE a message "
                            "first, then drop the connection")
    else:
        result.hints.append("no session has dropped the connection after a DELE: mark a message, then "
                            "close the socket without QUIT (%pop3 bob --dele 1 --drop, or poplib's "
                            "client.sock.close()) and see that it is still there")
    result.passed = not result.hints
    return result


def _selected_inbox(conv: Conversation) -> list[tuple[str, list[str], bool]]:
    """The IMAP commands of ``conv`` sent while INBOX was selected."""
    out = []
    inbox = False
    for verb, args, ok in conv.imap_commands():
        if verb in ("SELECT", "EXAMINE"):
            inbox = ok and bool(args) and args[0].strip('"').upper() == "INBOX"
        elif verb in ("CLOSE", "UNSELECT") and ok:
            inbox = False
        elif inbox:
            out.append((verb, args, ok))
    return out


@exercise(4, "imap_envelopes", "Fetch only the envelopes of INBOX")
def check_imap_envelopes(lab: Lab, answer: str | None = None) -> CheckResult:
    result = CheckResult("imap_envelopes", False)
    convs = conversations(lab, "imap")
    if not convs:
        result.hints.append("no IMAP session yet: log in (%imap bob --envelopes, imaplib, or "
                            "%mail step imap bob)")
        return result
    inbox = [(c, _selected_inbox(c)) for c in convs]
    inbox = [(c, cmds) for c, cmds in inbox if cmds or any(v in ("SELECT", "EXAMINE") and ok
                                                            for v, _a, ok in c.imap_commands())]
    if not inbox:
        result.hints.append("no session selected INBOX: SELECT INBOX (or EXAMINE INBOX, read-only) "
                            "before FETCH")
        return result
    for c, cmds in inbox:
        fetches = [" ".join(a) for v, a, ok in cmds if v in ("FETCH", "UID FETCH") and ok]
        envelopes = [f for f in fetches if "ENVELOPE" in f.upper()]
        bodies = [f for f in fetches if _BODY.search(f)]
        if envelopes and not bodies:
            result.found.append(f"{c.session}: FETCH {envelopes[0]} in INBOX, no body downloaded")
            result.passed = True
            return result
    fetches = [(c, " ".join(a)) for c, cmds in inbox for v, a, ok in cmds if v in ("FETCH", "UID FETCH")]
    if not fetches:
        result.hints.append("INBOX was selected, but nothing was fetched: FETCH 1:* (ENVELOPE)")
    elif any("ENVELOPE" in f.upper() for _c, f in fetches):
        body = next(f for _c, f in fetches if _BODY.search(f))
        result.hints.append(f"your session with ENVELOPE also fetched {body!r}: that downloads message "
                            "text; do it in a session that asks for ENVELOPE (and FLAGS, UID) only")
    else:
        result.hints.append(f"you fetched {fetches[-1][1]!r} but no ENVELOPE: the summary (date, from, "
                            "subject) without a byte of body is FETCH 1:* (ENVELOPE)")
    return result


@exercise(7, "imap_move", "Move a message between IMAP folders with a real client")
def check_imap_move(lab: Lab, answer: str | None = None) -> CheckResult:
    result = CheckResult("imap_move", False)
    convs = conversations(lab, "imap")
    if not convs:
        result.hints.append("no IMAP session yet: use a real client (imaplib, IMAPClient, neomutt, "
                            "Thunderbird) or %imap")
        return result
    attempts = []
    for c in convs:
        copied: str | None = None
        deleted = False
        for verb, args, ok in c.imap_commands():
            target = args[-1].strip('"') if args else ""
            if verb in ("MOVE", "UID MOVE"):
                attempts.append((c, verb, target, ok, ok))
            elif verb in ("COPY", "UID COPY") and ok:
                copied = target
            elif verb in ("STORE", "UID STORE") and ok and "\\DELETED" in " ".join(args).upper():
                deleted = True
            elif verb in ("EXPUNGE", "UID EXPUNGE", "CLOSE") and ok and copied:
                attempts.append((c, "COPY + \\Deleted + " + verb, copied, deleted, True))
        if copied and not any(a[0] is c for a in attempts):
            attempts.append((c, "COPY", copied, False, True))
    if not attempts:
        result.hints.append("no MOVE or COPY yet: SELECT INBOX, make a folder (CREATE Archive), then "
                            "MOVE a message there (imaplib: client.uid('MOVE', uid, 'Archive'))")
        return result
    for c, how, target, done, ok in attempts:
        if not (done and ok):
            continue
        user = c.user or ""
        try:
            held = len(lab.store.mailbox(user, target).messages()) if user else 0
        except (LookupError, ValueError):
            held = 0
        if held:
            result.found.append(f"{c.session}: {how} into {target!r}, which now holds {held} message(s)")
            result.passed = True
            return result
    c, how, target, done, ok = attempts[-1]
    if how == "COPY":
        result.hints.append(f"you copied a message into {target!r}, but the original stayed: mark it "
                            "\\Deleted and EXPUNGE (what MOVE does in one step, RFC 6851)")
    elif not ok or not done:
        result.hints.append(f"{how} into {target!r} failed: does the folder exist (CREATE it first; "
                            "LIST \"\" \"*\" shows the folders)?")
    else:
        result.hints.append(f"{target!r} holds no message now: move one there and leave it")
    return result


def _chains(lab: Lab) -> list[tuple[str, str, list[str]]]:
    """(user, subject, by-hosts first hop first) of messages that crossed two or more hosts."""
    out = []
    for user, _folder, _uid, data in messages(lab):
        table = parse_hops(data)
        hosts = [(h.by or "").rstrip(".").lower() for h in table]
        if len(table) >= 2:
            out.append((user, str(table.subject or ""), hosts))
    return out


@exercise(8, "received_chain", "Read a Received chain: which host took the message first?")
def check_received_chain(lab: Lab, answer: str | None = None) -> CheckResult:
    result = CheckResult("received_chain", False)
    chains = _chains(lab)
    if not chains:
        result.hints.append("no message in the lab has crossed two hosts yet: send one from "
                            "alice@alpha.test to carol@beta.test and wait for the relay (%mail relay)")
        return result
    user, subject, hosts = chains[-1]
    result.found.append(f"{user} holds {subject!r} with {len(hosts)} Received lines")
    if not answer:
        result.hints.append("read the chain (%mail hops, or the raw header) and give the host that took "
                            "the message first: %mail check received_chain --answer HOST")
        return result
    given = answer.strip().rstrip(".").lower()
    if any(h[0] == given for *_x, h in chains):
        result.found.append(f"{answer}: the 'by' host of the bottom Received line, the first hop")
        result.passed = True
        return result
    if any(h[-1] == given for *_x, h in chains):
        result.hints.append(f"{answer} wrote the top Received line: the last hop. Each server adds its "
                            "line at the top, so the chain is read bottom-up")
    elif any(given in h for *_x, h in chains):
        result.hints.append(f"{answer} is a hop in the middle of the chain; the first one is at the bottom")
    else:
        result.hints.append(f"{answer} is not the 'by' host of any Received line of a message that "
                            "crossed hosts: read the lines after 'by' (%mail hops)")
    return result
