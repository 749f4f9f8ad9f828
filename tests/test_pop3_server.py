"""The POP3 server over real sockets: poplib (plain, STLS, POP3S, APOP, AUTH PLAIN),
the three states, deletion semantics, the maildrop lock, byte-exact bodies."""

from __future__ import annotations

import base64
import hashlib
import poplib
import re
import socket
import ssl
import time

import pytest

from maillab import Lab
from maillab.clients.pop3 import connect
from maillab.limits import Limits
from maillab.policy import Policy

BOB = "bob@alpha.test"


def fast_limits(**kw: float) -> Limits:
    return Limits(auth_failure_delay=0.05, **kw)  # type: ignore[arg-type]


def message(n: int, body: str = "hello") -> bytes:
    return (f"From: alice@alpha.test\r\nTo: {BOB}\r\nSubject: message {n}\r\n"
            f"Message-ID: <m{n}@alpha.test>\r\n\r\n{body} {n}\r\n").encode()


def deliver(lab: Lab, count: int, user: str = BOB) -> list[bytes]:
    msgs = [message(i) for i in range(1, count + 1)]
    for m in msgs:
        lab.store.deliver(user, m)
    return msgs


def pop(lab: Lab, *, tls: str = "none", service: str = "pop3") -> poplib.POP3:
    host, port = lab.address(service)
    return connect(host, port, events=lab.events, tls=tls, ssl_context=lab.ca.client_context(),
                   timeout=5)


def login(lab: Lab, **kw) -> poplib.POP3:
    client = pop(lab, **kw)
    client.user("bob")
    client.pass_("bob-pw")
    return client


def server_lines(lab: Lab, kind: str = "S") -> list[str]:
    return [e.text for e in lab.events.events(protocol="pop3")
            if e.side == "server" and e.kind == kind]


def states(lab: Lab) -> list[str]:
    return [e.text for e in lab.events.events(protocol="pop3", kinds=("state",)) if e.side == "server"]


def drop(client: poplib.POP3) -> None:
    """Cut the connection without QUIT (poplib's file object would keep it open)."""
    client.sock.shutdown(socket.SHUT_RDWR)
    client.sock.close()
    client.file.close()


def full_body(client: poplib.POP3, n: int) -> bytes:
    _resp, lines, _octets = client.retr(n)
    return b"\r\n".join(lines) + b"\r\n"


# -- logging in ---------------------------------------------------------------------

def test_user_pass_stat_list_retr_quit(single_lab: Lab) -> None:
    msgs = deliver(single_lab, 3)
    c = login(single_lab)
    assert c.stat() == (3, sum(len(m) for m in msgs))
    _resp, listing, _ = c.list()
    assert listing == [f"{i} {len(m)}".encode() for i, m in enumerate(msgs, 1)]
    assert c.list(2).split() == [b"+OK", b"2", str(len(msgs[1])).encode()]
    for i, m in enumerate(msgs, 1):
        assert full_body(c, i) == m
    assert c.quit().startswith(b"+OK")
    assert states(single_lab) == ["AUTHORIZATION", "TRANSACTION", "UPDATE"]
    assert len(single_lab.store.mailbox(BOB).messages()) == 3  # nothing was marked


def test_stls_then_login(single_lab: Lab) -> None:
    deliver(single_lab, 1)
    c = pop(single_lab, tls="stls")
    assert isinstance(c.sock, ssl.SSLSocket) and c.sock.version() in ("TLSv1.2", "TLSv1.3")
    assert "STLS" not in c.capa()  # RFC 2595: not offered again once TLS is active
    with pytest.raises(poplib.error_proto, match="TLS is already active"):
        c._shortcmd("STLS")
    c.user("bob")
    c.pass_("bob-pw")
    assert c.stat()[0] == 1
    c.quit()
    tls_events = [e for e in single_lab.events.events(kinds=("tls",)) if e.side == "server"]
    assert tls_events and tls_events[0].data["version"].startswith("TLSv1.")


