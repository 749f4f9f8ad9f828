"""An open folder is handed out without the store's lock (issue 15).

``Store._lock`` serialises CREATE, RENAME and DELETE of folders and first opens (which
held it across fsyncs: the per-user UIDVALIDITY file, an index closed and checkpointed;
now those follow its release, tests/test_store_folder_commands.py). Every SMTP
delivery, SELECT and POP3 login asks the store for its folder; for a folder already
open that needs no lock. Here a thread holds the store's lock (as such a command
does, waiting for the disk) while smtplib delivers to bob, imaplib SELECTs and
FETCHes his INBOX and poplib logs in and RETRs: all answered before it is released.
A liveness check, not a timing one: the lock is released when they are answered, or
after a 10 s safety limit (and the test fails).
"""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import threading

from maillab import Lab

BOB = "bob@alpha.test"


def test_open_folders_are_served_while_a_thread_holds_the_store_lock(single_lab: Lab) -> None:
    lab = single_lab
    lab.store.deliver(BOB, b"Subject: first\r\n\r\nfirst\r\n")
    lab.store.mailbox(BOB)  # open, as any earlier session leaves it
    held, answered = threading.Event(), threading.Event()
    in_time: list[bool] = []

    def holder() -> None:
        with lab.store._lock:  # a CREATE's fsyncs
            held.set()
            in_time.append(answered.wait(10))

    imap = imaplib.IMAP4(*lab.address("imap"), timeout=60)
    hold = threading.Thread(target=holder)
    try:
        imap.login(BOB, "bob-pw")
        hold.start()
        assert held.wait(10)
        with smtplib.SMTP(*lab.address("smtp"), timeout=60) as smtp:
            smtp.sendmail("alice@alpha.test", [BOB], b"Subject: second\r\n\r\nsecond\r\n")
        assert imap.select("INBOX")[1] == [b"2"]
        typ, data = imap.fetch("2", "(BODY.PEEK[])")
        assert typ == "OK" and b"second" in data[0][1], data
        pop = poplib.POP3(*lab.address("pop3"), timeout=60)
        pop.user(BOB)
        pop.pass_("bob-pw")
        assert b"first" in b"\n".join(pop.retr(1)[1])
        pop.quit()
        answered.set()
        hold.join(30)
        assert in_time == [True], "a delivery, SELECT or POP3 login waited for the store's lock"
    finally:
        answered.set()
        imap.logout()
