"""The sans-IO IMAP parser and LIST matcher, without sockets."""

from __future__ import annotations

import datetime

import pytest

from maillab.imap.mailbox_names import compile_pattern, wire_name
from maillab.imap.parser import LiteralRefused, NeedLiteral, ParseError, Parser, parse_command
from maillab.imap.search import in_seq_set
from maillab.imap.verbs import (
    STAR,
    Append,
    Command,
    Fetch,
    FetchItem,
    List,
    Login,
    Noop,
    Search,
    Section,
    Status,
    Store,
)


def feed(parser: Parser, *pieces: bytes):
    result = None
    for piece in pieces:
        if isinstance(result, NeedLiteral):
            parser.feed_literal(piece)
            result = None
        else:
            result = parser.feed_line(piece)
    return result


def test_synchronizing_and_non_synchronizing_literals() -> None:
    p = Parser(max_literal=100, max_command=1000)
    assert p.feed_line(b"a LOGIN {3}\r\n") == NeedLiteral(3, True)
    p.feed_literal(b"bob")
    assert p.feed_line(b" {6+}\r\n") == NeedLiteral(6, False)
    p.feed_literal(b"s\"e}c\n")  # anything goes inside a literal
    assert p.feed_line(b"\r\n") == Login("a", b"bob", b's"e}c\n')


def test_literal_over_limit_is_refused_before_its_bytes() -> None:
    p = Parser(max_literal=100, max_command=1000)
    assert p.feed_line(b"t1 APPEND INBOX {101}\r\n") == LiteralRefused("t1", 101, True)
    assert not p.in_command  # the next line is a new command
    assert p.feed_line(b"t2 NOOP\r\n") == Noop("t2")
    assert p.feed_line(b"t3 APPEND INBOX {99999999999999999999+}\r\n") == \
        LiteralRefused("t3", 99999999999999999999, False)


def test_bad_tags_and_unknown_commands() -> None:
    assert parse_command(b"+x NOOP\r\n") == ParseError(None, "missing or invalid tag")
    assert parse_command(b"NOOP\r\n").tag is None
    assert parse_command(b"\r\n").tag is None
    err = parse_command(b"a17 XYZZY\r\n")
    assert isinstance(err, ParseError) and err.tag == "a17"
    err = parse_command(b"a18 NOOP extra\r\n")
    assert isinstance(err, ParseError) and err.tag == "a18"


def test_sequence_sets_and_uid_commands() -> None:
    cmd = parse_command(b"a UID FETCH 1:3,7,9:*,* (FLAGS)\r\n")
    assert isinstance(cmd, Command) and cmd.uid and cmd.name == "FETCH"
    seqs = cmd.sequence_set
    assert seqs == ((1, 3), (7, 7), (9, STAR), (STAR, STAR))
    assert in_seq_set(seqs, 12, star=20) and not in_seq_set(seqs, 5, star=20)
    assert in_seq_set(((30, STAR),), 20, star=20)  # n:* with n past the end still has *
    assert isinstance(parse_command(b"a FETCH 0 FLAGS\r\n"), ParseError)
    assert isinstance(parse_command(b"a FETCH 4294967296 FLAGS\r\n"), ParseError)


def test_fetch_attributes_sections_and_partials() -> None:
    cmd = parse_command(b"a FETCH 1 (BODY.PEEK[1.2.HEADER.FIELDS.NOT (Received \"X-Y\")]<10.20>"
                        b" body[] RFC822.SIZE BODY[3.MIME])\r\n")
    assert isinstance(cmd, Fetch)
    items = cmd.items
    assert items[0] == FetchItem("BODY[]", Section((1, 2), "HEADER.FIELDS.NOT", ("RECEIVED", "X-Y")),
                                 (10, 20), peek=True)
    assert items[0].label == "BODY[1.2.HEADER.FIELDS.NOT (RECEIVED X-Y)]<10>"
    assert items[1].label == "BODY[]" and not items[1].peek
    assert items[2] == FetchItem("RFC822.SIZE")
    assert items[3].section == Section((3,), "MIME")
    macro = parse_command(b"a FETCH 1:* FAST\r\n")
    assert [i.name for i in macro.items] == ["FLAGS", "INTERNALDATE", "RFC822.SIZE"]
    assert isinstance(parse_command(b"a FETCH 1 (BODY[MIME])\r\n"), ParseError)
    assert isinstance(parse_command(b"a FETCH 1 (ENVELOPE\r\n"), ParseError)