def test_pop3s_implicit_tls_with_lab_ca(single_lab: Lab) -> None:
    msgs = deliver(single_lab, 2)
    c = login(single_lab, tls="implicit", service="pop3s")
    assert "STLS" not in c.capa()
    assert full_body(c, 2) == msgs[1]
    c.quit()
    # The client's transcript has the handshake before the greeting, as on the wire
    assert [e.kind for e in c.events()][1:3] == ["tls", "S"]
    # A client that does not trust the lab CA must fail the handshake.
    host, port = single_lab.address("pop3s")
    with pytest.raises(ssl.SSLCertVerificationError):
        poplib.POP3_SSL(host, port, context=ssl.create_default_context(), timeout=5)


def test_apop(single_lab: Lab) -> None:
    deliver(single_lab, 1)
    c = pop(single_lab)
    c.apop("bob", "bob-pw")
    assert c.stat()[0] == 1
    c.quit()
    c = pop(single_lab)
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        c.apop("bob", "wrong")
    # the digest is masked in the transcript: it would allow an offline guess
    assert all("APOP bob ****" == t for t in server_lines(single_lab, "C") if t.startswith("APOP"))
    c.quit()


def test_auth_plain_initial_response_and_continuation(single_lab: Lab) -> None:
    deliver(single_lab, 2)
    c = pop(single_lab)
    assert c.auth_plain("bob@alpha.test", "bob-pw").startswith(b"+OK")
    assert c.stat()[0] == 2
    c.quit()
    c = pop(single_lab)
    assert c.auth_plain("bob", "bob-pw", initial_response=False).startswith(b"+OK")
    c.quit()
    c = pop(single_lab)
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        c.auth_plain("bob", "nope")
    with pytest.raises(poplib.error_proto, match="malformed"):
        c._shortcmd("AUTH PLAIN not-base64!")
    with pytest.raises(poplib.error_proto, match="unsupported"):
        c._shortcmd("AUTH CRAM-MD5")
    c._shortcmd("AUTH PLAIN")
    with pytest.raises(poplib.error_proto, match="cancelled"):
        c._shortcmd("*")
    c.quit()
    token = base64.b64encode(b"\0bob\0bob-pw").decode()
    for side in ("server", "client"):
        lines = [e.text for e in single_lab.events.events(protocol="pop3", kinds=("C",))
                 if e.side == side]
        assert not any(token in t or "bob-pw" in t or "nope" in t for t in lines)
        assert any(t == "AUTH PLAIN ****" for t in lines)


def test_bad_password_gets_auth_code_after_delay(single_lab: Lab) -> None:
    c = pop(single_lab)
    c.user("bob")
    start = time.monotonic()
    with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\]"):
        c.pass_("wrong")
    assert time.monotonic() - start >= single_lab.limits.auth_failure_delay
    with pytest.raises(poplib.error_proto, match="USER first"):
        c.pass_("bob-pw")
    c.user("nobody")  # USER answers the same for every name
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        c.pass_("x")
    c.user("bob")
    c.pass_("bob-pw")
    c.quit()
    assert "PASS wrong" not in server_lines(single_lab, "C")


def test_capa_per_state(single_lab: Lab) -> None:
    c = pop(single_lab)
    caps = c.capa()
    for cap in ("TOP", "UIDL", "USER", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "STLS",
                "IMPLEMENTATION"):
        assert cap in caps
    assert caps["SASL"] == ["PLAIN"]
    c.user("bob")
    c.pass_("bob-pw")
    caps = c.capa()
    assert "TOP" in caps and "UIDL" in caps and "STLS" not in caps and "USER" not in caps
    c.quit()


