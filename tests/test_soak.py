"""The soak (tests/soak.py) for a short while: the ledger balances, nothing leaks,
the lab loop never stalls. ``scripts/soak`` runs the same for 30 minutes."""

from __future__ import annotations

import json

from soak import soak


def test_short_soak_balances() -> None:
    report = soak(20)
    text = json.dumps(report, indent=1)
    assert report["accepted"] > 20, text
    assert report["bounced"] > 0, text  # the injected 550s came back as DSNs
    assert not report["ledger_problems"], text
    assert not report["stalls"], text
    assert not report["leaks"], text
    assert not report["reader_error_counts"], text  # a client that failed is a finding
