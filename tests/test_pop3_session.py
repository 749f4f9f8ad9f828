"""The sans-IO POP3 core driven directly (no sockets), against a real Maildir store,
plus the transcript notes and the lab's service table."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from maillab import Lab
from maillab.events import EventBus
from maillab.pop3.explain import explain
from maillab.pop3.maildrop import StoreBackend
from maillab.pop3.server import RECORD_HEAD, _head
from maillab.pop3.session import POP3Session, Reply, State, top_of
from maillab.pop3.wire import MAX_DOTS, Plans, crlf_only, dot_stuff, plan_for, stuffed_parts
from maillab.store import Store, crlf_size
from maillab.users import Users

BOB = "bob@alpha.test"


@pytest.fixture
def backend(tmp_path) -> StoreBackend:
    store = Store(tmp_path / "mail")
    store.deliver(BOB, b"Subject: one\r\n\r\nfirst\r\n")
    store.deliver(BOB, b"Subject: two\r\n\r\nsecond\r\n")
    yield StoreBackend(store, Users({BOB: "bob-pw"}))
    store.close()


def logged_in(backend: StoreBackend) -> POP3Session:
    s = POP3Session(backend, auth_failure_delay=0.5)
    assert s.receive(b"USER bob\r\n").ok
    reply = s.receive(b"PASS bob-pw\r\n")
    assert reply.ok and reply.state is State.TRANSACTION
    return s


def test_states_and_transitions(backend) -> None:
    seen: list[State] = []
    s = POP3Session(backend)
    s.on_state = seen.append
    assert s.state is State.AUTHORIZATION
    assert s.greeting().status.startswith("+OK") and s.timestamp in s.greeting().status
    assert not s.receive("STAT").ok
    s.receive("USER bob")
    s.receive("PASS bob-pw")
    assert s.state is State.TRANSACTION and s.maildrop is not None
    quit_reply = s.receive("QUIT")
    assert quit_reply.close and quit_reply.state is State.UPDATE
    assert seen == [State.TRANSACTION, State.UPDATE]
    assert s.maildrop is None  # lock released


def test_password_with_spaces(tmp_path) -> None:
    store = Store(tmp_path / "mail")
    s = POP3Session(StoreBackend(store, Users({BOB: "two  spaces here "})))
    s.receive("USER bob")
    assert s.receive("PASS two  spaces here ").ok
    s.end()
    store.close()


def test_failed_login_carries_delay_and_auth_code(backend) -> None:
    s = POP3Session(backend, auth_failure_delay=0.5)
    s.receive("USER bob")
    reply = s.receive("PASS nope")
    assert reply.status.startswith("-ERR [AUTH]") and reply.delay == 0.5
    assert reply.auth == ("bob", False, "USER")
    assert s.state is State.AUTHORIZATION


def test_wire_format_of_multiline_replies(backend) -> None:
    s = logged_in(backend)
    assert s.receive("LIST").wire() == b"+OK 2 messages (47 octets)\r\n1 23\r\n2 24\r\n.\r\n"
    assert s.receive("RETR 1").wire() == b"+OK 23 octets\r\nSubject: one\r\n\r\nfirst\r\n.\r\n"


def test_lock_is_exclusive_and_released_by_end(backend) -> None:
    first = logged_in(backend)
    second = POP3Session(backend)
    second.receive("USER bob")
    assert second.receive("PASS bob-pw").status.startswith("-ERR [IN-USE]")
    first.end()  # what the driver calls when the connection drops
    second.receive("USER bob")
    assert second.receive("PASS bob-pw").ok
    second.end()


def test_dele_in_session_then_end_removes_nothing(backend) -> None:
    s = logged_in(backend)
    assert s.receive("DELE 1").ok
    s.end()
    assert len(backend.store.mailbox(BOB).messages()) == 2


def test_message_gone_from_disk_gets_sys_temp(backend) -> None:
    s = logged_in(backend)
    mb = backend.store.mailbox(BOB)
    os.unlink(mb.file_path(mb.messages()[0].uid))
    reply = s.receive("RETR 1")
    assert reply.status.startswith("-ERR [SYS/TEMP]")
    assert s.receive("RETR 2").ok  # the session goes on
    s.end()


def test_masking() -> None:
    s = POP3Session(None)  # type: ignore[arg-type]
    assert s.masked(b"PASS secret words\r\n") == "PASS ****"
    assert s.masked("APOP bob 0123456789abcdef") == "APOP bob ****"
    assert s.masked("AUTH PLAIN AGJvYgBib2ItcHc=") == "AUTH PLAIN ****"
    assert s.masked("USER bob") == "USER bob"
    s.receive("AUTH PLAIN")  # now waiting for the SASL response
    assert s.masked("AGJvYgBib2ItcHc=") == "****"


def test_dot_stuff_and_top() -> None:
    assert dot_stuff(b".a\r\nb\r\n..c\r\n") == b"..a\r\nb\r\n...c\r\n"
    assert dot_stuff(b"no final newline") == b"no final newline\r\n"
    assert dot_stuff(b"") == b""
    msg = b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\nl3\r\n"
    assert top_of(msg, 0) == b"A: 1\r\nB: 2\r\n\r\n"
    assert top_of(msg, 2) == b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\n"
    assert top_of(msg, 99) == msg
    assert top_of(b"A: 1\r\n", 3) == b"A: 1\r\n"
    assert top_of(b"\r\nbody\r\nmore\r\n", 1) == b"\r\nbody\r\n"


@seed(1939)
@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from([b".", b"..", b"\r", b"\n", b"\r\n", b"a", b"\r\n.", b"\n."]),
                max_size=40).map(b"".join))
def test_the_remembered_plan_sends_exactly_what_dot_stuff_sends(data: bytes) -> None:
    """What a RETR writes (slices of the file and the stuffed dots, by a plan made
    once per file) is octet for octet the reference: CRLF only, then dot_stuff."""
    plan = plan_for(data, crlf_size(data))
    message = data if plan.crlf else crlf_only(data)
    assert message == crlf_only(data)
    assert b"".join(stuffed_parts(message, plan.dots)) == dot_stuff(crlf_only(data))
    reply = Reply(f"+OK {len(message)} octets", message=message, dots=plan.dots)
    body = dot_stuff(message) + b".\r\n"
    assert reply.wire() == reply.status.encode() + b"\r\n" + body
    # the transcript: the head and the size give the same event as the whole body
    head, size = _head(message, reply.parts())
    whole, part = EventBus().session("pop3", "server", "h"), EventBus().session("pop3", "server", "h")
    whole.payload("S", body, head_lines=RECORD_HEAD)
    part.payload("S", head, head_lines=RECORD_HEAD, size=size)
    (a,), (b,) = ([e for e in r.bus.events() if e.kind == "S"] for r in (whole, part))
    assert (a.text, a.data) == (b.text, b.data)


@pytest.mark.parametrize("lines", [100, MAX_DOTS, MAX_DOTS + 1, 5000])
def test_many_dot_lines_and_the_transcript_of_a_long_message(lines: int) -> None:
    message = b"".join(b".line %d\r\n" % i for i in range(lines))
    plan = plan_for(message, len(message))
    assert plan.crlf and (plan.dots is None) == (lines > MAX_DOTS)  # a plan stays small
    reply = Reply("+OK", message=message, dots=plan.dots)
    assert reply.body() == dot_stuff(message) + b".\r\n"
    head, size = _head(message, reply.parts())
    assert size == len(reply.body()) and head.startswith(b"..line 0\r\n..line 1\r\n")
    assert head.count(b"\n") == RECORD_HEAD + 1


def test_explain_notes() -> None:
    assert "UPDATE" in explain("DELE 1", "C")
    assert "RFC 2595" in explain("STLS", "C")
    assert "IN-USE" not in (explain("-ERR [IN-USE] locked", "S") or "") and \
        "locked by another session" in explain("-ERR [IN-USE] locked", "S")
    assert "RFC 3206" in explain("-ERR [AUTH] invalid user name or password", "S")
    assert explain("1 513", "S") is None
    assert "dot-stuffed" in explain("..leading", "S")


def test_services_in_status_and_lab_json(single_lab: Lab) -> None:
    info = single_lab.lab_json()["services"]
    assert info["pop3"]["standard_port"] == 110 and info["pop3"]["tls"] == "starttls"
    assert info["pop3s"]["standard_port"] == 995 and info["pop3s"]["tls"] == "implicit"
    assert info["pop3"]["port"] > 0 and info["pop3s"]["port"] > 0


def test_remembered_plans_stay_bounded() -> None:
    plans = Plans(size=100)
    for n in range(1000):
        plans.put(("/m", 1, n, 3), plan_for(b"a\r\n", 3))
    assert len(plans._plans) <= 100 and plans.get(("/m", 1, 999, 3)) is not None
    assert plans.get(("/m", 1, 0, 3)) is None  # the oldest went first
