"""Power cuts (issue 15): what survives is only what was made durable.

``kill -9`` (``test_crash_consistency.py``) keeps the page cache, so a missing fsync
passes it; ``test_durability.py`` checks with strace that fsyncs come before each
acknowledgement, but not that they are the right ones. Here the lab's directory is on
:mod:`powercut`, a FUSE file system that keeps, beside the live files, what a disk
would hold after a power cut (a file's data at its fsync, a name in a directory at
the directory's fsync; LazyFS's idea), and writes that disk out on demand.

* After each acknowledgement of a scripted session (SMTP 250, IMAP APPEND, STORE,
  FETCH BODY[], MOVE, EXPUNGE, CREATE/RENAME, POP3 DELE + QUIT, a relay queue entry
  by submission), the disk as a cut would leave it right then is checked offline:
  strictly what was durable, and again with a seeded random part of what was pending
  (directory changes, prefixes of file writes, torn) having reached it too.
* Mid-traffic (the crash test's four client workers): four looks at random moments
  while they run, each checked offline, then the lab is stopped at a random moment, the
  power cut, and a lab restarted on what the disk held; twice.

After each cut, as in the crash test: every message acknowledged is there exactly
once (unless its deletion was acknowledged), nothing half-written is visible, the
index and the Maildir agree, a UID names the same message forever, UIDVALIDITY does
not change, acknowledged flags, MOVEs and folder commands stay; a relay entry
acknowledged is in the spool, and a restarted lab sends it once.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import random
import re
import shutil
import signal
import smtplib
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from powercut import Mount, fuse_works
from test_cli import wait_for_lab_json
from test_crash_consistency import (
    BOB,
    Ledger,
    _check_directory,
    _folder_worker,
    _imap_worker,
    _message,
    _pop3_worker,
    _serve,
    _smtp_worker,
)

from maillab.relay.spool import DIRNAME
from maillab.store import Store
from maillab.store.groupsync import names_last_with_file_fsync

_why_not = fuse_works()
pytestmark = pytest.mark.skipif(_why_not is not None, reason=f"FUSE cannot be used here: {_why_not}")

#: A lab whose relay cannot deliver to beta.test (both MX hosts answer 451), so a
#: message for carol waits in the queue; bob at alpha.test is served as usual.
HOLDING_LAB = """
import sys, time
from maillab import Lab
from maillab.limits import Limits
lab = Lab(sys.argv[1], ports="auto", limits=Limits(relay_retry_first=0.2, relay_retry_max=0.5))
lab.start()
for host in ("mx1.beta.test", "mx2.beta.test"):
    lab.relay.fail(host, "tempfail")
print("ready", flush=True)
time.sleep(600)
"""
CAROL = "carol@beta.test"
#: ``maillab serve`` with the whole lab network (beta.test's MX too), then its directory.
MAILLAB_SERVE = [sys.executable, "-m", "maillab", "serve", "--ports", "auto", "--dir"]
#: Cuts looked at while the mid-traffic workers run, per round (each checked offline).
LOOKS = 4


def _copy(ledger: Ledger) -> Ledger:
    """The ledger as it stands (what was acknowledged before the cut)."""
    while True:
        try:
            out = Ledger()
            for name, value in vars(ledger).items():
                if isinstance(value, (set, dict)):
                    setattr(out, name, {k: set(v) if isinstance(v, set) else v for k, v in list(value.items())}
                            if isinstance(value, dict) else set(value))
            out.counter = ledger.counter
            return out
        except RuntimeError:  # a worker changed it meanwhile ("changed size during iteration")
            continue


def _window(before: Ledger, after: Ledger) -> Ledger:
    """What a look taken while the workers run may be checked against: acknowledged
    before it (``before``, copied just ahead of it); deletions and folder commands
    begun by the end of it (``after``, copied just behind it) may be either way."""
    out = _copy(before)
    out.deleting |= after.deleting | after.deleted
    # (UIDs as handed out before the look: one an APPEND got after it was free in that world)
    changed = {n for table in ("folders", "subscribed")
               for n in getattr(before, table).keys() | getattr(after, table).keys()
               if getattr(before, table).get(n) != getattr(after, table).get(n)}
    out.in_flight |= after.in_flight | changed
    return out


def _spooled(directory: Path) -> list[bytes]:
    """The messages in the relay queue's spool: each whole (its JSON and its body)."""
    spool = directory / DIRNAME
    out = []
    for entry in sorted(spool.glob("*.json")) if spool.is_dir() else []:
        body = entry.with_suffix(".eml")
        assert entry.read_text().strip() and body.exists(), f"a half-written spool entry: {entry.name}"
        out.append(body.read_bytes())
    return out