def test_plaintext_policy_note_and_strict_mode(tmp_path) -> None:
    lab = Lab(tmp_path / "lab", ports="auto", domains=["alpha.test"], limits=fast_limits(),
              policy=Policy(pop3_plaintext_auth=False))
    with lab:
        c = pop(lab)
        assert "USER" not in c.capa() and "STLS" in c.capa()
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\] plaintext"):
            c.user("bob")
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\] plaintext"):
            c.auth_plain("bob", "bob-pw")
        c.stls(lab.ca.client_context())
        assert "USER" in c.capa()
        c.user("bob")
        c.pass_("bob-pw")
        c.quit()
        notes = [e for e in lab.events.events(kinds=("note",)) if e.data.get("plaintext_auth")]
        assert notes == []  # the only successful login was inside TLS
    # default lab policy: allowed, but the transcript says so
    with Lab(tmp_path / "lab2", ports="auto", domains=["alpha.test"], limits=fast_limits()) as lab:
        login(lab).quit()
        notes = [e for e in lab.events.events(kinds=("note",)) if e.data.get("plaintext_auth")]
        assert len(notes) == 1 and "without TLS" in notes[0].text


# -- the three states ---------------------------------------------------------------

def test_transaction_commands_refused_in_authorization(single_lab: Lab) -> None:
    deliver(single_lab, 1)
    c = pop(single_lab)
    for cmd in ("STAT", "LIST", "RETR 1", "DELE 1", "NOOP", "RSET", "TOP 1 0", "UIDL"):
        with pytest.raises(poplib.error_proto, match="not valid in the AUTHORIZATION state"):
            c._shortcmd(cmd)
    c.user("bob")
    c.pass_("bob-pw")
    for cmd in ("USER bob", "PASS x", "APOP bob 0123", "AUTH PLAIN", "STLS"):
        with pytest.raises(poplib.error_proto, match="not valid in the TRANSACTION state"):
            c._shortcmd(cmd)
    assert c.noop().startswith(b"+OK")
    c.quit()


def test_quit_in_authorization_enters_no_update(single_lab: Lab) -> None:
    c = pop(single_lab)
    c.quit()
    assert states(single_lab) == ["AUTHORIZATION"]


def test_dele_marks_rset_unmarks_quit_removes(single_lab: Lab) -> None:
    msgs = deliver(single_lab, 4)
    c = login(single_lab)
    c.dele(2)
    # a deleted message is gone for this session: RETR, LIST, DELE, TOP, UIDL -> -ERR
    for cmd in ("RETR 2", "LIST 2", "DELE 2", "TOP 2 0", "UIDL 2"):
        with pytest.raises(poplib.error_proto, match="already deleted"):
            c._shortcmd(cmd)
    assert c.stat() == (3, sum(len(m) for i, m in enumerate(msgs, 1) if i != 2))
    assert [ln.split()[0] for ln in c.list()[1]] == [b"1", b"3", b"4"]  # numbers stay stable
    assert c.rset().startswith(b"+OK")
    assert c.stat()[0] == 4
    c.dele(1)
    c.dele(3)
    assert len(single_lab.store.mailbox(BOB).messages()) == 4  # DELE only marks
    c.quit()
    left = single_lab.store.mailbox(BOB).messages()
    assert [single_lab.store.mailbox(BOB).read(i.uid) for i in left] == [msgs[1], msgs[3]]


def test_dropped_connection_deletes_nothing(single_lab: Lab) -> None:
    deliver(single_lab, 3)
    c = login(single_lab)
    c.dele(1)
    c.dele(2)
    drop(c)  # no QUIT
    deadline = time.time() + 5
    while time.time() < deadline and not any(
            e.data.get("pop3") == "aborted" for e in single_lab.events.events(kinds=("note",))):
        time.sleep(0.02)
    assert len(single_lab.store.mailbox(BOB).messages()) == 3
    assert "UPDATE" not in states(single_lab)
    # and the lock was released: a new session gets in and sees all three
    c = login(single_lab)
    assert c.stat()[0] == 3
    c.quit()


