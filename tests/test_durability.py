"""Power-cut safety (issue 15): an APPEND or MOVE OK and a POP3 UPDATE +OK are sent
only once the change is on the disk, the directory that names the file and the
index's log included (a rename or unlink is a change of the directory, lost in a
power cut until the directory is fsync'ed). An SMTP 250 waits for one durability
point, as Postfix's does (issue 12, ``maillab/store/delivering.py``): the message's
record written into the folder's accept log opened with ``O_DSYNC``
(``maillab/store/acceptlog.py``), or (a message too large for the log) the file marked
complete (owner-execute bit) and fsync'ed in ``tmp/``; then renamed into ``new/``; the
file, ``new/`` and the index log (``tmp/`` too on the second path) are fsync'ed after
that rename (before or after the 250), and only then is the record retired (the log's
watermark) or the mark taken off.

A power cut cannot be made in a test, so the real ``maillab serve`` runs under
strace and real clients (smtplib, imaplib, poplib) talk to it: SMTP, APPEND, UID
MOVE, EXPUNGE, UID STORE, UID FETCH BODY[] (\\Seen), POP3 DELE + QUIT and RETR + QUIT
(\\Seen); the kernel's own
record of the system calls must show, for each acknowledged change, the rename (an
expunge too: the file leaves ``new/`` or ``cur/`` by a rename into ``tmp/``, unlinked
once the mailbox lock is released), then an fsync of its directory and of
``maillab-index.sqlite-wal``, then the reply (and a MOVE's plan on the disk before its first copy, removed after the
expunge of the originals is). A POP3 session that RETRs and drops the connection
without QUIT keeps its \\Seen (as Dovecot does): fsync'ed once the session is over.
The crash test (``test_crash_consistency.py``) checks what survives a
``kill -9``; this one checks what a power cut would need on top.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import re
import shutil
import signal
import smtplib
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli import wait_for_lab_json
from test_crash_consistency import BOB, _message

from maillab.store.delivering import EXPUNGED


def _ptrace_allowed() -> bool:
    """strace itself is installed by scripts/test (its absence is a set-up error, not a
    skip); what a machine may forbid is tracing (a container without ptrace rights)."""
    assert shutil.which("strace"), "strace is missing: scripts/test installs it"
    return subprocess.run(["strace", "-o", os.devnull, "true"], capture_output=True, timeout=30).returncode == 0


pytestmark = pytest.mark.skipif(not _ptrace_allowed(), reason="this machine forbids ptrace (strace cannot trace)")

CALLS = "fsync,fchmod,rename,renameat,renameat2,unlink,sendto,sendmsg,write,writev,pwrite64,openat"
# "PID name(args) = result", or a call another thread's line cut in two:
# "PID name(args <unfinished ...>" ... "PID <... name resumed>args) = result"
_LINE = re.compile(r"^(\d+) +(?:<\.\.\. (\w+) resumed>(.*)|(\w+)\((.*))$")


class Call:
    def __init__(self, pid: str, name: str, args: str, start: int) -> None:
        self.pid, self.name, self.args, self.start = pid, name, args, start
        self.end = start  # the line where it returned


def _calls(trace: str) -> list[Call]:
    """The traced calls in the order they started, each knowing where it returned."""
    calls: list[Call] = []
    open_: dict[str, Call] = {}
    for n, text in enumerate(trace.splitlines()):
        m = _LINE.match(text)
        if m is None:
            continue
        pid = m.group(1)
        if m.group(2):  # resumed: the call returns here
            call = open_.pop(pid, None)
            if call is not None:
                call.args += m.group(3)
                call.end = n
            continue
        call = Call(pid, m.group(4), m.group(5), n)
        calls.append(call)
        if call.args.endswith("<unfinished ...>"):
            call.args = call.args[: -len("<unfinished ...>")]
            open_[pid] = call
    return calls


def _reply(calls: list[Call], text: str, after: int) -> Call:
    """The first send of ``text`` to a client that started after line ``after``."""
    for c in calls:
        if c.start > after and c.name in ("sendto", "sendmsg", "write", "writev") and text in c.args:
            return c
    raise AssertionError(f"no reply {text!r} in the trace after line {after}")


def _check(calls: list[Call], reply: Call, after: int, change: str, paths: list[str],
           what: str, *, index: bool = True) -> None:
    """Between ``after`` and ``reply``: a ``change`` call (rename/unlink; a rename
    through directory handles, ``renameat``, counts as one) whose arguments hold each
    path's directory, then a returned fsync of that directory and (with ``index``) of
    the index log, all before the reply started."""
    window = [c for c in calls if after < c.start < reply.start]
    names = {change, "renameat", "renameat2"} if change == "rename" else {change}
    for path in paths:
        changed = [c for c in window if c.name in names and (f'{path}/' in c.args or f'<{path}>' in c.args)]
        assert changed, f"{what}: no {change} in {path}/ before the reply"
        last = max(c.end for c in changed)
        for target in (f"{path}>", f"{Path(path).parent}/maillab-index.sqlite-wal>")[:1 + index]:
            synced = [c for c in window if c.name == "fsync" and target in c.args
                      and c.start > last and c.end < reply.start]
            assert synced, (f"{what}: no fsync of {target[:-1]} after the {change} and before"
                            f" the reply (power cut: the acknowledged change could be lost)")


def _check_accepted(calls: list[Call], reply: Call, after: int, maildir: str, what: str) -> None:
    """An SMTP delivery after ``after``, renamed from ``maildir/tmp`` into ``new/``
    before the ``reply``, on the disk before the reply by one of two paths:

    * its accept log record (store/acceptlog.py): a write into
      ``maillab-accepted.log``, opened with ``O_DSYNC``, holding its key, returned
      before the reply; after the rename, fsyncs of the file itself, ``new/`` and the
      index log, and only after those the log's watermark (its block 0) moved past it;
    * or its file in ``tmp/`` given the mark (owner-execute), then fsync'ed, both
      before its rename; after the rename, fsyncs of ``tmp/``, ``new/`` and the index
      log, and only after those the mark taken off."""
    renamed = [c for c in calls if after < c.start < reply.start and c.name == "rename"
               and f'"{maildir}/tmp/' in c.args and f'"{maildir}/new/' in c.args]
    assert renamed, f"{what}: no rename from {maildir}/tmp into new/ before the reply"
    rename = renamed[-1]
    key = rename.args.split(f'"{maildir}/tmp/')[1].split('"')[0]
    file = f"{maildir}/tmp/{key}>"
    log_file = f"{maildir}/maillab-accepted.log>"
    recorded = [c for c in calls if after < c.start and c.end < reply.start and c.name == "pwrite64"
                and log_file in c.args and key in c.args]
    if recorded:
        assert any(c.name == "openat" and f'"{maildir}/maillab-accepted.log"' in c.args and "O_DSYNC" in c.args
                   and c.end < recorded[0].start for c in calls), \
            f"{what}: the accept log was not opened for synchronous writes (O_DSYNC)"
        watermark = [c for c in calls if c.name == "pwrite64" and log_file in c.args and c.start > rename.end
                     and re.search(r", 0\) += 4096", c.args)]
        assert watermark, f"{what}: the accept log's watermark never moved past the delivery"
        for target in (f"{maildir}/new/{key}>", f"{maildir}/new>", f"{maildir}/maillab-index.sqlite-wal>"):
            assert any(c.name == "fsync" and target in c.args and c.start > rename.end
                       and c.end < watermark[0].start for c in calls), \
                (f"{what}: no fsync of {target[:-1]} between the rename and the watermark (power cut:"
                 f" the message lost once its record no longer counts)")
        return
    marked = [c for c in calls if after < c.start and c.end < rename.start and c.name == "fchmod"
              and file in c.args and int(c.args.split(", ")[-1].split(")")[0], 8) & 0o100]
    assert marked, f"{what}: neither an accept log record nor the file marked complete before its rename"
    assert any(c.name == "fsync" and file in c.args and c.start > marked[-1].end and c.end < rename.start
               for c in calls), f"{what}: the marked file not fsync'ed before its rename (and the reply)"
    new_file = f"{maildir}/new/{key}>"
    unmarked = [c for c in calls if c.name == "fchmod" and new_file in c.args and c.start > rename.end
                and not int(c.args.split(", ")[-1].split(")")[0], 8) & 0o100]
    assert unmarked, f"{what}: the mark was never taken off"
    for target in (f"{maildir}/tmp>", f"{maildir}/new>", f"{maildir}/maillab-index.sqlite-wal>"):
        assert any(c.name == "fsync" and target in c.args and c.start > rename.end
                   and c.end < unmarked[0].start for c in calls), \
            (f"{what}: no fsync of {target[:-1]} between the rename and taking the mark off (power"
             f" cut: the rename or the UID lost, and the file unmarked in tmp/ thrown away)")


def _check_replaced(calls: list[Call], reply: Call, after: int, directory: str, name: str,
                    what: str) -> None:
    """Between ``after`` and ``reply``: ``name`` in ``directory`` replaced as a whole
    (its temporary file fsync'ed, then renamed over it), then the directory fsync'ed."""
    window = [c for c in calls if after < c.start < reply.start]
    renamed = [c for c in window if c.name == "rename" and f"{directory}/{name}.tmp" in c.args]
    assert renamed, f"{what}: {name} not replaced by a rename before the reply"
    first, last = min(c.start for c in renamed), max(c.end for c in renamed)
    assert any(c.name == "fsync" and f"{directory}/{name}.tmp>" in c.args and c.end < first
               for c in window), f"{what}: {name}.tmp not fsync'ed before its rename"
    assert any(c.name == "fsync" and f"{directory}>" in c.args and c.start > last
               and c.end < reply.start for c in window), \
        f"{what}: {directory} not fsync'ed after {name}'s rename and before the reply"


def _check_move_plan(calls: list[Call], reply: Call, after: int, source: str, target: str,
                     what: str = "MOVE") -> None:
    """A MOVE's plan (store/moving.py) is on the disk before the first copy is written,
    its data and its name (the source folder's directory fsync'ed), and it is removed
    only after the originals' expunge is: a power cut never leaves a copy without its
    plan, nor the plan gone with an original still there (RFC 6851 3.3)."""
    window = [c for c in calls if after < c.start < reply.start]
    written = [c for c in window if c.name == "write" and f"{source}/maillab-moving-" in c.args]
    assert written, f"{what}: no plan written"
    plan = written[0].args.split("<", 1)[1].split(">", 1)[0]
    copied = [c for c in window if c.name == "rename" and f"{target}/new/" in c.args]
    assert copied, f"{what}: no copy renamed into the target"
    first_copy = copied[0].start
    for synced, part in ((f"{plan}>", "the plan's data"), (f"{source}>", "the plan's name (its directory)")):
        assert any(c.name == "fsync" and synced in c.args and c.start > written[-1].end and c.end < first_copy
                   for c in window), f"{what}: {part} not fsync'ed before the first copy"
    unlinked = [c for c in window if c.name == "unlink" and plan in c.args]
    assert unlinked, f"{what}: the plan was not removed before the OK"
    original = max(c.end for c in window if c.name == "rename" and f'"{source}/new/' in c.args
                   and f'"{source}/tmp/{EXPUNGED}' in c.args)
    assert any(c.name == "fsync" and f"{source}/new>" in c.args and c.start > original
               and c.end < unlinked[0].start for c in window), \
        f"{what}: the plan removed before the originals' expunge was on the disk"


def test_every_acknowledgement_waits_for_its_durability_point(tmp_path) -> None:
    directory = tmp_path / "lab"
    out = tmp_path / "strace.txt"
    proc = subprocess.Popen(
        ["strace", "-f", "-qq", "-y", "-s", "512", "-e", "signal=none", "-e", f"trace={CALLS}",
         "-o", str(out), sys.executable, "-m", "maillab", "serve", "--ports", "auto",
         "--dir", str(directory), "--domain", "alpha.test"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        services = wait_for_lab_json(proc, directory, timeout=60)["services"]
        with smtplib.SMTP(services["smtp"]["host"], services["smtp"]["port"], timeout=30) as c:
            c.sendmail("alice@alpha.test", [BOB], _message("by-smtp"))
        imap = imaplib.IMAP4(services["imap"]["host"], services["imap"]["port"], timeout=30)
        imap.login("bob", "bob-pw")
        imap.create("Archive")
        typ, data = imap.append("INBOX", None, None, _message("by-append"))
        assert typ == "OK", data
        uid = re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1).decode()
        imap.select("INBOX")
        typ, data = imap.uid("MOVE", uid, "Archive")
        assert typ == "OK", data
        typ, data = imap.append("INBOX", None, None, _message("by-append-then-expunged"))
        uid = re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1).decode()
        imap.uid("STORE", uid, "+FLAGS.SILENT", "(\\Deleted)")  # renamed into cur/
        typ, data = imap.expunge()
        assert typ == "OK", data
        # flags: STORE renames new/ -> cur/ (":2,F"); FETCH BODY[] sets \Seen the same way
        stored, fetched = (re.search(rb"APPENDUID \d+ (\d+)", imap.append(
            "INBOX", None, None, _message(f"by-append-then-{what}"))[1][0]).group(1).decode()
            for what in ("stored", "fetched"))
        typ, data = imap.uid("STORE", stored, "+FLAGS", "(\\Flagged)")
        assert typ == "OK" and b"\\Flagged" in data[0], data
        typ, data = imap.uid("FETCH", fetched, "(BODY[])")
        assert typ == "OK" and b"\\Seen" in data[-1], data
        imap.logout()
        pop = poplib.POP3(services["pop3"]["host"], services["pop3"]["port"], timeout=30)
        pop.user("bob")
        pop.pass_("bob-pw")
        pop.dele(1)  # the SMTP message (the lowest UID)
        assert pop.quit().startswith(b"+OK")
        # RETR marks the stored message \Seen (a rename in cur/); QUIT's UPDATE deletes nothing
        pop = poplib.POP3(services["pop3"]["host"], services["pop3"]["port"], timeout=30)
        pop.user("bob")
        pop.pass_("bob-pw")
        pop.retr(1)
        assert pop.quit().startswith(b"+OK")
        # folders: each OK waits for the change of the user's directory
        imap = imaplib.IMAP4(services["imap"]["host"], services["imap"]["port"], timeout=30)
        imap.login("bob", "bob-pw")
        for typ, data in (imap.subscribe("Archive"), imap.unsubscribe("Archive"),
                          imap.create("Work"), imap.rename("Work", "Job"), imap.delete("Job"),
                          imap.append("INBOX", None, None, _message("in-a-renamed-inbox")),
                          imap.rename("INBOX", "Old")):  # RFC 3501 6.3.5: the messages move
            assert typ == "OK", data
        imap.logout()
        # RETR, then the connection dropped (no QUIT, no UPDATE): the \Seen RETR marked
        # stays, as in Dovecot, and its fsync round runs once the session is over
        with smtplib.SMTP(services["smtp"]["host"], services["smtp"]["port"], timeout=30) as c:
            c.sendmail("alice@alpha.test", [BOB], _message("retr-then-dropped"))
        pop = poplib.POP3(services["pop3"]["host"], services["pop3"]["port"], timeout=30)
        pop.user("bob")
        pop.pass_("bob-pw")
        assert b"retr-then-dropped" in b"\n".join(pop.retr(1)[1])
        pop.close()  # no QUIT
        deadline = time.monotonic() + 20  # (the round is on a worker thread: wait for it)
        while time.monotonic() < deadline and not _seen_after_drop(out, directory, check=False):
            time.sleep(0.2)
    finally:
        # the lab is strace's child; strace ends when it has
        for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
            os.kill(int(pid), signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()

    calls = _calls(out.read_text(errors="replace"))
    inbox = str(directory / "mail" / BOB)
    archive = f"{inbox}/.Archive"
    smtp_250 = _reply(calls, "250 2.0.0 Ok: queued as", -1)
    _check_accepted(calls, smtp_250, -1, inbox, "SMTP 250")
    append_ok = _reply(calls, "APPEND completed", smtp_250.start)
    _check(calls, append_ok, smtp_250.start, "rename", [f"{inbox}/new"], "APPEND OK")
    move_ok = _reply(calls, "MOVE completed", append_ok.start)
    _check(calls, move_ok, append_ok.start, "rename", [f"{archive}/new"], "MOVE OK (the copy)")
    _check(calls, move_ok, append_ok.start, "rename", [f"{inbox}/new"], "MOVE OK (the original)")
    _check_move_plan(calls, move_ok, append_ok.start, inbox, archive)
    create_ok = _reply(calls, "CREATE completed", smtp_250.start)
    _check_replaced(calls, create_ok, smtp_250.start, inbox, "maillab-uidvalidity", "CREATE OK")
    expunge_ok = _reply(calls, "EXPUNGE completed", move_ok.start)
    _check(calls, expunge_ok, move_ok.start, "rename", [f"{inbox}/cur"], "EXPUNGE OK")
    store_ok = _reply(calls, "STORE completed", expunge_ok.start)
    _check(calls, store_ok, expunge_ok.start, "rename", [f"{inbox}/new", f"{inbox}/cur"], "STORE OK")
    fetch_ok = _reply(calls, "FETCH completed", store_ok.start)
    _check(calls, fetch_ok, store_ok.start, "rename", [f"{inbox}/new", f"{inbox}/cur"],
           "FETCH BODY[] OK (\\Seen set)")
    quit_ok = _reply(calls, "+OK maillab POP3 server signing off", fetch_ok.start)
    _check(calls, quit_ok, fetch_ok.start, "rename", [f"{inbox}/new"], "POP3 UPDATE +OK")
    seen_quit_ok = _reply(calls, "+OK maillab POP3 server signing off", quit_ok.start)
    _check(calls, seen_quit_ok, quit_ok.start, "rename", [f"{inbox}/cur"], "POP3 QUIT +OK (RETR's \\Seen)")

    sub_ok = _reply(calls, "OK SUBSCRIBE completed", seen_quit_ok.start)
    _check_replaced(calls, sub_ok, seen_quit_ok.start, inbox, "maillab-imap-subscriptions", "SUBSCRIBE OK")
    unsub_ok = _reply(calls, "OK UNSUBSCRIBE completed", sub_ok.start)
    _check_replaced(calls, unsub_ok, sub_ok.start, inbox, "maillab-imap-subscriptions", "UNSUBSCRIBE OK")
    work_ok = _reply(calls, "CREATE completed", unsub_ok.start)
    _check_replaced(calls, work_ok, unsub_ok.start, inbox, "maillab-uidvalidity", "CREATE OK")
    assert any(c.name == "fsync" and f"{inbox}/.Work>" in c.args and c.end < work_ok.start
               for c in calls if c.start > unsub_ok.start), "CREATE OK: the new folder not fsync'ed"
    rename_ok = _reply(calls, "RENAME completed", work_ok.start)
    _check(calls, rename_ok, work_ok.start, "rename", [inbox], "RENAME OK", index=False)
    delete_ok = _reply(calls, "DELETE completed", rename_ok.start)
    _check(calls, delete_ok, rename_ok.start, "rename", [inbox], "DELETE OK (out of the folder names)",
           index=False)
    inbox_ok = _reply(calls, "RENAME completed", delete_ok.start)
    _check(calls, inbox_ok, delete_ok.start, "rename", [f"{inbox}/.Old/new"], "RENAME INBOX OK (the copies)")
    _check(calls, inbox_ok, delete_ok.start, "rename", [f"{inbox}/new"], "RENAME INBOX OK (the originals)")
    _check_move_plan(calls, inbox_ok, delete_ok.start, inbox, f"{inbox}/.Old", "RENAME INBOX")
    _seen_after_drop(out, directory, check=True)


def _seen_after_drop(trace: Path, directory: Path, *, check: bool) -> bool:
    """The RETR of the session that ended without QUIT: its \\Seen rename (into
    ``cur/``) came before the RETR's reply (a client that waited for the reply finds
    it read over IMAP), and fsyncs of ``cur/`` and of the index log followed the
    session's end. With ``check`` an AssertionError says what is missing."""
    calls = _calls(trace.read_text(errors="replace"))
    inbox = f"{directory}/mail/{BOB}"
    try:
        retr = _reply(calls, "retr-then-dropped", max(c.start for c in calls if "RENAME completed" in c.args))
        renamed = [c for c in calls if c.name in ("rename", "renameat", "renameat2") and f"<{inbox}/cur>" in c.args
                   and c.start < retr.start and ":2,S" in c.args]
        assert renamed, "RETR: no \\Seen rename before its reply"
        for target in (f"{inbox}/cur>", f"{inbox}/maillab-index.sqlite-wal>"):
            assert any(c.name == "fsync" and target in c.args and c.start > retr.end
                       for c in calls), (f"RETR without QUIT: no fsync of {target[:-1]} after the session"
                                         " (its \\Seen could be lost in a power cut)")
    except (AssertionError, ValueError):
        if check:
            raise
        return False
    return True


