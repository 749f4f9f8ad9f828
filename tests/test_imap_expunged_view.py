"""Messages another session expunged, seen from a session that still shows them.

RFC 3501 7.4.1 forbids an EXPUNGE response during FETCH, STORE and SEARCH, so a
session B that selected INBOX before session A expunged messages 2 and 4 keeps
numbering them until its next NOOP (or UID command). What B is told meanwhile
(see maillab.imap.selected_mailbox, and docs/architecture.md "Another session's
expunges"; Dovecot 2.3.19's answers to the same commands are in
benchmarks/expunged_view.py):

- UID, FLAGS, RFC822.SIZE, INTERNALDATE: answered as usual (the flags A left,
  \\Deleted), tagged OK; a cached ENVELOPE too.
- Anything that needs the file (BODY[], BODY.PEEK[HEADER], an uncached ENVELOPE):
  no FETCH response for that message, the others answered, NO [EXPUNGEISSUED];
  UID FETCH: OK [EXPUNGEISSUED], its EXPUNGEs before it (RFC 3501 6.4.8).
- STORE: NO [EXPUNGEISSUED] after storing the others; STORE.SILENT and UID STORE OK.
- COPY/UID COPY/MOVE: NO [EXPUNGEISSUED], nothing copied (RFC 3501 6.4.7: all or none).

imaplib plays both sessions over real sockets; the last test runs mbsync 10
times while a cleaner expunges messages at the moment mbsync lists the mailbox
(the race that failed 2 of 320 runs of the 30-minute soak) and fetches a body.
"""

from __future__ import annotations

import imaplib
import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import fast_limits
from real_clients import mbsyncrc, run

from maillab import Lab
from maillab.events import CLIENT_LINE, Event
from maillab.store import to_crlf

PASSWORD = "pw-expunged-7"
_users = itertools.count(1)


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    lab = Lab(tmp_path_factory.mktemp("expunged") / "lab", ports="auto", domains=["alpha.test"],
              services=("imap", "imaps"), limits=fast_limits())
    lab.start()
    yield lab
    lab.stop()


def message(n: int) -> bytes:
    return (f"From: ann@beta.test\r\nTo: bob@alpha.test\r\nSubject: m{n}\r\n"
            f"Message-ID: <m{n}@beta.test>\r\n\r\nbody {n}\r\n").encode()


def login(lab: Lab, user: str) -> imaplib.IMAP4:
    c = imaplib.IMAP4(*lab.address("imap"), timeout=10)
    c.login(user, PASSWORD)
    c.select("INBOX")
    return c


@pytest.fixture
def pair(lab: Lab) -> Iterator[tuple[imaplib.IMAP4, imaplib.IMAP4, list[int], str]]:
    """(A, B, UIDs of messages 1-5, user): B selected INBOX, then A expunged messages 2 and 4."""
    user = f"user{next(_users)}@alpha.test"
    lab.add_user(user, PASSWORD)
    uids = [lab.store.deliver(user, message(n)).uid for n in range(1, 6)]
    b = login(lab, user)
    b.fetch("2", "(ENVELOPE)")  # B has seen message 2's ENVELOPE: its wire form is cached
    a = login(lab, user)
    assert a.store("2,4", "+FLAGS", "(\\Deleted)")[0] == "OK"
    assert a.expunge() == ("OK", [b"4", b"2"])
    yield a, b, uids, user
    for c in (a, b):
        c.logout()


def expunges(c: imaplib.IMAP4) -> list[bytes | None]:
    """The EXPUNGE responses the last commands brought ([None]: none)."""
    return c.response("EXPUNGE")[1]


def test_flags_of_an_expunged_message_come_from_the_view(pair) -> None:
    a, b, uids, user = pair
    typ, data = b.fetch("1:*", "(FLAGS)")
    # the flags A left on 2 and 4; \Recent went to B, the first to select
    assert (typ, data) == ("OK", [b"1 (FLAGS (\\Recent))", b"2 (FLAGS (\\Deleted \\Recent))",
                                  b"3 (FLAGS (\\Recent))", b"4 (FLAGS (\\Deleted \\Recent))",
                                  b"5 (FLAGS (\\Recent))"])
    assert expunges(b) == [None]  # not during FETCH (RFC 3501 7.4.1)
    typ, data = b.fetch("2", "(UID FLAGS RFC822.SIZE INTERNALDATE)")
    assert typ == "OK"
    assert f"UID {uids[1]} ".encode() in data[0]
    assert f"RFC822.SIZE {len(to_crlf(message(2)))}".encode() in data[0] and b"INTERNALDATE" in data[0]
    assert b.fetch("2", "(ENVELOPE)")[0] == "OK"  # cached before the expunge
    assert b.fetch("4", "(ENVELOPE)")[0] == "NO"  # never asked for: it needed the file
    assert b.search(None, "ALL") == ("OK", [b"1 3 5"])  # SEARCH leaves them out (RFC 2180 4.3)
    assert expunges(b) == [None]
    b.noop()
    assert expunges(b) == [b"4", b"2"]  # now announced, highest first
    assert b.fetch("1:*", "(UID)")[1] == [f"{i} (UID {u})".encode() for i, u in
                                          enumerate(uids[::2], start=1)]


