"""Nothing slower than linear: every parser of outside bytes, on the input shapes
that make parsers super-linear (long runs of blanks, nesting, repeated
parameters, many parts, many fields).

No absolute timings (the machine is shared and noisy): each case times the
same parser on an input and on one 8 times larger, takes the best of several
runs of each (CPU time of this thread, so other processes hardly matter) and
requires the ratio to stay under 24. Linear work gives about 8; quadratic work
gives about 64, which a noisy machine cannot hide in a best-of-five.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from maillab.dns.zones import ZoneError, parse_zone
from maillab.imap import message
from maillab.imap.decoding import decode_header
from maillab.imap.envelope import address_search_text, parse_addresses
from maillab.imap.parser import parse_command
from maillab.relay.hops import parse_hops
from maillab.smtp import data as smtp_data

SCALE = 8
BOUND = 24


def _best(fn: Callable[[], object], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        t = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t)
    return best


def growth(parse: Callable[[bytes], object], make: Callable[[int], bytes], n: int, runs: int = 3) -> float:
    """CPU time of ``parse(make(SCALE * n))`` over that of ``parse(make(n))``, with n
    first tuned so that the small input takes a few milliseconds (measurable, cheap)."""
    parse(make(n))  # warm caches and imports
    for _ in range(20):
        data = make(n)
        t = _best(lambda: parse(data), 1)  # noqa: B023 - called at once
        if t < 0.002 and len(data) < 500_000:
            n *= 2
        elif t > 0.010 and n > 1:
            n //= 2
        else:
            break
    small, big = make(n), make(SCALE * n)
    return _best(lambda: parse(big), runs) / max(_best(lambda: parse(small), runs), 1e-6)


def _summarize(data: bytes) -> object:
    return message.summarize(data)


def _message(header: bytes, body: bytes = b"body\r\n") -> bytes:
    return header + b"\r\n" + body


def _multipart(parts: int) -> bytes:
    inner = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\npart\r\n" for _ in range(parts))
    return _message(b"Content-Type: multipart/mixed; boundary=b\r\n", inner + b"--b--\r\n")


def _nested(depth: int) -> bytes:
    # depth is capped by the parser; past the cap the rest is one leaf, still read once
    head = b"".join(b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1) for i in range(depth))
    return _message(b"Content-Type: multipart/mixed; boundary=b0\r\n", head + b"x\r\n")


def _dash_lines_deep(n: int) -> bytes:
    # 100 open boundaries (the nesting cap), then n "--" lines none of them matches
    return _nested(100)[:-3] + b"--zz\r\n" * n


MESSAGE_CASES = {
    "spaces in From": (lambda n: _message(b"From: a" + b" " * n + b"x\r\n"), 20_000),
    "spaces before <": (lambda n: _message(b"To: a" + b" " * n + b"<b@c>\r\n"), 20_000),
    "spaces in a quoted name": (lambda n: _message(b'Cc: "' + b" " * n + b"\r\n"), 20_000),
    "tabs and dots in a name": (lambda n: _message(b"From: a" + b" \t." * n + b"\r\n"), 10_000),
    "nested comments": (lambda n: _message(b"From: " + b"(" * n + b"a@b" + b")" * n + b"\r\n"), 5_000),
    "many addresses": (lambda n: _message(b"To: " + b", ".join(b"u%d@h" % i for i in range(n)) + b"\r\n"), 500),
    "many groups": (lambda n: _message(b"To: " + b"g: a@b;" * n + b"\r\n"), 300),
    "many parameters": (lambda n: _message(b"Content-Type: text/plain" + b"; a=b" * n + b"\r\n"), 2_000),
    "rfc2231 continuations": (lambda n: _message(b"Content-Type: text/plain"
                                                 + b"".join(b"; n*%d*=x" % i for i in range(n)) + b"\r\n"), 1_000),
    "rfc2231 reversed": (lambda n: _message(b"Content-Type: text/plain"
                                            + b"".join(b"; n*%d=x" % i for i in reversed(range(n))) + b"\r\n"), 1_000),
    "many header fields": (lambda n: _message(b"X-A: b\r\n" * n), 2_000),
    "long folded header": (lambda n: _message(b"Subject: a" + b"\r\n b" * n + b"\r\n"), 5_000),
    "many encoded words": (lambda n: _message(b"Subject: " + b"=?utf-8?q?a?= " * n + b"\r\n"), 1_000),
    "many parts": (_multipart, 200),
    "deep nesting": (_nested, 20),
    "nesting past the cap": (_nested, 400),  # 5 s for 3,200 levels before the fix
    "dash lines under deep nesting": (_dash_lines_deep, 1_000),
    "spaces in Date": (lambda n: _message(b"Date: Mon," + b" " * n + b"1 Jan 2024 10:00:00 +0000\r\n"), 20_000),
    "long boundary-like lines": (lambda n: _message(b"Content-Type: multipart/mixed; boundary=b\r\n",
                                                     b"--bb\r\n" * n), 2_000),
}


@pytest.mark.parametrize("case", sorted(MESSAGE_CASES))
def test_message_analysis_is_linear(case: str) -> None:
    make, n = MESSAGE_CASES[case]
    assert growth(_summarize, make, n) < BOUND


def _search_text(data: bytes) -> object:
    return address_search_text(data), parse_addresses(data), decode_header(data)


@pytest.mark.parametrize("make, n", [
    (lambda n: b" " * n + b"<", 20_000),
    (lambda n: b"a" + b" " * n + b"b", 20_000),
    (lambda n: b"\\" * n, 20_000),
    (lambda n: b'"' + b"\\ " * n, 10_000),
    (lambda n: b"a@" + b"b." * n, 10_000),
    (lambda n: b"=?" * n, 10_000),
    (lambda n: b"(" * n, 10_000),
    (lambda n: b"<" * n, 10_000),
], ids=["spaces-lt", "spaces-between", "backslashes", "quoted-pairs", "dotted-domain", "encoded-starts",
        "open-comments", "open-angles"])
def test_address_parsing_is_linear(make, n) -> None:
    assert growth(_search_text, make, n) < BOUND


@pytest.mark.parametrize("make, n", [
    (lambda n: b"a FETCH " + b",".join(b"%d:%d" % (i, i + 1) for i in range(1, n)) + b" FLAGS\r\n", 2_000),
    (lambda n: b"a SEARCH " + b"OR SEEN " * n + b"ALL\r\n", 25),  # depth is capped: BAD, read once
    (lambda n: b"a SEARCH " + b"SEEN " * n + b"ALL\r\n", 2_000),
    (lambda n: b'a LOGIN "' + b"\\\\" * n + b'" x\r\n', 10_000),
    (lambda n: b"a LOGIN " + b" " * n + b"x\r\n", 20_000),
    (lambda n: b"a FETCH 1 (" + b"FLAGS " * n + b"UID)\r\n", 2_000),
    (lambda n: b"a FETCH 1 BODY[HEADER.FIELDS (" + b"A " * n + b"B)]\r\n", 2_000),
    (lambda n: b"a STORE 1 +FLAGS (" + b"\\Seen " * n + b"x)\r\n", 2_000),
    (lambda n: b"a ID (" + b'"k" "v" ' * n + b")\r\n", 2_000),
    (lambda n: b"a SELECT x (" + b"(" * n + b")\r\n", 2_000),
], ids=["seq-set", "or-chain", "many-keys", "quoted-escapes", "spaces", "fetch-items", "header-fields",
        "flags", "id-params", "nesting"])
def test_imap_commands_parse_in_linear_time(make, n) -> None:
    assert growth(parse_command, make, n) < BOUND


def _received(n: int) -> bytes:
    return b"".join(b"Received: from h%d (h [127.0.0.1]) by x with ESMTP id A; Mon, 1 Jan 2024 10:00:00 +0000\r\n" % i
                    for i in range(n)) + b"\r\n"


@pytest.mark.parametrize("make, n", [
    (_received, 100),
    (lambda n: b"Received: from a " + b"(" * n + b")" * n + b" by b\r\n\r\n", 5_000),
    (lambda n: b"Received: from a " + b"(" * n + b" by b\r\n\r\n", 5_000),
    (lambda n: b"Received: from a" + b" " * n + b"by b; " + b" " * n + b"\r\n\r\n", 20_000),
    (lambda n: b"Received: " + b"[" * n + b"\r\n\r\n", 10_000),
    (lambda n: b"Received: from a (helo=" + b"x" * n + b")\r\n\r\n", 20_000),
], ids=["many-hops", "nested-comments", "unclosed-comments", "spaces", "brackets", "long-helo"])
def test_received_chains_parse_in_linear_time(make, n) -> None:
    assert growth(parse_hops, make, n) < BOUND


def _smtp_data(data: bytes) -> object:
    text = smtp_data.scan(data)
    return (smtp_data.check_line_endings(text), smtp_data.check_line_length(text, 1000),
            smtp_data.check_hops(text.message))


@pytest.mark.parametrize("make, n", [
    (lambda n: b".\r\n" * n, 5_000),
    (lambda n: b"\r" * n, 20_000),
    (lambda n: b"Received: x\r\n" * n + b"\r\n", 2_000),
    (lambda n: b"a" * n + b"\r\n", 20_000),
], ids=["dot-lines", "bare-cr", "received-count", "one-long-line"])
def test_smtp_data_checks_are_linear(make, n) -> None:
    assert growth(_smtp_data, make, n) < BOUND


def _zone(data: bytes) -> object:
    try:
        return parse_zone("alpha.test", data.decode())
    except ZoneError:
        return None


@pytest.mark.parametrize("make, n", [
    (lambda n: b"$TTL 60\n@ SOA ns h 1 2 3 4 5\n@ NS ns\n" + b"".join(b"h%d A 127.0.0.1\n" % i for i in range(n)), 200),
    (lambda n: b"$TTL 60\n@ SOA ns h 1 2 3 4 5\n@ TXT (" + b" " * n + b"x)\n", 20_000),
], ids=["many-records", "spaces-in-parens"])
def test_zone_text_is_linear(make, n) -> None:
    assert growth(_zone, make, n) < BOUND


def _auth_headers(data: bytes) -> object:
    from maillab.auth.headers import read

    return read(data)


@pytest.mark.parametrize("make, n", [
    (lambda n: b"Authentication-Results: x; " + b"(" * n + b")" * n + b" spf=pass\r\n\r\n", 5_000),
    (lambda n: b"Authentication-Results: x; " + b"(a)" * n + b" spf=pass\r\n\r\n", 5_000),
    (lambda n: b"ARC-Seal: i=1; " + b"(" * n + b" cv=none\r\n\r\n", 5_000),
    (lambda n: b"Authentication-Results: x" + b"; spf=pass" * n + b"\r\n\r\n", 2_000),
], ids=["nested-comments", "many-comments", "unclosed-comments", "many-results"])
def test_authentication_headers_read_in_linear_time(make, n) -> None:
    # %mail hops reads Authentication-Results, ARC and DKIM-Signature of any pasted message:
    # comments were removed innermost first, again and again (quadratic in the nesting)
    assert growth(_auth_headers, make, n) < BOUND


def _inbox_row(data: bytes) -> object:
    from maillab.views.inbox import header_fields

    return header_fields(data)


@pytest.mark.parametrize("make, n", [
    (lambda n: b"From: " + b"(a)" * n + b" a@b\r\n\r\n", 200),
    (lambda n: b"From: a" + b"." * n + b"@b\r\n\r\n", 1_000),
    (lambda n: b"From: " + b"a@b, " * n + b"\r\n\r\n", 500),
    (lambda n: b"Subject: " + b"=?utf-8?q?=C3=A9?= " * n + b"\r\n\r\n", 200),
], ids=["comments", "dots", "addresses", "encoded-words"])
def test_inbox_rows_read_in_linear_time(make, n) -> None:
    # %mail inbox (the kernel) read From with email.policy.default's grammar: anyone who
    # can reach an MX could make one row take minutes (30 KB of "(a)": 20 s)
    assert growth(_inbox_row, make, n) < BOUND


def _fetched_text(data: bytes) -> object:
    from maillab.magics.imap import FetchedMessage

    return FetchedMessage(1, "INBOX", data, (), (), True).text_body()


@pytest.mark.parametrize("make, n", [
    (lambda n: b"Content-Type: text/plain; " + b"(a)" * n + b" charset=utf-8\r\n\r\nhello\r\n", 500),
    (lambda n: b"Content-Type: text/plain; " + b"a=b; " * n + b"\r\n\r\nhello\r\n", 500),
], ids=["comments", "parameters"])
def test_fetched_message_text_is_linear(make, n) -> None:
    # %imap --fetch showed the text through email.policy.default (30 KB of comments: 6.5 s)
    assert growth(_fetched_text, make, n) < BOUND


def _exercise_reading(data: bytes) -> object:
    # what the exercise checks read of each stored message (exercises/sending.py)
    from maillab.exercises.evidence import parse, part_numbers
    from maillab.imap.decoding import field_text

    msg = parse(data)
    parts = [(p.get_content_type(), p.get_filename()) for p in part_numbers(msg).values()]
    return msg.get_content_type(), parts, field_text(msg, "Subject"), field_text(msg, "From")


@pytest.mark.parametrize("make, n", [
    (lambda n: b"From: " + b"(a)" * n + b" a@b\r\n\r\nhello\r\n", 200),
    (lambda n: b"Content-Type: text/plain; " + b"(a)" * n + b" charset=utf-8\r\n\r\nhello\r\n", 500),
    (lambda n: b"Subject: " + b"=?utf-8?q?=C3=A9?= " * n + b"\r\n\r\nhello\r\n", 200),
], ids=["from-comments", "content-type-comments", "encoded-words"])
def test_exercise_evidence_reads_messages_in_linear_time(make, n) -> None:
    # the exercise checks (in the kernel) parsed every stored message with
    # email.policy.default, whose grammar is quadratic on such values
    assert growth(_exercise_reading, make, n) < BOUND
