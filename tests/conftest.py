"""Shared fixtures: real labs on free ports in temporary directories."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from maillab import Lab
from maillab.limits import Limits


def fast_limits(**overrides: object) -> Limits:
    """Limits with short delays so tests run quickly (sizes stay as in production)."""
    values: dict[str, object] = {"auth_failure_delay": 0.05}
    values.update(overrides)
    return Limits(**values)  # type: ignore[arg-type]


@pytest.fixture
def lab(tmp_path) -> Iterator[Lab]:
    """The default lab network, every service on a free port."""
    lab = Lab(tmp_path / "lab", ports="auto", limits=fast_limits())
    lab.start()
    try:
        yield lab
    finally:
        lab.stop()


@pytest.fixture
def single_lab(tmp_path) -> Iterator[Lab]:
    """One mail host for alpha.test (alice, bob), every service on a free port."""
    lab = Lab(tmp_path / "lab", ports="auto", domains=["alpha.test"], limits=fast_limits())
    lab.start()
    try:
        yield lab
    finally:
        lab.stop()
