"""Crash consistency: ``kill -9`` of a lab process in the middle of writes, then a
restart on the same directory (issue 15).

A real ``maillab serve`` in a subprocess; real clients (smtplib, imaplib, poplib)
deliver by SMTP, APPEND, STORE, MOVE, EXPUNGE, change folders and delete through POP3
UPDATE as fast as they can while the process is killed at a random moment (seeded). After each
restart:

* every message acknowledged (250, OK, +OK) is there exactly once, unless its
  deletion was acknowledged too;
* nothing half-written is visible (every indexed file is complete and readable,
  nothing in ``tmp/`` is listed);
* the index and the Maildir agree (every file in ``new/``/``cur/`` is indexed and
  every indexed file exists);
* a UID names the same message forever: no UID is ever given to another message,
  and new UIDs are above every UID handed out before the crash; UIDVALIDITY never
  changes (RFC 3501 2.3.1.1: nothing here forces it to);
* a message whose MOVE was acknowledged is in the target mailbox, once; one whose
  MOVE the kill cut short is in one of the two, never both (RFC 6851 3.3: the next
  open finishes the move, ``maillab/store/moving.py``);
* an acknowledged flag change (STORE +FLAGS OK, a FETCH BODY[] OK setting \\Seen, a
  POP3 QUIT +OK after RETR) is there, and the index and each file name's ``:2,`` info
  agree on the standard flags.
* folders exist and are subscribed as the last acknowledged CREATE, RENAME, DELETE,
  SUBSCRIBE or UNSUBSCRIBE left them (a fourth client does those over and over), and
  every folder listed opens.

A second test changes flags through imaplib, IMAPClient, mbsync and poplib, kills the
process the moment the last client has its acknowledgement, and finds every change
after the restart, through the restarted server and in the files. A third kills a
STORE 1:* on 3,000 messages as its first renames land (renamed, not yet in the index).
"""

from __future__ import annotations

import imaplib
import json
import mailbox as stdlib_mailbox
import os
import poplib
import random
import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
from email.message import EmailMessage
from pathlib import Path

import imapclient
from real_clients import mbsyncrc, run

from maillab.store import Store
from maillab.store.filenames import FLAG_LETTERS, flags_from_filename
from maillab.store.subscriptions import subscriptions

STANDARD = set(FLAG_LETTERS)  # the flags a Maildir file name carries

MAILLAB = [sys.executable, "-m", "maillab"]
BOB = "bob@alpha.test"
ROUNDS = 3


