"""The Maildir store and its index: atomic delivery, UIDs, flags, outside changes."""

from __future__ import annotations

import json
import mailbox as stdlib_mailbox
import os
import sqlite3
import subprocess
import sys
import threading

import pytest

from maillab.store import InvalidName, Mailbox, MailboxExists, NoSuchMailbox, Store, deferred
from maillab.store.names import decode_mutf7, encode_mutf7

MSG = b"From: a@alpha.test\r\nSubject: hi\r\n\r\nhello\r\n"


def test_delivery_is_a_real_maildir_readable_by_stdlib(tmp_path):
    store = Store(tmp_path)
    info = store.deliver("bob@alpha.test", MSG)
    assert info.uid == 1 and info.subdir == "new"
    md = stdlib_mailbox.Maildir(tmp_path / "bob@alpha.test", factory=None, create=False)
    (only,) = list(md)
    assert only["Subject"] == "hi"
    assert (tmp_path / "bob@alpha.test" / "new" / info.filename).read_bytes() == MSG
    assert os.listdir(tmp_path / "bob@alpha.test" / "tmp") == []


def test_uids_ascend_and_survive_restart(tmp_path):
    store = Store(tmp_path)
    uids = [store.deliver("bob@alpha.test", MSG).uid for _ in range(3)]
    mb = store.mailbox("bob@alpha.test")
    uidvalidity = mb.uidvalidity
    mb.remove([uids[-1]])
    store.close()
    again = Store(tmp_path).mailbox("bob@alpha.test")
    assert again.uidvalidity == uidvalidity
    assert [m.uid for m in again.messages()] == uids[:2]
    assert again.add(MSG).uid == 4, "a removed UID is never reused"


def test_flags_are_mirrored_in_maildir_info_and_read_back(tmp_path):
    store = Store(tmp_path)
    info = store.deliver("bob@alpha.test", MSG)
    mb = store.mailbox("bob@alpha.test")
    mb.add_flags(info.uid, ["\\Seen", "\\Flagged", "$Label1"])
    on_disk = os.listdir(tmp_path / "bob@alpha.test" / "cur")
    assert on_disk == [f"{info.key}:2,FS"]
    # another tool (mutt) marks it replied by renaming the file
    os.rename(tmp_path / "bob@alpha.test" / "cur" / on_disk[0],
              tmp_path / "bob@alpha.test" / "cur" / f"{info.key}:2,RS")
    (m,) = mb.messages()
    assert m.flags == {"\\Seen", "\\Answered", "$Label1"}


def test_a_flag_change_finds_a_file_another_tool_renamed_meanwhile(tmp_path):
    """mutt marks a message read (renames it into cur/ with :2,S) between two looks of
    the index: a STORE then still changes it, from the flags its name now has, rather
    than skipping it as if it had been expunged; a message removed is left out."""
    store = Store(tmp_path)
    kept, gone = store.deliver("bob@alpha.test", MSG), store.deliver("bob@alpha.test", MSG)
    mb = store.mailbox("bob@alpha.test")
    base = tmp_path / "bob@alpha.test"
    os.rename(base / "new" / kept.filename, base / "cur" / f"{kept.key}:2,S")
    os.unlink(base / "new" / gone.filename)
    now, changed = mb.change_flags([kept.uid, gone.uid], lambda old, add: old | add, frozenset({"\\Flagged"}))
    assert now == {kept.uid: {"\\Seen", "\\Flagged"}} and changed == [kept.uid]
    assert os.listdir(base / "cur") == [f"{kept.key}:2,FS"]
    store.close()
    assert [m.flags for m in Store(tmp_path).mailbox("bob@alpha.test").messages()] == [{"\\Seen", "\\Flagged"}]