class Cuts:
    """Power cuts taken while the lab runs, checked as they are taken."""

    def __init__(self, mount: Mount, tmp: Path, seed: int) -> None:
        self.mount, self.tmp, self.rng = mount, tmp, random.Random(seed)
        self.count = 0
        self.relayed: set[bytes] = set()  # subjects of relay entries acknowledged

    def check(self, ledger: Ledger, what: str) -> None:
        for seed in (None, self.rng.randrange(10**6)):
            self.count += 1
            image = self.tmp / f"cut-{self.count}"
            stats = self.mount.cut(image, seed, freeze=False)
            try:
                _check_directory(image, _copy(ledger))
                spooled = b"".join(_spooled(image))
                lost = {s for s in self.relayed if s not in spooled}
                assert not lost, f"relay entries acknowledged but not in the spool: {lost}"
            except AssertionError as exc:
                raise AssertionError(f"power cut after {what} (seed {seed}, {stats}): {exc}") from exc
            shutil.rmtree(image)


def test_power_cut_after_each_acknowledgement(tmp_path) -> None:
    backing, mnt = tmp_path / "disk", tmp_path / "mnt"
    backing.mkdir()
    ledger = Ledger()
    with Mount(backing, mnt) as mount:
        holder = subprocess.Popen([sys.executable, "-c", HOLDING_LAB, str(mnt)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        cuts = Cuts(mount, tmp_path, seed=15)
        # on this file system the store takes no file system's word for a name's durability
        assert not names_last_with_file_fsync(str(mnt))
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
            info = wait_for_lab_json(holder, mnt)
            services = info["services"]
            cuts.check(ledger, "the start")
            smtp = services["smtp"]
            with smtplib.SMTP(smtp["host"], smtp["port"], timeout=10) as c:
                for n in range(3):
                    subject = f"smtp-0-{n}"
                    c.sendmail("alice@alpha.test", [BOB], _message(subject))
                    ledger.delivered.add(subject)
                    cuts.check(ledger, f"SMTP 250 for {subject}")

            imap = imaplib.IMAP4(services["imap"]["host"], services["imap"]["port"], timeout=10)
            imap.login("bob", "bob-pw")
            assert imap.create("Archive")[0] == "OK"
            imap.select("INBOX")
            uids = {}
            for n in range(4):
                subject = f"imap-0-{n}"
                typ, data = imap.append("INBOX", None, None, _message(subject))
                assert typ == "OK"
                ledger.delivered.add(subject)
                m = re.search(rb"APPENDUID (\d+) (\d+)", data[0])
                ledger.see_uidvalidity("INBOX", int(m.group(1)))
                ledger.see_uid("INBOX", int(m.group(2)), subject)
                uids[subject] = m.group(2).decode()
                cuts.check(ledger, f"APPEND OK for {subject}")
            assert imap.uid("STORE", uids["imap-0-0"], "+FLAGS", "(\\Flagged)")[0] == "OK"
            ledger.flagged.add("imap-0-0")
            cuts.check(ledger, "STORE +FLAGS OK")
            assert imap.uid("FETCH", uids["imap-0-1"], "(BODY[])")[0] == "OK"
            ledger.seen.add("imap-0-1")
            cuts.check(ledger, "FETCH BODY[] OK")
            assert imap.uid("MOVE", uids["imap-0-2"], "Archive")[0] == "OK"
            ledger.moved.add("imap-0-2")
            cuts.check(ledger, "MOVE OK")
            imap.uid("STORE", uids["imap-0-3"], "+FLAGS.SILENT", "(\\Deleted)")
            assert imap.expunge()[0] == "OK"
            ledger.deleted.add("imap-0-3")
            cuts.check(ledger, "EXPUNGE OK")
            for old, new in (("folder-0-1", "renamed-0-1"),):
                assert imap.create(old)[0] == "OK"
                ledger.folders[old] = True
                assert imap.subscribe(old)[0] == "OK"
                ledger.subscribed[old] = True
                cuts.check(ledger, "CREATE, SUBSCRIBE OK")
                assert imap.rename(old, new)[0] == "OK"
                ledger.folders.update({old: False, new: True})
                cuts.check(ledger, "RENAME OK")
            imap.logout()

            pop = poplib.POP3(services["pop3"]["host"], services["pop3"]["port"], timeout=10)
            pop.user("bob")
            pop.pass_("bob-pw")
            doomed, read = [], []
            for n in range(1, len(pop.list()[1]) + 1):
                subject = re.search(rb"Subject: (\S+)", b"\n".join(pop.top(n, 0)[1])).group(1).decode()
                if subject == "smtp-0-0":
                    pop.dele(n)
                    doomed.append(subject)
                elif subject == "smtp-0-1":
                    pop.retr(n)
                    read.append(subject)
            assert doomed and read
            assert pop.quit().startswith(b"+OK")
            ledger.deleted.update(doomed)
            ledger.seen.update(read)
            cuts.check(ledger, "POP3 QUIT +OK (UPDATE)")

            sub = services["submission"]
            with smtplib.SMTP(sub["host"], sub["port"], timeout=10) as s:
                s.starttls(context=ssl.create_default_context(cafile=info["ca"]))
                s.login("alice", "alice-pw")
                s.sendmail("alice@alpha.test", [CAROL], _message("relayed-0").replace(
                    b"To: " + BOB.encode(), b"To: " + CAROL.encode()))
            cuts.relayed.add(b"Subject: relayed-0")
            cuts.check(ledger, "submission 250 for a relay entry")

            # the real cut: the lab stopped first (nothing it does later counts), then the
            # power, then the process killed
            holder.send_signal(signal.SIGSTOP)
            final = _copy(ledger)
            seed = cuts.rng.randrange(10**6)
            stats = mount.cut(tmp_path / "after", seed)
            print(f"{cuts.count} cuts checked; the last one: {stats}")
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.communicate(timeout=10)

    # a lab on what the disk held: it sends the relay entry once, the rest is as acknowledged
    directory = tmp_path / "after"
    _check_directory(directory, final)
    (directory / "lab.json").unlink(missing_ok=True)  # the last start's, written again
    proc = subprocess.Popen([*MAILLAB_SERVE, str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)  # beta.test too
    try:
        services = wait_for_lab_json(proc, directory)["services"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not _carol_subjects(directory) or _spooled(directory)):
            time.sleep(0.1)
        time.sleep(0.5)  # a second copy would have arrived by now
        assert _carol_subjects(directory) == ["relayed-0"]
        # through the servers: every message whole, the acknowledged ones there
        pop = poplib.POP3(services["pop3"]["host"], services["pop3"]["port"], timeout=10)
        pop.user("bob")
        pop.pass_("bob-pw")
        by_pop = set()
        for n in range(1, len(pop.list()[1]) + 1):
            data = b"\n".join(pop.retr(n)[1])
            assert data.rstrip().endswith(b"x" * 10), f"POP3 RETR {n} is not a whole message"
            by_pop.add(re.search(rb"Subject: (\S+)", data).group(1).decode())
        pop.quit()
        c = imaplib.IMAP4(services["imap"]["host"], services["imap"]["port"], timeout=10)
        c.login("bob", "bob-pw")
        c.select("INBOX", readonly=True)
        typ, fetched = c.fetch("1:*", "(BODY.PEEK[])")
        bodies = [part[1] for part in fetched if isinstance(part, tuple)]
        assert all(b.rstrip().endswith(b"x" * 10) for b in bodies), "IMAP: a message not whole"
        by_imap = {re.search(rb"Subject: (\S+)", b).group(1).decode() for b in bodies}
        inbox = final.delivered - final.deleted - final.moved
        assert by_imap == by_pop and inbox <= by_imap, (by_imap, by_pop, inbox)
        typ, data = c.append("INBOX", None, None, _message("after-the-cut"))
        uid = int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1))
        assert uid > max(u for (folder, u) in final.uids if folder == "INBOX")
        c.logout()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)


