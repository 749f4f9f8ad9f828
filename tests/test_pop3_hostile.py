"""Hostile and broken POP3 clients (shared/SECURITY.md, POP3 and TLS): each gets a
clear -ERR, the session goes on, and the server keeps serving everyone else."""

from __future__ import annotations

import socket
import ssl
import time

import pytest
from wire import POP3Wire as Wire

from maillab import Lab
from maillab.limits import Limits

BOB = "bob@alpha.test"


def still_serving(lab: Lab) -> None:
    w = Wire(lab)
    assert w.greeting.startswith(b"+OK")
    w.login()
    assert w.cmd(b"STAT").startswith(b"+OK")
    assert w.cmd(b"QUIT").startswith(b"+OK")
    w.close()


def test_message_numbers_out_of_range_and_malformed(single_lab: Lab) -> None:
    single_lab.store.deliver(BOB, b"Subject: x\r\n\r\nx\r\n")
    w = Wire(single_lab)
    w.login()
    for cmd in (b"RETR 0", b"RETR 99999", b"LIST -1", b"LIST 0", b"DELE 2", b"TOP 1 -1",
                b"TOP 1", b"RETR", b"RETR 1 2", b"UIDL x", b"LIST 1x", b"RETR 99999999999999999999",
                b"STAT 1", b"LIST  1"):
        reply = w.cmd(cmd)
        assert reply.startswith(b"-ERR "), (cmd, reply)
    # the session goes on and message 1 is untouched
    assert w.cmd(b"LIST 1").startswith(b"+OK 1 ")
    assert w.cmd(b"QUIT").startswith(b"+OK")
    assert len(single_lab.store.mailbox(BOB).messages()) == 1


def test_overlong_line_gets_err_and_session_goes_on(single_lab: Lab) -> None:
    w = Wire(single_lab)
    assert w.cmd(b"USER " + b"a" * 300).startswith(b"-ERR command line too long")
    assert w.cmd(b"USER " + b"b" * 249).startswith(b"-ERR command line too long")  # 256 octets
    # 255 octets with the CRLF is still a command (RFC 2449 section 4)
    assert w.cmd(b"USER " + b"b" * 248).startswith(b"+OK")
    # a megabyte without a line end is consumed, not buffered, then answered once
    w.send(b"X" * (1024 * 1024) + b"\r\n")
    assert w.line().startswith(b"-ERR command line too long")
    w.login()
    assert w.cmd(b"NOOP") == b"+OK"
    w.close()
    still_serving(single_lab)


