"""The sans-IO SMTP rules (maillab.smtp.policy, .data, .received) without sockets."""

from __future__ import annotations

import pytest

from maillab.smtp import data
from maillab.smtp.policy import (
    LOCAL,
    RELAY,
    PathError,
    Reply,
    check_sender,
    parse_mail_params,
    parse_path,
    route_recipient,
)
from maillab.smtp.received import TLSInfo, received_header, with_protocol

USERS = {"bob@alpha.test", "alice@alpha.test"}


def route(address: str, *, authenticated: bool = False, relay: bool = True):
    path, _ = parse_path(address)
    return route_recipient(path, local_domains={"alpha.test"}, is_user=USERS.__contains__,
                           authenticated=authenticated, relay_available=relay)


def refusal(fn, *args, **kw) -> Reply:
    with pytest.raises(PathError) as exc:
        fn(*args, **kw)
    return exc.value.reply


def test_reply_lines():
    assert Reply(250, "2.0.0", "Ok").lines() == ["250 2.0.0 Ok"]
    assert Reply(214, "2.0.0", "a\nb").lines() == ["214-2.0.0 a", "214 2.0.0 b"]


@pytest.mark.parametrize("text, address, rest", [
    ("<bob@alpha.test>", "bob@alpha.test", ""),
    (" <Bob@ALPHA.test> SIZE=10", "Bob@alpha.test", "SIZE=10"),
    ("bob@alpha.test", "bob@alpha.test", ""),  # tolerated, like Postfix
    ('<"bob"@alpha.test>', "bob@alpha.test", ""),
    ('<"b o\\"b"@alpha.test>', '"b o\\"b"@alpha.test', ""),
    ("<@relay.test,@other.test:bob@alpha.test>", "bob@alpha.test", ""),
    ("<josé@exämple.test>", "josé@exämple.test", ""),
    ("<u@[127.0.0.1]>", "u@[127.0.0.1]", ""),
])
def test_parse_path(text, address, rest):
    path, got_rest = parse_path(text)
    assert (path.address, got_rest) == (address, rest)


@pytest.mark.parametrize("text", ["<bob@>", "<@alpha.test>", "<bob>", "<bob@alpha.test", "<bob@alpha.test>x",
                                  "<bob@-alpha.test>", "<.bob@alpha.test>", "<bo..b@alpha.test>", "<>",
                                  "<@x:>", "<b ob@alpha.test>"])
def test_parse_path_syntax_errors(text):
    assert refusal(parse_path, text).code == 501


def test_null_sender_only_where_allowed():
    assert parse_path("<>", what="sender", allow_null=True)[0].null


def test_routes():
    assert route("<bob@alpha.test>").kind == LOCAL
    assert route("<BOB@Alpha.Test>").address == "bob@alpha.test"
    assert refusal(route, "<nobody@alpha.test>").status == "5.1.1"
    assert refusal(route, "<carol@beta.test>").status == "5.7.1"
    assert route("<carol@beta.test>", authenticated=True).kind == RELAY
    assert "no relay" in refusal(route, "<carol@beta.test>", authenticated=True, relay=False).text
    for trick in ["<u%beta.test@alpha.test>", "<beta.test!u@alpha.test>", '<"u@beta.test"@alpha.test>',
                  "<@alpha.test:u@beta.test>", "<bob@[127.0.0.1]>"]:
        assert refusal(route, trick).status == "5.7.1", trick
        if "%" in trick or "!" in trick or '"' in trick or "[" in trick:
            # not even a logged-in user gets the old routing syntaxes
            assert refusal(route, trick, authenticated=True).status == "5.7.1", trick