def test_in_use_lock_released_on_quit_and_drop(single_lab: Lab) -> None:
    deliver(single_lab, 1)
    first = login(single_lab)
    second = pop(single_lab)
    second.user("bob")
    with pytest.raises(poplib.error_proto, match=r"-ERR \[IN-USE\]"):
        second.pass_("bob-pw")
    first.quit()
    second.user("bob")
    second.pass_("bob-pw")  # free again after QUIT
    drop(second)
    for _ in range(100):
        try:
            third = login(single_lab)
            break
        except poplib.error_proto as exc:
            assert b"IN-USE" in exc.args[0]
            time.sleep(0.02)
    assert third.stat()[0] == 1
    third.quit()
    # another user's maildrop is not affected by bob's lock
    bob = login(single_lab)
    alice = pop(single_lab)
    alice.user("alice")
    alice.pass_("alice-pw")
    alice.quit()
    bob.quit()


def test_snapshot_new_mail_seen_next_login(single_lab: Lab) -> None:
    deliver(single_lab, 2)
    c = login(single_lab)
    single_lab.store.deliver(BOB, message(99))
    assert c.stat()[0] == 2
    with pytest.raises(poplib.error_proto, match="no such message"):
        c.retr(3)
    c.quit()
    c = login(single_lab)
    assert c.stat()[0] == 3
    c.quit()


def test_uidl_unique_and_persistent(single_lab: Lab) -> None:
    deliver(single_lab, 3)
    c = login(single_lab)
    first = c.uidl()[1]
    ids = [ln.split()[1] for ln in first]
    assert len(set(ids)) == 3
    assert all(re.fullmatch(rb"[\x21-\x7e]{1,70}", i) for i in ids)
    assert c.uidl(2).split()[2] == ids[1]
    c.dele(1)
    c.quit()
    c = login(single_lab)
    # message 1 is gone, the others keep their ids (now numbered 1 and 2)
    assert [ln.split()[1] for ln in c.uidl()[1]] == ids[1:]
    c.quit()


def test_top_peeks_without_marking_seen_and_retr_marks_seen(single_lab: Lab) -> None:
    body = "line one\r\nline two\r\nline three\r\n"
    single_lab.store.deliver(BOB, b"Subject: top\r\nX-A: 1\r\n\r\n" + body.encode())
    c = login(single_lab)
    _r, lines, _ = c.top(1, 0)
    assert lines == [b"Subject: top", b"X-A: 1", b""]
    _r, lines, _ = c.top(1, 2)
    assert lines == [b"Subject: top", b"X-A: 1", b"", b"line one", b"line two"]
    _r, lines, _ = c.top(1, 50)
    assert lines[-1] == b"line three"
    mb = single_lab.store.mailbox(BOB)
    uid = mb.messages()[0].uid
    assert "\\Seen" not in mb.get(uid).flags
    c.retr(1)
    assert "\\Seen" in mb.get(uid).flags  # IMAP will show it read
    assert "S" in mb.get(uid).filename.rsplit(":2,", 1)[1]
    c.quit()


def test_pipelined_retrs_are_all_seen_when_the_last_reply_arrives(single_lab: Lab) -> None:
    """RETR's \\Seen is written a batch at a time (one index transaction), but always
    before the reply a client waits for: once the last RETR is answered, IMAP sees
    every message read; an aborted session's RETRs are marked too."""
    from wire import POP3Wire

    count = 150  # more than one batch (SEEN_BATCH)
    for n in range(count):
        single_lab.store.deliver(BOB, b"Subject: %d\r\n\r\n.dot line %d\r\n" % (n, n))
    c = POP3Wire(single_lab)
    c.login()
    c.send(b"".join(b"RETR %d\r\n" % n for n in range(1, count + 1)))
    for n in range(count):
        assert c.line().startswith(b"+OK")
        assert c.multiline() == [b"Subject: %d" % n, b"", b"..dot line %d" % n]
    mb = single_lab.store.mailbox(BOB)
    assert all("\\Seen" in info.flags for info in mb.messages())
    single_lab.store.deliver(BOB, b"Subject: late\r\n\r\nlate\r\n")
    c.close()
    c = POP3Wire(single_lab)
    c.login()
    c.send(b"RETR %d\r\nRETR 1\r\n" % (count + 1))
    assert c.line().startswith(b"+OK") and c.multiline() == [b"Subject: late", b"", b"late"]
    c.close()  # without QUIT, maybe before the second RETR was answered
    deadline = time.monotonic() + 10
    while "\\Seen" not in mb.messages()[-1].flags and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "\\Seen" in mb.messages()[-1].flags


