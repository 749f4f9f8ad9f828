"""Group commit (maillab/store/groupsync.py): writers that ask while a round runs
share the next round, and nobody returns before a round that started after its
call has fsync'ed its paths."""

from __future__ import annotations

import os
import threading
import time

from maillab.store.groupsync import GroupSync


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_waiters_share_one_round_after_the_running_one(tmp_path) -> None:
    # A FIFO holds the first round: opening it for reading blocks until a writer opens
    # it, so the others ask while that round is certainly still running.
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    dirs = [tmp_path / f"d{i}" for i in range(6)]
    for d in dirs:
        d.mkdir()
    group = GroupSync()
    returned: list[int] = []

    def ask(i: int, paths: list[str]) -> None:
        group.sync(paths)
        returned.append(i)

    first = threading.Thread(target=ask, args=(-1, [str(gate)]))
    first.start()
    _wait_for(lambda: group.requests == 1, "the first round never started")
    others = [threading.Thread(target=ask, args=(i, [str(d)])) for i, d in enumerate(dirs)]
    for t in others:
        t.start()
    _wait_for(lambda: group.requests == 1 + len(dirs), "the writers never asked")
    assert returned == [] and group.rounds == 0  # all wait for the round that holds the gate
    with open(gate, "wb"):
        pass  # let the first round go on
    for t in [first, *others]:
        t.join(timeout=30)
    assert sorted(returned) == [-1, *range(len(dirs))]
    # the six writers that asked during the first round were served by one round
    assert group.rounds == 2, group.rounds


def test_a_path_that_is_gone_has_nothing_to_keep(tmp_path) -> None:
    group = GroupSync()
    group.sync([str(tmp_path / "deleted-folder" / "new"), str(tmp_path)])
    assert group.rounds == 1


def test_a_store_on_2000_messages_waits_for_one_round(tmp_path) -> None:
    """IMAP STORE's OK waits for its renames and index rows to be on the disk: one
    round for the whole set (four lock batches), not an fsync per message; a STORE
    that changes nothing asks for none."""
    from maillab.store import Mailbox
    from maillab.store.groupsync import GROUP

    mb = Mailbox(tmp_path / "INBOX", "INBOX")
    uids = [mb.add(b"Subject: %d\r\n\r\nx\r\n" % n, crlf_only=True).uid for n in range(2000)]
    requests = GROUP.requests
    _, changed = mb.change_flags(uids, lambda old, new: old | new, frozenset({"\\Flagged"}), sync=True)
    assert len(changed) == 2000 and GROUP.requests == requests + 1
    assert len(os.listdir(tmp_path / "INBOX" / "cur")) == 2000  # each renamed to ":2,F"
    mb.change_flags(uids, lambda old, new: old | new, frozenset({"\\Flagged"}), sync=True)
    assert GROUP.requests == requests + 1  # nothing changed: nothing to wait for
    mb.close()


def test_sync_later_tells_each_caller_after_a_round_that_took_its_paths(tmp_path) -> None:
    """SMTP's round after the 250 (GroupSync.sync_later): the callback comes after a round
    that started after the request, on the group's own thread; settle waits for all."""
    group = GroupSync()
    told: list[tuple[int, int, object, str]] = []
    for i in range(6):
        d = tmp_path / f"d{i}"
        d.mkdir()
        asked = group.rounds
        group.sync_later([str(d)], lambda failure, i=i, asked=asked: told.append(
            (i, asked, failure, threading.current_thread().name)))
    assert group.settle(timeout=30)
    assert sorted(i for i, *_ in told) == list(range(6))
    assert all(failure is None and name == "maillab-groupsync" for _, _, failure, name in told)
    assert all(group.rounds > asked for _, asked, _, _ in told)
