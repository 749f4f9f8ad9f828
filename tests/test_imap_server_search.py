"""The server's SEARCH header keys compare cached field texts (search.header_texts)
instead of calling message.header_matches per message: both must give the same
answer for every field, needle and key kind, on every message of the test corpus.
(Over the wire, tests/test_imap_dovecot_diff.py compares the server's SEARCH with Dovecot's.)"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from maillab.imap.decoding import fold_case
from maillab.imap.message import header_matches
from maillab.imap.search import header_texts
from maillab.store import to_crlf
from maillab.store.reading import header_field

DATA = Path(__file__).parent / "data" / "imap"
MESSAGES = sorted(DATA.glob("*.eml"))
FIELDS = ("from", "to", "cc", "bcc", "subject", "reply-to", "sender", "message-id", "x-mailer",
          "content-type", "x-absent")


def _header(data: bytes) -> bytes:
    data = to_crlf(data)
    end = data.find(b"\r\n\r\n")
    return data[:end + 4] if end >= 0 else data


def _needles(texts: tuple[str, ...], rng: random.Random) -> list[str]:
    """Pieces of the field's own texts (hits, with their case changed), plus misses."""
    out = ["", "zz-no-such-text", "<", " ", "@"]
    for t in texts:
        for _ in range(4):
            if len(t) > 1:
                a = rng.randrange(len(t))
                b = rng.randrange(a + 1, min(len(t), a + 12) + 1)
                piece = t[a:b]
                out.append(piece.upper() if rng.random() < 0.5 else piece)
    return out


@pytest.mark.parametrize("path", MESSAGES, ids=[p.name for p in MESSAGES])
def test_cached_header_texts_answer_like_header_matches(path: Path) -> None:
    assert MESSAGES, "the IMAP test corpus is missing"
    header = _header(path.read_bytes())
    rng = random.Random(path.name)
    for field in FIELDS:
        for exact in (False, True):
            texts = header_texts(header, field, exact)
            # the server parses only the field's own lines, cut out of the header
            assert header_texts(header_field(header, field), field, exact) == texts
            for needle in _needles(texts, rng):
                want = fold_case(needle)
                fast = bool(texts) if not want else any(want in t for t in texts)
                assert fast == header_matches(header, field, needle, exact=exact), \
                    (field, exact, needle, texts)