def _serve(directory: Path) -> tuple[subprocess.Popen, dict]:
    from test_cli import wait_for_lab_json

    (directory / "lab.json").unlink(missing_ok=True)
    proc = subprocess.Popen([*MAILLAB, "serve", "--ports", "auto", "--dir", str(directory),
                             "--domain", "alpha.test"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return proc, wait_for_lab_json(proc, directory)["services"]


def _message(subject: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "alice@alpha.test", BOB, subject
    msg.set_content("x" * 2000 + "\n")
    return msg.as_bytes().replace(b"\n", b"\r\n")


class Ledger:
    """What the servers acknowledged, written only after the acknowledgement arrived."""

    def __init__(self) -> None:
        self.delivered: set[str] = set()  # subjects acknowledged by SMTP 250 or APPEND OK
        self.deleted: set[str] = set()  # subjects whose EXPUNGE or POP3 UPDATE was acknowledged
        # subjects whose deletion was asked for (\Deleted stored, DELE sent): a kill before
        # the acknowledgement may leave them either way (an EXPUNGE also removes the
        # \Deleted of an earlier round), so they do not count as lost
        self.deleting: set[str] = set()
        self.moved: set[str] = set()  # subjects whose MOVE to Archive was acknowledged
        # subjects whose flag change was acknowledged: STORE +FLAGS (\\Flagged) OK, a FETCH
        # BODY[] OK (\\Seen), a POP3 QUIT +OK after RETR (\\Seen)
        self.flagged: set[str] = set()
        self.seen: set[str] = set()
        self.uids: dict[tuple[str, int], str] = {}  # (mailbox, UID) -> subject
        self.uidvalidity: dict[str, set[int]] = {}  # mailbox -> every UIDVALIDITY seen
        # folders: whether each exists / is subscribed after its last acknowledged
        # CREATE, RENAME, DELETE (SUBSCRIBE, UNSUBSCRIBE); a name whose command was in
        # flight at the kill may be either way
        self.folders: dict[str, bool] = {}
        self.subscribed: dict[str, bool] = {}
        self.in_flight: set[str] = set()
        self.counter = 0
        self.lock = threading.Lock()

    def next(self, kind: str, round_: int) -> str:
        with self.lock:
            self.counter += 1
            return f"{kind}-{round_}-{self.counter}"

    def see_uid(self, mailbox: str, uid: int, subject: str) -> None:
        old = self.uids.setdefault((mailbox, uid), subject)
        assert old == subject, f"{mailbox} UID {uid} reused: was {old}, now {subject}"

    def see_uidvalidity(self, mailbox: str, value: int) -> None:
        seen = self.uidvalidity.setdefault(mailbox, set())
        seen.add(value)
        # RFC 3501 2.3.1.1: it changes only when UIDs cannot be kept; a crash is no reason
        assert len(seen) == 1, f"{mailbox} UIDVALIDITY changed: {sorted(seen)}"


def _smtp_worker(services: dict, ledger: Ledger, round_: int, stop: threading.Event) -> None:
    smtp = services["smtp"]
    with smtplib.SMTP(smtp["host"], smtp["port"], timeout=10) as c:
        while not stop.is_set():
            subject = ledger.next("smtp", round_)
            c.sendmail("alice@alpha.test", [BOB], _message(subject))
            ledger.delivered.add(subject)  # only after the 250


_SUBJECT = re.compile(rb"Subject: (\S+)")


def _imap_worker(services: dict, ledger: Ledger, round_: int, stop: threading.Event, rng: random.Random) -> None:
    imap = services["imap"]
    c = imaplib.IMAP4(imap["host"], imap["port"], timeout=10)
    c.login("bob", "bob-pw")
    c.create("Archive")  # NO when it exists already
    c.select("INBOX")
    while not stop.is_set():
        subject = ledger.next("imap", round_)
        typ, data = c.append("INBOX", None, None, _message(subject))
        assert typ == "OK"
        ledger.delivered.add(subject)
        m = re.search(rb"APPENDUID (\d+) (\d+)", data[0] or b"")
        assert m, data
        ledger.see_uidvalidity("INBOX", int(m.group(1)))
        ledger.see_uid("INBOX", int(m.group(2)), subject)
        uid = m.group(2).decode()
        if rng.random() < 0.5:
            typ, _ = c.uid("STORE", uid, "+FLAGS", "(\\Flagged)")
            if typ == "OK":
                ledger.flagged.add(subject)
        if rng.random() < 0.3:
            typ, _ = c.uid("FETCH", uid, "(BODY[])")  # sets \\Seen
            if typ == "OK":
                ledger.seen.add(subject)
        if rng.random() < 0.2:
            typ, _ = c.uid("MOVE", uid, "Archive")
            if typ == "OK":
                ledger.moved.add(subject)
            continue
        if rng.random() < 0.3:
            typ, found = c.uid("SEARCH", "SUBJECT", subject)
            uids = found[0].split()
            if uids:
                ledger.deleting.add(subject)
                c.uid("STORE", uids[0].decode(), "+FLAGS.SILENT", "(\\Deleted)")
                typ, _ = c.expunge()
                if typ == "OK":
                    ledger.deleted.add(subject)


def _folder_worker(services: dict, ledger: Ledger, round_: int, stop: threading.Event) -> None:
    """CREATE, SUBSCRIBE, RENAME, then DELETE or UNSUBSCRIBE, over and over."""
    imap = services["imap"]
    c = imaplib.IMAP4(imap["host"], imap["port"], timeout=10)
    c.login("bob", "bob-pw")

    def do(names: tuple[str, ...], command, *args) -> bool:
        ledger.in_flight.update(names)
        typ, data = command(*args)
        assert typ == "OK", (command.__name__, args, data)
        ledger.in_flight.difference_update(names)
        return True

    while not stop.is_set():
        old, new = ledger.next("folder", round_), ledger.next("renamed", round_)
        do((old,), c.create, old) and ledger.folders.update({old: True})
        do((old,), c.subscribe, old) and ledger.subscribed.update({old: True})
        do((old, new), c.rename, old, new) and ledger.folders.update({old: False, new: True})
        if int(new.rsplit("-", 1)[1]) % 2:
            do((new,), c.delete, new) and ledger.folders.update({new: False})
        else:
            do((old,), c.unsubscribe, old) and ledger.subscribed.update({old: False})


def _pop3_worker(services: dict, ledger: Ledger, stop: threading.Event) -> None:
    pop = services["pop3"]
    while not stop.is_set():
        c = poplib.POP3(pop["host"], pop["port"], timeout=10)
        c.user("bob")
        c.pass_("bob-pw")
        count = len(c.list()[1])
        doomed, read = [], []
        for n in range(1, min(count, 3) + 1):
            top = b"\n".join(c.top(n, 0)[1])
            m = _SUBJECT.search(top)
            if m and m.group(1).startswith(b"smtp-"):
                c.dele(n)
                doomed.append(m.group(1).decode())
            elif m:
                c.retr(n)  # marks it \\Seen, on the disk before QUIT's +OK
                read.append(m.group(1).decode())
        ledger.deleting.update(doomed)
        resp = c.quit()
        if resp.startswith(b"+OK"):  # UPDATE done: the DELEs and the \\Seen are acknowledged
            ledger.deleted.update(doomed)
            ledger.seen.update(read)
        time.sleep(0.05)


def _run_round(services: dict, ledger: Ledger, round_: int, rng: random.Random, proc: subprocess.Popen) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []

    def guard(fn, *args):
        try:
            fn(*args)
        except (OSError, EOFError, smtplib.SMTPException, imaplib.IMAP4.abort, imaplib.IMAP4.error,
                poplib.error_proto):
            pass  # the server was killed under the client
        except BaseException as exc:  # an assertion: a UID reused
            errors.append(exc)

    workers = [threading.Thread(target=guard, args=(_smtp_worker, services, ledger, round_, stop)),
               threading.Thread(target=guard, args=(_imap_worker, services, ledger, round_, stop, rng)),
               threading.Thread(target=guard, args=(_pop3_worker, services, ledger, stop)),
               threading.Thread(target=guard, args=(_folder_worker, services, ledger, round_, stop))]
    for w in workers:
        w.start()
    time.sleep(rng.uniform(1.0, 2.5))
    proc.send_signal(signal.SIGKILL)  # in the middle of whatever the workers were doing
    proc.wait(timeout=10)
    stop.set()
    for w in workers:
        w.join(timeout=20)
    assert not errors, errors


def _check_directory(directory: Path, ledger: Ledger) -> None:
    store = Store(directory / "mail")
    try:
        subjects: dict[str, int] = {}
        where: dict[str, str] = {}
        for folder in ("INBOX", "Archive"):
            mb = store.mailbox(BOB, folder, create=True)
            mb.sync()
            ledger.see_uidvalidity(folder, mb.uidvalidity)
            indexed = {}
            for info in mb.messages():
                data = mb.read(info.uid)  # every indexed file exists and is whole
                m = _SUBJECT.search(data)
                assert m and data.rstrip().endswith(b"x" * 10), f"{folder} UID {info.uid} is not a whole message"
                subject = m.group(1).decode()
                subjects[subject] = subjects.get(subject, 0) + 1
                where[subject] = folder
                ledger.see_uid(folder, info.uid, subject)
                indexed[info.uid] = subject
                # the index and the file name's info agree on the standard flags, and an
                # acknowledged flag change is there (MOVE keeps the flags)
                name = mb.file_path(info.uid).name
                assert flags_from_filename(name) == {f for f in info.flags if f in STANDARD}, (name, info.flags)
                assert subject not in ledger.flagged or "\\Flagged" in info.flags, (subject, info.flags)
                assert subject not in ledger.seen or "\\Seen" in info.flags, (subject, info.flags)
            on_disk = {p.name.split(":")[0] for d in ("new", "cur") for p in (Path(mb.path) / d).iterdir()}
            in_index = {mb.file_path(uid).name.split(":")[0] for uid in indexed}
            assert on_disk == in_index, (folder, on_disk ^ in_index)
            assert not list(Path(mb.path).glob("maillab-moving-*")), "a MOVE cut short was not finished"
        not_moved = {s for s in ledger.moved if where.get(s) != "Archive"}
        assert not not_moved, f"MOVE acknowledged but not in Archive: {sorted(not_moved)}"
        twice = {s for s, n in subjects.items() if n > 1}
        assert not twice, f"stored twice: {twice}"
        missing = ledger.delivered - ledger.deleted - ledger.deleting - set(subjects)
        assert not missing, f"acknowledged but lost: {sorted(missing)}"
        ghosts = ledger.deleted & set(subjects)
        assert not ghosts, f"deletion acknowledged but still there: {sorted(ghosts)}"
        # folders: as the last acknowledged command left them, each whole (it opens,
        # its index agrees with its directories) or gone, nothing half-deleted listed
        listed = set(store.list_mailboxes(BOB))
        wrong = {n for n, there in ledger.folders.items()
                 if n not in ledger.in_flight and (n in listed) != there}
        assert not wrong, f"folders not as acknowledged: {sorted(wrong)}"
        for name in listed:
            store.mailbox(BOB, name).sync()
        subs = set(subscriptions(store, BOB))
        wrong = {n for n, on in ledger.subscribed.items() if n not in ledger.in_flight and (n in subs) != on}
        assert not wrong, f"subscriptions not as acknowledged: {sorted(wrong)}"
    finally:
        store.close()


def test_kill_9_during_writes_loses_nothing_acknowledged(tmp_path) -> None:
    directory = tmp_path / "lab"
    rng = random.Random(15)
    ledger = Ledger()
    for round_ in range(ROUNDS):
        proc, services = _serve(directory)
        try:
            _run_round(services, ledger, round_, rng, proc)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)
        _check_directory(directory, ledger)
    # after the last crash: a restarted server hands out UIDs above every UID seen
    proc, services = _serve(directory)
    try:
        c = imaplib.IMAP4(services["imap"]["host"], services["imap"]["port"], timeout=10)
        c.login("bob", "bob-pw")
        typ, data = c.append("INBOX", None, None, _message("after-the-crashes"))
        uid = int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1))
        highest = max(u for (folder, u) in ledger.uids if folder == "INBOX")
        assert uid > highest, (uid, highest)
        c.logout()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    print(f"acknowledged: {len(ledger.delivered)} delivered, {len(ledger.deleted)} deleted,"
          f" {len(ledger.moved)} moved, {len(ledger.flagged)} flagged, {len(ledger.seen)} seen,"
          f" {len(ledger.uids)} UIDs, {len(ledger.folders)} folder names")
    assert len(ledger.delivered) > 10 and ledger.deleted and ledger.moved, "the workers barely ran"
    assert ledger.flagged and ledger.seen, "no flag change was acknowledged"
    assert sum(ledger.folders.values()) and not all(ledger.folders.values()), "no folder command acknowledged"