RELAY_LAB = """
import sys, time
from maillab import Lab
from maillab.limits import Limits
lab = Lab(sys.argv[1], ports="auto", limits=Limits(relay_retry_first=0.2, relay_retry_max=0.3,
                                                   relay_expiry=2.0, auth_failure_delay=0.05))
lab.start()
for host in ("mx1.beta.test", "mx2.beta.test"):
    lab.relay.fail(host, "tempfail")
print("ready", flush=True)
time.sleep(600)
"""


def test_relay_rewrites_and_a_dsn_are_on_the_disk_before_the_queue_goes_on(tmp_path) -> None:
    """A message for carol@beta.test is deferred (both MX hosts answer 451) until it
    expires, then bounces into alice's INBOX: each rewrite of its spool entry is
    fsync'ed before its rename and its directory after, and the DSN is on the disk
    (file, new/, index log) before the entry that would send it again is unlinked."""
    directory = tmp_path / "lab"
    out = tmp_path / "strace.txt"
    proc = subprocess.Popen(
        ["strace", "-f", "-qq", "-y", "-s", "256", "-e", "signal=none", "-e", f"trace={CALLS}",
         "-o", str(out), sys.executable, "-c", RELAY_LAB, str(directory)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    queue = directory / "relay-queue"
    alice = directory / "mail" / "alice@alpha.test"
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        info = wait_for_lab_json(proc, directory, timeout=60)
        sub = info["services"]["submission"]
        with smtplib.SMTP(sub["host"], sub["port"], timeout=30) as s:
            s.starttls(context=ssl.create_default_context(cafile=info["ca"]))
            s.login("alice", "alice-pw")
            s.sendmail("alice@alpha.test", ["carol@beta.test"],
                       b"From: alice@alpha.test\r\nTo: carol@beta.test\r\nSubject: bounced\r\n\r\nhi\r\n")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
                (alice / "new").is_dir() and any((alice / "new").iterdir())
                and not list(queue.glob("*.json"))):
            time.sleep(0.1)
        time.sleep(0.3)  # the spool's last fsync round
    finally:
        for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
            os.kill(int(pid), signal.SIGKILL)
        proc.communicate(timeout=30)
    dsn = [f.read_bytes() for f in (alice / "new").iterdir()]
    assert len(dsn) == 1 and b"Status: 4.4.7" in dsn[0], dsn

    calls = _calls(out.read_text(errors="replace"))
    qdir = str(queue)
    entry = [c for c in calls if c.name == "rename" and f"{qdir}/" in c.args and ".json.tmp" in c.args]
    changes = [c for c in calls if c.name in ("rename", "unlink") and f"{qdir}/" in c.args and ".json" in c.args]
    rewrites = entry[1:]  # the first: the entry written before the 250 (Spool.flush)
    assert rewrites, "the entry was never rewritten after an attempt"
    for r in rewrites:
        following = [c.start for c in changes if c.start > r.end]
        until = min(following) if following else len(calls) * 10
        assert any(c.name == "fsync" and f"{qdir}/" in c.args and ".json.tmp>" in c.args and c.end < r.start
                   and c.start > (entry[entry.index(r) - 1].end) for c in calls), \
            "a rewritten entry was renamed into place before its data was fsync'ed"
        assert any(c.name == "fsync" and f"{qdir}>" in c.args and r.end < c.start and c.end < until
                   for c in calls), "a rewrite's rename not fsync'ed (its directory) before the next change"
    removed = [c for c in calls if c.name == "unlink" and f"{qdir}/" in c.args and '.json"' in c.args]
    assert removed, "the entry was never removed"
    gone = removed[-1]
    _check(calls, gone, rewrites[-1].end, "rename", [str(alice / "new")], "DSN before the entry goes")
    assert any(c.name == "fsync" and f"{qdir}>" in c.args and c.start > gone.end for c in calls), \
        "the entry's removal was not fsync'ed (its directory)"
