"""A large copy-in's index rows, and a mailbox's close, are written outside its lock
(issue 15): readers are answered meanwhile.

Files another tool copied into a Maildir (``cp -r``) are indexed from their names by
a rescan, their rows committed as one blob (store/deferred.py); the blob becomes rows
of the index before the first statement that changes one (a STORE here) and at the
close. Both used to write every row in one hold of ``Mailbox.lock``, so another
session's FETCH of the same mailbox waited for all of them. Now the rows' parameters
are made outside the lock and written a chunk per hold, the close's table blob is made
from a copy and the index's last checkpoint runs after the lock.

As in test_store_lock_io.py the slow part is made to wait (``deferred.rows_of``, what
makes the rows' parameters, blocks until the reader is answered, or a 10 s safety
limit); the protocols are real (imaplib). A liveness check, not a timing one.
"""

from __future__ import annotations

import imaplib
import sqlite3
import threading
import time

from maillab import Lab
from maillab.store import deferred
from maillab.store.mailbox import INDEX_FILE

BOB = "bob@alpha.test"
COPIED = 3 * deferred.DEFER_MIN  # a blob, several chunks
BODY = b"Subject: copied\r\n\r\nfrom another tool\r\n"


def _copy_in(lab: Lab, count: int = COPIED) -> None:
    """Another tool's ``cp`` of ``count`` messages into bob's INBOX (unknown to the index)."""
    path = lab.store.mailbox(BOB).path
    for n in range(count):
        (path / "cur" / f"{1_700_000_000 + n}.M{n}P1.cp,S={len(BODY)}:2,S").write_bytes(BODY)


def _stall_rows(monkeypatch) -> tuple[threading.Event, threading.Event, list[bool]]:
    """``rows_of`` of a copy-in's blob waits until released: (reached, released, in_time)."""
    reached, released = threading.Event(), threading.Event()
    in_time: list[bool] = []
    real = deferred.rows_of

    def slow_rows_of(table, start, end):
        if len(table) >= COPIED and not released.is_set():
            reached.set()
            in_time.append(released.wait(10))
        return real(table, start, end)

    monkeypatch.setattr(deferred, "rows_of", slow_rows_of)
    return reached, released, in_time


def _rows(lab: Lab) -> int:
    db = sqlite3.connect(lab.store.mailbox(BOB).path / INDEX_FILE)
    try:
        return db.execute("SELECT count(*) FROM messages").fetchone()[0]
    finally:
        db.close()


def test_a_reader_is_answered_while_a_copy_ins_rows_are_written(single_lab: Lab, monkeypatch) -> None:
    lab = single_lab
    for n in range(2):
        lab.store.deliver(BOB, f"Subject: m{n}\r\n\r\nbody {n}\r\n".encode())
    _copy_in(lab)
    reached, released, in_time = _stall_rows(monkeypatch)
    writer = imaplib.IMAP4(*lab.address("imap"), timeout=60)
    reader = imaplib.IMAP4(*lab.address("imap"), timeout=60)
    result: list[str] = []
    try:
        for c in (writer, reader):
            c.login(BOB, "bob-pw")
        assert writer.select("INBOX") == ("OK", [str(COPIED + 2).encode()])  # found, a blob of rows
        assert reader.select("INBOX")[0] == "OK"
        store = threading.Thread(target=lambda: result.append(
            writer.uid("STORE", "1", "+FLAGS.SILENT", "(\\Flagged)")[0]))
        store.start()  # its rows first: every row of the blob written
        assert reached.wait(30), "the copy-in's rows were never written"
        typ, data = reader.uid("FETCH", "2", "(BODY.PEEK[])")
        assert typ == "OK" and b"body 1" in data[0][1], data
        assert reader.noop()[0] == "OK"
        released.set()
        store.join(30)
        assert in_time and all(in_time), "the reader's FETCH waited for the copy-in's rows"
        assert result == ["OK"]
        assert _rows(lab) == COPIED + 2  # every row written, once
        typ, data = reader.uid("FETCH", "1", "(FLAGS)")
        assert b"\\Flagged" in data[-1]
        typ, data = reader.fetch(str(COPIED + 2), "(UID FLAGS RFC822.SIZE)")
        assert f"UID {COPIED + 2} ".encode() in data[0] and b"\\Seen" in data[0]
    finally:
        released.set()
        for c in (writer, reader):
            c.logout()


