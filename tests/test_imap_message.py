"""maillab.imap.message: ENVELOPE, BODY/BODYSTRUCTURE, BODY[section] and SEARCH text.

Expected values are written from the RFCs (RFC 3501 7.4.2 and 6.4.5, RFC 5322
3.4, RFC 2045/2046/2047/2231), with sizes and line counts counted by hand; the
comparison with Dovecot is in test_imap_dovecot_diff.py. Strings are compared
after parsing (tests/imap_sexp.py), so only meaning counts, not quoting style.
"""

from __future__ import annotations

import calendar
from pathlib import Path

from imap_sexp import read

from maillab.imap import mimeparse
from maillab.imap.envelope import MAX_ADDRESSES
from maillab.imap.message import body_matches, header_matches, section, summarize, text_matches
from maillab.imap.quoting import imap_nstring, imap_string
from maillab.store import to_crlf

DATA = Path(__file__).parent / "data" / "imap"


def load(name: str) -> bytes:
    return to_crlf((DATA / name).read_bytes())


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


# -- ENVELOPE (RFC 3501 7.4.2) --------------------------------------------------------

def test_envelope_addresses_groups_routes_and_defaults() -> None:
    env = read(summarize(load("odd_addresses.eml"))["envelope"])
    date, subject, from_, sender, reply_to, to, cc, bcc, in_reply_to, message_id = env
    assert date == b"Mon, 7 Feb 1994 21:52:25 -0800 (PST)"
    assert subject == b"odd addresses: groups, routes, comments, quoted names"
    # A quoted display name loses its quotes and escapes (RFC 5322 3.2.4); a bare
    # address has no name (NIL); a comment after a bare address serves as its name.
    assert from_ == [[b'Doe, John "JD"', None, b"john.doe", b"example.com"],
                     [b"Plain Comment", None, b"plain", b"example.org"],
                     [None, None, b"bare", b"example.net"]]
    assert sender == [[b"Secretary", None, b"sec", b"example.com"]]
    # Reply-To present but empty: "the same value as the from member".
    assert reply_to == from_
    # Group syntax: (NIL NIL "name" NIL) starts a group, (NIL NIL NIL NIL) ends it.
    assert to == [[None, None, b"undisclosed-recipients", None], [None, None, None, None]]
    assert cc == [[None, None, b"Team", None],
                  [None, None, b"alice", b"example.com"],
                  [b"Bob B.", None, b"bob", b"example.com"],
                  [None, None, None, None],
                  [None, None, b"carol", b"example.com"]]
    # An obsolete source route goes into the adl field (RFC 5322 4.4).
    assert bcc == [[None, b"@relay1.example,@relay2.example", b"dave", b"example.com"]]
    assert in_reply_to == b"<parent.1@example.com>"
    assert message_id == b"<addr.1@example.com>"


def test_envelope_missing_and_empty_fields() -> None:
    env = read(summarize(crlf("Subject: only a subject\n\nbody\n"))["envelope"])
    assert env == [None, b"only a subject", None, None, None, None, None, None, None, None]
    env = read(summarize(load("odd_empty_fields.eml"))["envelope"])
    # Present but empty: an empty string, not NIL; an empty address list is NIL.
    assert env[0] == b"" and env[1] == b"" and env[9] == b""
    assert env[2:8] == [None] * 6


def test_envelope_keeps_encoded_words_and_unfolds() -> None:
    env = read(summarize(load("odd_encoded_subjects.eml"))["envelope"])
    # The server sends header text as written; decoding RFC 2047 is the client's job.
    assert env[1] == b"=?UTF-8?B?5L2g5aW977yM5LiW55WM?= =?GB2312?B?1tDOxNPKvP4=?="
    assert env[2] == [[b"=?UTF-8?B?5byg5LiJ?=", None, b"zhang", b"example.cn"]]
    env = read(summarize(load("odd_folded.eml"))["envelope"])
    assert env[1] == b"a subject folded with spaces and a tab"
    assert env[2] == [[b"Folded Name", None, b"folded", b"example.com"]]


def test_envelope_8bit_header_is_a_literal() -> None:
    env = summarize(load("odd_8bit_headers.eml"))["envelope"]
    # 8-bit text cannot be a quoted string (RFC 3501 9: TEXT-CHAR is 7-bit): a literal.
    assert "{13}\r\nJörg Müller" in env and '"Jörg' not in env  # 13 octets of UTF-8
    assert read(env)[2] == [["Jörg Müller".encode(), None, b"joerg", b"example.de"]]


def test_envelope_address_list_is_capped() -> None:
    env = read(summarize(load("odd_huge_header.eml"))["envelope"])
    assert len(env[5]) == MAX_ADDRESSES
    assert env[5][0] == [None, None, b"user0", b"example.com"]