def test_a_move_cut_short_is_finished_at_the_next_open(tmp_path):
    """A MOVE of two messages killed after copying the first (its original not yet
    expunged): the next open expunges that original and keeps the other, so each is
    in exactly one folder (RFC 6851 3.3)."""
    from maillab.store.moving import begin_move

    store = Store(tmp_path)
    inbox = store.mailbox("bob@alpha.test", create=True)
    archive = store.create_mailbox("bob@alpha.test", "Archive")
    first, second = inbox.add(MSG, ["\\Seen"]), inbox.add(MSG.replace(b"hello", b"other"))
    archive.add(MSG, ["\\Seen"])  # an unrelated message, alike but older than the move
    begin_move(inbox, archive, [first.uid, second.uid], sync=True)
    archive.add(inbox.read(first.uid), first.flags, first.internaldate)  # the copy, then the kill
    inbox.add_flags(first.uid, ["\\Answered"])  # acknowledged to a client after the copy
    store.close()
    again = Store(tmp_path)
    assert [m.uid for m in again.mailbox("bob@alpha.test").messages()] == [second.uid]
    assert [m.flags for m in again.mailbox("bob@alpha.test", "Archive").messages()] == [
        {"\\Seen"}, {"\\Seen", "\\Answered"}]
    assert not list((tmp_path / "bob@alpha.test").glob("maillab-moving-*"))


def test_a_move_plan_cut_short_while_written_is_dropped(tmp_path):
    """A plan that is not whole (a power cut or a kill while it was written, before
    its fsync round ended) was written before anything was copied: the next open
    drops it and leaves both folders as they are."""
    from maillab.store.moving import begin_move

    store = Store(tmp_path)
    inbox = store.mailbox("bob@alpha.test", create=True)
    archive = store.create_mailbox("bob@alpha.test", "Archive")
    first = inbox.add(MSG)
    plan = begin_move(inbox, archive, [first.uid], sync=False)
    plan.write_bytes(plan.read_bytes()[:-3])  # its end never reached the disk
    archive.add(MSG, internaldate=first.internaldate)  # alike, where a copy would be
    store.close()
    again = Store(tmp_path)
    assert [m.uid for m in again.mailbox("bob@alpha.test").messages()] == [first.uid]
    assert len(again.mailbox("bob@alpha.test", "Archive")) == 1
    assert not list((tmp_path / "bob@alpha.test").glob("maillab-moving-*"))


def test_outside_additions_and_removals_are_picked_up(tmp_path):
    store = Store(tmp_path)
    store.deliver("bob@alpha.test", MSG)
    mb = store.mailbox("bob@alpha.test")
    md = stdlib_mailbox.Maildir(tmp_path / "bob@alpha.test", create=False)
    key = md.add(b"Subject: from outside\n\nbody\n")
    msgs = mb.messages()
    assert [m.uid for m in msgs] == [1, 2]
    assert msgs[1].crlf_size == msgs[1].size + 3  # three bare LFs
    assert mb.read_crlf(2) == b"Subject: from outside\r\n\r\nbody\r\n"
    md.remove(key)
    assert [m.uid for m in mb.messages()] == [1]


def test_a_half_written_message_is_never_listed(tmp_path):
    store = Store(tmp_path)
    mb = store.mailbox("bob@alpha.test", create=True)
    (mb.path / "tmp" / "123.crashed").write_bytes(b"Subject: half")
    assert mb.messages() == []


def test_concurrent_deliveries_get_distinct_uids(tmp_path):
    store = Store(tmp_path)
    store.ensure_user("bob@alpha.test")

    def worker():
        for _ in range(50):
            store.deliver("bob@alpha.test", MSG)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    uids = [m.uid for m in store.mailbox("bob@alpha.test").messages()]
    assert uids == list(range(1, 201))