def test_replies_held_for_pipelined_commands_go_out_before_the_server_waits(single_lab: Lab) -> None:
    """Replies to pipelined commands are written together, but never held while the
    server waits for the client: with the last command only half sent, every
    complete command is answered."""
    from wire import POP3Wire

    deliver(single_lab, 3)
    c = POP3Wire(single_lab)
    c.login()
    c.send(b"RETR 1\r\nRETR 2\r\nNOOP\r\nRETR 3\r\nRET")
    for n in (1, 2):
        assert c.line().startswith(b"+OK") and c.multiline()[-1] == b"hello %d" % n
    assert c.line() == b"+OK"
    assert c.line().startswith(b"+OK") and c.multiline()[-1] == b"hello 3"
    c.send(b"R 1\r\n")
    assert c.line().startswith(b"+OK") and c.multiline()[-1] == b"hello 1"
    c.close()


# -- bodies -------------------------------------------------------------------------

def test_dot_lines_round_trip_byte_exact(single_lab: Lab) -> None:
    data = (b"Subject: dots\r\n\r\n.\r\n..\r\n.leading dot\r\n...three\r\n"
            b"middle . dot\r\n.\r\nend\r\n")
    single_lab.store.deliver(BOB, data)
    c = login(single_lab)
    assert full_body(c, 1) == data
    c.quit()
    # on the wire each dot line carries one more dot (RFC 1939 section 3)
    payload = [e for e in single_lab.events.events(kinds=("S",))
               if e.side == "server" and e.data.get("payload")]
    assert "\n..leading dot\n" in payload[0].text


def test_five_megabyte_message_byte_exact(single_lab: Lab) -> None:
    line = b"." + b"0123456789abcdef" * 4 + b"\r\n"
    data = b"Subject: big\r\n\r\n" + line * (5 * 1024 * 1024 // len(line)) + b".\r\n"
    single_lab.store.deliver(BOB, data)
    host, port = single_lab.address("pop3")
    with socket.create_connection((host, port), timeout=10) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"USER bob\r\nPASS bob-pw\r\nLIST 1\r\nRETR 1\r\n")
        f.readline()
        f.readline()
        assert f.readline().split()[2] == str(len(data)).encode()
        assert f.readline().startswith(b"+OK")
        chunks = []
        while True:
            ln = f.readline()
            if ln == b".\r\n":
                break
            chunks.append(ln[1:] if ln.startswith(b".") else ln)
        assert b"".join(chunks) == data
        s.sendall(b"QUIT\r\n")
    # the transcript holds a summary, not 80,000 lines
    payloads = [e for e in single_lab.events.events(kinds=("S",)) if e.data.get("payload")]
    assert payloads and payloads[0].data["bytes"] > len(data) and len(payloads[0].text) < 5000


def test_lf_only_file_served_with_crlf(single_lab: Lab) -> None:
    mb = single_lab.store.mailbox(BOB)
    (mb.path / "new" / "1700000000.lfonly.host").write_bytes(b"Subject: lf\n\nbody\n.dot\n")
    c = login(single_lab)
    assert c.list(1).split()[2] == str(len(b"Subject: lf\r\n\r\nbody\r\n.dot\r\n")).encode()
    assert full_body(c, 1) == b"Subject: lf\r\n\r\nbody\r\n.dot\r\n"
    c.quit()


def test_recorded_session_matches_on_both_sides(single_lab: Lab) -> None:
    deliver(single_lab, 1)
    c = login(single_lab)
    c.stat()
    c.quit()
    client = [e.text for e in single_lab.events.events(kinds=("C",)) if e.side == "client"]
    server = [e.text for e in single_lab.events.events(kinds=("C",)) if e.side == "server"]
    assert client == server == ["USER bob", "PASS ****", "STAT", "QUIT"]