def test_binary_junk_and_unknown_commands(single_lab: Lab) -> None:
    w = Wire(single_lab)
    assert w.cmd(b"\x00\x01\x02\xff\xfe").startswith(b"-ERR")
    assert w.cmd(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03").startswith(b"-ERR")  # a ClientHello
    assert w.cmd(b"HELO there").startswith(b"-ERR unknown command")
    assert w.cmd(b"").startswith(b"-ERR")
    assert w.cmd(b"USER bob\x00admin").startswith(b"-ERR")
    w.login()
    assert w.cmd(b"STAT").startswith(b"+OK")
    w.close()
    still_serving(single_lab)


def test_bare_lf_commands_are_accepted(single_lab: Lab) -> None:
    # Policy: POP3 has no DATA phase to smuggle through, so a bare LF ends a command too.
    w = Wire(single_lab)
    w.send(b"USER bob\nPASS bob-pw\n")
    assert w.line().startswith(b"+OK") and w.line().startswith(b"+OK")
    w.close()


def test_stls_with_pipelined_command_answers_only_stls(single_lab: Lab) -> None:
    w = Wire(single_lab)
    w.send(b"STLS\r\nCAPA\r\n")
    assert w.line() == b"+OK begin TLS negotiation"
    ctx = single_lab.ca.client_context()
    tls = ctx.wrap_socket(w.sock, server_hostname="127.0.0.1")
    tls.settimeout(1.0)
    # the injected CAPA must never be answered, neither before nor after the handshake
    assert w.buf == b""
    try:
        extra = tls.recv(1024)
    except TimeoutError:
        extra = b""
    assert extra == b""
    tls.sendall(b"NOOP\r\n")
    assert tls.recv(1024).startswith(b"-ERR NOOP is not valid in the AUTHORIZATION")
    tls.close()
    notes = [e.text for e in single_lab.events.events(kinds=("note",))]
    assert any("discarded 6 plaintext bytes" in n for n in notes)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_garbage_instead_of_client_hello_on_pop3s(single_lab: Lab) -> None:
    with socket.create_connection(single_lab.address("pop3s"), timeout=5) as s:
        s.sendall(b"USER bob\r\nPASS bob-pw\r\n" * 10)
        try:
            data = s.recv(1024)
        except (ConnectionResetError, TimeoutError):
            data = b""
        assert b"+OK" not in data
    # TLS 1.1 only: refused
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
    except (ValueError, ssl.SSLError):
        pass
    with socket.create_connection(single_lab.address("pop3s"), timeout=5) as s:
        try:
            ctx.wrap_socket(s).recv(100)
            handshake_ok = True
        except (ssl.SSLError, OSError):
            handshake_ok = False
        assert not handshake_ok
    still_serving(single_lab)


def test_aborted_stls_handshake_releases_nothing_and_server_goes_on(single_lab: Lab) -> None:
    w = Wire(single_lab)
    assert w.cmd(b"STLS").startswith(b"+OK")
    w.send(b"this is not TLS\r\n")
    w.close()
    still_serving(single_lab)


def test_many_clients_one_misbehaving(single_lab: Lab) -> None:
    single_lab.store.deliver(BOB, b"Subject: x\r\n\r\nx\r\n")
    bad = [Wire(single_lab) for _ in range(5)]
    for b in bad:
        b.send(b"\xff" * 5000)  # no line end: held until the limit, then discarded
    still_serving(single_lab)
    for b in bad:
        b.close()


def test_idle_session_is_logged_out_and_nothing_deleted(tmp_path) -> None:
    limits = Limits(auth_failure_delay=0.05, pop3_idle_timeout=0.5)
    with Lab(tmp_path / "lab", ports="auto", domains=["alpha.test"], limits=limits) as lab:
        lab.store.deliver(BOB, b"Subject: x\r\n\r\nx\r\n")
        w = Wire(lab)
        w.login()
        assert w.cmd(b"DELE 1").startswith(b"+OK")
        start = time.monotonic()
        assert w.line().startswith(b"-ERR autologout")
        assert time.monotonic() - start < 3
        try:
            assert w.sock.recv(10) == b""
        except ConnectionResetError:
            pass
        assert len(lab.store.mailbox(BOB).messages()) == 1
        still_serving(lab)  # the lock was released


def test_pipelined_commands_answered_in_order(single_lab: Lab) -> None:
    for i in range(3):
        single_lab.store.deliver(BOB, f"Subject: {i}\r\n\r\nbody {i}\r\n".encode())
    w = Wire(single_lab)
    w.send(b"USER bob\r\nPASS bob-pw\r\nSTAT\r\nLIST\r\nRETR 2\r\nDELE 9\r\nUIDL 1\r\nQUIT\r\n")
    assert w.line().startswith(b"+OK")
    assert w.line().startswith(b"+OK")
    assert w.line().startswith(b"+OK 3 ")
    assert w.line().startswith(b"+OK")
    assert len(w.multiline()) == 3
    assert w.line().startswith(b"+OK")
    assert w.multiline()[-1] == b"body 1"
    assert w.line().startswith(b"-ERR no such message")
    assert w.line().startswith(b"+OK 1 ")
    assert w.line().startswith(b"+OK")
    w.close()


def test_connection_limit_answers_busy_and_recovers(tmp_path) -> None:
    limits = Limits(auth_failure_delay=0.05, max_connections=2)
    with Lab(tmp_path / "lab", ports="auto", domains=["alpha.test"], limits=limits) as lab:
        held = [Wire(lab), Wire(lab)]
        with socket.create_connection(lab.address("pop3"), timeout=5) as s:
            assert s.recv(200).startswith(b"-ERR [SYS/TEMP] too many connections")
        for w in held:
            w.close()
        deadline = time.time() + 3
        while lab.service("pop3").active and time.time() < deadline:
            time.sleep(0.02)
        still_serving(lab)
