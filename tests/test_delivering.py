"""An SMTP delivery acknowledged after one durability point (maillab/store/delivering.py):
its record in the folder's accept log (store/acceptlog.py), or the file whole, marked
and fsync'ed in tmp/; renamed into new/ and indexed before the 250; the file, new/ and
the index log fsync'ed in a round after it. What a power cut can
leave (a marked file back in tmp/, with or without its index row) is delivered at the
next open, once; what was never acknowledged (unmarked, or shorter than its name says)
is deleted; other tools' files in tmp/ are left alone."""

from __future__ import annotations

import os
import poplib
import shutil
import signal
import smtplib
import stat

from test_crash_consistency import BOB, _message, _serve

from maillab.store import Store
from maillab.store.acceptlog import LOG_FILE, SIZE, unretired
from maillab.store.delivering import MARK
from maillab.store.groupsync import GROUP

OLD = 1_000_000_000  # a second long before this process: no delivery of ours under way


def _key(n: int, data: bytes, pid: int = 4242) -> str:
    return f"{OLD + n}.M{n}P{pid}Q{n}.labhost,S={len(data)},W={len(data)}"


def _plant(directory, name: str, data: bytes, *, mark: bool) -> None:
    path = directory / "tmp" / name
    path.write_bytes(data)
    if mark:
        path.chmod(path.stat().st_mode | MARK)


def _subjects(store: Store) -> list[bytes]:
    mb = store.mailbox(BOB)
    return sorted(mb.read(i.uid).split(b"Subject: ")[1].split(b"\r\n")[0] for i in mb.messages())


def test_accept_is_in_new_before_it_returns_and_told_after_its_round(tmp_path) -> None:
    store = Store(tmp_path)
    told = []
    store.subscribe(lambda user, folder, info: told.append(info.uid))
    info = store.accept(BOB, _message("accepted"), crlf_only=True)
    path = store.mailbox(BOB).file_path(info.uid)
    assert path.parent.name == "new" and path.read_bytes() == _message("accepted")
    assert GROUP.settle(timeout=30)
    assert told == [info.uid]
    assert not path.stat().st_mode & MARK, "the mark stays after the round"
    assert not os.listdir(tmp_path / BOB / "tmp")
    assert unretired(str(tmp_path / BOB / LOG_FILE))[1] == [], "the round's watermark did not pass the record"
    store.close()


def test_open_delivers_marked_files_once_and_drops_the_unacknowledged(tmp_path) -> None:
    store = Store(tmp_path)
    kept = store.accept(BOB, _message("delivered-before"), crlf_only=True)
    store.close()
    inbox = tmp_path / BOB
    whole, half, never, twice = (_message(s) for s in ("whole", "half", "never", "twice"))
    _plant(inbox, _key(1, whole), whole, mark=True)  # acknowledged, the rename lost
    _plant(inbox, _key(2, half), half[:100], mark=True)  # shorter than its S=: not whole
    _plant(inbox, _key(3, never), never, mark=False)  # cut short before its mark
    _plant(inbox, _key(4, twice), twice, mark=True)
    (inbox / "cur" / f"{_key(4, twice)}:2,S").write_bytes(twice)  # its rename did last
    foreign = "1700000000.M1P2.otherhost"  # another tool's delivery under way
    _plant(inbox, foreign, b"partial", mark=False)
    for _ in range(2):  # a second open changes nothing: delivered once
        store = Store(tmp_path)
        assert _subjects(store) == [b"delivered-before", b"twice", b"whole"]
        assert store.mailbox(BOB).get(kept.uid).key == kept.key  # UIDs kept
        assert os.listdir(inbox / "tmp") == [foreign]
        recovered = inbox / "new" / _key(1, whole)
        assert recovered.read_bytes() == whole and not recovered.stat().st_mode & MARK
        store.close()


def test_a_lost_rename_keeps_its_uid(tmp_path) -> None:
    """A power cut after the 250 that kept the index row (another round fsync'ed the
    log) but not the rename: the file is back in tmp/ and keeps its UID."""
    store = Store(tmp_path)
    infos = [store.accept(BOB, _message(f"m{n}"), crlf_only=True) for n in range(3)]
    assert GROUP.settle(timeout=30)
    store.close()
    inbox = tmp_path / BOB
    lost = inbox / "new" / infos[1].filename
    lost.chmod(lost.stat().st_mode | MARK)
    os.rename(lost, inbox / "tmp" / infos[1].filename)
    store = Store(tmp_path)
    mb = store.mailbox(BOB)
    assert [(i.uid, i.key) for i in mb.messages()] == [(i.uid, i.key) for i in infos]
    assert stat.S_IMODE(lost.stat().st_mode) & MARK == 0
    store.close()


def test_a_restarted_server_delivers_what_a_power_cut_left_in_tmp(tmp_path) -> None:
    """smtplib delivers, the server is killed the moment the 250 arrived; a marked file
    is put back in tmp/ as a lost rename would leave it; after the restart poplib finds
    every acknowledged message once."""
    directory = tmp_path / "lab"
    proc, services = _serve(directory)
    try:
        with smtplib.SMTP(services["smtp"]["host"], services["smtp"]["port"], timeout=30) as c:
            for n in range(5):
                c.sendmail("alice@alpha.test", [BOB], _message(f"smtp-{n}"))
    finally:
        proc.send_signal(signal.SIGKILL)  # right after the last 250
        proc.communicate(timeout=30)
    inbox = directory / "mail" / BOB
    cut = _message("power-cut")
    _plant(inbox, _key(9, cut), cut, mark=True)
    for _ in range(2):
        proc, services = _serve(directory)
        try:
            pop = poplib.POP3(services["pop3"]["host"], services["pop3"]["port"], timeout=30)
            pop.user("bob")
            pop.pass_("bob-pw")
            subjects = sorted(b"\n".join(pop.top(n, 0)[1]).split(b"Subject: ")[1].split(b"\n")[0]
                              for n in range(1, len(pop.list()[1]) + 1))
            pop.quit()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)
        assert subjects == [b"power-cut", *(f"smtp-{n}".encode() for n in range(5))]


