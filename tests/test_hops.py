"""The Received-chain parser on real-world header samples (tests/data/received/).

Each sample ``X.txt`` has a hop table ``X.json`` written by hand from the MTA's
documented format; see tests/data/received/README for where the shapes come from.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maillab.relay.hops import header_fields, parse_hops, parse_received, received_values

DATA = Path(__file__).parent / "data" / "received"
SAMPLES = sorted(p.stem for p in DATA.glob("*.txt"))


def test_every_sample_has_an_expected_table() -> None:
    assert len(SAMPLES) >= 8
    for name in SAMPLES:
        assert (DATA / f"{name}.json").exists(), name


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_hop_table(name: str) -> None:
    expected = json.loads((DATA / f"{name}.json").read_text())["hops"]
    table = parse_hops((DATA / f"{name}.txt").read_bytes())
    got = table.as_dicts()
    assert len(got) == len(expected), "every Received line is a hop, none dropped"
    for i, (g, e) in enumerate(zip(got, expected, strict=True), start=1):
        assert g == e, f"hop {i}: {table[i - 1].raw}"


@pytest.mark.parametrize("name", SAMPLES)
def test_bottom_up_order_and_raw_kept(name: str) -> None:
    raw = (DATA / f"{name}.txt").read_text()
    values = received_values(raw)
    table = parse_hops(raw)
    # hop 1 is the bottom-most line
    assert [h.raw for h in table] == [" ".join(v.split()) for v in reversed(values)]
    assert [h.number for h in table] == list(range(1, len(values) + 1))


def test_unparsed_lines_are_shown_not_dropped() -> None:
    table = parse_hops((DATA / "broken.txt").read_text())
    bad = table.unparsed
    assert [h.number for h in bad] == [1, 3, 4]
    assert bad[2].raw == "this line was mangled by a forwarding gateway"
    assert "unbalanced parenthesis" in bad[1].problems
    assert any("date not readable" in p for p in table[1].problems)
    text = str(table)
    assert "this line was mangled by a forwarding gateway" in text
    assert "unparsed" in text


def test_negative_delay_is_clock_skew_not_hidden() -> None:
    table = parse_hops((DATA / "vger_mailing_list.txt").read_text())
    assert table[-1].delay == -14
    assert table.total_delay == 13


def test_crlf_bytes_and_x_received_ignored() -> None:
    raw = (DATA / "gmail.txt").read_text().replace("\n", "\r\n").encode()
    table = parse_hops(raw)
    assert len(table) == 3  # X-Received is not a Received field
    assert table[0].tls == "TLS1_3"


def test_header_block_only_and_mbox_from_line() -> None:
    block = ("From alice@example.com Tue Mar 14 10:15:28 2023\n"
             "Received: from a.example (a.example [192.0.2.1]) by b.example with ESMTP id X;"
             " Tue, 14 Mar 2023 10:15:28 +0000\n")
    table = parse_hops(block)
    assert len(table) == 1 and table[0].from_ip == "192.0.2.1" and table[0].encrypted is False


def test_body_received_lines_are_not_headers() -> None:
    msg = ("Subject: x\n\nReceived: from evil.example by b.example; Tue, 14 Mar 2023 10:15:28 +0000\n")
    assert parse_hops(msg).hops == []


def test_rfc5321_shape_with_postfix_tls_comment() -> None:
    # The shape maillab's own servers write (RFC 5321 4.4 + a Postfix-like TLS comment).
    hop = parse_received(
        "from client.alpha.test (mail.alpha.test [127.0.0.1])\r\n\tby mx1.beta.test (maillab) with ESMTPS id"
        " 1a2b3c\r\n\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))\r\n\tfor"
        " <carol@beta.test>; Tue, 14 Mar 2023 10:15:28 +0000")
    assert (hop.from_host, hop.from_ip, hop.by, hop.protocol, hop.tls, hop.for_) == (
        "client.alpha.test", "127.0.0.1", "mx1.beta.test", "ESMTPS", "TLSv1.3", "carol@beta.test")


def test_header_fields_keep_garbage_visible() -> None:
    fields = header_fields("Subject: a\nnot a header line\nTo: b\n\nbody")
    assert ("", "not a header line") in fields


def test_hostile_input_is_bounded() -> None:
    # Deep nesting and huge lines must neither crash nor hang the parser.
    hop = parse_received("(" * 5000 + "x")
    assert not hop.parsed
    hop = parse_received("from " + "a" * 100_000 + " by b; Tue, 14 Mar 2023 10:15:28 +0000")
    assert hop.parsed and hop.by == "b"


def test_auth_headers_a_signature_is_not_a_missing_result() -> None:
    """%mail hops lists the authentication headers: a DKIM-Signature carries no verdict
    (the receiver's Authentication-Results does), so it must not read "(no results)"."""
    from maillab.auth.headers import read

    hops = read(b"Authentication-Results: mx1.beta.test; dkim=pass header.d=alpha.test\r\n"
                b"DKIM-Signature: v=1; a=rsa-sha256; d=alpha.test; s=lab; i=@alpha.test; bh=x; b=y\r\n"
                b"Subject: s\r\n\r\nbody\r\n")
    texts = [h.text() for h in hops]
    assert texts[0] == "Authentication-Results: mx1.beta.test: dkim=pass header.d=alpha.test"
    assert texts[1].startswith("DKIM-Signature: i=@alpha.test d=alpha.test s=lab: a signature")
    assert "no results" not in texts[1]
