"""Every transcript in tests/transcripts/, replayed in memory against the protocol's
sans-IO session (see tests/replay.py): the RFCs' own examples first, then the
tricky cases. No sockets: what needs one (TLS, real clients, timeouts) is tested
elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest
from replay import HERE, matches, replay

TRANSCRIPTS = sorted(HERE.glob("*.txt"))


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=[p.stem for p in TRANSCRIPTS])
def test_transcript(path: Path, tmp_path: Path) -> None:
    replay(path, tmp_path)


def test_the_wildcards() -> None:
    assert matches(["+OK $* octets"], ["+OK 120 octets"])
    assert not matches(["+OK $* octets"], ["-ERR 120 octets"])
    assert matches(["+OK", "...", "."], ["+OK", "a", "b", "."])
    assert matches(["+OK", "...", "."], ["+OK", "."])
    assert not matches(["+OK"], ["+OK", "extra"])  # nothing more than expected
    assert not matches(["a (x)"], ["a xx"])  # everything but $* is literal text
    # IMAP: untagged responses in any order, "..." for more of them
    sent = ["* FLAGS ()", "* 3 EXISTS", "* OK [UIDNEXT 4] x", "a1 OK done"]
    assert matches(["* 3 EXISTS", "* FLAGS ()", "...", "a1 OK $*"], sent, untagged_any_order=True)
    assert not matches(["* 3 EXISTS", "* FLAGS ()", "a1 OK $*"], sent, untagged_any_order=True)
    assert not matches(["* 3 EXISTS", "* FLAGS ()", "...", "a1 OK $*"], sent)  # in order: no