def test_until_its_round_every_flush_fsyncs_tmp(tmp_path, monkeypatch) -> None:
    """An EXPUNGE acknowledged before an accepted message's round: its flush fsyncs
    tmp/ too, or a power cut could bring the message's old name back there (and the
    next open would deliver it again)."""
    from maillab.store import groupsync

    synced: list[set[str]] = []
    real = groupsync._fsync_all
    monkeypatch.setattr(groupsync, "_fsync_all", lambda paths: synced.append(set(paths)) or real(paths))
    held = []
    monkeypatch.setattr(GROUP, "sync_later", lambda paths, then: held.append(then))  # the round not run yet
    store = Store(tmp_path)
    info = store.accept(BOB, _message("expunged-early"), crlf_only=True)
    synced.clear()
    assert store.mailbox(BOB).remove([info.uid], sync=True) == [info.uid]
    inbox = str(tmp_path / BOB)
    assert f"{inbox}/tmp" in set().union(*synced), synced
    for then in held:
        then(None)  # the round, late
    other = store.accept(BOB, _message("after-the-round"), crlf_only=True)  # (fsyncs tmp/ before it returns)
    for then in held[1:]:
        then(None)
    synced.clear()
    store.mailbox(BOB).remove([other.uid], sync=True)
    # the second accept's round ran: this flush has no tmp/ left to keep
    assert f"{inbox}/tmp" not in set().union(*synced), synced
    store.close()


def _held_rounds(monkeypatch) -> list:
    """GROUP.sync_later held: the rounds after the 250s not run (a power cut now)."""
    held: list = []
    monkeypatch.setattr(GROUP, "sync_later", lambda paths, then: held.append(then))
    return held


def test_a_power_cut_before_the_round_is_redone_from_the_accept_log(tmp_path, monkeypatch) -> None:
    """The 250 waited for the message's record in the accept log (store/acceptlog.py);
    a power cut before the round may lose the rename (the file gone from new/) or the
    file's data: the next open writes both from the record, once, under the same key."""
    _held_rounds(monkeypatch)
    store = Store(tmp_path / "live")
    infos = [store.accept(BOB, _message(f"m{n}"), crlf_only=True) for n in range(3)]
    assert not os.listdir(tmp_path / "live" / BOB / "tmp")  # (no marked file: the record is the point)
    shutil.copytree(tmp_path / "live", tmp_path / "cut")  # the disk as a power cut leaves it
    inbox = tmp_path / "cut" / BOB
    (inbox / "new" / infos[1].filename).unlink()  # the rename lost
    (inbox / "new" / infos[2].filename).write_bytes(b"")  # the data lost
    for _ in range(2):  # a second open changes nothing
        again = Store(tmp_path / "cut")
        mb = again.mailbox(BOB)
        assert sorted(i.key for i in mb.messages()) == sorted(i.key for i in infos)
        assert _subjects(again) == [b"m0", b"m1", b"m2"]
        assert (inbox / "new" / infos[2].filename).read_bytes() == _message("m2")
        again.close()
    store.close()


def test_an_expunge_retires_the_record_first(tmp_path, monkeypatch) -> None:
    """An EXPUNGE of a message whose round has not run yet: its record is retired (the
    file, new/ and the index log fsync'ed, then the log's watermark written) before the
    removal, so no restart delivers it again; a torn record (its write cut short, never
    acknowledged) is ignored."""
    _held_rounds(monkeypatch)
    store = Store(tmp_path / "live")
    gone = store.accept(BOB, _message("expunged"), crlf_only=True)
    assert store.mailbox(BOB).remove([gone.uid], sync=True) == [gone.uid]
    torn = store.accept(BOB, _message("torn"), crlf_only=True)
    shutil.copytree(tmp_path / "live", tmp_path / "cut")
    inbox = tmp_path / "cut" / BOB
    (inbox / "new" / torn.filename).unlink()
    log = bytearray((inbox / LOG_FILE).read_bytes())
    at = log.index(b"Subject: torn")
    log[at] ^= 0xFF
    (inbox / LOG_FILE).write_bytes(bytes(log))
    again = Store(tmp_path / "cut")
    assert _subjects(again) == []
    again.close()
    store.close()


def test_a_message_too_large_for_the_log_is_marked_and_fsynced_in_tmp(tmp_path, monkeypatch) -> None:
    held = _held_rounds(monkeypatch)
    store = Store(tmp_path)
    big = _message("big") + b"x" * (SIZE + 10) + b"\r\n"
    info = store.accept(BOB, big, crlf_only=True)
    path = store.mailbox(BOB).file_path(info.uid)
    assert path.stat().st_mode & MARK, "the older path: the file marked until its round"
    for then in held:
        then(None)
    assert not path.stat().st_mode & MARK
    store.close()