def test_apop_digest_is_md5_of_timestamp_and_password(single_lab: Lab) -> None:
    host, port = single_lab.address("pop3")
    with socket.create_connection((host, port), timeout=5) as s:
        f = s.makefile("rb")
        greeting = f.readline().decode()
        stamp = re.search(r"<[^>]+>", greeting).group(0)
        digest = hashlib.md5((stamp + "bob-pw").encode()).hexdigest()
        s.sendall(f"APOP bob@alpha.test {digest}\r\nQUIT\r\n".encode())
        assert f.readline().startswith(b"+OK")
        assert f.readline().startswith(b"+OK")


def test_a_message_expunged_during_the_session_is_an_error_not_a_crash(single_lab: Lab) -> None:
    for n in (1, 2):
        single_lab.store.deliver(BOB, b"Subject: %d\r\n\r\nbody %d\r\n" % (n, n))
    c = login(single_lab)
    mb = single_lab.store.mailbox(BOB)
    mb.remove([mb.messages()[0].uid])  # as an IMAP EXPUNGE would, behind the POP3 session
    with pytest.raises(poplib.error_proto, match=r"-ERR \[SYS/TEMP\] message 1 is no longer"):
        c.retr(1)
    assert c.retr(2)[1] == [b"Subject: 2", b"", b"body 2"]
    assert c.stat() == (2, 2 * len(b"Subject: 1\r\n\r\nbody 1\r\n"))  # the numbers stay fixed
    c.quit()


def test_the_notes_of_a_large_maildrop_stay_bounded_and_the_view_folds_them(single_lab: Lab) -> None:
    from maillab.pop3.session import NOTE_MESSAGES
    from maillab.views.pop3_state import render_text, server_sessions, session_state

    count = NOTE_MESSAGES + 100
    mb = single_lab.store.mailbox(BOB)
    for n in range(count):
        mb.add(b"Subject: %d\r\n\r\nbody\r\n" % n)
    c = login(single_lab)
    c.dele(1)
    c.dele(count)
    sid = server_sessions(single_lab.events.events())[-1]
    notes = [e.data for e in single_lab.events.events(session=sid, kinds=("note",)) if "pop3" in e.data]
    opened = next(d for d in notes if d["pop3"] == "maildrop")
    assert len(opened["messages"]) == NOTE_MESSAGES and opened["count"] == count
    assert [d["number"] for d in notes if d["pop3"] == "marked"] == [1, count]  # one number each
    st = session_state(single_lab.events.events(session=sid), sid)
    assert st.marked == [1, count] and f"… ({count} messages)" in render_text(st)
    c.quit()
    st = session_state(single_lab.events.events(session=sid), sid)
    assert st.removed == [1, count] and st.left == count - 2


def test_a_message_moved_by_imap_after_retr_read_it_gets_its_seen_on_the_copy(single_lab: Lab) -> None:
    """RETR reads a message; before its \\Seen is marked (pipelined: the next command
    is still coming), an IMAP session MOVEs the message to Archive. The RETR came
    first, so after QUIT's +OK the copy in Archive is \\Seen (not lost with the original)."""
    import imaplib

    deliver(single_lab, 1)
    c = login(single_lab)
    c.sock.sendall(b"RETR 1\r\nNOO")  # half a command waiting: the \Seen is marked with its reply
    assert c._getresp().startswith(b"+OK")
    while c._getline()[0] != b".":
        pass
    host, port = single_lab.address("imap")
    imap = imaplib.IMAP4(host, port, timeout=5)
    imap.login("bob", "bob-pw")
    imap.create("Archive")
    imap.select("INBOX")
    assert imap.uid("MOVE", "1", "Archive")[0] == "OK"
    imap.logout()
    c.sock.sendall(b"P\r\n")
    assert c._getresp().startswith(b"+OK")
    assert c.quit().startswith(b"+OK")
    assert single_lab.store.mailbox(BOB).messages() == []
    (copy,) = single_lab.store.mailbox(BOB, "Archive").messages()
    assert copy.flags == {"\\Seen"}