def test_folders_are_maildirplusplus_with_mutf7_names(tmp_path):
    store = Store(tmp_path)
    store.ensure_user("bob@alpha.test")
    store.create_mailbox("bob@alpha.test", "Archive/2024")
    store.create_mailbox("bob@alpha.test", "台北")
    assert (tmp_path / "bob@alpha.test" / ".Archive.2024" / "cur").is_dir()
    assert (tmp_path / "bob@alpha.test" / ".&U,BTFw-" / "cur").is_dir()
    names = store.list_mailboxes("bob@alpha.test")
    assert {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive/2024", "台北"} <= set(names)
    with pytest.raises(MailboxExists):
        store.create_mailbox("bob@alpha.test", "Archive/2024")
    with pytest.raises(NoSuchMailbox):
        store.mailbox("bob@alpha.test", "Nope")


@pytest.mark.parametrize("name", ["..", "../carol@beta.test", "/etc", "~root", "a/../../x",
                                  "bad\0name", "x" * 600, "dot.ted"])
def test_names_cannot_leave_the_users_store(tmp_path, name):
    store = Store(tmp_path)
    store.ensure_user("bob@alpha.test")
    with pytest.raises(InvalidName):
        store.create_mailbox("bob@alpha.test", name)


@pytest.mark.parametrize("encoded", ["&AC8-", "&AC4ALg-", "&AGE-", "&Jjo", "&-&-x&"])
def test_non_canonical_modified_utf7_is_refused(encoded):
    with pytest.raises(InvalidName):
        decode_mutf7(encoded)


def test_mutf7_round_trip_rfc3501_example():
    # RFC 3501 5.1.3's example: "~peter/mail/台北/日本語"
    assert encode_mutf7("~peter/mail/台北/日本語") == "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
    assert decode_mutf7("~peter/mail/&U,BTFw-/&ZeVnLIqe-") == "~peter/mail/台北/日本語"
    assert decode_mutf7("A&-B") == "A&B"


def test_uidvalidity_changes_when_a_mailbox_is_recreated_or_renamed(tmp_path):
    store = Store(tmp_path)
    store.ensure_user("bob@alpha.test")
    first = store.create_mailbox("bob@alpha.test", "Work").uidvalidity
    store.delete_mailbox("bob@alpha.test", "Work")
    second = store.create_mailbox("bob@alpha.test", "Work").uidvalidity
    assert second != first
    store.rename_mailbox("bob@alpha.test", "Work", "Job")
    assert store.mailbox("bob@alpha.test", "Job").uidvalidity not in (first, second)


def test_a_rename_of_inbox_cut_short_is_finished_at_the_next_open(tmp_path, monkeypatch):
    """RENAME INBOX killed after the copies, before the originals' expunge: the next
    open of INBOX finishes it from the MOVE plan, so no message is in both folders."""
    from maillab.store.mailbox import Mailbox

    store = Store(tmp_path)
    inbox = store.mailbox("bob@alpha.test", create=True)
    uids = [inbox.add(MSG.replace(b"hello", f"message {i}".encode())).uid for i in range(3)]
    inbox.add_flags(uids[0], ["\\Flagged"])

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies here
    monkeypatch.setattr(Mailbox, "remove", killed)
    with pytest.raises(KeyboardInterrupt):
        store.rename_mailbox("bob@alpha.test", "INBOX", "Old", sync=True)
    monkeypatch.undo()
    assert len(inbox) == 3 and len(store.mailbox("bob@alpha.test", "Old")) == 3  # in both
    again = Store(tmp_path)  # (no close: the process was gone)
    assert len(again.mailbox("bob@alpha.test")) == 0
    old = again.mailbox("bob@alpha.test", "Old").messages()
    assert sorted(again.mailbox("bob@alpha.test", "Old").read(m.uid) for m in old) == sorted(
        MSG.replace(b"hello", f"message {i}".encode()) for i in range(3))
    assert [m.flags for m in old].count(frozenset({"\\Flagged"})) == 1


def test_a_rename_lost_in_a_power_cut_with_its_index_row_kept_is_put_right(tmp_path):
    """A clean close, a restart, a flag change, then a power cut that keeps the index
    log (fsync'ed first in the round) but loses the rename and the directory time
    with it: the next open scans (the clean close's directory times were good for
    one open only) and follows the file name, instead of an index row naming a file
    that is not there."""
    store = Store(tmp_path)
    inbox = store.mailbox("bob@alpha.test", create=True)
    uid = inbox.add(MSG).uid
    store.close()
    inbox = Store(tmp_path).mailbox("bob@alpha.test")
    before = {sub: os.stat(inbox.path / sub).st_mtime_ns for sub in ("new", "cur")}
    old = inbox.file_path(uid)
    info = inbox.set_flags(uid, ["\\Flagged", "$Big"])
    os.rename(inbox.path / info.relpath, old)  # the rename never reached the disk ...
    for sub, ns in before.items():
        os.utime(inbox.path / sub, ns=(ns, ns))  # ... nor the directory times
    inbox._db.close()  # the process is gone: no close()
    again = Store(tmp_path).mailbox("bob@alpha.test")
    assert again.read(uid) == MSG
    assert again.flags(uid) == {"$Big"}  # the name's standard flags, the index's keywords
    assert again.file_path(uid) == old


def test_restart_skips_the_scan_only_when_the_directories_did_not_move(tmp_path):
    store = Store(tmp_path)
    kept = [store.deliver("bob@alpha.test", MSG).uid for _ in range(3)]
    store.close()
    # unchanged: the index is taken as it is
    store = Store(tmp_path)
    mb = store.mailbox("bob@alpha.test")
    assert [i.uid for i in mb.messages()] == kept
    gone = mb.file_path(kept[0])
    store.close()
    # changed while no server ran: a file removed, one written by another tool with
    # sizes in its name that do not match (read, not trusted), one with LF endings
    gone.unlink()
    (store.user_root("bob@alpha.test") / "new" / "1700000000.M1P1.tool,S=5,W=5").write_bytes(b"S: x\n\nhi\n")
    store = Store(tmp_path)
    mb = store.mailbox("bob@alpha.test")
    infos = mb.messages()
    assert [i.uid for i in infos] == [*kept[1:], kept[-1] + 1]
    assert (infos[-1].size, infos[-1].crlf_size) == (9, 12)
    store.close()


def test_a_maildir_is_indexed_from_its_names_and_measured_when_asked(tmp_path):
    """Like Dovecot: the first look lists directory entries only (UIDs in the order the
    names tell, flags from the info); sizes the names lack are read when asked for."""
    root = tmp_path / "bob@alpha.test"
    for sub in ("new", "cur", "tmp"):
        (root / sub).mkdir(parents=True)
    body = b"Subject: x\n\nline one\nline two\n"
    # delivered in this order (seconds, then microseconds: M9 before M10), whatever the mtimes
    names = [f"1700000000.M9P1.h,S={len(body)}:2,S", f"1700000000.M10P1.h,S={len(body)}:2,FS",
             "1700000001.M1P1.h:2,"]
    for i, name in enumerate(names):
        path = root / "cur" / name
        path.write_bytes(body)
        os.utime(path, (1_800_000_000 - i, 1_800_000_000 - i))
    mb = Store(tmp_path).mailbox("bob@alpha.test")
    t = mb.table
    assert list(mb.snapshot().uids) == [1, 2, 3]
    assert [mb.flags(u) for u in (1, 2, 3)] == [{"\\Seen"}, {"\\Seen", "\\Flagged"}, set()]
    assert list(t.crlf) == [-1, -1, -1] and list(t.sizes) == [len(body), len(body), -1]
    info = mb.get(2)
    assert (info.size, info.crlf_size, info.internaldate) == (len(body), len(body) + 4, 1_800_000_000 - 1)
    assert [i.crlf_size for i in mb.messages()] == [len(body) + 4] * 3
    mb.close()
    again = Mailbox(root, "INBOX")  # the measured sizes were kept
    assert list(again.table.crlf) == [len(body) + 4] * 3
    again.close()


def test_a_clean_close_leaves_a_snapshot_and_a_crash_leaves_the_rows(tmp_path):
    store = Store(tmp_path)
    uids = [store.deliver("bob@alpha.test", MSG).uid for _ in range(5)]
    mb = store.mailbox("bob@alpha.test")
    mb.set_flags(uids[1], {"\\Seen", "$Label"})
    mb.remove([uids[3]])
    store.close()
    path = tmp_path / "bob@alpha.test"
    first = Mailbox(path, "INBOX")  # from the blob close() wrote, which it deletes
    assert list(first.snapshot().uids) == [1, 2, 3, 5]
    assert first.flags(uids[1]) == {"\\Seen", "$Label"}
    first.set_flags(uids[0], {"\\Flagged"})
    # "crash": never closed; the next open finds no blob and reads the rows
    second = Mailbox(path, "INBOX")
    assert list(second.snapshot().uids) == [1, 2, 3, 5]
    assert [second.flags(u) for u in (1, 2)] == [{"\\Flagged"}, {"\\Seen", "$Label"}]
    assert second.add(MSG).uid == 6
    second.close()


def _outside_maildir(root, count):
    """A Maildir written by another tool: ``count`` files, names out of order on disk,
    some in new/ (no info), a third \\Seen; sizes from S= only (content irrelevant)."""
    for sub in ("new", "cur", "tmp"):
        (root / sub).mkdir(parents=True)
    names = []
    for i in range(count):
        sec = 1_700_000_000 + (i * 7919) % count // 3  # several files a second
        if i % 10 == 0:
            name = f"new/{sec}.M{i}P1.tool,S=12"
        else:
            name = f"cur/{sec}.M{i}P1.tool,S=12:2,{'S' if i % 3 == 0 else ''}"
        (root / name).write_bytes(b"S: x\n\nbody\n")
        names.append(name.split("/")[1].split(":")[0])
    return sorted(names, key=lambda k: (int(k.split(".")[0]), int(k.split(".M")[1].split("P")[0])))


def _rows(root):
    db = sqlite3.connect(root / "maillab-index.sqlite")
    try:
        return (dict(db.execute("SELECT uid, key FROM messages")),
                db.execute("SELECT count(*) FROM pending").fetchone()[0],
                dict(db.execute("SELECT key, value FROM meta"))["uidnext"])
    finally:
        db.close()


def test_a_large_first_index_commits_its_uids_at_once_and_survives_kill_9(tmp_path):
    """A first sync of many files writes its rows as one blob with the UIDNEXT that
    covers them (rows come later): a process killed right after answering still gives
    every file the same UID at the next start, and no UID is handed out twice."""
    root = tmp_path / "bob@alpha.test"
    arrival = _outside_maildir(root, 1_500)
    script = ("import json, os, sys\nfrom maillab.store import Mailbox\n"
              "mb = Mailbox(sys.argv[1], 'INBOX')\n"
              "print(json.dumps({u: mb.table.key(mb.table.slot(u)) for u in mb.snapshot().uids}),"
              " flush=True)\nos._exit(0)  # killed: no close, no background writes\n")
    out = subprocess.run([sys.executable, "-c", script, str(root)], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": os.getcwd()}).stdout
    given = {int(u): k for u, k in json.loads(out).items()}
    assert [given[u] for u in sorted(given)] == arrival  # UIDs 1.. in delivery order
    rows, pending, uidnext = _rows(root)
    assert (rows, pending, uidnext) == ({}, 1, "1501")
    mb = Mailbox(root, "INBOX")
    assert {u: mb.table.key(mb.table.slot(u)) for u in mb.snapshot().uids} == given
    assert mb.add(MSG).uid == 1501
    rows, pending, _ = _rows(root)
    assert pending == 0 and len(rows) == 1501 and all(rows[u] == k for u, k in given.items())
    mb.close()


def test_rows_still_in_a_blob_are_written_before_a_change_and_in_the_background(tmp_path, monkeypatch):
    root = tmp_path / "bob@alpha.test"
    _outside_maildir(root, 1_500)
    mb = Mailbox(root, "INBOX")
    assert mb._pending
    mb.set_flags(7, {"\\Flagged", "$Label"})  # the rows exist before the change is written
    mb.remove([9])
    rows, pending, _ = _rows(root)
    assert pending == 0 and len(rows) == 1_499 and 9 not in rows
    again = Mailbox(root, "INBOX")  # "crash": the first never closed
    assert again.flags(7) == {"\\Flagged", "$Label"} and again.get(9) is None
    again.close()
    mb.close()

    monkeypatch.setattr(deferred, "QUIET", 0.01)
    monkeypatch.setattr(deferred, "CHUNK", 256)
    other = tmp_path / "carol@alpha.test"
    _outside_maildir(other, 1_500)
    mb = Mailbox(other, "INBOX")
    for _ in range(500):
        if not mb._pending:
            break
        threading.Event().wait(0.02)
    rows, pending, _ = _rows(other)
    assert (len(rows), pending) == (1_500, 0)
    mb.close()


def test_a_folder_being_indexed_does_not_hold_up_the_others(tmp_path):
    """Opening a folder indexes it (100,000 files take a while): meanwhile other folders
    open and take deliveries. Here bob's first index write waits on a lock another
    connection holds on his index (real sqlite locking), while carol's INBOX opens."""
    store = Store(tmp_path)
    store.deliver("bob@alpha.test", MSG)
    store.close()
    (tmp_path / "bob@alpha.test" / "new" / "1700000000.M1P1.tool,S=5").write_bytes(b"S: x\n")
    blocker = sqlite3.connect(tmp_path / "bob@alpha.test" / "maillab-index.sqlite")
    blocker.execute("BEGIN IMMEDIATE")  # bob's open: blocked in its first write
    store = Store(tmp_path)
    bob_opened = threading.Event()
    bob = threading.Thread(target=lambda: (store.mailbox("bob@alpha.test"), bob_opened.set()))
    bob.start()
    carol = threading.Thread(target=store.deliver, args=("carol@alpha.test", MSG))
    carol.start()
    carol.join(4)
    done_before_bob = not carol.is_alive() and not bob_opened.is_set()
    blocker.rollback()
    blocker.close()
    bob.join(10)
    assert done_before_bob and bob_opened.is_set()
    assert len(store.mailbox("bob@alpha.test")) == 2 and len(store.mailbox("carol@alpha.test")) == 1
    store.close()


def test_index_checkpoints_run_beside_the_lock_and_keep_the_log_short(tmp_path):
    """sqlite would copy the index's log into the database (two fsyncs) inside the commit
    that crosses its mark, under the mailbox lock; here a checkpoint runs on another
    connection while the lock is held, and the log stays bounded (checkpointing.py)."""
    from maillab.store.checkpointing import CHECKPOINT_CHANGES, WAL_FRAMES_MAX

    mb = Mailbox(tmp_path / "box", "INBOX")
    assert mb._db.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
    uids = [mb.add(f"Subject: {n}\r\n\r\nx\r\n".encode()).uid for n in range(200)]
    for round_ in range(12):  # ~2,400 flag rows: several checkpoints' worth
        mb.change_flags(uids, lambda old, f: old ^ f, frozenset({f"$k{round_ % 2}"}))
    done = threading.Event()
    with mb.lock:
        worker = threading.Thread(target=lambda: (mb.checkpoint(), done.set()))
        worker.start()
        assert done.wait(10), "the checkpoint waited for the mailbox lock"
    worker.join(10)
    assert mb.checkpoints >= 1  # (the background ones may still be running)
    other = sqlite3.connect(tmp_path / "box" / "maillab-index.sqlite")
    busy, frames, copied = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    other.close()
    assert frames <= WAL_FRAMES_MAX + 2 * CHECKPOINT_CHANGES * 3
    assert len(mb.messages()) == 200
    mb.close()


def _deliver_during_a_sync(mb: Mailbox, stalled: threading.Event, go: threading.Event, text: bytes) -> int:
    """Run ``mb.sync()`` in a thread until a step of it signals ``stalled`` (and waits
    for ``go``); the mailbox lock must be free then: deliver a message saying
    ``text``, let the sync go on, and return the new message's UID."""
    syncing = threading.Thread(target=mb.sync)
    syncing.start()
    assert stalled.wait(10)
    got = mb.lock.acquire(timeout=5)
    try:
        assert got, "the sync held the mailbox lock at its stalled step"
        return mb.add(MSG.replace(b"hello", text)).uid
    finally:
        if got:
            mb.lock.release()
        go.set()
        syncing.join(10)



def test_a_rescan_lists_the_directories_without_the_lock_and_again_after_own_changes(tmp_path, monkeypatch):
    """A sync (after an outside change) lists new/ and cur/ without the mailbox lock
    (getdents of 100,000 names is tens of ms); a delivery made meanwhile under the lock
    makes it list again under the lock, so the delivered message keeps its one UID
    (a stale listing would have taken its file for one another tool removed)."""
    from maillab.store import dirsync

    mb = Mailbox(tmp_path / "box", "INBOX")
    first = mb.add(MSG).uid
    (tmp_path / "box" / "new" / "1700000000.M1P1.outside,S=10,W=10").write_bytes(b"x: y\r\n\r\nz\r\n")
    listing, go = threading.Event(), threading.Event()
    real_listdir = os.listdir
    calls = []

    def slow_listdir(path):
        calls.append(path)
        if len(calls) == 1:  # the first listing of the sync: stalls until the test says
            listing.set()
            go.wait(10)
        return real_listdir(path)

    monkeypatch.setattr(dirsync.os, "listdir", slow_listdir)
    delivered = _deliver_during_a_sync(mb, listing, go, b"during the listing")
    monkeypatch.undo()
    assert len(calls) == 4  # new/ and cur/ twice: listed again after the delivery
    uids = [m.uid for m in mb.messages()]
    assert first in uids and delivered in uids and len(uids) == 3 == len(set(uids))
    assert mb.read(delivered).endswith(b"during the listing\r\n")
    mb.close()


def test_a_rescan_compares_the_listing_with_a_copy_of_the_index_without_the_lock(tmp_path, monkeypatch):
    """A sync compares the listing with a copy of the index without the mailbox lock
    (50,000 names: hundreds of ms under load) and applies only the differences under
    it. A delivery made during the comparison makes it compare again, under the lock,
    with the index itself: the delivered message keeps its one UID, and the file
    another tool added gets the next one."""
    from maillab.store import dirsync

    mb = Mailbox(tmp_path / "box", "INBOX")
    first = mb.add(MSG).uid
    (tmp_path / "box" / "new" / "1700000000.M1P1.outside,S=10,W=10").write_bytes(b"x: y\r\n\r\nz\r\n")
    comparing, go = threading.Event(), threading.Event()
    real_compare = dirsync._compare
    on_the_index: list[bool] = []  # per comparison: made on the index itself (not a copy)

    def slow_compare(table, listing):
        on_the_index.append(table is mb.table)
        if len(on_the_index) == 1:  # the first comparison of the sync: stalls until the test says
            comparing.set()
            go.wait(10)
        return real_compare(table, listing)

    monkeypatch.setattr(dirsync, "_compare", slow_compare)
    delivered = _deliver_during_a_sync(mb, comparing, go, b"during the comparison")
    assert on_the_index == [False, True]
    uids = [m.uid for m in mb.messages()]
    assert uids == [first, delivered, delivered + 1]
    assert mb.read(delivered).endswith(b"during the comparison\r\n")
    assert mb.read(delivered + 1) == b"x: y\r\n\r\nz\r\n"

    # Nothing changes meanwhile: one comparison, on the copy, and only its result applied.
    on_the_index.clear()
    (tmp_path / "box" / "new" / "1700000001.M2P1.outside,S=10,W=10").write_bytes(b"x: y\r\n\r\nw\r\n")
    os.rename(tmp_path / "box" / "new" / "1700000000.M1P1.outside,S=10,W=10",
              tmp_path / "box" / "cur" / "1700000000.M1P1.outside,S=10,W=10:2,S")
    go.set()
    assert mb.sync()
    assert on_the_index == [False]
    monkeypatch.undo()
    assert [m.uid for m in mb.messages()] == [first, delivered, delivered + 1, delivered + 2]
    assert mb.flags(delivered + 1) == {"\\Seen"}
    mb.close()
    reopened = Mailbox(tmp_path / "box", "INBOX")  # the index on the disk agrees
    assert [(m.uid, m.flags) for m in reopened.messages()] == [
        (first, frozenset()), (delivered, frozenset()), (delivered + 1, frozenset({"\\Seen"})),
        (delivered + 2, frozenset())]
    reopened.close()


def test_files_copied_in_are_arranged_for_indexing_without_the_lock(tmp_path, monkeypatch):
    """Many files another tool copied in (``cp`` of a folder): their delivery order,
    sizes and flags are worked out from their names without the mailbox lock, with the
    comparison; only the UIDs and rows are given under it, in that order."""
    from maillab.store import dirsync

    mb = Mailbox(tmp_path / "box", "INBOX")
    first = mb.add(MSG).uid
    for n in (3, 1, 2):  # listed in any order: the names tell the delivery order
        name = f"17000000{n:02d}.M{n}P1.cp,S=10,W=10:2,{'S' if n == 2 else ''}"
        (tmp_path / "box" / "cur" / name).write_bytes(b"x: y\r\n\r\nz\r\n")
    real_arrange = dirsync._arrange_new
    lock_free: list[bool] = []

    def arrange(listing, found):
        taken: list[bool] = []

        def probe() -> None:  # another thread takes the lock now (and gives it back)
            got = mb.lock.acquire(timeout=5)
            taken.append(got)
            if got:
                mb.lock.release()

        prober = threading.Thread(target=probe)
        prober.start()
        prober.join(10)
        lock_free.append(taken == [True])
        return real_arrange(listing, found)

    monkeypatch.setattr(dirsync, "_arrange_new", arrange)
    assert mb.sync()
    assert lock_free == [True]
    monkeypatch.undo()
    infos = mb.messages()
    assert [i.uid for i in infos] == [first, first + 1, first + 2, first + 3]
    assert [i.filename.split(".")[1] for i in infos[1:]] == ["M1P1", "M2P1", "M3P1"]
    assert [i.flags for i in infos[1:]] == [frozenset(), frozenset({"\\Seen"}), frozenset()]
    mb.close()