def _subject_flags(host: str, port: int) -> dict[str, set[str]]:
    """Every INBOX message's flags by subject, as IMAPClient reads them (\\Recent aside)."""
    with imapclient.IMAPClient(host, port=port, ssl=False, timeout=10) as ic:
        ic.login("bob", "bob-pw")
        ic.select_folder("INBOX", readonly=True)
        got = ic.fetch(ic.search("ALL"), ["FLAGS", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])
    out = {}
    for item in got.values():
        subject = _SUBJECT.search(item[b"BODY[HEADER.FIELDS (SUBJECT)]"]).group(1).decode()
        out[subject] = {f.decode() for f in item[b"FLAGS"]} - {"\\Recent"}
    return out


def test_kill_9_right_after_flag_changes_keeps_them(tmp_path) -> None:
    """imaplib (STORE on a range with a keyword, UID STORE -FLAGS, FETCH BODY[]),
    IMAPClient (UID STORE +FLAGS), mbsync (a flag set in its Maildir, pushed by STORE)
    and poplib (RETR, QUIT) change flags; the process is killed the moment the last
    acknowledgement arrived; after the restart each change is there through the server,
    in the file names, and in what mbsync pulls next."""
    directory = tmp_path / "lab"
    proc, services = _serve(directory)
    ca = json.loads((directory / "lab.json").read_text())["ca"]
    host, port = services["imap"]["host"], services["imap"]["port"]
    uid: dict[int, str] = {}  # n -> UID of the message "flags-n"
    try:
        c = imaplib.IMAP4(host, port, timeout=10)
        c.login("bob", "bob-pw")
        for n in range(1, 31):
            typ, data = c.append("INBOX", None, None, _message(f"flags-{n}"))
            uid[n] = re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1).decode()
        c.select("INBOX")
        assert c.uid("STORE", ",".join(uid[n] for n in range(1, 11)), "+FLAGS", "(\\Flagged $Done)")[0] == "OK"
        assert c.uid("STORE", uid[2], "-FLAGS.SILENT", "(\\Flagged)")[0] == "OK"
        assert c.uid("FETCH", uid[11], "(BODY[])")[0] == "OK"  # sets \Seen
        c.logout()
        with imapclient.IMAPClient(host, port=port, ssl=False, timeout=10) as ic:
            ic.login("bob", "bob-pw")
            ic.select_folder("INBOX")
            ic.add_flags([int(uid[n]) for n in (12, 13, 14)], [imapclient.ANSWERED])
        local = tmp_path / "local"
        local.mkdir()

        def mbsync(port: int) -> dict[str, Path]:
            rc = mbsyncrc(tmp_path / "mbsyncrc", ca=Path(ca), port=port, user="bob", password="bob-pw",
                          local=local, ssl_type="STARTTLS", patterns="INBOX")
            done = run(["mbsync", "-c", str(rc), "lab"], env={"HOME": str(tmp_path)})
            assert done.returncode == 0, done.stdout + done.stderr
            return {_SUBJECT.search(p.read_bytes()).group(1).decode(): p
                    for d in ("new", "cur") for p in (local / "INBOX" / d).iterdir()}

        near = mbsync(port)
        mine = near["flags-20"]
        mine.rename(mine.parent.parent / "cur" / (mine.name.split(":2,")[0] + ":2,S"))
        mbsync(port)  # pushes \Seen by STORE, and exits 0 only once it was acknowledged
        pop = poplib.POP3(services["pop3"]["host"], services["pop3"]["port"], timeout=10)
        pop.user("bob")
        pop.pass_("bob-pw")
        number = next(n for n in range(1, len(pop.list()[1]) + 1)
                      if b"Subject: flags-25" in b"\n".join(pop.top(n, 0)[1]))
        pop.retr(number)
        assert pop.quit().startswith(b"+OK")
    finally:
        proc.send_signal(signal.SIGKILL)  # right after the last acknowledgement
        proc.communicate(timeout=10)

    expected = {f"flags-{n}": set() for n in range(1, 31)}
    for n in range(1, 11):
        expected[f"flags-{n}"] = {"\\Flagged", "$Done"}
    expected["flags-2"] = {"$Done"}
    expected["flags-11"] = {"\\Seen"}
    for n in (12, 13, 14):
        expected[f"flags-{n}"] = {"\\Answered"}
    expected["flags-20"] = {"\\Seen"}
    expected["flags-25"] = {"\\Seen"}
    proc, services = _serve(directory)
    try:
        assert _subject_flags(services["imap"]["host"], services["imap"]["port"]) == expected
        # mbsync, syncing again, pulls the \Seen that POP3 set just before the kill
        name = mbsync(services["imap"]["port"])["flags-25"].name
        assert name.endswith(":2,S"), name
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    store = Store(directory / "mail")
    try:
        mb = store.mailbox(BOB, "INBOX")
        for info in mb.messages():
            name = mb.file_path(info.uid).name
            assert flags_from_filename(name) == {f for f in info.flags if f in STANDARD}, (name, info.flags)
    finally:
        store.close()


