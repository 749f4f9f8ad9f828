"""Shared fixtures: real labs on free ports in temporary directories."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from IPython.core.interactiveshell import InteractiveShell

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


@contextmanager
def magic_shell(tmp_path, start_args: str = "") -> Iterator[tuple[InteractiveShell, Lab]]:
    """A real IPython shell with ``%load_ext maillab`` and ``%mail start`` on free ports."""
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "maillab")
    shell.run_line_magic("mail", f"start --ports auto --dir {tmp_path / 'lab'} {start_args}")
    lab = kernel_lab()
    lab.limits.auth_failure_delay = 0.05  # the servers read the lab's limits live
    try:
        yield shell, lab
    finally:
        shell.run_line_magic("mail", "stop")


def kernel_lab() -> Lab:
    """The lab the magics started (``%mail start``)."""
    from maillab.magics import state

    current = state.existing_lab()
    assert current is not None
    return current


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failure, show the end of every lab's event stream: a client that hung
    is explained by the last lines the servers saw and sent."""
    report = yield
    if report.failed and call.when == "call":
        for name, value in getattr(item, "funcargs", {}).items():
            if isinstance(value, Lab):
                tail = value.events.events()[-80:]
                text = "\n".join(f"{e.time:.3f} {e.session} {e.kind}: {e.text[:200]}" for e in tail)
                report.sections.append((f"lab events ({name}, last {len(tail)})", text))
    return report
