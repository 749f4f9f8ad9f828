"""A mailbox's slow disk IO is done outside its lock, so readers and deliveries do
not queue behind it (issue 15).

The disk is made slow where it is slow on ext4: the unlink of a message file (its
blocks freed, ~2 ms a file here; an EXPUNGE of 512 messages held the mailbox for a
second). ``os.unlink`` of bob's expunged message waits (fault injection into the OS
call, in the lab's own process; the protocols are real) until an IMAP FETCH BODY[]
and a POP3 RETR from other sessions, and an SMTP delivery into the same INBOX, have
been answered. Before the change the unlink ran under ``Mailbox.lock`` and all three
waited for it. A liveness check, not a timing one: the unlink is released when they
are answered, or after a 10 s safety limit (and the test fails).
"""

from __future__ import annotations

import imaplib
import os
import poplib
import smtplib
import threading

from maillab import Lab

BOB = "bob@alpha.test"


def test_readers_and_a_delivery_are_answered_while_an_expunge_unlinks(single_lab: Lab, monkeypatch) -> None:
    lab = single_lab
    for n in range(3):
        lab.store.deliver(BOB, f"Subject: m{n}\r\n\r\nbody {n}\r\n".encode())
    doomed = lab.store.mailbox(BOB).get(2)
    assert doomed is not None
    unlinking, released = threading.Event(), threading.Event()
    in_time: list[bool] = []  # whether the test released the unlink (not the safety limit)
    real_unlink = os.unlink

    def slow_unlink(path, *args, **kwargs):  # the disk is slow for the expunged file
        if doomed.key in os.fspath(path):
            unlinking.set()
            in_time.append(released.wait(10))
        return real_unlink(path, *args, **kwargs)

    expunger = imaplib.IMAP4(*lab.address("imap"), timeout=60)
    reader = imaplib.IMAP4(*lab.address("imap"), timeout=60)
    pop = poplib.POP3(*lab.address("pop3"), timeout=60)
    result: list[str] = []
    try:
        for c in (expunger, reader):
            c.login(BOB, "bob-pw")
            assert c.select("INBOX")[0] == "OK"
        pop.user(BOB)
        pop.pass_("bob-pw")
        assert expunger.store("2", "+FLAGS.SILENT", "(\\Deleted)")[0] == "OK"
        monkeypatch.setattr(os, "unlink", slow_unlink)
        expunge = threading.Thread(target=lambda: result.append(expunger.expunge()[0]))
        expunge.start()
        assert unlinking.wait(30), "the EXPUNGE never unlinked its file"
        typ, data = reader.fetch("3", "(BODY[])")
        assert typ == "OK" and b"body 2" in data[0][1], data
        assert b"body 0" in b"\n".join(pop.retr(1)[1])
        with smtplib.SMTP(*lab.address("smtp"), timeout=60) as smtp:
            smtp.sendmail("alice@alpha.test", [BOB], b"Subject: new\r\n\r\narrived\r\n")
        released.set()
        expunge.join(30)
        assert in_time == [True], "FETCH, RETR and the delivery waited for the EXPUNGE's unlink"
        assert result == ["OK"]
        assert not os.path.exists(lab.store.mailbox(BOB).path / doomed.relpath)
        assert not os.listdir(lab.store.mailbox(BOB).path / "tmp")  # unlinked, once released
        assert pop.quit().startswith(b"+OK")
    finally:
        released.set()
        for c in (expunger, reader):
            c.logout()


def test_an_expunge_that_fails_partway_keeps_every_message(single_lab: Lab) -> None:
    """The second of three files cannot be moved out (its ``tmp/`` name is taken by a
    directory): the EXPUNGE fails with NO and removes nothing; the first file, already
    moved, goes back, so every message is still there whole, and once the obstacle is
    gone the same EXPUNGE removes all three."""
    from maillab.store.delivering import EXPUNGED

    lab = single_lab
    for n in range(3):
        lab.store.deliver(BOB, f"Subject: m{n}\r\n\r\nbody {n}\r\n".encode())
    mailbox = lab.store.mailbox(BOB)
    client = imaplib.IMAP4(*lab.address("imap"), timeout=60)
    try:
        client.login(BOB, "bob-pw")
        assert client.select("INBOX")[0] == "OK"
        assert client.store("1:3", "+FLAGS.SILENT", "(\\Deleted)")[0] == "OK"
        second = mailbox.get(2)  # (named with its new flags)
        assert second is not None
        obstacle = mailbox.path / "tmp" / f"{EXPUNGED}{second.filename}"
        obstacle.mkdir()
        typ, data = client.expunge()
        assert typ == "NO", data
        reader = imaplib.IMAP4(*lab.address("imap"), timeout=60)
        try:
            reader.login(BOB, "bob-pw")
            assert reader.select("INBOX") == ("OK", [b"3"])
            typ, data = reader.fetch("1:3", "(BODY.PEEK[TEXT])")
            assert typ == "OK" and [d[1] for d in data if isinstance(d, tuple)] == [
                b"body 0\r\n", b"body 1\r\n", b"body 2\r\n"], data
        finally:
            reader.logout()
        obstacle.rmdir()
        typ, data = client.expunge()
        assert typ == "OK" and data == [b"3", b"2", b"1"], data
        assert sorted(p.name for p in (mailbox.path / "tmp").iterdir()) == []
    finally:
        client.logout()
