"""What a full event log costs the garbage collector (and memory), in one run.

One command::

    python benchmarks/event_gc.py                    # 200,000 events, 5 full collections each
    python benchmarks/event_gc.py --events 50000

An :class:`~maillab.events.EventBus` is filled the way a busy lab fills it, through its
session recorders: SMTP command and reply lines of a logged-in user, message heads
(``payload``), notes with a few atomic fields, and one event in fifty carrying a list
(relay recipients). Then ``gc.collect()`` runs five times: the median is the time a
full (generation 2) collection of this process takes with the log full, printed next
to the peer measured in the same process first, the same collections with the bus
empty. Every full collection of the kernel process, whichever thread sets it off,
holds the GIL that long: the lab loop (and the notebook) wait.

It also prints the objects the collector tracks, the memory the events hold
(tracemalloc), what recording one event costs, and what reading them back costs
(``bus.events()`` whole, and filtered by session).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from maillab.events import EventBus  # noqa: E402


def full_gc_ms(runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        gc.collect()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def fill(bus: EventBus, n: int) -> None:
    body = ("From: alice@alpha.test\r\nTo: bob@alpha.test\r\nSubject: soak-1\r\n\r\n"
            + "x" * 72 + "\r\n") * 4
    made = 0
    while made < n:
        rec = bus.session("smtp", "server", "mail.alpha.test", peer="127.0.0.1:40000")
        rec.user = "alice@alpha.test"
        for i in range(20):
            rec.client_line(f"RCPT TO:<bob{made + i}@alpha.test>")
            rec.server_line("250 2.1.5 Ok")
        rec.payload("C", body.encode(), size=len(body))
        rec.note(f"queued as {made:010X}", queue_id=f"{made:010X}", bytes=len(body))
        rec.note("relay", rcpts=["carol@beta.test", "dave@gamma.test"])
        rec.close("QUIT")
        made += 46


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    args = ap.parse_args()

    gc.collect()
    tracked_empty = len(gc.get_objects())
    empty_ms = full_gc_ms()

    tracemalloc.start()
    kept = EventBus(maxlen=args.events)
    fill(kept, args.events)
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del kept
    bus = EventBus(maxlen=args.events)
    start = time.perf_counter()
    fill(bus, args.events)
    record_us = (time.perf_counter() - start) / len(bus) * 1e6

    gc.collect()
    tracked_full = len(gc.get_objects())
    full_ms = full_gc_ms()

    start = time.perf_counter()
    everything = bus.events()
    read_all_ms = (time.perf_counter() - start) * 1000
    session = everything[len(everything) // 2].session
    del everything
    start = time.perf_counter()
    one = bus.events(session=session)
    read_one_ms = (time.perf_counter() - start) * 1000

    print(f"events kept:                   {len(bus):,}")
    print(f"objects the collector tracks:  {tracked_empty:,} empty -> {tracked_full:,} full"
          f" (+{(tracked_full - tracked_empty) / len(bus):.2f} per event)")
    print(f"full collection, median of 5:  {empty_ms:.1f} ms empty (peer) -> {full_ms:.1f} ms full"
          f" ({full_ms / empty_ms:.1f}x)")
    print(f"memory the events hold:        {held / 2**20:.1f} MiB ({held / len(bus):.0f} B per event)")
    print(f"recording one event:           {record_us:.2f} us")
    print(f"bus.events() whole:            {read_all_ms:.0f} ms; one session ({len(one)} events):"
          f" {read_one_ms:.1f} ms")


if __name__ == "__main__":
    main()
