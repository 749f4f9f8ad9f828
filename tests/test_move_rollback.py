"""A MOVE that fails partway in a running process is rolled back at once (issue 15).

The disk refuses the second copy of a three-message UID MOVE (``ENOSPC`` from the
file's write, in the lab's own process; imaplib speaks real IMAP). The MOVE answers
NO; at once, not at the next start (``store/moving.py``), every message is in INBOX
and only there, the MOVE's plan is gone, another session on the target sees nothing
of it, and the same MOVE succeeds once the disk takes writes again. Before, the first
copy stayed in both folders until the process was restarted.
"""

from __future__ import annotations

import errno
import imaplib
import os

from maillab import Lab

BOB = "bob@alpha.test"


def test_a_move_refused_by_the_disk_partway_is_rolled_back_at_once(single_lab: Lab, monkeypatch) -> None:
    lab = single_lab
    for n in range(3):
        lab.store.deliver(BOB, f"Subject: m{n}\r\n\r\nbody {n}\r\n".encode())
    archive = lab.store.create_mailbox(BOB, "Archive")
    inbox = lab.store.mailbox(BOB)
    real_write = os.write
    writes = [0]

    def full_disk(fd: int, data) -> int:  # the second copy's file cannot be written
        try:
            where = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # (another thread's descriptor, closed meanwhile)
            where = ""
        if where.startswith(f"{archive.path}/tmp/"):
            writes[0] += 1
            if writes[0] == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    imap = imaplib.IMAP4(*lab.address("imap"), timeout=60)
    watcher = imaplib.IMAP4(*lab.address("imap"), timeout=60)
    try:
        imap.login(BOB, "bob-pw")
        watcher.login(BOB, "bob-pw")
        assert watcher.select("Archive")[0] == "OK"
        assert imap.select("INBOX")[1] == [b"3"]
        monkeypatch.setattr(os, "write", full_disk)
        typ, data = imap.uid("MOVE", "1:3", "Archive")
        monkeypatch.undo()
        assert typ == "NO", data
        assert writes[0] == 2  # one copy was made before the refusal
        assert len(archive) == 0 and len(inbox) == 3
        assert not [p for p in os.listdir(inbox.path) if p.startswith("maillab-moving-")]
        assert sorted(os.listdir(archive.path / "new")) == [] and os.listdir(archive.path / "tmp") == []
        assert watcher.noop()[0] == "OK"
        assert watcher.status("Archive", "(MESSAGES)")[1] == [b"Archive (MESSAGES 0)"]
        typ, data = imap.uid("MOVE", "1:3", "Archive")
        assert typ == "OK", data
        assert len(archive) == 3 and len(inbox) == 0
    finally:
        for c in (imap, watcher):
            c.logout()


def test_a_move_whose_original_came_back_under_a_new_uid_is_finished(tmp_path) -> None:
    """A power cut inside a MOVE's expunge round: the index log (fsync'ed first) keeps the
    original's row deleted, the directory loses the file's rename out, so the next open
    finds the file again under a new UID. The plan names the original by its key too,
    and the next open finishes the MOVE: the message in Archive only. Before, the plan's
    UID matched nothing and the message stayed in both folders (tests/test_power_cut.py,
    a seeded look mid-traffic)."""
    from maillab.store import Store
    from maillab.store.moving import begin_move

    store = Store(tmp_path)
    inbox = store.mailbox(BOB, create=True)
    archive = store.create_mailbox(BOB, "Archive")
    info = inbox.add(b"Subject: moved\r\n\r\nbody\r\n", frozenset({"\\Flagged"}), None, sync=True)
    name = inbox.file_path(info.uid)
    data, mtime = name.read_bytes(), name.stat().st_mtime_ns
    begin_move(inbox, archive, [info.uid], sync=True)
    archive.add(data, info.flags, info.internaldate, sync=True)
    inbox.remove([info.uid], sync=True)
    name.write_bytes(data)  # the rename out lost: the file is back, its row is not
    os.utime(name, ns=(mtime, mtime))
    store.close()

    store = Store(tmp_path)
    try:
        inbox, archive = store.mailbox(BOB), store.mailbox(BOB, "Archive")
        assert [archive.read(m.uid) for m in archive.messages()] == [data]
        assert list(inbox.messages()) == [], "the original stayed in INBOX too"
        assert not [p for p in os.listdir(inbox.path) if p.startswith("maillab-moving-")]
    finally:
        store.close()
