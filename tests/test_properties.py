"""Round trips that must hold for every input (hypothesis, seeded and bounded).

Where a value is written back to the wire after being parsed, writing it and
reading it again must give it back; these are the properties whose failure was
a fuzz finding before (a quoted local part rendered unescaped, issue 15).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from maillab.imap.envelope import parse_addresses
from maillab.imap.parser import parse_command
from maillab.imap.quoting import imap_string
from maillab.smtp.policy import MAX_LOCAL_PART, Path, PathError, parse_path
from maillab.store.filenames import arrival_order, arrival_sorted, sizes_from_key, sizes_from_keys
from maillab.store.names import InvalidName, decode_mutf7, encode_mutf7

FAST = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


@seed(15)
@FAST
@given(st.text(min_size=1, max_size=40))
def test_mailbox_names_survive_modified_utf7(name: str) -> None:
    try:
        wire = encode_mutf7(name)
    except InvalidName:
        return
    assert wire.isascii()
    assert decode_mutf7(wire) == name


@seed(15)
@FAST
@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e), min_size=1, max_size=MAX_LOCAL_PART))
def test_any_local_part_survives_its_own_round_trip(local: str) -> None:
    path = Path(local, "alpha.test", quoted=True)
    try:
        again, _ = parse_path(str(path))
    except PathError:
        pytest.fail(f"{path} was rendered but cannot be read back")
    assert (again.local, again.domain) == (local, "alpha.test")


@seed(15)
@FAST
@given(st.text(max_size=60).filter(lambda s: "\0" not in s))
def test_imap_strings_read_back_as_written(value: str) -> None:
    cmd = parse_command(f"a LOGIN {imap_string(value)} x\r\n".encode())
    assert getattr(cmd, "user", None) == value.encode("utf-8"), cmd


@seed(15)
@settings(FAST, max_examples=50)  # composite examples are slow to draw
@given(st.lists(st.tuples(st.from_regex(r"[a-z0-9._]{1,10}", fullmatch=True).filter(lambda s: ".." not in s
                                                                                 and s[0] != "." and s[-1] != "."),
                          st.from_regex(r"[a-z0-9]{1,10}(\.[a-z0-9]{1,10}){0,2}", fullmatch=True),
                          st.text(alphabet="abc XYZ", max_size=12)), min_size=1, max_size=8),
       st.sampled_from([", ", ",", " ,  ", ",\r\n "]))
def test_address_lists_read_back_as_written(addresses, separator: str) -> None:
    text = separator.join((f"{name} <{m}@{h}>" if name.strip() else f"{m}@{h}") for m, h, name in addresses)
    parsed = parse_addresses(text.encode())
    assert [(a.mailbox, a.host) for a in parsed] == [(m.encode(), h.encode()) for m, h, _ in addresses]
    assert [a.name for a in parsed] == [(" ".join(n.split()).encode() or None) if n.strip() else None
                                        for _, _, n in addresses]


_KEY_PIECES = ["1700000001", "17", "1700000001.M5", ".M7", "x", "1234567890123456", ".M1234567890",
               ",S=12", ",S=", ",W=30", ",S=1x", ",W=7,S=9", ",S=5,W=6", ",S=1234567890123456", "P1",
               ".host", ",W=", ",S=3,S=4", ",W=1,W=2", ",", "\n", "é"]


@seed(15)
@FAST
@given(st.lists(st.lists(st.sampled_from(_KEY_PIECES), max_size=5).map("".join), max_size=30))
def test_maildir_names_parsed_together_as_one_by_one(keys: list[str]) -> None:
    """The batch parsers of a first SELECT (one regular expression over all names)
    agree with the per-name ones on every key, odd ones included."""
    by_one = sorted(range(len(keys)), key=lambda i: arrival_order(keys[i]))
    assert [keys[i] for i in arrival_sorted(keys)] == [keys[i] for i in by_one]
    for w_free in (keys, [k for k in keys if ",W=" not in k]):
        sizes, crlfs = sizes_from_keys(w_free)
        expected = [sizes_from_key(k) for k in w_free]
        assert sizes == [-1 if s is None else s for s, _ in expected]
        assert crlfs == [-1 if c is None else c for _, c in expected]
