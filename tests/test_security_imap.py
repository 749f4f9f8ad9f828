"""SECURITY.md, IMAP: the checks tests/test_imap_server_protocol.py leaves open, over
real sockets with a raw client.

Memory under 50 MB of hostile input and with a reader that does not read
(tracemalloc), EXPUNGE on CHECK and in IDLE, UIDVALIDITY when a mailbox is renamed
over a deleted one, hostile names in every command that takes a mailbox, flags
stored from two sessions at once, a header with 20,000 addresses, IDLE timeouts.
"""

from __future__ import annotations

import itertools
import socket
import struct
import threading
from collections.abc import Iterator

import pytest
from conftest import fast_limits
from security_probes import MB, blast, memory_peak, wait_until
from wire import IMAPWire

from maillab import Lab

PASSWORD = "pw-hostile-7"
MEMORY_BOUND = 12 * MB
_users = itertools.count(1)


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    lab = Lab(tmp_path_factory.mktemp("imapsec") / "lab", ports="auto", domains=["alpha.test"],
              services=("imap", "imaps"),
              limits=fast_limits(imap_literal=100_000, imap_line=8192, imap_nesting=10,
                                 imap_connections_per_user=4))
    lab.start()
    yield lab
    lab.stop()


@pytest.fixture
def user(lab: Lab) -> str:
    address = f"sec{next(_users)}@alpha.test"
    lab.add_user(address, PASSWORD)
    return address


def raw(lab: Lab, user: str | None = None, timeout: float = 5.0) -> IMAPWire:
    r = IMAPWire(*lab.address("imap"), timeout=timeout)
    if user:
        r.login(user, PASSWORD)
    return r


def msg(subject: str, body: bytes = b"hello\r\n") -> bytes:
    return (f"From: ann@beta.test\r\nTo: bob@alpha.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject}@beta.test>\r\n\r\n").encode() + body


def tagged_ok(lines: list[bytes], tag: str) -> bool:
    return lines[-1].startswith(f"{tag} OK".encode())


# -- "memory flat under hostile input" ------------------------------------------------------------

