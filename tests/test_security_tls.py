"""SECURITY.md, TLS, for all three protocols at once (SMTP, POP3, IMAP), over real sockets.

Each protocol has a plaintext port with STARTTLS (STLS for POP3) and an
implicit-TLS port (RFC 8314). Against each: a handshake that never comes (plaintext
commands instead of a ClientHello), one cut off half way, one that stalls, clients
that speak only TLS 1.0 or 1.1. Each must be refused with nothing processed, while
a session opened before goes on undisturbed and no asyncio task is left behind.
Then the session reset after STARTTLS, and the relay's client side against hostile
next hops (a STARTTLS that fails when TLS is required, a certificate from another CA).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import trustme
from conftest import fast_limits
from security_probes import lab_tasks, read_until_closed, settled_tasks, wait_until

from maillab import Lab


@dataclass(frozen=True)
class Proto:
    name: str
    plain: str  # service with STARTTLS
    implicit: str  # service with TLS from the first byte
    hello: bytes  # what a client sends before STARTTLS (SMTP: EHLO), or b""
    starttls: bytes
    go_ahead: bytes  # the start of the reply that says "begin TLS"
    noop: bytes
    ok: bytes  # the start of a successful reply to noop
    plaintext_attack: bytes  # commands a plaintext client would send instead of a ClientHello
    answers: tuple[bytes, ...]  # replies that would show such commands were processed


SMTP = Proto("smtp", "smtp", "smtps", b"EHLO client.test\r\n", b"STARTTLS\r\n", b"220", b"NOOP\r\n", b"250",
             b"EHLO evil.test\r\nMAIL FROM:<a@ext.test>\r\nRCPT TO:<bob@alpha.test>\r\n", (b"250", b"5"))
POP3 = Proto("pop3", "pop3", "pop3s", b"", b"STLS\r\n", b"+OK", b"NOOP\r\n", b"-ERR NOOP is not valid",
             b"USER bob\r\nPASS bob-pw\r\nSTAT\r\n", (b"+OK", b"-ERR"))
IMAP = Proto("imap", "imap", "imaps", b"", b"a STARTTLS\r\n", b"a OK", b"n NOOP\r\n", b"n OK",
             b"a LOGIN bob@alpha.test bob-pw\r\nb SELECT INBOX\r\n", (b"a ", b"b ", b"* BAD"))
PROTOCOLS = [SMTP, POP3, IMAP]


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    lab = Lab(tmp_path_factory.mktemp("tls") / "lab", ports="auto", domains=["alpha.test"],
              services=("smtp", "smtps", "pop3", "pop3s", "imap", "imaps"),
              limits=fast_limits(tls_handshake_timeout=1.0))
    lab.start()
    yield lab
    lab.stop()


class Conn:
    """A raw connection: bytes out, lines in, TLS when asked."""

    def __init__(self, lab: Lab, service: str, *, tls: ssl.SSLContext | None = None) -> None:
        self.sock: socket.socket = socket.create_connection(lab.address(service), timeout=5)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname="mail.alpha.test")
        self.buf = b""

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"closed; unread {self.buf!r}")
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self, proto: Proto) -> bytes:
        """One complete reply (SMTP's multi-line ones joined) as its last line."""
        line = self.line()
        while proto is SMTP and line[3:4] == b"-":
            line = self.line()
        return line

    def lines_until(self, predicate: Callable[[bytes], bool]) -> list[bytes]:
        out = [self.line()]
        while not predicate(out[-1]):
            out.append(self.line())
        return out

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)


def greet(lab: Lab, proto: Proto, service: str, *, tls: ssl.SSLContext | None = None) -> Conn:
    c = Conn(lab, service, tls=tls)
    c.reply(proto)  # greeting
    if proto.hello:
        c.send(proto.hello)
        assert c.reply(proto).startswith(b"250")
    return c


def healthy(lab: Lab, proto: Proto) -> Conn:
    """A plaintext session opened before the attack, answering NOOP."""
    c = greet(lab, proto, proto.plain)
    c.send(proto.noop)
    assert c.reply(proto).startswith(proto.ok)
    return c


def at_handshake(lab: Lab, proto: Proto, mode: str) -> socket.socket:
    """A connection whose server now waits for a ClientHello."""
    if mode == "implicit":
        return socket.create_connection(lab.address(proto.implicit), timeout=5)
    c = greet(lab, proto, proto.plain)
    c.send(proto.starttls)
    assert c.reply(proto).startswith(proto.go_ahead)
    assert c.buf == b""
    return c.sock


