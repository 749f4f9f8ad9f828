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


# A process that held N long-lived objects before the lab (a kernel's modules and data,
# a test run's reports) starts a lab, and a full collection on the lab thread then walks
# the lab's objects, not the N; the lab itself is still collected once dropped, and a
# lab made while another is alive freezes nothing (its objects will die with it).
_FREEZE_PROBE = r"""
import gc, json, sys, tempfile, weakref
from maillab import Lab

class Held:
    def __init__(self, peer):
        self.peer = peer
held = [Held(None) for _ in range(N)]
for i, h in enumerate(held):
    h.peer = held[i - 1]  # one big cycle, alive all along
first = Lab(tempfile.mkdtemp(), ports="auto", domains=["alpha.test"], services=("pop3",)).start()
walked = first.loop.call(lambda: (gc.collect(2), len(gc.get_objects()))[1])
frozen = gc.get_freeze_count()
second = Lab(tempfile.mkdtemp(), ports="auto", domains=["alpha.test"], services=("pop3",))
frozen_again = gc.get_freeze_count()
refs = [weakref.ref(first), weakref.ref(second)]
first.stop()
del first, second
gc.collect()
print(json.dumps({"walked": walked, "frozen": frozen, "frozen_again": frozen_again,
                  "labs_left": sum(r() is not None for r in refs)}))
"""


def test_a_full_collection_on_the_lab_thread_walks_the_labs_objects_not_the_kernels(tmp_path) -> None:
    import json
    import os
    import subprocess
    import sys

    n = 200_000
    result = subprocess.run([sys.executable, "-c", f"N = {n}\n" + _FREEZE_PROBE],
                            capture_output=True, text=True, timeout=120, env=dict(os.environ), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["frozen"] >= n  # the process's objects left the generations at lab start
    assert got["walked"] < n // 10  # what a full collection walks: the lab's own objects
    assert got["frozen_again"] == got["frozen"]  # a second lab while one is alive freezes nothing
    assert got["labs_left"] == 0  # neither lab was frozen: both collected once dropped
