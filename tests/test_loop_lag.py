"""The lab loop measures its own lag (maillab.runtime.LagWatch): an event, a line in
``%mail status``, and busy (the lab thread computed) told apart from waiting."""

from __future__ import annotations

import time

import pytest

from maillab import Lab


def _lag_events(lab: Lab, timeout: float = 5.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = [e for e in lab.events.events() if e.kind == "lag"]
        if events:
            return events
        time.sleep(0.05)
    return []


@pytest.mark.loop_lag_ok  # the test stalls the loop on purpose
def test_a_busy_lab_loop_is_an_event_and_in_the_status(single_lab: Lab) -> None:
    def spin() -> None:
        start = time.thread_time()
        while time.thread_time() - start < 0.3:
            pass

    single_lab.loop.call(spin)
    events = _lag_events(single_lab)
    assert events and events[0].data["busy"] and events[0].data["cpu_ms"] >= 250
    summary = single_lab.loop.lag_summary()
    assert summary is not None and "busy computing" in summary


def test_a_blocked_lab_loop_is_waiting_not_busy(single_lab: Lab) -> None:
    single_lab.loop.call(time.sleep, 0.3)  # blocked, not computing: never fails a test
    events = _lag_events(single_lab)
    assert events and not any(e.data["busy"] for e in events)


def test_status_table_shows_the_lag_line(tmp_path) -> None:
    from conftest import magic_shell

    with magic_shell(tmp_path) as (shell, lab):
        lab.loop.call(time.sleep, 0.3)
        assert _lag_events(lab)
        table = shell.run_line_magic("mail", "status")
        assert "lab loop lagged" in repr(table)
