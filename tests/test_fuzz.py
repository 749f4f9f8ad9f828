"""Every fuzz target (tests/fuzz_targets.py) for a short, seeded budget.

The inputs are the target's seed corpus and then ``ci_inputs`` mutants drawn from
``random.Random(seed)``: the same inputs on every run, so a failure here
reproduces with the seed it prints (``MAILLAB_FUZZ_SEED`` picks another set).
The long, coverage-guided runs are ``scripts/fuzz`` (atheris); what they found
is in docs/security-tests.md.
"""

from __future__ import annotations

import os

import pytest
from fuzz_targets import TARGETS, run_seeded

SEED = int(os.environ.get("MAILLAB_FUZZ_SEED", "15"))


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_target(name: str) -> None:
    t = TARGETS[name]
    failures = run_seeded(t, t.ci_inputs, SEED)
    report = "\n\n".join(f"input {data!r}\n{tb}" for data, tb in failures)
    assert not failures, f"{name}: {len(failures)} failing inputs (seed {SEED}):\n{report}"


def test_imap_write_puts_back_what_each_input_wrote(monkeypatch) -> None:
    """``imap-write`` restores only the paths an input changed (not a fresh copy of the
    template each time): after inputs that append, expunge, create, rename and delete,
    the store is the template again, byte for byte and time for time."""
    from fuzz_targets import write_fixture

    t, wfx = TARGETS["imap-write"], write_fixture()
    restored: list[set[str]] = []
    restore = wfx.restore
    monkeypatch.setattr(wfx, "restore", lambda changed: (restored.append(set(changed)), restore(changed)))
    for data in t.seeds():
        t.run(data)
        assert wfx.changed() == set(), data
    assert len(restored) == len(t.seeds())
    assert sum(bool(c) for c in restored) >= len(t.seeds()) - 1  # the seeds write (one only logs in)
    assert any(p.startswith(wfx.USER + "/.a") for c in restored for p in c)  # CREATE a/b/c was undone