def test_mail_params():
    p = parse_mail_params("SIZE=100 BODY=8bitmime SMTPUTF8 AUTH=<>", extended=True, size_limit=1000)
    assert (p.size, p.body, p.smtputf8) == (100, "8BITMIME", True)
    assert refusal(parse_mail_params, "SIZE=1001", extended=True, size_limit=1000).code == 552
    assert refusal(parse_mail_params, "BODY=BINARYMIME", extended=True, size_limit=1000).code == 555
    assert refusal(parse_mail_params, "SIZE=1", extended=False, size_limit=1000).code == 555
    assert refusal(parse_mail_params, "SIZE=x", extended=True, size_limit=1000).code == 501


def test_sender_must_be_owned():
    path, _ = parse_path("<alice@alpha.test>")
    check_sender(path, "alice@alpha.test")
    assert refusal(check_sender, path, "bob@alpha.test").code == 550  # RFC 6409 6.1
    check_sender(parse_path("<>", allow_null=True)[0], "bob@alpha.test")  # RFC 6409 3.2: <> MUST NOT be refused


def test_data_rules():
    raw = b"\r\n" + b"..one\r\n.\r\n"
    assert data.unstuff(raw) == b".one\r\n"
    assert data.unstuff(b"\r\n.\r\n") == b""
    assert data.scan(raw).message == b".one\r\n" and data.scan(b"\r\n.\r\n").message == b""

    def endings(text: bytes):
        return data.check_line_endings(data.scan(b"\r\n" + text + b"\r\n.\r\n"))

    def length(message: bytes):
        return data.check_line_length(data.scan(b"\r\n" + message.replace(b"\r\n.", b"\r\n..") + b".\r\n"), 1000)

    assert endings(b"a\nb").text.startswith("Message refused: bare <LF>")
    assert "bare <CR>" in endings(b"a\rb").text
    assert "bare <CR>" in endings(b"a\r\r\nb").text and "bare <LF>" in endings(b"\n").text
    assert endings(b"fine") is None
    assert length(b"x" * 998 + b"\r\n") is None
    assert length(b"x" * 999 + b"\r\n").code == 500
    assert length(b"." * 998 + b"\r\n") is None  # sent as 999 octets with its transparency dot
    # the longest allowed and the first refused line at every offset, in the middle and at the end
    for pad in range(0, 1100, 37):
        for longest in (998, 999):
            refused = max(pad, longest) > 998
            for tail in (b"", b".\r\n", b"y" * 30 + b"\r\n"):
                msg = b"a\r\n" * 3 + b"z" * pad + b"\r\n" + b"x" * longest + b"\r\n" + tail
                assert (length(msg) is not None) == refused, (pad, longest, tail)
                assert (length(b"z" * pad + b"\r\n" + b"x" * longest + b"\r\n") is not None) == refused, (pad, longest)
    hops = b"Received: x\r\n" * 26 + b"\r\nReceived: in the body\r\n"
    assert data.check_hops(hops).status == "5.4.6"
    assert data.check_hops(b"Received: x\r\n" * 25 + b"\r\n" + b"Received: y\r\n" * 5) is None


def test_received_header():
    h = received_header(helo="pc (evil)\\", peer_ip="::1", by="mail.alpha.test", protocol="ESMTPSA",
                        id="ABC", recipient="bob@alpha.test", tls=TLSInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256", 128),
                        when=0)
    lines = h.decode().split("\r\n")
    assert lines[0] == "Received: from pc??evil?? ([IPv6:::1])"
    assert lines[1] == "\t(using TLSv1.3 with cipher TLS_AES_128_GCM_SHA256 (128/128 bits))"
    assert lines[2] == "\tby mail.alpha.test (maillab) with ESMTPSA id ABC"
    assert lines[3].startswith("\tfor <bob@alpha.test>; Thu, 01 Jan 1970") and lines[4] == ""
    assert with_protocol(extended=False, tls=True, authenticated=True) == "SMTP"
    assert with_protocol(extended=True, tls=True, authenticated=False) == "ESMTPS"
    assert with_protocol(extended=True, tls=False, authenticated=True, smtputf8=True) == "UTF8SMTPA"
