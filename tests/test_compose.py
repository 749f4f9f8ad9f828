"""Composing messages: structure, encodings and headers, checked by parsing the
bytes that would go on the wire back with the stdlib parser."""

from __future__ import annotations

import os
from email import message_from_bytes, policy

import pytest

from maillab.compose import compose, envelope, split_header_block, wire_bytes


def parse(data: bytes):
    return message_from_bytes(data, policy=policy.default)


def text(part) -> str:
    """A text part's content; CRLF is the canonical line end of text (RFC 2046 4.1.1),
    so base64-encoded text carries CRLF inside."""
    return part.get_content().replace("\r\n", "\n")


def test_chinese_subject_is_rfc2047_encoded_and_decodes_back():
    msg = compose(sender="alice@alpha.test", to=["bob@alpha.test"], subject="你好, Bob", body="Hello.\n")
    data = wire_bytes(msg)
    head = data.split(b"\r\n\r\n", 1)[0]
    head.decode("ascii")  # header section is pure ASCII on the wire
    subject_line = next(ln for ln in head.split(b"\r\n") if ln.startswith(b"Subject:"))
    assert b"=?utf-8?" in subject_line.lower()
    assert parse(data)["Subject"] == "你好, Bob"


def test_every_line_ends_crlf_and_fits_rfc5322_limit():
    long_line = "x" * 3000 + " 中文"
    data = wire_bytes(compose(sender="alice@alpha.test", to=["bob@alpha.test"], subject="s",
                              body=long_line + "\n"))
    assert data.count(b"\n") == data.count(b"\r\n")
    assert max(len(ln) for ln in data.split(b"\r\n")) <= 998  # RFC 5322 2.1.1
    assert text(parse(data)).rstrip("\n") == long_line


def test_date_and_message_id_are_added():
    msg = parse(wire_bytes(compose(sender="alice@alpha.test", to=["bob@alpha.test"], body="x")))
    assert msg["Date"].datetime is not None
    assert msg["Message-ID"].startswith("<") and msg["Message-ID"].endswith("@alpha.test>")


def test_header_block_at_top_of_body():
    body = ("From: Alice <alice@alpha.test>\nTo: bob@alpha.test\nCc: carol@beta.test\n"
            "Subject: first part\n  folded on\nX-Lab: yes\n\nThe body.\nSecond line: not a header\n")
    msg = parse(wire_bytes(compose(body=body)))
    assert msg["From"].addresses[0].addr_spec == "alice@alpha.test"
    assert msg["From"].addresses[0].display_name == "Alice"
    assert msg["To"] == "bob@alpha.test"
    assert msg["Cc"] == "carol@beta.test"
    assert msg["Subject"] == "first part folded on"
    assert msg["X-Lab"] == "yes"
    assert text(msg) == "The body.\nSecond line: not a header\n"


def test_options_win_over_the_header_block():
    msg = compose(sender="alice@alpha.test", to=["bob@alpha.test"], subject="from the option",
                  body="Subject: from the block\n\nbody\n")
    assert msg.get_all("Subject") == ["from the option"]


def test_text_that_is_not_a_header_block_stays_body():
    text = "Hello: this is prose\nand it goes on without a blank line\n"
    assert split_header_block(text) == ([], text)
    text2 = "\nSubject: after a blank first line is body\n"
    assert split_header_block(text2) == ([], text2)


def test_attachments_make_multipart_mixed_and_round_trip(tmp_path):
    blob = os.urandom(200_000)
    (tmp_path / "data.bin").write_bytes(blob)
    (tmp_path / "notes.txt").write_text("grüße\n", encoding="utf-8")
    (tmp_path / "bild_ä.png").write_bytes(b"\x89PNG\r\n\x1a\n" + blob[:100])
    msg = parse(wire_bytes(compose(
        sender="alice@alpha.test", to=["bob@alpha.test"], subject="files", body="see attached\n",
        attachments=[tmp_path / "data.bin", tmp_path / "notes.txt", tmp_path / "bild_ä.png"])))
    assert msg.get_content_type() == "multipart/mixed"
    parts = list(msg.iter_attachments())
    assert [p.get_filename() for p in parts] == ["data.bin", "notes.txt", "bild_ä.png"]
    assert parts[0].get_content_type() == "application/octet-stream"
    assert parts[0].get_content() == blob
    assert text(parts[1]) == "grüße\n"
    assert parts[2].get_content_type() == "image/png"
    assert text(msg.get_body(("plain",))) == "see attached\n"


def test_html_makes_multipart_alternative_plain_first():
    msg = parse(wire_bytes(compose(sender="alice@alpha.test", to=["bob@alpha.test"], subject="h",
                                   body="<p>Hello <b>Bob</b> &amp; co</p>", html=True)))
    assert msg.get_content_type() == "multipart/alternative"
    types = [p.get_content_type() for p in msg.iter_parts()]
    assert types == ["text/plain", "text/html"]  # RFC 2046 5.1.4: preferred last
    assert msg.get_body(("plain",)).get_content().strip() == "Hello Bob & co"
    assert "<b>Bob</b>" in msg.get_body(("html",)).get_content()


def test_html_and_attachment_nest(tmp_path):
    (tmp_path / "a.txt").write_text("a\n")
    msg = parse(wire_bytes(compose(sender="alice@alpha.test", to=["bob@alpha.test"], body="<p>x</p>",
                                   html=True, attachments=[tmp_path / "a.txt"])))
    assert msg.get_content_type() == "multipart/mixed"
    assert next(msg.iter_parts()).get_content_type() == "multipart/alternative"


def test_bcc_is_in_the_envelope_but_not_on_the_wire():
    msg = compose(sender="Alice <alice@alpha.test>", to=["bob@alpha.test, carol@beta.test"],
                  bcc=["dave@gamma.test"], body="x")
    sender, rcpts = envelope(msg)
    assert sender == "alice@alpha.test"
    assert rcpts == ["bob@alpha.test", "carol@beta.test", "dave@gamma.test"]
    assert b"dave@gamma.test" not in wire_bytes(msg)
    assert b"Bcc" not in wire_bytes(msg)


def test_non_ascii_display_name_is_encoded():
    data = wire_bytes(compose(sender="Zoë <alice@alpha.test>", to=["bob@alpha.test"], body="x"))
    from_line = next(ln for ln in data.split(b"\r\n") if ln.startswith(b"From:"))
    from_line.decode("ascii")
    assert parse(data)["From"].addresses[0].display_name == "Zoë"


@pytest.mark.parametrize("kwargs, problem", [
    ({"to": ["bob@alpha.test"]}, "sender"),
    ({"sender": "alice@alpha.test"}, "recipient"),
])
def test_missing_sender_or_recipient_is_a_clear_error(kwargs, problem):
    with pytest.raises(ValueError, match=problem):
        compose(body="x", **kwargs)