# -- BODY and BODYSTRUCTURE (RFC 3501 7.4.2, RFC 2045/2046) -----------------------------

def test_single_part_defaults() -> None:
    s = summarize(crlf("Subject: hi\n\nline one\nline two\n"))
    # No Content-Type: text/plain; charset=us-ascii, 7bit (RFC 2045 5.2, 6.1).
    # Body "line one\r\nline two\r\n" is 20 octets in 2 lines.
    assert read(s["bodystructure"]) == [b"text", b"plain", [b"charset", b"us-ascii"], None, None,
                                        b"7bit", "20", "2", None, None, None, None]
    assert read(s["body"]) == [b"text", b"plain", [b"charset", b"us-ascii"], None, None,
                               b"7bit", "20", "2"]


def test_multipart_alternative() -> None:
    msg = crlf('From: a@example.com\nMIME-Version: 1.0\n'
               'Content-Type: multipart/alternative; boundary="b"\n\n'
               '--b\nContent-Type: text/plain; charset=utf-8\n\nhello\n'
               '--b\nContent-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n'
               '<p>hello</p>\n--b--\n')
    s = summarize(msg)
    # The CRLF before each delimiter belongs to the delimiter (RFC 2046 5.1.1):
    # "hello" is 5 octets and 0 lines, "<p>hello</p>" 12 octets.
    plain = [b"text", b"plain", [b"charset", b"utf-8"], None, None, b"7bit", "5", "0"]
    html = [b"text", b"html", [b"charset", b"utf-8"], None, None, b"quoted-printable", "12", "0"]
    assert read(s["body"]) == [plain, html, b"alternative"]
    ext = [None, None, None, None]
    assert read(s["bodystructure"]) == [plain + ext, html + ext, b"alternative",
                                        [b"boundary", b"b"], None, None, None]


def test_message_rfc822_part() -> None:
    inner = "Subject: inner\nFrom: Inner <in@example.com>\n\ninner body"
    msg = crlf("Subject: outer\nContent-Type: multipart/mixed; boundary=o\n\n"
               "--o\nContent-Type: message/rfc822\n\n" + inner + "\n--o--\n")
    s = read(summarize(msg)["bodystructure"])
    part = s[0]
    size = len(crlf(inner))
    inner_env = [None, b"inner"] + [[[b"Inner", None, b"in", b"example.com"]]] * 3 + [None] * 5
    inner_body = [b"text", b"plain", [b"charset", b"us-ascii"], None, None, b"7bit", "10", "0",
                  None, None, None, None]
    # message/rfc822: envelope, body structure and line count of the message inside.
    assert part == [b"message", b"rfc822", None, None, None, b"7bit", str(size),
                    inner_env, inner_body, "3", None, None, None, None]
    assert s[1:] == [b"mixed", [b"boundary", b"o"], None, None, None]


def test_parameters_as_the_message_carries_them() -> None:
    s = read(summarize(load("odd_rfc2231.eml"))["bodystructure"])
    one, two, three = s[0], s[1], s[2]
    # RFC 2231: name*= stays encoded; continuations name*0*, name*1*, name*2 are joined
    # into one value (the unencoded last piece appended as is).
    assert one[2] == [b"name*", b"utf-8''%E6%96%87%E4%BB%B6.bin"]
    assert one[5:7] == [b"base64", "4"]
    assert one[8] == [b"attachment", [b"filename*", b"utf-8''%E6%96%87%E4%BB%B6.bin"]]
    # Out-of-order continuations are put in order; a gap (x*0, x*2) leaves them alone.
    assert two[2] == [b"charset", b"us-ascii", b"title", b"hello world"]
    assert two[3] == b"<part2@example.com>"
    assert two[4] == b"two continuations out of order"
    assert two[9] == [b"inline", [b"x*0", b"a", b"x*2", b"c"]]
    assert two[10] == [b"en-US", b"de"]
    assert two[11] == b"http://example.com/part2"
    # Case as written; a comment inside the header is not part of a value.
    assert three[:3] == [b"TEXT", b"HTML", [b"CHARSET", b"UTF-8", b"Format", b"flowed"]]
    assert three[5] == b"QUOTED-PRINTABLE"


def test_multipart_without_parts_shows_an_empty_text_part() -> None:
    s = read(summarize(load("odd_broken_multipart.eml"))["bodystructure"])
    no_boundary = s[1]
    # The grammar needs at least one part inside a multipart.
    assert no_boundary[0] == [b"text", b"plain", [b"charset", b"us-ascii"], None, None, b"7bit",
                              "0", "0", None, None, None, None]
    assert no_boundary[1] == b"mixed"