def test_a_reader_is_answered_while_a_rescan_indexes_a_copy_in(single_lab: Lab, monkeypatch) -> None:
    """A NOOP finds more copied-in files than the lab loop may index inline: the
    rescan runs on a background thread (the old code ran it on the loop, under the
    mailbox lock, as the table was small). While it makes their rows (held up here:
    ``MessageTable.extend``, which the old code ran under the lock and now runs
    outside it on the new rows alone), another session's FETCH is answered (its own
    rescan indexes them: a sync never waits for another's preparation), and every
    file ends up indexed once."""
    from maillab.store.dirsync import INLINE_SYNC_MAX
    from maillab.store.table import MessageTable

    copied = INLINE_SYNC_MAX + 100
    lab = single_lab
    lab.store.deliver(BOB, b"Subject: m0\r\n\r\nbody 0\r\n")
    reached, released = threading.Event(), threading.Event()
    in_time: list[bool] = []
    first: list[int] = []
    real_extend = MessageTable.extend

    def slow_extend(self, uids, *args, **kwargs):
        if len(uids) >= copied and not first:
            first.append(threading.get_ident())  # the first rescan only: others go on
            reached.set()
            in_time.append(released.wait(10))
        return real_extend(self, uids, *args, **kwargs)

    writer = imaplib.IMAP4(*lab.address("imap"), timeout=60)
    reader = imaplib.IMAP4(*lab.address("imap"), timeout=60)
    result: list[object] = []
    try:
        for c in (writer, reader):
            c.login(BOB, "bob-pw")
            assert c.select("INBOX")[0] == "OK"
        _copy_in(lab, copied)
        monkeypatch.setattr(MessageTable, "extend", slow_extend)
        noop = threading.Thread(target=lambda: result.append(writer.noop()))
        noop.start()
        assert reached.wait(30), "the NOOP's rescan never indexed the copy-in"
        typ, data = reader.uid("FETCH", "1", "(BODY.PEEK[])")
        assert typ == "OK" and b"body 0" in next(d for d in data if isinstance(d, tuple))[1], data
        released.set()
        noop.join(30)
        for _ in range(300):  # the rescan held up may be a background thread's
            if in_time:
                break
            time.sleep(0.1)
        assert in_time == [True], "the reader's FETCH waited for the rescan's indexing"
        assert result and result[0][0] == "OK"
        assert len(lab.store.mailbox(BOB)) == copied + 1
        assert writer.noop()[0] == "OK"
        typ, data = writer.fetch(f"{copied + 1}", "(UID)")
        assert typ == "OK" and f"UID {copied + 1}".encode() in data[0]
    finally:
        released.set()
        for c in (writer, reader):
            c.logout()


def test_a_reader_is_answered_while_the_store_closes(single_lab: Lab, monkeypatch) -> None:
    """The store's close (what the lab's stop runs; a DELETE or RENAME closes one
    folder the same way) writes a copy-in's rows and the table's blob: a session's
    FETCH of that mailbox meanwhile is answered, not held for the whole close. The
    next open finds every message with its UID."""
    lab = single_lab
    lab.store.deliver(BOB, b"Subject: m0\r\n\r\nbody 0\r\n")
    _copy_in(lab)
    reader = imaplib.IMAP4(*lab.address("imap"), timeout=60)
    try:
        reader.login(BOB, "bob-pw")
        assert reader.select("INBOX") == ("OK", [str(COPIED + 1).encode()])
        reached, released, in_time = _stall_rows(monkeypatch)
        closing = threading.Thread(target=lab.store.close)
        closing.start()
        assert reached.wait(30), "the close never wrote the copy-in's rows"
        typ, data = reader.uid("FETCH", "1", "(BODY.PEEK[])")
        assert typ == "OK" and b"body 0" in data[0][1], data
        released.set()
        closing.join(30)
        assert in_time and all(in_time), "the reader's FETCH waited for the whole close"
    finally:
        released.set()
        try:
            reader.logout()
        except (imaplib.IMAP4.error, OSError):
            pass
    assert _rows(lab) == COPIED + 1
    again = lab.store.mailbox(BOB)  # a new open: the blob the close wrote
    assert len(again) == COPIED + 1 and again.get(COPIED + 1) is not None


def test_a_copy_in_indexed_a_chunk_per_hold_keeps_every_file_once(tmp_path, monkeypatch) -> None:
    """A rescan applies a large copy-in a chunk per hold of the lock (dirsync.APPLY_CHUNK,
    made small here); deliveries and other rescans in between never index a file twice
    or lose one, and UIDs stay unique and ascending."""
    from maillab.store import Store, dirsync

    monkeypatch.setattr(dirsync, "APPLY_CHUNK", 200)
    store = Store(tmp_path / "mail")
    mb = store.mailbox(BOB, create=True)
    copied = 6_000
    for n in range(copied):
        (mb.path / "cur" / f"{1_700_000_000 + n}.M{n}P1.cp,S={len(BODY)}:2,S").write_bytes(BODY)
    stop, started, delivered = threading.Event(), threading.Event(), []

    def deliver() -> None:  # deliveries and readers between the chunks
        while not stop.is_set():
            delivered.append(mb.add(b"Subject: new\r\n\r\nnew\r\n").uid)
            started.set()
            assert mb.get(delivered[-1]) is not None

    other = threading.Thread(target=deliver)
    other.start()
    try:
        assert started.wait(30)
        mb.sync()
        assert not mb.sync()  # nothing left to find
    finally:
        stop.set()
        other.join(30)
    mb.sync()
    snap = mb.snapshot()
    assert len(snap.uids) == copied + len(delivered) == len(set(snap.uids))
    assert list(snap.uids) == sorted(snap.uids) and snap.uidnext > snap.uids[-1]
    assert set(delivered) <= set(snap.uids)
    keys = [mb.unmeasured(uid).key for uid in snap.uids]
    assert len(set(keys)) == len(keys)
    store.close()
    again = Store(tmp_path / "mail").mailbox(BOB)
    assert list(again.snapshot().uids) == list(snap.uids)
