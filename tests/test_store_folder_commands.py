"""DELETE and RENAME close their folders after the store's lock (issue 15).

Closing a folder writes its index and fsyncs it (sqlite's checkpoint), and waits for
the folder's own lock first. DELETE and RENAME did that holding ``Store._lock``, which
every folder's first open (a SELECT, a CREATE) needs. Here a thread holds the lock of
bob's folder (as a STORE 1:* renaming its files does) while bob DELETEs it, then
RENAMEs another; meanwhile alice SELECTs a folder nobody opened yet and CREATEs one,
over imaplib: answered before the folder's lock is released. Afterwards the DELETE and
RENAME are done as usual (the folder gone; the renamed one with its message and a new
UIDVALIDITY). A liveness check, not a timing one: the lock is released when alice is
answered, or after a 10 s safety limit (and the test fails).
"""

from __future__ import annotations

import imaplib
import threading
import time

from maillab import Lab

BOB, ALICE = "bob@alpha.test", "alice@alpha.test"


def _while_held(lab: Lab, folder: str, command, alice: imaplib.IMAP4, alice_does) -> tuple[bool, str]:
    """``command()`` (bob's) in a thread while another holds ``folder``'s lock; returns
    whether ``alice_does(alice)`` was answered before the lock was released, and the
    command's answer."""
    mb = lab.store.mailbox(BOB, folder)
    held, answered = threading.Event(), threading.Event()
    in_time: list[bool] = []
    result: list[str] = []

    def holder() -> None:
        with mb.lock:
            held.set()
            in_time.append(answered.wait(10))

    hold = threading.Thread(target=holder)
    hold.start()
    worker = threading.Thread(target=lambda: result.append(command()[0]))
    try:
        assert held.wait(10)
        worker.start()
        deadline = time.monotonic() + 5
        while mb.lock.waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.01)  # until bob's command waits to close the folder
        alice_does(alice)
    finally:
        answered.set()
        hold.join(30)
        if worker.is_alive() or worker.ident:
            worker.join(30)
    return in_time == [True], result[0] if result else "no answer"


def test_delete_and_rename_close_their_folders_after_the_store_lock(single_lab: Lab) -> None:
    lab = single_lab
    bob = imaplib.IMAP4(*lab.address("imap"), timeout=60)
    alice = imaplib.IMAP4(*lab.address("imap"), timeout=60)
    try:
        bob.login(BOB, "bob-pw")
        alice.login(ALICE, "alice-pw")
        for name in ("Work", "Old"):
            assert bob.create(name)[0] == "OK"
            assert bob.append(name, None, None, f"Subject: {name}\r\n\r\nin {name}\r\n".encode())[0] == "OK"
        before = lab.store.mailbox(BOB, "Old").uidvalidity

        def alice_opens(c: imaplib.IMAP4) -> None:
            assert c.select("Sent")[0] == "OK"  # a first open: the store's lock
            assert c.create("Projects")[0] == "OK"

        in_time, answer = _while_held(lab, "Work", lambda: bob.delete("Work"), alice, alice_opens)
        assert in_time, "alice's SELECT and CREATE waited for bob's DELETE"
        assert answer == "OK"

        def alice_opens_more(c: imaplib.IMAP4) -> None:
            assert c.select("Drafts")[0] == "OK"
            assert c.create("Later")[0] == "OK"

        in_time, answer = _while_held(lab, "Old", lambda: bob.rename("Old", "Older"), alice,
                                      alice_opens_more)
        assert in_time, "alice's SELECT and CREATE waited for bob's RENAME"
        assert answer == "OK"

        names = [line.decode().rsplit(" ", 1)[-1].strip('"') for line in bob.list()[1]]
        assert "Work" not in names and "Old" not in names and "Older" in names
        assert bob.select("Older")[0] == "OK"
        typ, data = bob.fetch("1", "(BODY[])")
        assert typ == "OK" and b"in Old" in data[0][1]
        assert lab.store.mailbox(BOB, "Older").uidvalidity > before
        assert {"Projects", "Later"} <= set(lab.store.list_mailboxes(ALICE))
    finally:
        for c in (bob, alice):
            c.logout()
