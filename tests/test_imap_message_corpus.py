"""Every message of tests/data/imap/ (and broken variants of each) through every function
of maillab.imap.message: nothing raises, and what FETCH would send is valid IMAP.

The outputs are checked against the RFC 3501 section 9 grammar ("envelope", "body")
with the reader of tests/imap_sexp.py; truncated and corrupted copies of each message
must give valid answers too, since a server sees whatever a sender wrote.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from imap_sexp import read

from maillab.imap import mimeparse
from maillab.imap.message import body_matches, header_matches, section, summarize, text_matches
from maillab.store import to_crlf

CORPUS = sorted((Path(__file__).parent / "data" / "imap").glob("*.eml"))


def _nstring(v) -> bool:
    return v is None or isinstance(v, bytes)


def _number(v) -> bool:
    return isinstance(v, str) and v.isdigit()


def check_address_list(value) -> None:
    assert value is None or (isinstance(value, list) and value), value
    for addr in value or []:
        assert isinstance(addr, list) and len(addr) == 4 and all(map(_nstring, addr)), addr


def check_envelope(env) -> None:
    """envelope = "(" env-date SP env-subject SP env-from SP env-sender SP env-reply-to SP
    env-to SP env-cc SP env-bcc SP env-in-reply-to SP env-message-id ")" """
    assert isinstance(env, list) and len(env) == 10, env
    assert _nstring(env[0]) and _nstring(env[1]) and _nstring(env[8]) and _nstring(env[9])
    for field in env[2:8]:
        check_address_list(field)


def check_params(v) -> None:
    assert v is None or (isinstance(v, list) and v and len(v) % 2 == 0 and all(isinstance(x, bytes) for x in v)), v


def check_ext(ext: list) -> None:
    """body-ext: dsp, lang, loc (after md5 / params)."""
    dsp, lang, loc = ext
    assert dsp is None or (isinstance(dsp, list) and len(dsp) == 2 and isinstance(dsp[0], bytes)), dsp
    if dsp is not None:
        check_params(dsp[1])
    assert lang is None or isinstance(lang, bytes) or (isinstance(lang, list) and all(isinstance(x, bytes) for x in lang))
    assert _nstring(loc)


def check_body(body, extended: bool) -> None:
    assert isinstance(body, list) and body, body
    if isinstance(body[0], list):  # body-type-mpart = 1*body SP media-subtype [SP body-ext-mpart]
        n = 0
        while n < len(body) and isinstance(body[n], list):
            check_body(body[n], extended)
            n += 1
        assert isinstance(body[n], bytes), body
        rest = body[n + 1:]
        if extended:
            assert len(rest) == 4, rest
            check_params(rest[0])
            check_ext(rest[1:])
        else:
            assert rest == []
        return
    mtype, subtype, params, cid, desc, enc, size = body[:7]
    assert isinstance(mtype, bytes) and isinstance(subtype, bytes)
    check_params(params)
    assert _nstring(cid) and _nstring(desc) and isinstance(enc, bytes) and _number(size)
    rest = body[7:]
    if mtype.lower() == b"message" and subtype.lower() == b"rfc822":
        check_envelope(rest[0])
        check_body(rest[1], extended)
        assert _number(rest[2])
        rest = rest[3:]
    elif mtype.lower() == b"text":
        assert _number(rest[0])
        rest = rest[1:]
    if extended:
        assert len(rest) == 4 and _nstring(rest[0]), rest
        check_ext(rest[1:])
    else:
        assert rest == [], rest


def part_paths(part: mimeparse.Part, prefix: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    """Every section number the message has (RFC 3501 6.4.5), plus one that does not exist."""
    inner = part.message if (prefix and part.message is not None) else part
    if not inner.is_multipart:
        return [prefix + (1,)] if not prefix else [prefix]
    paths = []
    for i, child in enumerate(inner.children, 1):
        paths.append(prefix + (i,))
        if child.is_multipart or child.message is not None:
            paths += part_paths(child, prefix + (i,))
    return paths + [prefix + (len(inner.children) + 1,)]


def exercise(data: bytes) -> None:
    """Everything FETCH and SEARCH would ask of ``data``; outputs must be valid."""
    s = summarize(data)
    assert json.loads(json.dumps(s)) == s  # the mailbox index stores it as JSON
    check_envelope(read(s["envelope"]))
    check_body(read(s["body"]), extended=False)
    check_body(read(s["bodystructure"]), extended=True)
    assert s["date"] is None or isinstance(s["date"], float)
    wire = data.replace(b"\0", b"\x80")  # NUL never goes into a literal (RFC 3501 4.3)
    assert section(data, (), None) == wire
    assert section(data, (), "HEADER") + section(data, (), "TEXT") == wire
    # HEADER.FIELDS always ends with the empty line; .NOT copies the message's own.
    assert section(data, (), "HEADER.FIELDS", ("From", "Subject")).endswith(b"\r\n")
    assert isinstance(section(data, (), "HEADER.FIELDS.NOT", ("From", "Subject")), bytes)
    for path in part_paths(mimeparse.parse(data))[:200]:
        for kind in (None, "MIME", "HEADER", "TEXT", "HEADER.FIELDS"):
            got = section(data, path, kind, ("Subject",))
            assert isinstance(got, bytes) and len(got) <= len(data) + 2
    for needle in ("", "a", "é", "你好"):
        assert isinstance(header_matches(data, "Subject", needle), bool)
        assert isinstance(body_matches(data, needle), bool)
        assert isinstance(text_matches(data, needle), bool)


@pytest.mark.parametrize("path", CORPUS, ids=[p.name for p in CORPUS])
def test_corpus_message(path: Path) -> None:
    exercise(to_crlf(path.read_bytes()))


@pytest.mark.parametrize("path", CORPUS, ids=[p.name for p in CORPUS])
def test_truncated_and_corrupted_copies(path: Path) -> None:
    data = to_crlf(path.read_bytes())[:60_000]
    rng = random.Random(path.name)  # the same variants on every run
    for cut in sorted({0, 1, 2, len(data) // 3, len(data) // 2, len(data) - 1} | {rng.randrange(len(data) + 1)}):
        exercise(data[:cut])
    for _ in range(3):
        broken = bytearray(data)
        for _ in range(max(1, len(data) // 50)):
            broken[rng.randrange(len(broken))] = rng.choice(b'\r\n-:;"=()<>\\@,\x00\xff\xc3 ')
        exercise(bytes(broken))


def test_the_corpus_is_the_expected_one() -> None:
    names = {p.name for p in CORPUS}
    assert len([n for n in names if n.startswith("cpython_")]) == 48
    assert {"odd_nested.eml", "odd_rfc2231.eml", "odd_encoded_subjects.eml"} <= names
