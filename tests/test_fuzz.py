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