def test_uid_fetch_flags_answers_every_message_then_announces(pair) -> None:
    """What mbsync sends first: all five answered, OK, then the EXPUNGEs (a UID command may)."""
    a, b, uids, user = pair
    typ, data = b.uid("FETCH", "1:*", "(UID FLAGS)")
    assert typ == "OK", data
    assert [re.search(rb"UID (\d+)", d).group(1) for d in data] == [str(u).encode() for u in uids]
    assert expunges(b) == [b"4", b"2"]


@pytest.mark.parametrize("items", ["(BODY[])", "(BODY.PEEK[HEADER])", "(BODYSTRUCTURE)",
                                   "(RFC822.HEADER)", "(UID FLAGS BODY.PEEK[TEXT])"])
def test_content_of_an_expunged_message_is_expungeissued(pair, items: str) -> None:
    a, b, uids, user = pair
    typ, data = b.fetch("2", items)
    assert (typ, data) == ("NO", [b"[EXPUNGEISSUED] some of the requested messages no longer exist"])
    assert expunges(b) == [None]


def test_uid_fetch_of_content_is_ok_expungeissued_with_the_expunges(pair) -> None:
    a, b, uids, user = pair
    typ, data = b.uid("FETCH", f"{uids[0]}:{uids[2]}", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK"
    assert "EXPUNGEISSUED" in b.untagged_responses  # imaplib keeps the OK's response code there
    assert [d[1] for d in data if isinstance(d, tuple)] == [b"Subject: m1\r\n\r\n", b"Subject: m3\r\n\r\n"]
    assert expunges(b) == [b"4", b"2"]


def test_the_others_are_answered_beside_an_expunged_one(pair) -> None:
    a, b, uids, user = pair
    typ, data = b.fetch("1:3", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "NO" and data == [b"[EXPUNGEISSUED] some of the requested messages no longer exist"]
    # imaplib keeps the FETCH responses of a NO under FETCH: messages 1 and 3, not 2
    fetched = b.response("FETCH")[1]
    heads = [d for d in fetched if isinstance(d, tuple)]
    assert [h[1] for h in heads] == [b"Subject: m1\r\n\r\n", b"Subject: m3\r\n\r\n"]
    assert [h[0].split(b" ")[0] for h in heads] == [b"1", b"3"]


def test_store_on_an_expunged_message(pair, lab: Lab) -> None:
    a, b, uids, user = pair
    typ, data = b.store("1:3", "+FLAGS", "(\\Answered)")
    assert typ == "NO" and data[0].startswith(b"[EXPUNGEISSUED]")
    assert b.response("FETCH")[1] == [b"1 (FLAGS (\\Answered \\Recent))",
                                      b"3 (FLAGS (\\Answered \\Recent))"]
    assert b.store("2", "+FLAGS.SILENT", "(\\Seen)")[0] == "OK"  # RFC 2180 4.2.1
    assert expunges(b) == [None]
    typ, _ = b.uid("STORE", f"{uids[0]}:{uids[2]}", "+FLAGS", "(\\Flagged)")
    assert typ == "OK"  # the gone UID is ignored; its EXPUNGE follows at once
    assert expunges(b) == [b"4", b"2"]
    flags = {m.uid: m.flags for m in lab.store.mailbox(user, "INBOX").messages()}
    assert flags[uids[0]] >= {"\\Answered", "\\Flagged"} and flags[uids[2]] >= {"\\Answered", "\\Flagged"}


def test_copy_of_an_expunged_message_copies_nothing(pair, lab: Lab) -> None:
    a, b, uids, user = pair
    assert a.create("Kept")[0] == "OK"
    typ, data = b.uid("COPY", f"{uids[0]}:{uids[2]}", "Kept")
    assert typ == "NO" and data[0].startswith(b"[EXPUNGEISSUED]")
    assert expunges(b) == [b"4", b"2"]
    assert b.select("Kept") == ("OK", [b"0"])  # all or nothing (RFC 3501 6.4.7)
    b.select("INBOX")
    assert b.uid("COPY", f"{uids[0]}:{uids[2]}", "Kept")[0] == "OK"  # once announced: the rest
    assert b.select("Kept") == ("OK", [b"2"])


def test_move_of_an_expunged_message_moves_nothing(pair, lab: Lab) -> None:
    a, b, uids, user = pair
    assert a.create("Moved")[0] == "OK"
    typ, data = b.uid("MOVE", f"{uids[0]}:{uids[2]}", "Moved")
    assert typ == "NO" and data[0].startswith(b"[EXPUNGEISSUED]")
    assert len(lab.store.mailbox(user, "Moved").messages()) == 0
    assert [m.uid for m in lab.store.mailbox(user, "INBOX").messages()] == uids[::2]


def test_the_store_keeps_a_bounded_record_of_removed_rows(lab: Lab, monkeypatch) -> None:
    """What a ghost's RFC822.SIZE and INTERNALDATE come from: the newest DEPARTED_MAX
    removed rows; an older ghost still answers UID and FLAGS (from the session's view)."""
    from maillab.store import table

    monkeypatch.setattr(table, "DEPARTED_MAX", 2)
    user = f"user{next(_users)}@alpha.test"
    lab.add_user(user, PASSWORD)
    uids = [lab.store.deliver(user, message(n)).uid for n in range(1, 5)]
    b = login(lab, user)
    inbox = lab.store.mailbox(user, "INBOX")
    inbox.remove(uids[:3])
    assert list(inbox.table.departed) == uids[1:3]  # the oldest record went first
    typ, data = b.fetch("2:3", "(UID RFC822.SIZE)")
    assert typ == "OK" and [d.split(b" RFC822.SIZE ")[1] for d in data] == \
        [str(len(to_crlf(message(n)))).encode() + b")" for n in (2, 3)]
    assert b.fetch("1", "(UID FLAGS)") == ("OK", [f"1 (UID {uids[0]} FLAGS (\\Recent))".encode()])
    assert b.fetch("1", "(RFC822.SIZE)")[0] == "NO"  # its size is no longer known
    b.logout()


# -- mbsync beside a cleaner ---------------------------------------------------------

def test_mbsync_syncs_while_another_session_expunges(lab: Lab, tmp_path: Path) -> None:
    """10 syncs; before each, 4 new messages; while each runs, the cleaner expunges
    the two oldest at the moment mbsync asks for the mailbox's UIDs and flags
    (``UID FETCH 1:N (UID FLAGS)``, after its SELECT: the race the soak met by
    chance, made to happen every time), and the first message whose body mbsync
    then asks for. Every run must end with exit status 0 and no error printed."""
    user = f"sync{next(_users)}@alpha.test"
    lab.add_user(user, PASSWORD)
    inbox = lab.store.mailbox(user, "INBOX")
    local = tmp_path / "Mail"
    local.mkdir()
    rc = mbsyncrc(tmp_path / "mbsyncrc", ca=lab.ca_path, port=lab.address("imaps")[1], user=user,
                  password=PASSWORD, local=local, ssl_type="IMAPS", patterns="INBOX")
    cleaned: list[int] = []
    bodies: list[int] = []

    def cleaner(ev: Event) -> None:
        # runs on the lab loop as the command line arrives, before it is answered
        if ev.kind != CLIENT_LINE or ev.protocol != "imap" or ev.data.get("user") != user:
            return
        if " UID FETCH " in ev.text and "(UID FLAGS" in ev.text:
            oldest = [m.uid for m in inbox.messages()[:2]]
            inbox.change_flags(oldest, lambda old, add: old | add, frozenset({"\\Deleted"}))
            cleaned.extend(inbox.remove(oldest))  # what an EXPUNGE in another session does
            bodies.append(0)
        elif (got := re.search(r" UID FETCH (\d+) \(BODY.PEEK\[\]", ev.text)) and bodies[-1] == 0:
            # the first body mbsync asks for that is still there: gone (not even
            # flagged) between its listing and its fetch
            if removed := inbox.remove([int(got.group(1))]):
                bodies[-1] = removed[0]
                cleaned.extend(removed)

    unsubscribe = lab.events.subscribe(cleaner)
    failures = []
    n = itertools.count(1)
    try:
        for _ in range(10):
            for _ in range(4):
                lab.store.deliver(user, message(next(n)))
            proc = run(["mbsync", "-c", str(rc), "lab"], env={"HOME": str(tmp_path)})
            if proc.returncode != 0 or b"error" in proc.stderr:
                failures.append(proc.stderr.decode(errors="replace")[-400:])
    finally:
        unsubscribe()
    assert len(bodies) == 10 and all(bodies)  # the cleaner struck twice in every run
    assert failures == []
    proc = run(["mbsync", "-c", str(rc), "lab"], env={"HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    near = {re.search(rb"Subject: (m\d+)", p.read_bytes()).group(1)
            for sub in ("new", "cur") for p in (local / "INBOX" / sub).iterdir()}
    far = {re.search(rb"Subject: (m\d+)", inbox.read(m.uid)).group(1) for m in inbox.messages()}
    assert far and far <= near  # everything still on the server was synced