def client_hello() -> bytes:
    """The first flight of a real TLS client, taken from an in-memory handshake."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="mail.alpha.test")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def old_tls(version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = version
        ctx.maximum_version = version
    try:  # OpenSSL 3 at security level 2 would refuse TLS 1.0/1.1 itself: let the server decide
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    except ssl.SSLError:
        pass
    return ctx


def attack(sock: socket.socket, proto: Proto, kind: str) -> None:
    """Do ``kind`` where a ClientHello is due; assert nothing was processed."""
    if kind == "plaintext":
        sock.sendall(proto.plaintext_attack * 10)
        got, closed = read_until_closed(sock, timeout=5)
        assert closed, "still open 5 s after plaintext instead of a ClientHello"
        for answer in proto.answers:
            assert answer not in got, got  # at most a TLS alert, never a protocol reply
    elif kind == "cut":
        sock.sendall(client_hello()[:40])
        sock.close()
    elif kind == "stalled":
        sock.sendall(client_hello()[:40])
        start = time.monotonic()
        got, closed = read_until_closed(sock, timeout=6)
        assert closed and time.monotonic() - start < 6  # tls_handshake_timeout is 1 s here
    else:
        version = {"tls1.0": ssl.TLSVersion.TLSv1, "tls1.1": ssl.TLSVersion.TLSv1_1}[kind]
        with pytest.raises((ssl.SSLError, ConnectionError)):
            tls = old_tls(version).wrap_socket(sock, server_hostname="mail.alpha.test")
            tls.recv(100)  # TLS 1.3 servers may only fail here
    sock.close()


@pytest.mark.parametrize("kind", ["plaintext", "cut", "stalled", "tls1.0", "tls1.1"])
@pytest.mark.parametrize("mode", ["implicit", "starttls"])
@pytest.mark.parametrize("proto", PROTOCOLS, ids=lambda p: p.name)
def test_broken_handshakes_are_refused_and_others_undisturbed(lab: Lab, proto: Proto, mode: str,
                                                              kind: str) -> None:
    before = healthy(lab, proto)
    active = {s: lab.service(s).active for s in (proto.plain, proto.implicit)}
    tasks = lab_tasks(lab)
    attack(at_handshake(lab, proto, mode), proto, kind)
    # no task leaked, no session left open
    assert settled_tasks(lab, tasks) <= tasks
    assert wait_until(lambda: all(lab.service(s).active == n for s, n in active.items()))
    # the session opened before goes on, and a proper TLS client is served
    before.send(proto.noop)
    assert before.reply(proto).startswith(proto.ok)
    good = greet(lab, proto, proto.implicit, tls=lab.ca.client_context())
    assert good.sock.version() in ("TLSv1.2", "TLSv1.3")
    good.sock.close()
    before.sock.close()


@pytest.mark.parametrize("proto", PROTOCOLS, ids=lambda p: p.name)
def test_tls_1_2_is_the_floor_and_accepted(lab: Lab, proto: Proto) -> None:
    ctx = lab.ca.client_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    for service in (proto.implicit, proto.plain):
        if service == proto.plain:
            sock = at_handshake(lab, proto, "starttls")
            c = Conn.__new__(Conn)
            c.sock, c.buf = ctx.wrap_socket(sock, server_hostname="mail.alpha.test"), b""
        else:
            c = greet(lab, proto, service, tls=ctx)
        assert c.sock.version() == "TLSv1.2"
        c.sock.close()
    versions = {e.data.get("version") for e in lab.events.events(protocol=proto.name, kinds=("tls",))
                if e.side == "server"}
    assert versions and versions <= {"TLSv1.2", "TLSv1.3"}


# -- "After the handshake the session state is reset; STARTTLS no longer offered, refused" --------

def capabilities(c: Conn, proto: Proto) -> bytes:
    if proto is SMTP:
        c.send(b"EHLO client.test\r\n")
        return b"\n".join(c.lines_until(lambda ln: ln[3:4] == b" "))
    if proto is POP3:
        c.send(b"CAPA\r\n")
        return b"\n".join(c.lines_until(lambda ln: ln == b"."))
    c.send(b"c CAPABILITY\r\n")
    return b"\n".join(c.lines_until(lambda ln: ln.startswith(b"c ")))


STARTTLS_WORD = {"smtp": b"STARTTLS", "pop3": b"STLS", "imap": b"STARTTLS"}


@pytest.mark.parametrize("proto", PROTOCOLS, ids=lambda p: p.name)
def test_after_starttls_the_session_starts_over_and_a_second_starttls_is_refused(lab: Lab,
                                                                                 proto: Proto) -> None:
    sock = at_handshake(lab, proto, "starttls")
    c = Conn.__new__(Conn)
    c.sock, c.buf = lab.ca.client_context().wrap_socket(sock, server_hostname="mail.alpha.test"), b""
    c.sock.settimeout(0.5)
    with pytest.raises(TimeoutError):
        c.sock.recv(100)  # no greeting and no leftover reply after the handshake
    c.sock.settimeout(5)
    if proto is SMTP:  # RFC 3207 4.2: the EHLO before TLS is forgotten
        c.send(b"MAIL FROM:<a@ext.test>\r\n")
        assert c.reply(proto).startswith(b"503")
    caps = capabilities(c, proto)
    assert STARTTLS_WORD[proto.name] not in caps, caps
    c.send(proto.starttls)
    refused = c.reply(proto)
    assert not refused.startswith(proto.go_ahead), refused
    c.send(proto.noop)  # and the session goes on, still inside TLS
    assert c.reply(proto).startswith(proto.ok)
    c.sock.close()


@pytest.mark.parametrize("proto", PROTOCOLS, ids=lambda p: p.name)
def test_starttls_is_neither_offered_nor_accepted_on_the_implicit_port(lab: Lab, proto: Proto) -> None:
    c = greet(lab, proto, proto.implicit, tls=lab.ca.client_context())
    caps = capabilities(c, proto)
    assert STARTTLS_WORD[proto.name] not in caps, caps
    c.send(proto.starttls)
    assert not c.reply(proto).startswith(proto.go_ahead)
    c.send(proto.noop)
    assert c.reply(proto).startswith(proto.ok)
    c.sock.close()


# -- the relay's client side against hostile next hops --------------------------------------------

class FakeMX:
    """A next hop on a real socket, scripted line by line (blocking, on its own thread)."""

    def __init__(self, script: Callable[[socket.socket], None]) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port = self.listener.getsockname()[1]
        self.heard: list[bytes] = []
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._serve, args=(script,), daemon=True)
        self.thread.start()

    def _serve(self, script: Callable[[socket.socket], None]) -> None:
        self.listener.settimeout(10)
        try:
            conn, _ = self.listener.accept()
            conn.settimeout(10)
            with conn:
                script(conn)
        except Exception as exc:  # noqa: BLE001 - read by the test
            self.errors.append(exc)

    def readline(self, conn: socket.socket) -> bytes:
        line = b""
        while not line.endswith(b"\n"):
            data = conn.recv(1)
            if not data:
                break
            line += data
        self.heard.append(line)
        return line

    def close(self) -> None:
        self.thread.join(10)
        self.listener.close()


def relay_deliver(lab: Lab, mx: FakeMX, *, require_tls: bool, tls_context: ssl.SSLContext | None = None):
    from maillab.relay.client import deliver

    async def go():
        return await deliver(lab.events, helo_name="mail.alpha.test", source_address=None,
                             host="mx.evil.test", address="127.0.0.1", port=mx.port,
                             mail_from="alice@alpha.test", rcpts=["carol@beta.test"], data=b"Subject: s\r\n\r\nx\r\n",
                             tls_context=tls_context or lab.ca.client_context(), queue_id="SEC",
                             connect_timeout=5, reply_timeout=5, require_tls=require_tls)
    return lab.loop.run(go(), timeout=20)


def plaintext_mail_sent(mx: FakeMX) -> bool:
    return any(line.upper().startswith((b"MAIL", b"RCPT", b"DATA")) for line in mx.heard)


def test_relay_treats_a_refused_starttls_as_fatal_when_tls_is_required(lab: Lab) -> None:
    """The next hop offers STARTTLS, then answers 454 to it (a downgrade an attacker on the
    path can cause). RFC 3207 4.1 and RFC 8689: with TLS required, no mail in plaintext."""
    def script(conn: socket.socket) -> None:
        conn.sendall(b"220 mx.evil.test ESMTP\r\n")
        mx.readline(conn)
        conn.sendall(b"250-mx.evil.test\r\n250 STARTTLS\r\n")
        mx.readline(conn)
        conn.sendall(b"454 4.7.0 TLS not available due to temporary reason\r\n")
        for _ in range(6):  # answer whatever comes next, as a plaintext server would
            line = mx.readline(conn)
            if not line:
                return
            conn.sendall(b"354 go ahead\r\n" if line.upper().startswith(b"DATA") else b"250 2.0.0 ok\r\n")
            if line.upper().startswith(b"QUIT"):
                return

    mx = FakeMX(script)
    try:
        d = relay_deliver(lab, mx, require_tls=True)
    finally:
        mx.close()
    assert not plaintext_mail_sent(mx), mx.heard
    assert d.mail_reply is None and not d.tls


def test_relay_refuses_a_next_hop_whose_certificate_another_ca_signed(lab: Lab) -> None:
    foreign = trustme.CA().issue_cert("mx.evil.test")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    foreign.configure_cert(server_ctx)

    def script(conn: socket.socket) -> None:
        conn.sendall(b"220 mx.evil.test ESMTP\r\n")
        mx.readline(conn)
        conn.sendall(b"250-mx.evil.test\r\n250 STARTTLS\r\n")
        mx.readline(conn)
        conn.sendall(b"220 2.0.0 ready\r\n")
        try:
            tls = server_ctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            return  # the relay refused our certificate: what should happen
        f = tls.makefile("rb")
        for _ in range(5):
            line = f.readline()
            mx.heard.append(line)
            if not line:
                return
            tls.sendall(b"250 ok\r\n")

    mx = FakeMX(script)
    try:
        d = relay_deliver(lab, mx, require_tls=True)
    finally:
        mx.close()
    assert not d.tls and d.mail_reply is None
    assert "TLS handshake" in d.error and "certificate" in d.error.lower(), d.error
    assert not plaintext_mail_sent(mx), mx.heard