def test_digest_parts_default_to_message_rfc822() -> None:
    s = read(summarize(load("odd_nested.eml"))["bodystructure"])
    digest = s[2]
    # RFC 2046 5.1.5: in multipart/digest a part without Content-Type is message/rfc822.
    assert digest[0][:2] == [b"message", b"rfc822"]
    assert digest[0][7][1] == b"digest entry 1"
    assert digest[1][:2] == [b"text", b"plain"]
    assert digest[2] == b"digest"


def test_sent_date() -> None:
    s = summarize(load("odd_addresses.eml"))
    # Mon, 7 Feb 1994 21:52:25 -0800 is 1994-02-08 05:52:25 UTC.
    assert s["date"] == calendar.timegm((1994, 2, 8, 5, 52, 25, 0, 0, 0))
    assert s["date_tz"] == -8 * 60
    assert summarize(crlf("Subject: x\n\n"))["date"] is None
    assert summarize(crlf("Date: not a date\n\n"))["date"] is None


# -- BODY[section] (RFC 3501 6.4.5) ----------------------------------------------------

def test_sections_of_the_rfc_3501_example() -> None:
    data = load("odd_rfc3501_sections.eml")

    def body(*part: int, kind: str | None = None) -> bytes:
        return section(data, part, kind)

    assert body(1) == b"part 1 text"
    assert body(2) == b"cGFydCAy"
    assert body(3, kind="HEADER").startswith(b"Subject: part 3 message\r\n")
    assert body(3, kind="HEADER").endswith(b"\r\n\r\n")
    assert body(3, kind="TEXT").startswith(b"--three\r\n")
    assert body(3).startswith(b"Subject: part 3 message\r\n")  # the whole embedded message
    assert body(3, 1) == b"part 3.1 text"
    assert body(3, 2) == b"part 3.2 octets"
    assert body(4, 1) == b"R0lGODlhAQABAAAAACw="
    assert body(4, 1, kind="MIME") == b"Content-Type: image/gif\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    assert body(4, 2, kind="HEADER").startswith(b"Subject: part 4.2 message\r\n")
    assert body(4, 2, 1) == b"part 4.2.1 text"
    assert body(4, 2, 2, 1) == b"part 4.2.2.1 text"
    assert body(4, 2, 2, 2) == b"part 4.2.2.2 richtext"
    assert body(5) == b"" and body(4, 3) == b"" and body(1, 2) == b""
    assert section(data, (), None) == data
    assert section(data, (), "HEADER") + section(data, (), "TEXT") == data


def test_single_part_message_is_part_1() -> None:
    data = crlf("Subject: s\n\nthe body\n")
    assert section(data, (1,), None) == b"the body\r\n"
    assert section(data, (2,), None) == b""
    assert section(data, (1,), "MIME") == b"Subject: s\r\n\r\n"


def test_header_fields() -> None:
    data = crlf("From: a@example.com\nSubject: first\n line two\nTo: b@example.com\n"
                "subject: again\n\nbody\n")
    # Matching is case-insensitive, lines keep message order and folding, and the
    # result ends with the blank line that ends a header.
    assert section(data, (), "HEADER.FIELDS", ("SUBJECT",)) == \
        b"Subject: first\r\n line two\r\nsubject: again\r\n\r\n"
    assert section(data, (), "HEADER.FIELDS.NOT", ("subject", "to")) == b"From: a@example.com\r\n\r\n"
    assert section(data, (), "HEADER.FIELDS", ("X-None",)) == b"\r\n"


# -- SEARCH text (RFC 3501 6.4.4, RFC 2047) ----------------------------------------------

def test_chinese_subject_is_searchable() -> None:
    data = load("odd_encoded_subjects.eml")
    assert header_matches(data, "Subject", "你好")  # =?UTF-8?B?...?=
    assert header_matches(data, "SUBJECT", "世界")
    assert header_matches(data, "subject", "中文邮件")  # =?GB2312?B?...?=
    # Adjacent encoded words join without the whitespace between them (RFC 2047 6.2).
    assert header_matches(data, "subject", "世界中文")
    assert header_matches(data, "from", "张三")
    assert not header_matches(data, "subject", "再见")


def test_header_match_is_case_insensitive_and_unicode() -> None:
    data = load("odd_encoded_subjects.eml")
    assert header_matches(data, "to", "ANDRÉ PIRARD")
    assert header_matches(data, "to", "pirard@VM1")
    assert header_matches(data, "X-Latin1", "CAFÉ")


def test_empty_needle_matches_when_field_exists() -> None:
    data = load("odd_addresses.eml")
    assert header_matches(data, "Message-ID", "")
    assert not header_matches(data, "X-Absent", "")


