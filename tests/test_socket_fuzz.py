"""The socket-level stateful fuzzer (tests/socket_fuzz.py) for a short seeded walk:
three IMAP sessions, a POP3 session and an SMTP client on bob's mailboxes, a probe
session beside them. ``scripts/socket-fuzz`` walks longer and over more seeds
(``MAILLAB_FUZZ_SEED=n`` draws another walk here)."""

from __future__ import annotations

import json
import os

from socket_fuzz import run

from maillab import Lab

STEPS = 600


def test_a_seeded_walk_finds_nothing(single_lab: Lab) -> None:
    seed = int(os.environ.get("MAILLAB_FUZZ_SEED", "15"))
    report = run(single_lab, seed=seed, steps=STEPS)
    assert not report["findings"], json.dumps(report, indent=1)
    assert report["steps"] == STEPS
    assert report["acknowledged_kept"] > 0 and report["removed_on_request"] > 0
