"""Full garbage collections on the lab loop in a process that held much before the lab.

One command::

    python benchmarks/gc_kernel.py                      # 600,000 objects, a 60 s soak
    python benchmarks/gc_kernel.py --objects 1000000 --seconds 120

A kernel (IPython, numpy, matplotlib, the user's data) or a test run (a thousand
tests' reports) holds many long-lived objects before any lab exists, and a full
collection walks all of them, in whichever thread set it off: the lab loop waits
(the last CI soak, inside pytest: a full collection of 219 ms on the lab thread).

This imports what a notebook kernel does and makes ``--objects`` long-lived tracked
objects (instances in a cycle, lists and dicts holding them: the shapes of user data
and test reports), then runs the soak's traffic (``tests/soak.py``) on a lab made
after them, and prints:

* the full collections during the soak (every one, any thread: count, CPU and wall
  medians and maxima) and the soak's lags and memory (RSS at mid-run and the growth
  over the second half: what was frozen is never collected, so it must stay flat);
* with the traffic stopped and the lab up, ``gc.collect(2)`` on the lab thread
  (median of 7, CPU), the objects it walks (``gc.get_objects()``) and those frozen
  (``gc.get_freeze_count()``); then the peer in the same process: the same after
  ``gc.unfreeze()``, the collector as it was before the lab froze anything.

Run on a commit without the freeze, both lines are the peer's.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import soak as soak_module  # noqa: E402


class Record:
    """A user's or a test run's object: a few fields, a reference to the one before."""

    def __init__(self, n: int, before: Any) -> None:
        self.n = n
        self.before = before
        self.tags = [n, str(n)]


def hold(count: int) -> list[Any]:
    """``count`` tracked objects that live as long as the process: a third instances
    (each with its dict and a list), the rest the dicts and lists that hold them."""
    out: list[Any] = []
    before = None
    made = 0
    while made < count:
        batch = [Record(made + i, before) for i in range(100)]
        before = batch[-1]
        out.append({"batch": batch, "first": batch[0]})
        made += 100 * 3 + 2  # instance, its __dict__, its list; the batch list and the dict
    out[0]["last"] = before  # one cycle through all of them
    return out


def lab_thread_gc_ms(lab: Any, runs: int = 7) -> tuple[float, int, int]:
    """Median CPU ms of ``gc.collect(2)`` on the lab thread, the objects it walks, and
    those frozen."""

    def measure() -> tuple[float, int, int]:
        cpus = []
        for _ in range(runs):
            cpu = time.thread_time()
            gc.collect(2)
            cpus.append(time.thread_time() - cpu)
        return statistics.median(cpus) * 1000, len(gc.get_objects()), gc.get_freeze_count()

    return lab.loop.call(measure, timeout=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--objects", type=int, default=600_000, help="long-lived objects made before the lab")
    ap.add_argument("--seconds", type=float, default=60)
    args = ap.parse_args()
    import IPython  # noqa: F401 - what a kernel has imported
    import matplotlib.pyplot  # noqa: F401
    import numpy  # noqa: F401

    held = hold(args.objects)
    before = len(gc.get_objects())
    found: dict[str, Any] = {}

    def at_end(lab: Any, _soak: Any) -> None:
        time.sleep(1)  # the readers' last sessions close
        found["lab"] = lab_thread_gc_ms(lab)
        gc.unfreeze()  # the peer: the collector as it was before the lab froze anything
        found["peer"] = lab_thread_gc_ms(lab)

    report = soak_module.soak(args.seconds, at_end=at_end)
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    full = report["full_collections"]
    print(f"process before the lab: {before:,} tracked objects ({len(held):,} dicts holding the made ones);"
          f" load average {load}")
    print(f"soak: {args.seconds:.0f} s, {report['accepted']:,} accepted, ok={report['ok']},"
          f" lags over 100 ms: {report['lags_over_ms']['100']}, RSS mid-run {report['rss_middle'] / 2**20:.0f} MB,"
          f" second half {report['rss_second_half'] / 2**20:+.1f} MB")
    if full.get("count"):
        print(f"full collections during the soak: {full['count']}, CPU median {full['cpu_ms_median']} ms"
              f" (max {full['cpu_ms_max']}), wall median {full['wall_ms_median']} ms (max {full['wall_ms_max']})")
    (cpu, walked, frozen), (peer_cpu, peer_walked, _) = found["lab"], found["peer"]
    print(f"gc.collect(2) on the lab thread, median of 7: {cpu:.1f} ms CPU, {walked:,} objects walked,"
          f" {frozen:,} frozen; peer (unfrozen) {peer_cpu:.1f} ms CPU, {peer_walked:,} walked:"
          f" {cpu / peer_cpu:.3f}x the peer's CPU")


if __name__ == "__main__":
    main()