def _carol_after_restart(image: Path) -> list[str]:
    """Carol's INBOX as a lab restarted on ``image`` (a cut's disk) finds it: the store
    opened, so a delivery whose 250 waited only for its accept-log record
    (store/acceptlog.py), its file not yet flushed, is redone from the record. Every
    message indexed must be whole."""
    store = Store(image / "mail")
    try:
        mb = store.mailbox(CAROL, "INBOX", create=True)
        mb.sync()
        found = []
        for info in mb.messages():
            data = mb.read(info.uid)
            m = re.search(rb"Subject: (\S+)", data)
            assert m and data.rstrip().endswith(b"x" * 10), f"carol's UID {info.uid} is not a whole message: {data[:80]!r}"
            found.append(m.group(1).decode())
        return found
    finally:
        store.close()


def _carol_subjects(directory: Path) -> list[str]:
    """Carol's messages in a running lab's Maildir, read directly (files whole: the lab
    has written them; only a cut's disk needs :func:`_carol_after_restart`)."""
    found = []
    for sub in ("new", "cur"):
        folder = directory / "mail" / CAROL / sub
        for f in folder.iterdir() if folder.is_dir() else []:
            m = re.search(rb"Subject: (\S+)", f.read_bytes())
            found.append(m.group(1).decode() if m else f"<no subject in {f.name}>")
    return found