def test_search_keys_nesting_and_limits() -> None:
    cmd = parse_command(b'a SEARCH CHARSET UTF-8 OR (FROM "bob" SINCE 1-Feb-2024) NOT 2:4 UNSEEN'
                        b" HEADER X-Spam yes LARGER 100\r\n")
    assert isinstance(cmd, Search)
    charset, key = cmd.charset, cmd.key
    assert charset == "UTF-8"
    assert key == ("AND", (
        ("OR", ("AND", (("FROM", b"bob"), ("SINCE", datetime.date(2024, 2, 1)))),
         ("NOT", ("SEQ", ((2, 4),)))),
        ("FLAG", "\\Seen", False), ("HEADER", "X-SPAM", b"yes"), ("LARGER", 100)))
    deep = b"a SEARCH " + b"(" * 40 + b"ALL" + b")" * 40 + b"\r\n"
    assert "nested too deeply" in parse_command(deep, max_depth=32).text
    assert isinstance(parse_command(b"a SEARCH " + b"NOT " * 40 + b"ALL\r\n", max_depth=32), ParseError)
    assert isinstance(parse_command(b"a SEARCH BEFORE 31-Feb-2024\r\n"), ParseError)


def test_store_append_status_list_grammar() -> None:
    cmd = parse_command(b"a STORE 1:2 -FLAGS.SILENT (\\seen $Junk)\r\n")
    assert cmd == Store("a", ((1, 2),), "-", True, ("\\Seen", "$Junk"))
    assert isinstance(parse_command(b"a STORE 1 +FLAGS (\\*)\r\n"), ParseError)
    p = Parser(max_literal=100, max_command=1000)
    cmd = feed(p, b'a APPEND Sent (\\Seen) " 1-Feb-2024 10:00:00 +0100" {2}\r\n', b"hi", b"\r\n")
    when = datetime.datetime(2024, 2, 1, 9, 0, tzinfo=datetime.timezone.utc).timestamp()
    assert cmd == Append("a", b"Sent", ("\\Seen",), when, b"hi")
    assert parse_command(b"a STATUS INBOX (MESSAGES UIDNEXT)\r\n") == \
        Status("a", b"INBOX", ("MESSAGES", "UIDNEXT"))
    assert isinstance(parse_command(b"a STATUS INBOX (BOGUS)\r\n"), ParseError)
    assert parse_command(b'a LIST (SPECIAL-USE) "" "*" RETURN (CHILDREN)\r\n') == \
        List("a", b"", b"*", ("SPECIAL-USE",), ("CHILDREN",))


@pytest.mark.parametrize(("pattern", "name", "ok"), [
    ("*", "a/b/c", True), ("%", "a/b", False), ("a/%", "a/b", True), ("a/%", "a/b/c", False),
    ("a*c", "a/b/c", True), ("a%c", "abc", True), ("a%c", "a/c", False), ("", "", True),
    ("Sent", "Sent", True), ("Sent", "sent", False), ("*%*%*%*%x", "a/b/c/x", True),
    ("*%*%*%*%x", "a/b/c/y", False), ("%/%", "a/b", True),
])
def test_list_patterns(pattern: str, name: str, ok: bool) -> None:
    assert compile_pattern(pattern)(name) is ok


def test_list_pattern_is_linear_on_hostile_input() -> None:
    matcher = compile_pattern("*%" * 20000 + "*a" * 300 + "z")
    assert matcher("a" * 511 + "b") is False  # would backtrack for ages as a regex


def test_wire_names() -> None:
    assert wire_name("INBOX") == "INBOX"
    assert wire_name("Grüße/2024") == "Gr&APwA3w-e/2024"
    assert wire_name("with space") == '"with space"'
    assert wire_name('q"uote') == '"q\\"uote"'
