"""The lab loop measures its own lag (maillab.runtime.LagWatch): an event, a line in
``%mail status``, and busy (the lab thread computed) told apart from waiting."""

from __future__ import annotations

import time

import pytest

from maillab import Lab


def _lag_events(lab: Lab, since: float, *, busy: bool | None = None, timeout: float = 5.0) -> list:
    """The lag events since ``since`` (only busy or only waiting ones when asked); the
    lab's own start may have lagged on a loaded machine, so earlier ones do not count."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = [e for e in lab.events.events() if e.kind == "lag" and e.time >= since
                  and (busy is None or e.data["busy"] == busy)]
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

    since = time.time()
    single_lab.loop.call(spin)
    events = _lag_events(single_lab, since, busy=True)
    assert events and events[0].data["cpu_ms"] >= 250
    summary = single_lab.loop.lag_summary()
    assert summary is not None and "busy computing" in summary


def test_a_blocked_lab_loop_is_waiting_not_busy(single_lab: Lab) -> None:
    since = time.time()
    single_lab.loop.call(time.sleep, 0.3)  # blocked, not computing: never fails a test
    events = _lag_events(single_lab, since)
    assert events and any(not e.data["busy"] and e.data["wall_ms"] >= 200 for e in events)


def test_status_table_shows_the_lag_line(tmp_path) -> None:
    from conftest import magic_shell

    with magic_shell(tmp_path) as (shell, lab):
        since = time.time()
        lab.loop.call(time.sleep, 0.3)
        assert _lag_events(lab, since)
        table = shell.run_line_magic("mail", "status")
        assert "lab loop lagged" in repr(table)


def test_a_long_full_garbage_collection_is_an_event_and_in_the_status(single_lab: Lab) -> None:
    import gc

    class SlowToFree:  # a cycle whose finalizer runs inside the collection
        def __del__(self) -> None:
            time.sleep(0.15)

    cycle = SlowToFree()
    cycle.me = cycle  # type: ignore[attr-defined]
    del cycle
    gc.collect()  # a full collection, this thread's: it lasts at least the finalizer's sleep
    deadline = time.monotonic() + 5
    while not (pauses := [e for e in single_lab.events.events(kinds=("gc",))]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pauses and pauses[-1].data["wall_ms"] >= 150
    assert "full garbage collection" in pauses[-1].text and "MainThread" in pauses[-1].text
    summary = single_lab.loop.lag_summary()
    assert summary is not None and "full garbage collections over 100 ms: " in summary


def test_a_lag_says_what_it_waited_for() -> None:
    from maillab.runtime import GCPause, Lag

    pause = GCPause(0.0, 0.0, 0.4, 0.35, "MainThread", 0)
    assert ("waiting for a full garbage collection of 400 ms (350 ms CPU) in thread MainThread"
            in str(Lag("lab", 0.0, 0.5, 0.01, full_gc=0.4, pause=pause)))
    assert "other threads of this process computed 400 ms" in str(Lag("lab", 0.0, 0.5, 0.01, others=0.4))
    assert "blocked or machine load" in str(Lag("lab", 0.0, 0.5, 0.01, others=0.01))
    assert "busy computing" in str(Lag("lab", 0.0, 0.5, 0.45))