def _guard(stop: threading.Event, errors: list[BaseException], fn, *args) -> None:
    """A worker whose connection the cut (the lab stopped, then killed) ends."""
    try:
        fn(*args)
    except (OSError, EOFError, smtplib.SMTPException, imaplib.IMAP4.abort, imaplib.IMAP4.error,
            poplib.error_proto, AssertionError) as exc:
        if not stop.is_set():  # a refusal or a reused UID before the cut is an error
            errors.append(exc)


def test_power_cut_mid_traffic(tmp_path) -> None:
    """The crash test's four workers (SMTP, IMAP APPEND/STORE/FETCH/MOVE/EXPUNGE, POP3
    DELE/RETR + QUIT, folder commands) run; what a cut would leave is looked at
    :data:`LOOKS` times at random moments (strict or seeded), then the lab is stopped,
    the power cut (first strictly, then with a random part of the pending writes on
    the disk), the lab killed and restarted on what the disk held."""
    rng = random.Random(int(os.environ.get("POWERCUT_SEED", "1515")))
    ledger = Ledger()
    disk = tmp_path / "disk-0"
    disk.mkdir()
    for round_ in range(2):
        mnt = tmp_path / f"mnt-{round_}"
        with Mount(disk, mnt) as mount:
            proc, services = _serve(mnt)
            stop = threading.Event()
            errors: list[BaseException] = []
            workers = [threading.Thread(target=_guard, args=(stop, errors, _smtp_worker, services, ledger, round_, stop)),
                       threading.Thread(target=_guard, args=(stop, errors, _imap_worker, services, ledger, round_,
                                                             stop, random.Random(rng.random()))),
                       threading.Thread(target=_guard, args=(stop, errors, _pop3_worker, services, ledger, stop)),
                       threading.Thread(target=_guard, args=(stop, errors, _folder_worker, services, ledger, round_,
                                                             stop))]
            try:
                for w in workers:
                    w.start()
                # looks at what a cut at a random moment would leave, the lab going on
                for n in range(LOOKS):
                    time.sleep(rng.uniform(0.2, 0.6))
                    seed = rng.randrange(10**6) if n % 2 else None  # strict, then seeded
                    image = tmp_path / f"look-{round_}-{n}"
                    before = _copy(ledger)
                    stats = mount.cut(image, seed, freeze=False)
                    if os.environ.get("POWERCUT_KEEP"):
                        shutil.copytree(image, f"{image}.orig", symlinks=True)
                    try:
                        _check_directory(image, _window(before, _copy(ledger)))
                    except AssertionError as exc:
                        raise AssertionError(f"a cut mid-traffic (round {round_}, {stats}): {exc}") from exc
                    shutil.rmtree(image)
                time.sleep(rng.uniform(0.2, 1.0))
                proc.send_signal(signal.SIGSTOP)
                stop.set()
                seed = None if round_ == 0 else rng.randrange(10**6)
                disk = tmp_path / f"disk-{round_ + 1}"
                stats = mount.cut(disk, seed)
                print(f"round {round_}: {stats}")
            finally:
                stop.set()
                proc.send_signal(signal.SIGKILL)
                proc.communicate(timeout=10)
                for w in workers:
                    w.join(timeout=20)
        assert not errors, errors
        try:
            _check_directory(disk, ledger)
        except AssertionError as exc:
            raise AssertionError(f"after the power cut of round {round_} ({stats}): {exc}") from exc
    proc, services = _serve(disk)
    try:
        c = imaplib.IMAP4(services["imap"]["host"], services["imap"]["port"], timeout=10)
        c.login("bob", "bob-pw")
        typ, data = c.append("INBOX", None, None, _message("after-the-cuts"))
        uid = int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1))
        assert uid > max(u for (folder, u) in ledger.uids if folder == "INBOX")
        c.logout()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    print(f"acknowledged: {len(ledger.delivered)} delivered, {len(ledger.deleted)} deleted,"
          f" {len(ledger.moved)} moved, {len(ledger.uids)} UIDs")
    assert len(ledger.delivered) > 10 and ledger.deleted, "the workers barely ran"