def _flags_by_key(directory: Path) -> dict[str, tuple[int, frozenset[str]]]:
    """Each INBOX message's UID and flags by its file's key, after checking that the index
    and the file name's info agree on the standard flags (a restart of the store)."""
    store = Store(directory / "mail")
    try:
        mb = store.mailbox(BOB, "INBOX")
        out = {}
        for info in mb.messages():
            name = mb.file_path(info.uid).name
            assert flags_from_filename(name) == {f for f in info.flags if f in STANDARD}, (name, info.flags)
            out[info.key] = (info.uid, info.flags)
        return out
    finally:
        store.close()


def test_kill_9_in_the_middle_of_a_large_store(tmp_path) -> None:
    """STORE 1:* on 3,000 messages (six lock batches of renames, each then written to
    the index) killed as its first renames land: after the restart every message is
    there once under its UID, the index follows the file names, and the restarted server
    finishes the same STORE."""
    directory = tmp_path / "lab"
    (directory / "mail").mkdir(parents=True)
    maildir = stdlib_mailbox.Maildir(directory / "mail" / BOB, create=True)  # copied in (fast)
    template = _message("big-#")  # (the email package takes ~4 ms a message to build)
    for n in range(3000):
        maildir.add(template.replace(b"big-#", b"big-%d" % n))
    before = _flags_by_key(directory)
    cur = directory / "mail" / BOB / "cur"
    proc, services = _serve(directory)
    try:
        c = imaplib.IMAP4(services["imap"]["host"], services["imap"]["port"], timeout=10)
        c.login("bob", "bob-pw")
        c.select("INBOX")
        c.send(b"s1 STORE 1:* +FLAGS.SILENT (\\Flagged $Big)\r\n")  # no waiting for its OK
        deadline = time.monotonic() + 30
        while not any(True for _ in os.scandir(cur)):
            assert time.monotonic() < deadline, "the STORE never renamed a file"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
    after = _flags_by_key(directory)
    assert {k: uid for k, (uid, _) in after.items()} == {k: uid for k, (uid, _) in before.items()}
    flagged = sum("\\Flagged" in flags for _, flags in after.values())
    print(f"killed with {flagged} of 3,000 messages flagged")
    proc, services = _serve(directory)
    try:
        c = imaplib.IMAP4(services["imap"]["host"], services["imap"]["port"], timeout=10)
        c.login("bob", "bob-pw")
        c.select("INBOX")
        assert c.store("1:*", "+FLAGS.SILENT", "(\\Flagged $Big)")[0] == "OK"
        c.logout()
    finally:
        proc.send_signal(signal.SIGKILL)  # the STORE's OK is all that counts
        proc.communicate(timeout=10)
    assert all(flags >= {"\\Flagged", "$Big"} for _, flags in _flags_by_key(directory).values())