def test_memory_flat_under_50_mb_of_hostile_input(lab: Lab, user: str) -> None:
    r = raw(lab, user, timeout=30)
    with memory_peak() as peak:
        # 30 MB in one line (limit imap_line = 8192)
        blast(r.sock, 30 * MB, b"a NOOP " + b"x" * (MB - 7))
        r.send(b"\r\n")
        assert r.readline().startswith(b"* BAD [TOOBIG]")
        assert tagged_ok(r.cmd("b", "NOOP"), "b")
        # 10 MB of parenthesis nesting, line by line (limit imap_nesting = 10)
        deep = b"c SEARCH " + b"(" * 4000 + b"ALL" + b")" * 4000 + b"\r\n"
        for _ in range(10 * MB // len(deep) // 10):
            r.send(deep * 10)
            for _ in range(10):
                assert r.until_tagged("c")[-1].startswith(b"c BAD")
    assert peak.bytes < MEMORY_BOUND, f"peak {peak.mb:.1f} MB"
    assert tagged_ok(r.cmd("d", "SELECT INBOX"), "d")
    r.close()


def test_lines_at_the_limit_are_not_kept_by_the_lab(tmp_path) -> None:
    """50 MB of command lines just under imap_line (64 KB): each is answered, and the
    lab keeps no copy of them (the transcript shows each line's head only)."""
    with Lab(tmp_path / "lab", ports="auto", domains=["alpha.test"], services=("imap",),
             limits=fast_limits()) as lab:
        r = IMAPWire(*lab.address("imap"), timeout=30)
        r.login("bob@alpha.test", "bob-pw")
        line = b"a NOOP " + b"x" * (lab.limits.imap_line - 9) + b"\r\n"
        count = 50 * MB // len(line)
        with memory_peak() as peak:
            for _ in range(count // 10):
                r.send(line * 10)
                for _ in range(10):
                    assert r.until_tagged("a")[-1].startswith(b"a BAD")  # NOOP takes no argument
        assert peak.retained < 8 * MB, f"{peak.retained_mb:.1f} MB still held after {count} lines"
        assert peak.bytes < MEMORY_BOUND, f"peak {peak.mb:.1f} MB"
        assert tagged_ok(r.cmd("b", "NOOP"), "b")
        r.close()


def test_many_small_literals_cannot_add_up_to_a_huge_command(lab: Lab, user: str) -> None:
    """Each {N+} under imap_literal, 10 MB in all: the command as a whole is capped."""
    r = raw(lab, user, timeout=30)
    literal = b" {90000+}\r\n" + b"y" * 90000
    with memory_peak() as peak:
        r.send(b"a SEARCH TEXT")
        sent = blast(r.sock, 10 * MB, b" TEXT" + literal)
        try:
            r.send(b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            lines = r.until_tagged("a")
            answer = lines[-1]
        except ConnectionError:
            answer = b"(closed)"
    assert peak.bytes < MEMORY_BOUND, f"peak {peak.mb:.1f} MB after {sent} octets of literals"
    assert answer.startswith((b"a BAD", b"a NO", b"(closed)")), answer
    # the server serves others
    other = raw(lab, user)
    assert tagged_ok(other.cmd("n", "NOOP"), "n")
    other.close()
    r.close()


# -- "Slow readers and IDLE clients: backpressure and timeouts" ----------------------------------

def test_a_client_that_never_reads_meets_backpressure(lab: Lab, user: str) -> None:
    line = b"0123456789" * 10 + b"\r\n"
    lab.store.deliver(user, msg("big", line * (4 * MB // len(line))))
    r = raw(lab, user)
    assert tagged_ok(r.cmd("s", "SELECT INBOX"), "s")
    r.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    with memory_peak() as peak:
        r.send(b"f FETCH 1 BODY.PEEK[]\r\n" * 15)  # 60 MB of answers, none read
        wait_until(lambda: False, timeout=1.0)
        other = raw(lab, user)  # another session of the same user is served meanwhile
        assert tagged_ok(other.cmd("n", "STATUS INBOX (MESSAGES)"), "n")
        other.close()
    assert peak.bytes < MEMORY_BOUND + 8 * MB, f"peak {peak.mb:.1f} MB with 60 MB of replies unread"
    r.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    r.close()
    fresh = raw(lab, user)
    assert tagged_ok(fresh.cmd("n", "NOOP"), "n")
    fresh.close()


def test_idle_client_is_timed_out(tmp_path) -> None:
    with Lab(tmp_path / "lab", ports="auto", domains=["alpha.test"], services=("imap",),
             limits=fast_limits(imap_idle_timeout=0.5)) as lab:
        r = IMAPWire(*lab.address("imap"))
        r.login("bob@alpha.test", "bob-pw")
        assert tagged_ok(r.cmd("s", "SELECT INBOX"), "s")
        r.send(b"i IDLE\r\n")
        assert r.readline().startswith(b"+")
        assert r.readline().startswith(b"* BYE")
        assert r.closed()
        assert wait_until(lambda: lab.service("imap").active == 0)


# -- "EXPUNGE never during FETCH, STORE or SEARCH; sent on NOOP/CHECK/IDLE" -------------------------

def expunge_first(lab: Lab, user: str) -> tuple[IMAPWire, IMAPWire]:
    for i in range(3):
        lab.store.deliver(user, msg(f"x{i}"))
    a, b = raw(lab, user), raw(lab, user)
    a.cmd("s", "SELECT INBOX")
    b.cmd("s", "SELECT INBOX")
    assert tagged_ok(b.cmd("d", "STORE 1 +FLAGS.SILENT (\\Deleted)"), "d")
    assert tagged_ok(b.cmd("e", "EXPUNGE"), "e")
    return a, b


def test_expunge_is_sent_on_check(lab: Lab, user: str) -> None:
    a, b = expunge_first(lab, user)
    lines = a.cmd("c", "CHECK")
    assert b"* 1 EXPUNGE\r\n" in lines and tagged_ok(lines, "c"), lines
    a.close()
    b.close()


def test_expunge_is_sent_in_idle(lab: Lab, user: str) -> None:
    for i in range(3):
        lab.store.deliver(user, msg(f"y{i}"))
    a, b = raw(lab, user), raw(lab, user)
    a.cmd("s", "SELECT INBOX")
    b.cmd("s", "SELECT INBOX")
    a.send(b"i IDLE\r\n")
    assert a.readline().startswith(b"+")
    b.cmd("d", "STORE 2 +FLAGS.SILENT (\\Deleted)")
    b.cmd("e", "EXPUNGE")
    line = a.readline()
    while line.startswith(b"* ") and b"FETCH" in line:  # the \Deleted flag may come first
        line = a.readline()
    assert line == b"* 2 EXPUNGE\r\n", line
    a.send(b"DONE\r\n")
    assert tagged_ok(a.until_tagged("i"), "i")
    a.close()
    b.close()


# -- "UIDVALIDITY changes when a mailbox is ... renamed over" ------------------------------------

def uidvalidity(r: IMAPWire, box: str, tag: str) -> int:
    lines = r.cmd(tag, f"STATUS {box} (UIDVALIDITY)")
    assert tagged_ok(lines, tag), lines
    return int(lines[0].split(b"UIDVALIDITY ")[1].split(b")")[0])


def test_uidvalidity_changes_when_renamed_over_a_deleted_name(lab: Lab, user: str) -> None:
    r = raw(lab, user)
    assert tagged_ok(r.cmd("a", "CREATE Target"), "a")
    r.cmd("b", "APPEND Target {5+}\r\nhello")
    old = uidvalidity(r, "Target", "c")
    assert tagged_ok(r.cmd("d", "DELETE Target"), "d")
    assert tagged_ok(r.cmd("e", "CREATE Source"), "e")
    source = uidvalidity(r, "Source", "f")
    assert tagged_ok(r.cmd("g", "RENAME Source Target"), "g")
    new = uidvalidity(r, "Target", "h")
    assert new != old, "a client caching Target's UIDs would trust stale ones"
    assert new != source or new > old
    lines = r.cmd("i", "SELECT Target")
    assert tagged_ok(lines, "i") and b"* 0 EXISTS\r\n" in lines
    r.close()


# -- "Mailbox names cannot leave the user's store" (every command that takes one) -------------------

HOSTILE = ["..", "../x", "/etc", "~root", "a/../../b", "&AC8-etc", "&AC4ALg-", "a/&AC4ALg-/b", "x" * 600]


def quoted(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_in_rename_copy_move_subscribe_examine(lab: Lab, user: str, name: str) -> None:
    lab.store.deliver(user, msg("victim"))
    r = raw(lab, user)
    assert tagged_ok(r.cmd("c", "CREATE Mine"), "c")
    q = quoted(name)
    for tag, command in (("r1", f"RENAME Mine {q}"), ("r2", f"RENAME {q} Mine2"), ("e", f"EXAMINE {q}"),
                         ("s", f"SUBSCRIBE {q}")):
        lines = r.cmd(tag, command)
        assert lines[-1].startswith((f"{tag} NO".encode(), f"{tag} BAD".encode())), (command, lines)
    assert tagged_ok(r.cmd("sel", "SELECT INBOX"), "sel")
    for tag, command in (("k", f"COPY 1 {q}"), ("m", f"MOVE 1 {q}"), ("u", f"UID COPY 1:* {q}")):
        lines = r.cmd(tag, command)
        assert lines[-1].startswith((f"{tag} NO".encode(), f"{tag} BAD".encode())), (command, lines)
    # LIST with a hostile reference lists nothing outside the store
    lines = r.cmd("l", f'LIST {q} "*"')
    assert lines[-1].startswith((b"l OK", b"l NO", b"l BAD")), lines
    assert not any(b"passwd" in ln or b"etc" in ln.lower() for ln in lines[:-1]), lines
    r.close()
    root = lab.store.user_root(user)
    assert not (root.parent / "x").exists() and not (root.parent / "b").exists()
    assert len(lab.store.mailbox(user).messages()) == 1  # the MOVE did not take it anywhere


# -- "Several sessions: flags change atomically" ----------------------------------------------------

def test_flags_stored_from_two_sessions_at_once_are_all_kept(lab: Lab, user: str) -> None:
    for i in range(20):
        lab.store.deliver(user, msg(f"f{i}"))
    a, b = raw(lab, user), raw(lab, user)
    a.cmd("s", "SELECT INBOX")
    b.cmd("s", "SELECT INBOX")
    errors: list[BaseException] = []

    def hammer(r: IMAPWire, flag: str) -> None:
        try:
            for round_ in range(5):
                for n in range(1, 21):
                    lines = r.cmd(f"t{round_}x{n}", f"STORE {n} +FLAGS.SILENT ({flag})")
                    assert tagged_ok(lines, f"t{round_}x{n}"), lines
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(a, "\\Seen")),
               threading.Thread(target=hammer, args=(b, "$Mine"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    for r in (a, b):
        lines = r.cmd("f", "FETCH 1:* (FLAGS)")
        fetches = [ln for ln in lines if b" FETCH (" in ln and b"FLAGS" in ln]
        # untagged FETCHes of the other session's changes may come first; the last per message counts
        final = {int(ln.split()[1]): ln for ln in fetches}
        assert len(final) == 20
        assert all(b"\\Seen" in ln and b"$Mine" in ln for ln in final.values()), final
    mb = lab.store.mailbox(user)
    mb.sync()
    assert all({"\\Seen", "$Mine"} <= set(m.flags) for m in mb.messages())
    a.close()
    b.close()


# -- "many-address headers stay bounded" --------------------------------------------------------------

@pytest.mark.loop_lag_ok  # summarizing 20,000 addresses takes ~140 ms of CPU on the lab loop
def test_a_header_with_20000_addresses(lab: Lab, user: str) -> None:
    to = b",\r\n ".join(b"user%d@example.com" % i for i in range(20_000))
    lab.store.deliver(user, b"From: ann@beta.test\r\nTo: " + to + b"\r\nSubject: many\r\n\r\nhi\r\n")
    r = raw(lab, user, timeout=30)
    assert tagged_ok(r.cmd("s", "SELECT INBOX"), "s")
    with memory_peak() as peak:
        lines = r.cmd("f", "FETCH 1 (ENVELOPE)")
        assert tagged_ok(lines, "f")
        envelope = b"".join(lines[:-1])
        lines = r.cmd("g", "SEARCH TO user19999@example.com")
        assert tagged_ok(lines, "g")
    assert envelope.count(b'"example.com")') <= 1000  # envelope.MAX_ADDRESSES
    assert len(envelope) < 200_000
    assert peak.bytes < 64 * MB, f"peak {peak.mb:.1f} MB for a 0.5 MB header"
    r.close()
