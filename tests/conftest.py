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


#: A test fails when the lab thread computed this long in one turn of its loop. The lab
#: records every lag over ``runtime.LAG_THRESHOLD`` (100 ms) as an event; below this bar
#: a busy lag is reported at the end of the run, not failed: starting extra hosts
#: (certificates, zones) or summarizing a 20,000-address header costs 100-150 ms of CPU,
#: which is worth seeing but not worth a red suite. The stall this watch exists for
#: (a regex backtracking for seconds) is far above it.
LAG_FAIL_CPU = 0.25
_LAGGED_TESTS: list[tuple[str, list]] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """The lab loop must not stall in a test (``maillab.runtime.LagWatch``).

    Each lag carries the lab thread's own CPU time over the late interval. A lag
    where the thread computed for over ``LAG_FAIL_CPU`` is a bug of ours and fails
    the test (time in the garbage collector is not counted: in a long test run a
    full collection can take a few hundred ms in whichever thread allocates). A lag
    where the thread only waited (the machine is loaded, another thread held the GIL,
    a blocking call) never fails: on a CI machine shared by
    other jobs that happens without any bug, and a test that failed for it would
    flake. Every lag is listed in the test's report and in the summary at the end.
    Tests that exist to push a server hard mark themselves ``loop_lag_ok``.
    """
    import time

    from maillab import runtime

    start = time.time()
    result = yield
    lags = [lag for lag in runtime.LAG_LOG if lag.when >= start]
    if lags:
        _LAGGED_TESTS.append((item.nodeid, lags))
        item.add_report_section("call", "lab loop lag", "\n".join(map(str, lags)))
        stalled = [lag for lag in lags if lag.own_cpu > LAG_FAIL_CPU]
        if stalled and item.get_closest_marker("loop_lag_ok") is None:
            pytest.fail("the lab loop stalled: " + "; ".join(map(str, stalled)), pytrace=False)
    return result


def pytest_terminal_summary(terminalreporter):
    if _LAGGED_TESTS:
        tr = terminalreporter
        tr.section("lab loop lag (over 100 ms; see tests/conftest.py)")
        for nodeid, lags in _LAGGED_TESTS:
            worst = max(lags, key=lambda lag: lag.own_cpu)
            tr.write_line(f"{nodeid}: {len(lags)} x, worst {worst}")


def pytest_configure(config):
    config.addinivalue_line("markers", "loop_lag_ok: a stress test; lab loop lag is reported, not failed")