def test_power_cut_after_relaying_sends_each_once(tmp_path) -> None:
    """Submission (smtplib, AUTH) of messages for carol@beta.test, relayed by the lab to
    beta.test's MX in the same lab: after each 250 a cut would leave each message in the
    spool or in carol's Maildir (never neither, never twice in her Maildir); once all
    are delivered and the queue is empty, the power is cut and a restarted lab sends
    none of them again."""
    backing, mnt = tmp_path / "disk", tmp_path / "mnt"
    subjects = [f"relay-{n}" for n in range(3)]
    with Mount(backing, mnt) as mount:
        proc = subprocess.Popen([*MAILLAB_SERVE, str(mnt)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        try:
            info = wait_for_lab_json(proc, mnt)
            sub = info["services"]["submission"]
            with smtplib.SMTP(sub["host"], sub["port"], timeout=10) as s:
                s.starttls(context=ssl.create_default_context(cafile=info["ca"]))
                s.login("alice", "alice-pw")
                for n, subject in enumerate(subjects):
                    s.sendmail("alice@alpha.test", [CAROL], _message(subject).replace(
                        b"To: " + BOB.encode(), b"To: " + CAROL.encode()))
                    for seed in (None, n):
                        image = tmp_path / f"look-{n}-{seed}"
                        stats = mount.cut(image, seed, freeze=False)
                        spooled = b"".join(_spooled(image))
                        there = _carol_after_restart(image)
                        for sent in subjects[:n + 1]:
                            assert there.count(sent) <= 1, (sent, there, stats)
                            assert sent in there or sent.encode() in spooled, \
                                f"{sent}: acknowledged, then neither spooled nor delivered ({stats})"
                        shutil.rmtree(image)
            deadline = time.monotonic() + 30
            while sorted(_carol_subjects(mnt)) != subjects or _spooled(mnt):
                assert time.monotonic() < deadline, (_carol_subjects(mnt), _spooled(mnt))
                time.sleep(0.1)
            time.sleep(0.5)  # the removals' fsync rounds
            proc.send_signal(signal.SIGSTOP)
            stats = mount.cut(tmp_path / "after")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=10)
    directory = tmp_path / "after"
    assert sorted(_carol_subjects(directory)) == subjects, stats
    (directory / "lab.json").unlink(missing_ok=True)
    proc = subprocess.Popen([*MAILLAB_SERVE, str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for_lab_json(proc, directory)
        time.sleep(1.5)  # a spool entry left behind would be sent at once
        assert sorted(_carol_subjects(directory)) == subjects, "a relayed message sent again after the cut"
        assert not _spooled(directory)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