def test_body_is_decoded_before_matching() -> None:
    assert body_matches(load("odd_encoded_subjects.eml"), "你好，世界")  # base64 UTF-8
    assert body_matches(load("odd_8bit_headers.eml"), "CRÈME BRÛLÉE")  # QP ISO-8859-1
    assert body_matches(load("odd_8bit_headers.eml"), "soft line break")  # QP soft break joined
    assert body_matches(load("odd_bad_encodings.eml"), "中文正文")  # base64 GB2312
    assert not body_matches(load("odd_8bit_headers.eml"), "Grüße")  # only in the header
    assert text_matches(load("odd_8bit_headers.eml"), "Grüße")  # TEXT covers headers
    assert not body_matches(load("odd_rfc2231.eml"), "AAEC")  # not a text part


# -- IMAP strings (RFC 3501 4.3, 9) -----------------------------------------------------

def test_imap_strings() -> None:
    assert imap_string('say "hi" \\o/') == '"say \\"hi\\" \\\\o/"'
    assert imap_string("a\r\nb") == "{4}\r\na\r\nb"
    assert imap_string("é") == "{2}\r\né"  # a literal counts octets
    assert imap_nstring(None) == "NIL"
    assert read(imap_string("x\0y")) == "x\ufffdy".encode()  # NUL is never sent


# -- robustness ------------------------------------------------------------------------

def test_deep_nesting_is_bounded() -> None:
    depth = 3 * mimeparse.MAX_NESTING
    head = "".join(f'Content-Type: multipart/mixed; boundary="b{i}"\n\n--b{i}\n' for i in range(depth))
    data = crlf(head + "Content-Type: text/plain\n\ndeep\n")
    s = summarize(data)
    assert read(s["bodystructure"])
    assert _depth(read(s["bodystructure"])) <= mimeparse.MAX_NESTING + 2  # + leaf + its params


def _depth(value) -> int:
    return 1 + max(map(_depth, value), default=0) if isinstance(value, list) else 0


def test_many_parts_are_bounded(monkeypatch) -> None:
    monkeypatch.setattr(mimeparse, "MAX_PARTS", 50)  # the same code path as 10,000, faster
    parts = "".join(f"--p\nContent-Type: text/plain\n\n{i}\n" for i in range(mimeparse.MAX_PARTS + 500))
    data = crlf("Content-Type: multipart/mixed; boundary=p\n\n" + parts + "--p--\n")
    root = mimeparse.parse(data)
    assert len(root.children) < mimeparse.MAX_PARTS
    assert read(summarize(data)["body"])


def test_simple_address_shapes_read_as_the_full_parser_reads_them() -> None:
    """envelope's regex shortcut for common shapes gives what the RFC 5322 parser gives."""
    import random

    from maillab.imap.envelope import _AddressParser, _simple_addresses

    rng = random.Random(7)
    words = [b"john", b"Doe", b"J.", b"=?utf-8?q?J=C3=B6rg?=", "Jörg".encode(), b"a-b", b"o'neil", b""]
    addrs = [b"a@b.example", b"first.last@sub.example", b"x+tag@example.com", b"a..b@c", b"a@", b"x"]
    shortcut = 0
    for _ in range(3000):
        name = b" ".join(rng.choice(words) for _ in range(rng.randint(0, 3)))
        addr = rng.choice(addrs)
        value = rng.choice([addr, name + b" <" + addr + b">", b'"' + name + b'" <' + addr + b">",
                            b"  " + addr + b" , " + name + b"  <" + addr + b">,"])
        simple = _simple_addresses(value)
        if simple is not None:
            shortcut += 1
            assert simple == _AddressParser(value).address_list(), value
    assert shortcut > 1000  # the shortcut was really taken


def test_address_keys_match_one_written_form() -> None:
    """SEARCH FROM/TO/CC/BCC see each address as ``Name <user@host>`` whatever the header
    wrote (a comment as the name, quotes where RFC 5322 needs them), as Dovecot does;
    HEADER From sees the field as written."""
    data = crlf("From: john@example.com (John X. Doe)\nTo: a@example.com,\n\tb@example.com\n"
                "Subject: a  subject\n\twith a tab\n\nbody\n")
    assert header_matches(data, "from", '"John X. Doe" <john@example.com>')
    assert not header_matches(data, "from", "(John")
    assert header_matches(data, "from", "(John", exact=True)
    assert header_matches(data, "to", "<a@example.com>, <b@example.com>")
    assert header_matches(data, "to", "a@example.com, b@", exact=True)
    # SUBJECT: runs of white space are one space; HEADER: only the fold is undone.
    assert header_matches(data, "subject", "a subject with a tab")
    assert header_matches(data, "subject", "a  subject with", exact=True)
    assert not header_matches(data, "subject", "a subject", exact=True)
